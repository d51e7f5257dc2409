"""Corpora to the manifest contract: labels' soft targets, audio conversion, splits, channel probes."""
