"""Seaborn figures shown in the notebooks (and saved under reports/figures by the report stage)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from medusa.corpora.manifest import SPLITS, class_counts


def class_distribution(manifest: pd.DataFrame) -> plt.Figure:
    """Consensus labels per split, as shares of the split (O = other, X = no agreement)."""
    counts = class_counts(manifest)
    shares = counts.div(counts.sum(axis=1), axis=0).reset_index().melt(id_vars="split", var_name="label",
                                                                       value_name="share")
    fig, ax = plt.subplots(figsize=(9, 3.5))
    sns.barplot(shares, x="label", y="share", hue="split", ax=ax,
                hue_order=[s for s in SPLITS if s in set(shares["split"])])
    ax.set_title("Consensus label distribution per split")
    return fig


def agreement_histogram(manifest: pd.DataFrame) -> plt.Figure:
    """Share of annotators voting for the top class, per labelled utterance."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.histplot(manifest.dropna(subset=["agreement"]), x="agreement", hue="split", bins=12,
                 multiple="stack", ax=ax)
    ax.set_title("Annotator agreement (top-class vote share)")
    return fig


def duration_histogram(manifest: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.histplot(manifest, x="duration_s", hue="split", bins=30, multiple="stack", ax=ax)
    ax.set_title("Utterance duration (s)")
    return fig


def probe_scores(results: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.barplot(results, x="probe", y="macro_f1", hue="split", ax=ax)
    ax.axhline(1 / 8, color="grey", linestyle="--", linewidth=1, label="chance (1/8)")
    ax.set_title("Channel probes: macro-F1")
    ax.legend()
    return fig


def frames_vs_duration(store, items: pd.DataFrame, name: str) -> plt.Figure:
    """Frames stored per utterance against its duration (a sample of at most 2,000 utterances)."""
    sample = items.sample(n=min(len(items), 2000), random_state=0)
    data = pd.DataFrame({"duration_s": sample["duration_s"].to_numpy(),
                         "frames": [store.lengths[u] for u in sample["utt_id"]]})
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.scatterplot(data, x="duration_s", y="frames", s=10, ax=ax)
    ax.set_title(f"{name}: frames per utterance")
    return fig
