"""Seaborn figures shown in the notebooks (and saved under reports/figures by the report stage)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from medusa.corpora.manifest import SPLITS, class_counts
from medusa.labels import CODES


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


def training_curves(history: pd.DataFrame, name: str = "") -> plt.Figure:
    """Left: mean training loss per epoch. Right: dev balanced macro-F1 (the selection score) and, where the
    history has it, test macro-F1 (recorded for diagnosis only). Stage 2's epochs are shaded."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    sns.lineplot(history, x="step", y="train_loss", marker="o", ax=axes[0])
    scores = [c for c in ("dev_balanced_macro_f1", "test_macro_f1") if c in history]
    long = history.melt(id_vars="step", value_vars=scores, var_name="score", value_name="F1")
    sns.lineplot(long, x="step", y="F1", hue="score", style="score", markers=True, ax=axes[1])
    axes[1].axhline(1 / len(CODES), color="grey", linestyle=":", linewidth=1)
    stage2 = history.loc[history["stage"] == 2, "step"]
    for ax, title in zip(axes, ("training loss", "macro-F1 (grey: chance)")):
        if len(stage2):
            ax.axvspan(stage2.min() - 0.5, stage2.max() + 0.5, color="grey", alpha=0.12, label="stage 2")
        ax.set_xlabel("epoch (stage 1, then stage 2 shaded)")
        ax.set_title(f"{name}: {title}" if name else title)
    return fig


def confusion_matrix(y_true, y_pred, title: str = "") -> plt.Figure:
    """Row-normalised confusion matrix over the 8 classes (rows: consensus, columns: prediction)."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    counts = sk_confusion(y_true, y_pred, labels=list(CODES))
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sns.heatmap(pd.DataFrame(shares, index=list(CODES), columns=list(CODES)), annot=counts, fmt="d",
                cmap="Blues", vmin=0, vmax=1, cbar_kws={"label": "share of the row"}, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("consensus")
    ax.set_title(title or "Confusion matrix (counts; colour: row share)")
    return fig


def per_class_f1(scores: dict[str, dict[str, float]], title: str = "Per-class F1") -> plt.Figure:
    """F1 per class for several systems: {system name: {class code: F1}}."""
    data = pd.DataFrame([{"system": name, "class": c, "F1": f1} for name, per in scores.items()
                         for c, f1 in per.items()])
    fig, ax = plt.subplots(figsize=(9, 3.5))
    sns.barplot(data, x="class", y="F1", hue="system", order=list(CODES), ax=ax)
    ax.set_title(title)
    return fig


def member_weights(weights: pd.DataFrame, title: str = "Meta-classifier: weight of member m's P(c) on class c") -> plt.Figure:
    """Heatmap of the linear meta-classifier's per-member, per-class weights (rows: members, columns: classes)."""
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(weights) + 1.8))
    sns.heatmap(weights, annot=True, fmt=".2f", cmap="vlag", center=0, ax=ax)
    ax.set_title(title)
    return fig
