"""Seaborn figures shown in the notebooks (and saved under reports/figures by the report stage)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from medusa.data.corpora.manifest import SPLITS, class_counts
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
    """Balanced macro-F1 of each channel probe (medusa.data.channel_probes.run_probes) per split; chance = 1 / run classes."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.barplot(results, x="probe", y="balanced_macro_f1", hue="split", ax=ax)
    k = int(results["classes"].iloc[0])
    ax.axhline(1 / k, color="grey", linestyle="--", linewidth=1, label=f"chance (1/{k})")
    ax.set_title("Channel probes: balanced macro-F1")
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


def training_curves(history: pd.DataFrame, name: str = "", n_classes: int | None = None) -> plt.Figure:
    """Left: mean training loss per epoch. Right: dev balanced macro-F1 (the selection score) and, where the
    history has it, test balanced macro-F1 (recorded for diagnosis only), with chance (1 / `n_classes`, the
    run's classes) when given. Stage 2's epochs are shaded."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    sns.lineplot(history, x="step", y="train_loss", marker="o", ax=axes[0])
    scores = [c for c in ("dev_balanced_macro_f1", "test_balanced_macro_f1") if c in history]
    long = history.melt(id_vars="step", value_vars=scores, var_name="score", value_name="F1")
    sns.lineplot(long, x="step", y="F1", hue="score", style="score", markers=True, ax=axes[1])
    if n_classes:
        axes[1].axhline(1 / n_classes, color="grey", linestyle=":", linewidth=1)
    stage2 = history.loc[history["stage"] == 2, "step"]
    for ax, title in zip(axes, ("training loss", "macro-F1 (grey: chance)" if n_classes else "macro-F1")):
        if len(stage2):
            ax.axvspan(stage2.min() - 0.5, stage2.max() + 0.5, color="grey", alpha=0.12, label="stage 2")
        ax.set_xlabel("epoch (stage 1, then stage 2 shaded)")
        ax.set_title(f"{name}: {title}" if name else title)
    return fig


def confusion_matrix(y_true, y_pred, classes, title: str = "") -> plt.Figure:
    """Row-normalised confusion matrix over `classes`, the run's (rows: consensus, columns: prediction);
    utterances whose consensus is not one of them (X, O) are left out."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    classes = list(classes)
    counts = sk_confusion(y_true, y_pred, labels=classes)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * len(classes), 0.5 + 0.5 * len(classes)))
    sns.heatmap(pd.DataFrame(shares, index=classes, columns=classes), annot=counts, fmt="d",
                cmap="Blues", vmin=0, vmax=1, cbar_kws={"label": "share of the row"}, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("consensus")
    ax.set_title(title or "Confusion matrix (counts; colour: row share)")
    return fig


def per_class_f1(scores: dict[str, dict[str, float]], title: str = "Per-class F1") -> plt.Figure:
    """F1 per class for several systems: {system name: {class code: F1}}, over the classes the scores name
    (the run's), in CODES order."""
    data = pd.DataFrame([{"system": name, "class": c, "F1": f1} for name, per in scores.items()
                         for c, f1 in per.items()])
    fig, ax = plt.subplots(figsize=(9, 3.5))
    sns.barplot(data, x="class", y="F1", hue="system", order=scored_classes(scores), ax=ax)
    ax.set_title(title)
    return fig


def scored_classes(scores: dict[str, dict[str, float]]) -> list[str]:
    """The class codes named by any system's per-class scores, in CODES order: the run's classes, so that a
    3-class run shows 3 columns, not 8."""
    named = {c for per in scores.values() for c in per}
    return [c for c in CODES if c in named]


def member_weights(weights: pd.DataFrame, title: str = "Meta-classifier: weight of member m's P(c) on class c") -> plt.Figure:
    """Heatmap of the linear meta-classifier's per-member, per-class weights (rows: members, columns: classes)."""
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(weights) + 1.8))
    sns.heatmap(weights, annot=True, fmt=".2f", cmap="vlag", center=0, ax=ax)
    ax.set_title(title)
    return fig


