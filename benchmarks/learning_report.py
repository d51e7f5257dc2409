"""The output of benchmarks/learning.py: one row per run, the verdict against the probe, the figure, the CSV's
frame and the report section (as a document that benchmarks/report.py renders).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import report
from _common import busy, device_name
from learning_variants import VariantData

log = logging.getLogger("learning")

SECTION = "learning"                # reports/benchmarks/learning.json
REPORT_SECTION = "## Learning: DeepSER vs its linear probe"


# ---------------------------------------------------------------------------------------------------- output


def verdict(member: float, member_high: float, probe: float) -> str:
    """The issue's criterion: a member passes if its probe's score is within the member's 95 % interval or below
    the member's score. above: member >= probe; within: member < probe <= the member's upper bound; below:
    probe > the member's upper bound."""
    if member >= probe:
        return "above"
    return "within" if probe <= member_high else "below"


def results_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in results:
        row = {k: r.get(k) for k in ("variant", "size", "train_utterances", "member", "change", "seed", "train_s",
                                     "epochs", "steps", "dev_balanced_macro_f1", "best_stage", "best_epoch",
                                     "error")}
        row["overrides"] = json.dumps(r.get("overrides", {}), sort_keys=True)
        row["stage1_rows"] = (r.get("train_rows") or {}).get("stage1")
        for who in ("member", "probe"):
            s = r.get(f"{who}_test") or {}
            ci = s.get("balanced_macro_f1_ci95") or [np.nan, np.nan]
            row[f"{who}_f1"], row[f"{who}_low"], row[f"{who}_high"] = s.get("balanced_macro_f1", np.nan), *ci
            row[f"{who}_n"] = s.get("n")
        row["classes"] = len((r.get("member_test") or {}).get("classes") or []) or None
        row["gap"] = row["member_f1"] - row["probe_f1"]
        row["verdict"] = ("failed" if r.get("error") else
                          verdict(row["member_f1"], row["member_high"], row["probe_f1"]))
        row["key"] = r.get("key")
        row["finished_at"] = r.get("finished_at", np.nan)
        row["reused"] = bool(r.get("reused", False))
        row["load_at_start"] = r.get("load_at_start")
        # a member that predicts one class for every test utterance: its bootstrap interval has no width
        row["one_class"] = bool(row["member_high"] - row["member_low"] < 1e-9) if not pd.isna(row["member_f1"]) else False
        rows.append(row)
    return pd.DataFrame(rows)


def table(frame: pd.DataFrame) -> dict:
    def ci(f: float, lo: float, hi: float) -> str:
        return "–" if pd.isna(f) else f"{f:.3f} [{lo:.3f}, {hi:.3f}]"

    rows = []
    for r in frame.itertuples():
        outcome = r.verdict if r.verdict != "failed" else f"failed: {str(r.error).split(':')[0]}"
        outcome += " (one class)" if r.one_class else ""
        rows.append([r.variant, r.member, r.change, r.seed, r.train_utterances,
                     ci(r.member_f1, r.member_low, r.member_high), ci(r.probe_f1, r.probe_low, r.probe_high),
                     "–" if pd.isna(r.gap) else f"{r.gap:+.3f}", outcome,
                     "–" if pd.isna(r.steps) else int(r.steps), f"{r.train_s:.0f}"])
    return report.table(["variant", "member", "change", "seed", "train utt.", "member bal. macro-F1 [95 % CI]",
                         "probe [95 % CI]", "gap", "member vs probe", "steps", "train s"], "lllrrllrlrr", rows)


