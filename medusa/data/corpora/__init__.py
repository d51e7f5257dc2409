"""Corpus readers and writers: MSP-Podcast (and its layout), the synthetic demo corpus, the manifest."""