def per_class_f1_heatmap(scores: dict[str, dict[str, float]], title: str = "Per-class F1 on test") -> plt.Figure:
    """F1 per class (columns: the classes the scores name, the run's) for many systems (rows):
    {system: {class code: F1}}."""
    frame = pd.DataFrame(scores).T.reindex(columns=scored_classes(scores))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(frame) + 1.6))
    sns.heatmap(frame, annot=True, fmt=".2f", cmap="viridis", vmin=0, vmax=1, ax=ax)
    ax.set_title(title)
    return fig


def training_curves_grid(histories: dict[str, pd.DataFrame]) -> plt.Figure:
    """Dev and test balanced macro-F1 (selection; diagnosis) per epoch, one panel per model."""
    long = pd.concat([h.assign(model=name) for name, h in histories.items()], ignore_index=True)
    scores = [c for c in ("dev_balanced_macro_f1", "test_balanced_macro_f1") if c in long]
    long = long.melt(id_vars=["model", "step", "stage"], value_vars=scores, var_name="score", value_name="F1")
    grid = sns.relplot(long, x="step", y="F1", hue="score", style="stage", col="model", col_wrap=min(3, len(histories)),
                       kind="line", markers=True, height=2.6, aspect=1.3)
    grid.set_titles("{col_name}")
    grid.set_axis_labels("epoch (stage 1 then 2)", "macro-F1")
    grid.figure.suptitle("Training curves of the ensemble members", y=1.02)
    return grid.figure


def ablation_deltas(table: pd.DataFrame, title: str = "Relative macro-F1 change from the full DeepSER (95 % CI)"
                    ) -> plt.Figure:
    """Table 2's changes: one row per variant, a point per configuration and the average (black), with its
    paired bootstrap interval. `table` is medusa.reporting.ablation.table2 without the reference rows, with a `title`
    column naming the variant."""
    configs = list(dict.fromkeys(table["configuration"]))
    variants = list(dict.fromkeys(table["title"]))
    palette = dict(zip([c for c in configs if c != "AVG"], sns.color_palette("tab10")))
    palette["AVG"] = (0, 0, 0)
    fig, ax = plt.subplots(figsize=(8, 0.7 * len(variants) + 1.5))
    offsets = np.linspace(-0.3, 0.3, len(configs))
    for offset, config in zip(offsets, configs):
        part = table[table["configuration"] == config].set_index("title").reindex(variants)
        y = np.arange(len(variants)) + offset
        ax.errorbar(part["delta_pct"], y, xerr=[part["delta_pct"] - part["delta_ci95_low"],
                                                part["delta_ci95_high"] - part["delta_pct"]],
                    fmt="o" if config != "AVG" else "D", color=palette[config], capsize=3, label=config,
                    markersize=5 if config != "AVG" else 7)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(np.arange(len(variants)), variants)
    ax.invert_yaxis()
    ax.set_xlabel("relative change of test macro-F1 (%)")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize=8)
    return fig


def reliability_diagram(curves: dict[str, pd.DataFrame], highlight: list[str] | None = None,
                        title: str = "Reliability on test (top-label confidence against accuracy)") -> plt.Figure:
    """One panel: accuracy against mean confidence per confidence bin (medusa.scoring.calibration.reliability_curve),
    one line per system, and the diagonal of perfect calibration (below it: overconfident). The systems in
    `highlight` (in that order; default: all) are drawn bold, each in its own colour; the others thin and grey
    under one legend entry, so that ~8 systems stay readable."""
    highlight = list(curves) if highlight is None else [h for h in highlight if h in curves]
    palette = dict(zip(highlight, sns.color_palette("tab10")))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=1, label="perfect calibration")
    others = [name for name in curves if name not in palette]
    for i, name in enumerate(others):
        c = curves[name]
        ax.plot(c["confidence"], c["accuracy"], color="grey", linewidth=0.8, alpha=0.6,
                label=f"other systems ({len(others)})" if i == 0 else None)
    for name in highlight:
        c = curves[name]
        ax.plot(c["confidence"], c["accuracy"], color=palette[name], linewidth=2.2, marker="o", markersize=4,
                label=name)
    ax.set_xlim(-0.02, 1.02)            # a little room: bins at accuracy 0 or 1 stay visible
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("mean confidence (top posterior) in the bin")
    ax.set_ylabel("accuracy in the bin (against the consensus)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def save_figure(fig: plt.Figure, path) -> None:
    """PNG at a fixed size and resolution, written atomically; the same figure gives the same bytes."""
    from medusa.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