def plot(frame: pd.DataFrame, path: Path) -> None:
    """Test balanced macro-F1 against training-set size: one panel per (variant, member), the member per change
    (solid, hue) and its probe (dashed, black; it does not depend on the training change), 95 % intervals as
    error bars; several seeds are averaged (points and bounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    ok = frame[frame["verdict"] != "failed"]
    if ok.empty:
        log.warning("no finished run to plot")
        return
    sns.set_theme(style="whitegrid", context="paper")
    panels = list(dict.fromkeys(zip(ok["variant"], ok["member"])))
    changes = list(dict.fromkeys(ok["change"]))
    palette = dict(zip(changes, sns.color_palette("colorblind", len(changes))))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False, sharey=True)
    cols_mean = ["member_f1", "member_low", "member_high", "probe_f1", "probe_low", "probe_high"]
    for ax, (variant, member) in zip(axes.flat, panels):
        part = ok[(ok["variant"] == variant) & (ok["member"] == member)]
        mean = part.groupby(["change", "train_utterances"], sort=True)[cols_mean].mean().reset_index()
        for i, change in enumerate(changes):
            c = mean[mean["change"] == change].copy()
            if c.empty:
                continue
            # changes side by side around each size (a few % apart on the log axis), so their bars do not overlap
            c["x"] = c["train_utterances"] * (1 + 0.04 * (i - (len(changes) - 1) / 2))
            sns.lineplot(c, x="x", y="member_f1", ax=ax, color=palette[change], marker="o",
                         label=f"member, {change}", errorbar=None)
            ax.errorbar(c["x"], c["member_f1"],
                        yerr=[c["member_f1"] - c["member_low"], c["member_high"] - c["member_f1"]],
                        fmt="none", ecolor=palette[change], capsize=3, linewidth=1)
        probe = mean.groupby("train_utterances")[cols_mean[3:]].first().reset_index()
        ax.errorbar(probe["train_utterances"], probe["probe_f1"],
                    yerr=[probe["probe_f1"] - probe["probe_low"], probe["probe_high"] - probe["probe_f1"]],
                    color="black", linestyle="--", marker="s", markersize=4, capsize=3, linewidth=1.2,
                    label="linear probe")
        classes = part["classes"].dropna()
        if len(classes):
            ax.axhline(1 / classes.iloc[0], color="grey", linewidth=0.8, linestyle=":", label="chance")
        sizes = sorted(set(part["train_utterances"]))
        if len(sizes) > 1:
            ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_title(f"{variant} · {member}")
        ax.set_xlabel("training utterances")
        ax.set_ylabel("test balanced macro-F1")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def summary_lines(frame: pd.DataFrame) -> list[str]:
    """One bullet per (variant, change): how many runs are below their probe, and the mean gap."""
    lines = []
    for (variant, change), part in frame.groupby(["variant", "change"], sort=False):
        ok = part[part["verdict"] != "failed"]
        failed = len(part) - len(ok)
        lines.append(f"{variant} / {change}: {(ok['verdict'] == 'below').sum()} of {len(ok)} runs below their "
                     f"probe, mean gap {ok['gap'].mean():+.3f}" + (f"; {failed} failed" if failed else ""))
    return lines


def _load_words(frame: pd.DataFrame, load: str) -> str:
    """The 1-minute load average before the first run and the range before all of them (recorded per run; the
    runs side by side add about one each), or, for results without it, before this invocation."""
    firsts = [float(str(v).split()[0]) for v in frame["load_at_start"] if v and str(v)[0].isdigit()]
    if len(firsts) == len(frame) and firsts:
        first = frame.loc[(frame["finished_at"] - frame["train_s"]).idxmin(), "load_at_start"]
        return (f"load average before the first run {first} ({busy(first)}); 1-minute load before each run "
                f"{min(firsts):.2f}-{max(firsts):.2f} (the benchmark's own runs included)")
    return f"load average when this invocation started {load} ({busy(load)})"


def report_section(frame: pd.DataFrame, variants: dict[str, VariantData], command: str, wall_s: float, load: str,
                   params: Any, figure: Path, csv: Path, changes: dict[str, dict[str, Any] | None]) -> report.Doc:
    """The section as a document (benchmarks/report.py renders it)."""
    import torch

    from medusa.features.batches import pick_device

    t = params.train
    about = "; ".join(f"`{v.name}`: {v.about}" for v in variants.values())
    trained = frame["train_s"].sum()
    # the span from the first run's start to the last run's end: the set's wall time, also when this invocation
    # only reused finished runs
    span = (frame["finished_at"] - frame["train_s"]).min(), frame["finished_at"].max()
    reused = int(frame["reused"].sum())
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(span[0]))
    return report.doc(REPORT_SECTION[3:], [
        report.text(f"Command: `{command}` (after `dvc repro` of the demo)"),
        report.bullets([
            f"Device: {device_name(pick_device(t.device))}; torch {torch.__version__}; " + _load_words(frame, load)
            + ".",
            f"params.yaml `train`: hidden {t.hidden}, {t.layers} layers, {t.heads} heads, dropout {t.dropout}, "
            f"pool {dict(t.pool)}, standardise {t.standardise}, epoch_steps {t.epoch_steps}, stage1/2 epochs "
            f"{t.stage1_epochs}/{t.stage2_epochs}, patience {t.patience}, batch {t.batch_size}, lr {t.lr:g}, "
            f"{t.threads} thread(s) per run; probe C {params.probe.c}.",
            f"Variants: {about}.",
            "Changes (train overrides relative to params.yaml and the member's own): " + "; ".join(
                f"`{c}` " + ("no pooling" if c == "pool1" and changes.get(c) is None
                             else json.dumps(changes.get(c) or {}))
                for c in dict.fromkeys(frame["change"])) + ".",
            "Training sets: nested, label-stratified, seeded subsamples of the train split (dev and test "
            "unchanged). Scores: test balanced macro-F1 with its class-stratified bootstrap 95 % interval, member "
            "and probe over the same test utterances. *member vs probe*: `above` = member >= probe; `within` = the "
            "probe is below the member's upper bound (the issue's criterion: passes); `below` = the probe is above "
            "the member's upper bound; `(one class)`: the member predicts one class for every test utterance "
            "(balanced macro-F1 2/(k(k+1)) for k classes, 0.028 with 8). *steps*: optimizer steps taken (early "
            "stopping included). *train s*: wall seconds of `train_member` (data, training, prediction, writing); "
            "runs went side by side, one torch thread each.",
            f"Runs: {len(frame)}, trained from {when} UTC over {span[1] - span[0]:.0f} s wall (first start to last "
            f"end), {trained:.0f} s of training in all; this invocation {wall_s:.0f} s"
            + (f", {reused} of the runs reused from earlier invocations" if reused else "")
            + f". Figure `{figure}`, every number in `{csv}`."]),
        table(frame),
        report.bullets(summary_lines(frame))])
