"""The summary report (notebook 06_ablations): the paper's Tables 1-3 on this run's data, written as Markdown, CSV
and LaTeX, and the findings: which of the paper's claims hold here.

Every table leads with balanced macro-F1 on test and its 95 % class-stratified bootstrap interval (the paper
reports on balanced held-out test sets; definitions in medusa.scoring.metrics), with plain macro-F1 and accuracy beside
it; the findings and reports/metrics/report.json use the balanced figures and their (paired) intervals.

Every table is built as one frame of display strings (numbers rounded once, here) and each writer lays out that
same frame, so the three formats carry the same numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medusa.config import paths
from medusa.config.params import REFERENCE_VARIANT
from medusa.labels import classes_of
from medusa.reporting.ablation import PAPER_DELTA_PCT, run_dir, variant_title
from medusa.scoring.calibration import BINS
from medusa.scoring.metrics import (
    bootstrap_macro_f1,
    percentile_interval,
    relative_change,
    stratified_bootstrap_indices,
)

TABLE_FORMATS = ("md", "csv", "tex")
#: The paper's headline numbers the findings compare with (Table 1 best single, MEDUSA, Section 5.3).
PAPER_MEDUSA_F1, PAPER_BEST_SINGLE_F1, PAPER_MEDUSA_GAIN_PCT = 0.472, 0.440, 7.23


def cell(value: float, low: float | None = None, high: float | None = None, std: float | None = None,
         digits: int = 3) -> str:
    """"0.407", "0.407 ± 0.012", "0.407 [0.302, 0.482]" or "0.407 ± 0.012 [0.302, 0.482]"; "–" for a missing value."""
    if value is None or not np.isfinite(value):
        return "–"
    text = f"{value:.{digits}f}"
    if std is not None and np.isfinite(std):
        text += f" ± {std:.{digits}f}"
    if low is not None and high is not None and np.isfinite(low) and np.isfinite(high):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def write_table(table: pd.DataFrame, stem: str, caption: str, root: str | Path = paths.TABLES,
                notes: list[str] | None = None) -> dict[str, Path]:
    """Write a frame of display strings as root/stem.md (caption, then a pipe table, then the `notes` as a list),
    .csv (the table only: a CSV holds one table) and .tex (a booktabs tabular, the caption and the notes as
    comments); atomically. Returns {format: path}."""
    from medusa.io import atomic_path

    table = table.astype(str)
    root = Path(root)
    notes = notes or []
    md_notes = "".join(f"\n- {n}" for n in notes) + ("\n" if notes else "")
    tex_notes = "".join(f"% {n}\n" for n in notes)
    # disable_numparse: tabulate would otherwise reprint "0.430" as "0.43"
    texts = {"md": f"{caption}\n\n{table.to_markdown(disable_numparse=True)}\n{md_notes}",
             "csv": table.to_csv(),
             "tex": f"% {caption}\n" + table.style.to_latex(hrules=True, column_format="l" + "r" * table.shape[1])
             + tex_notes}
    out = {}
    for fmt in TABLE_FORMATS:
        out[fmt] = root / f"{stem}.{fmt}"
        with atomic_path(out[fmt]) as tmp:
            tmp.write_text(texts[fmt], encoding="utf-8")
    return out


# ---------------------------------------------------------------- Table 1: every model, the average, MEDUSA
def member_rows(names: list[str], models: dict, bootstrap: int, seed: int, models_root: str | Path = paths.MODELS
                ) -> pd.DataFrame:
    """Each member's encoders, seed and test scores (from its metrics.json): balanced macro-F1 with its interval,
    macro-F1, accuracy, n, the dev balanced macro-F1 it was selected by, and its linear probe's test balanced
    macro-F1 with its interval (`probe_test`; `probe_*` columns). Both intervals must have been drawn from
    `bootstrap` resamples seeded by `seed` (report.bootstrap, report.seed; members.check_intervals)."""
    from medusa.model.members import check_intervals, read_metrics

    rows = []
    for name in names:
        m = read_metrics(Path(models_root) / name, f"train@{name}")
        check_intervals(m, Path(models_root) / name, bootstrap, seed, f"train@{name}")
        test = m["test"]
        probe = m.get("probe_test") or {}
        if "balanced_macro_f1_ci95" not in probe:
            raise ValueError(f"{Path(models_root) / name / 'metrics.json'}: no probe_test scores with a "
                             f"balanced_macro_f1_ci95 (the member's linear probe; written by an older version of "
                             f"medusa); rerun `dvc repro train@{name}`")
        rows.append({"model": name, "encoders": " + ".join(models[name]["encoders"]), "seed": models[name]["seed"],
                     "n": test["n"], "balanced_macro_f1": test["balanced_macro_f1"],
                     "ci95_low": test["balanced_macro_f1_ci95"][0], "ci95_high": test["balanced_macro_f1_ci95"][1],
                     "macro_f1": test["macro_f1"], "accuracy": test["accuracy"],
                     "dev_balanced_macro_f1": m["dev_balanced_macro_f1"],
                     "probe_balanced_macro_f1": probe["balanced_macro_f1"],
                     "probe_ci95_low": probe["balanced_macro_f1_ci95"][0],
                     "probe_ci95_high": probe["balanced_macro_f1_ci95"][1]})
    return pd.DataFrame(rows)


def paired_change(truth: np.ndarray, system: np.ndarray, reference: np.ndarray, bootstrap: int, seed: int,
                  classes: tuple[str, ...]) -> tuple[float, float]:
    """95 % interval of the relative balanced macro-F1 change (%) of `system` from `reference`, both scored over
    `classes` (the run's) on each class-stratified resample of the same utterances."""
    indices = stratified_bootstrap_indices(truth, bootstrap, seed)
    curve = lambda pred: bootstrap_macro_f1(truth, pred, classes=classes, indices=indices, balanced=True)  # noqa: E731
    return percentile_interval(relative_change(curve(system), curve(reference)))


def mean_interval(truth: np.ndarray, predictions: list[np.ndarray], bootstrap: int, seed: int,
                  classes: tuple[str, ...]) -> tuple[float, float]:
    """95 % interval of the mean balanced macro-F1 of several systems scored over `classes` (the run's) on the
    same utterances (paired class-stratified resamples)."""
    indices = stratified_bootstrap_indices(truth, bootstrap, seed)
    return percentile_interval(np.mean([bootstrap_macro_f1(truth, p, classes=classes, indices=indices, balanced=True)
                                        for p in predictions], axis=0))


TABLE1_F1 = "test bal. macro-F1 [95 % CI]"
TABLE1_PROBE_F1 = "probe test bal. macro-F1 [95 % CI]"
TABLE1_JSD, TABLE1_ECE = "test JSD vs votes", "test ECE"


def table1(rows: pd.DataFrame, average_ci: tuple[float, float], medusa: pd.Series,
           calibration: pd.DataFrame | None = None) -> pd.DataFrame:
    """Display frame: one line per model (the top one by test balanced macro-F1 marked), its linear probe's test
    balanced macro-F1 beside its own, the average (the probes' as a plain mean: their predictions are not paired
    here), and MEDUSA (the soup over all members, from the ensemble's technique table; it has no probe).
    With `calibration` (medusa.scoring.calibration.calibration_table over the members and "MEDUSA"), two columns more:
    the mean JSD of the posteriors from the annotators' votes and the ECE (AVG: their plain means)."""
    top = rows["balanced_macro_f1"].idxmax()
    lines = [{"model": r["model"] + (" (top)" if i == top else ""), "encoders": r["encoders"], "seed": str(r["seed"]),
              TABLE1_F1: cell(r["balanced_macro_f1"], r["ci95_low"], r["ci95_high"]),
              TABLE1_PROBE_F1: cell(r["probe_balanced_macro_f1"], r["probe_ci95_low"], r["probe_ci95_high"]),
              "test macro-F1": cell(r["macro_f1"]), "test accuracy": cell(r["accuracy"]),
              "dev bal. macro-F1": cell(r["dev_balanced_macro_f1"])}
             for i, r in rows.iterrows()]
    lines.append({"model": "AVG", "encoders": f"{len(rows)} models", "seed": "–",
                  TABLE1_F1: cell(rows["balanced_macro_f1"].mean(), *average_ci),
                  TABLE1_PROBE_F1: cell(rows["probe_balanced_macro_f1"].mean()),
                  "test macro-F1": cell(rows["macro_f1"].mean()), "test accuracy": cell(rows["accuracy"].mean()),
                  "dev bal. macro-F1": cell(rows["dev_balanced_macro_f1"].mean())})
    lines.append({"model": "MEDUSA", "encoders": f"meta-classifier soup over {medusa['subset']}", "seed": "–",
                  TABLE1_F1: cell(medusa["balanced_macro_f1"], medusa["balanced_macro_f1_ci95_low"],
                                  medusa["balanced_macro_f1_ci95_high"]),
                  TABLE1_PROBE_F1: "–",
                  "test macro-F1": cell(medusa["macro_f1"]), "test accuracy": cell(medusa["accuracy"]),
                  "dev bal. macro-F1": "–"})
    if calibration is not None:
        systems = [*rows["model"], None, "MEDUSA"]          # None: the AVG line, the members' mean
        members = calibration.reindex(rows["model"])
        for column, key in ((TABLE1_JSD, "jsd_votes"), (TABLE1_ECE, "ece")):
            values = [members[key].mean() if s is None else calibration[key].get(s, np.nan) for s in systems]
            for line, value in zip(lines, values):
                line[column] = cell(value)
    return pd.DataFrame(lines).set_index("model")


# ---------------------------------------------------------------- Table 2: ablations
def table2_view(table: pd.DataFrame) -> pd.DataFrame:
    """medusa.reporting.ablation.table2 laid out like the paper: rows = variants; per configuration bal. F1 [CI], F1 and ACC
    (mean ± std over seeds where there are several), then the same for AVG and Δ (%) [CI] of the average's
    balanced macro-F1."""
    lines = []
    for variant, group in table.groupby("variant", sort=False):
        line = {"variant": variant_title(variant)}
        for r in group.itertuples():
            prefix = "AVG" if r.configuration == "AVG" else r.configuration
            line[f"{prefix} bal. F1"] = cell(r.balanced_macro_f1, r.balanced_macro_f1_ci95_low,
                                             r.balanced_macro_f1_ci95_high, r.balanced_macro_f1_std)
            line[f"{prefix} F1"] = cell(r.macro_f1, std=r.macro_f1_std)
            line[f"{prefix} ACC"] = cell(r.accuracy, std=r.accuracy_std)
        avg = group[group["configuration"] == "AVG"].iloc[0]
        line["Δ (%)"] = ("–" if variant == REFERENCE_VARIANT
                         else cell(avg["delta_pct"], avg["delta_ci95_low"], avg["delta_ci95_high"], digits=2))
        lines.append(line)
    return pd.DataFrame(lines).set_index("variant")


def _count_range(values: pd.Series) -> str:
    """"1,203" when every run used the same count, "1,100-1,203" otherwise."""
    low, high = int(values.min()), int(values.max())
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def train_rows_note(runs: pd.DataFrame) -> list[str]:
    """Table 2's notes: how many training rows each variant used (over its models), from the columns
    train_rows_stage1 / train_rows_stage2_pool of medusa.reporting.ablation.load_runs (each run's metrics.json
    `train_rows`; NaN or a missing column where a run did not record it). Stage 1 trains on every row with a
    target (a one-hot run has none for X/O rows); stage 2 draws its balanced subsets from a pool (none recorded
    when the run has no stage 2)."""
    notes = []
    for variant, group in runs.groupby("variant", sort=False):
        stage1, pool = (group[c].dropna() if c in group else pd.Series(dtype=float)
                        for c in ("train_rows_stage1", "train_rows_stage2_pool"))
        if stage1.empty:
            notes.append(f"{variant_title(variant)}: training rows not recorded (trained before they were).")
            continue
        stage2 = f"stage 2 drew its balanced subsets from {_count_range(pool)}" if len(pool) else "no stage 2"
        notes.append(f"{variant_title(variant)}: stage 1 trained on {_count_range(stage1)} rows; {stage2}.")
    return notes


# ---------------------------------------------------------------- Table 3: ensembles
def table3_view(table: pd.DataFrame) -> pd.DataFrame:
    """medusa.ensemble.meta.technique_table laid out like the paper's Table 3: per subset, bal. F1 [95 % CI], F1 and
    ACC (the single meta-classifier: mean ± std over seeds)."""
    lines = {}
    for r in table.itertuples():
        line = lines.setdefault(r.technique, {"technique": r.technique})
        line[f"{r.subset} bal. F1"] = cell(r.balanced_macro_f1, r.balanced_macro_f1_ci95_low,
                                           r.balanced_macro_f1_ci95_high, r.balanced_macro_f1_std)
        line[f"{r.subset} F1"] = cell(r.macro_f1, std=r.macro_f1_std)
        line[f"{r.subset} ACC"] = cell(r.accuracy, std=r.accuracy_std)
        if "jsd_votes" in table:  # posteriors against the annotators (medusa.ensemble.meta.calibration_columns)
            for name, value in (("JSD", r.jsd_votes), ("ECE", r.ece)):
                line[f"{r.subset} {name}"] = "–" if pd.isna(value) else f"{value:.3f}"
    return pd.DataFrame(list(lines.values())).set_index("technique")


def stage3_notes(records: dict[str, dict]) -> list[str]:
    """Under Table 3: per subset, the form its MEDUSA soup was trained as (medusa.ensemble.meta.Stage3Choice.record, read
    from ensemble.json), the dev clips and classes it learnt from, and the warning for a dev smaller than its
    inputs."""
    notes = []
    for subset, r in records.items():
        form = {"paper": "the paper's linear layer", "voting": "soft voting (kept by cross-validation)",
                "anchored": f"the voting-anchored layer, anchor_l2 {r['anchor_l2']:g}"}[r["form"]]
        how = f", chosen by {r['folds']}-fold cross-validation within dev" if r.get("folds") else ""
        classes = ", ".join(f"{c} {n}" for c, n in r["dev_classes"].items())
        notes.append(f"{subset}: MEDUSA's stage 3 is {form}{how}; trained on {r['dev_rows']} dev clips ({classes}) "
                     f"with {r['n_inputs']} inputs{' — ' + r['warning'] if r.get('warning') else ''}.")
    return notes


def stage3_findings(table3: pd.DataFrame, records: dict[str, dict]) -> list[str]:
    """What stage 3 was on the first subset, and the soup of the paper's form (or of the anchored one) beside
    MEDUSA's and soft voting, by test balanced macro-F1 (beyond the paper: issue #22)."""
    from medusa.ensemble.subsets import OTHER_FORM_SOUP

    subset = table3["subset"].iloc[0]
    rows = table3[table3["subset"] == subset].set_index("technique")["balanced_macro_f1"]
    other = next((t for t in OTHER_FORM_SOUP.values() if t in rows.index), None)
    record = records.get(subset)
    if record is None or other is None:
        return []
    soup, vote = rows["meta-classifier (soup)"], rows["soft voting"]
    return [f"Stage 3 ({subset}) is {record['form']} here, on {record['dev_rows']} dev clips: MEDUSA's soup "
            f"{soup:.3f}, the {other} {rows[other]:.3f}, soft voting {vote:.3f} (test balanced macro-F1) — MEDUSA is "
            f"{'not below' if soup >= vote else 'below'} soft voting."]


# ---------------------------------------------------------------- findings
def _verdict(holds: bool, significant: bool) -> str:
    """`significant`: the 95 % interval excludes no change, on the side the point estimate is on."""
    if holds:
        return "**holds**" if significant else ("**holds in the point estimate, within noise** (the 95 % interval "
                                                "includes no change)")
    return "**does not hold**" if significant else ("**does not hold in the point estimate, within noise** (the 95 % "
                                                    "interval includes no change)")


def ablation_findings(table: pd.DataFrame) -> list[str]:
    """One line per variant (does removing the component lower balanced macro-F1, as the paper says?), judged by
    the paired interval of the change, and one on which matters most."""
    avg = table[(table["configuration"] == "AVG") & (table["variant"] != REFERENCE_VARIANT)].set_index("variant")
    lines = []
    for variant, r in avg.iterrows():
        paper = PAPER_DELTA_PCT.get(variant)
        claim = (f"{variant_title(variant)} lowers balanced macro-F1"
                 + (f" (paper: {paper:+.2f} % macro-F1 on its balanced test sets)" if paper is not None else ""))
        lines.append(f"{claim}: {r['delta_pct']:+.2f} % here [{r['delta_ci95_low']:+.2f}, {r['delta_ci95_high']:+.2f}] "
                     f"— {_verdict(r['delta_pct'] < 0, r['delta_ci95_high'] < 0 or r['delta_ci95_low'] > 0)}.")
    known = [v for v in avg.index if v in PAPER_DELTA_PCT]
    if known:
        worst = avg.loc[known, "delta_pct"].idxmin()
        paper_worst = min(known, key=PAPER_DELTA_PCT.get)
        claim = f"The largest drop comes with {variant_title(paper_worst)} (the paper's most important component)"
        if avg.loc[worst, "delta_pct"] >= 0:  # no variant lowers the score: there is no largest drop to compare
            lines.append(f"{claim}: no variant lowers balanced macro-F1 here — **does not hold**.")
        else:
            lines.append(f"{claim}: here it comes with {variant_title(worst)} ({avg.loc[worst, 'delta_pct']:+.2f} %) — "
                         f"{'**holds**' if worst == paper_worst else '**does not hold**'}.")
    return lines


VOTES = ("majority voting", "soft voting")


def vote_frames(posteriors: dict[str, pd.DataFrame], names: list[str]) -> dict[str, pd.DataFrame]:
    """The two votes over the members `names` on test, as posteriors frames over the members' classes (one-hot
    on the voted class), so that they pair up with other systems in medusa.reporting.ablation.aligned_test_predictions."""
    from medusa.ensemble.voting import majority_vote, posteriors_frame, soft_vote, stack

    test = stack({n: posteriors[n] for n in names}, "test")
    return {name: posteriors_frame(test, "test", np.eye(len(test.classes))[vote(test.probs)])
            for name, vote in zip(VOTES, (majority_vote, soft_vote))}


def ensemble_findings(table3: pd.DataFrame, members: pd.DataFrame, gain_ci: tuple[float, float],
                      vote_ci: tuple[float, float] | None = None) -> list[str]:
    """MEDUSA above the best single model (with the paired interval `gain_ci` of its relative change in balanced
    macro-F1, %), the meta-classifier above the better vote (paired interval `vote_ci` of the soup's change from
    it, where given), and the soup against a single meta-classifier (all members; point estimates: the single
    runs' predictions are not kept)."""
    subset = table3["subset"].iloc[0]
    rows = table3[table3["subset"] == subset].set_index("technique")
    soup, single = rows.loc["meta-classifier (soup)"], rows.loc["meta-classifier (single)"]
    best = members.loc[members["balanced_macro_f1"].idxmax()]
    gain = float(relative_change(soup["balanced_macro_f1"], best["balanced_macro_f1"]))
    vote = rows.loc[list(VOTES), "balanced_macro_f1"].idxmax()
    votes = float(rows.loc[vote, "balanced_macro_f1"])
    above_votes = min(soup["balanced_macro_f1"], single["balanced_macro_f1"]) > votes
    if vote_ci is None:
        vote_verdict = "**holds**" if above_votes else "**does not hold**"
    else:
        vote_gain = float(relative_change(soup["balanced_macro_f1"], votes))
        # judged on the soup, whose paired interval this is (the single runs' predictions are not kept)
        vote_verdict = (f"the soup's change from {vote} {vote_gain:+.2f} % [{vote_ci[0]:+.2f}, {vote_ci[1]:+.2f}] — "
                        + _verdict(vote_gain > 0, vote_ci[0] > 0 or vote_ci[1] < 0))
    return [f"MEDUSA beats the best single model (paper: +{PAPER_MEDUSA_GAIN_PCT} %, {PAPER_MEDUSA_F1:.3f} against "
            f"{PAPER_BEST_SINGLE_F1:.3f}): soup {soup['balanced_macro_f1']:.3f} against {best['model']} "
            f"{best['balanced_macro_f1']:.3f} (balanced macro-F1), {gain:+.2f} % [{gain_ci[0]:+.2f}, {gain_ci[1]:+.2f}] "
            f"— {_verdict(gain > 0, gain_ci[0] > 0 or gain_ci[1] < 0)}.",
            f"The meta-classifier beats voting (paper: 0.472 against 0.439): soup {soup['balanced_macro_f1']:.3f}, "
            f"single {single['balanced_macro_f1']:.3f} ± {single['balanced_macro_f1_std']:.3f}, best vote ({vote}) "
            f"{votes:.3f} — {vote_verdict}.",
            f"With all members the soup is at least as good as a single meta-classifier (paper: 0.472 against "
            f"0.471): {soup['balanced_macro_f1']:.3f} against {single['balanced_macro_f1']:.3f} (point estimates) — "
            f"{'**holds**' if soup['balanced_macro_f1'] >= single['balanced_macro_f1'] else '**does not hold**'}."]


def noise_note(n: int, half_width: float) -> str:
    return (f"Every score here is on {n} test utterances; a balanced macro-F1 interval is about ±{half_width:.2f} "
            "wide, so differences smaller than that, including most of the paper's ablation effects (1-8 % "
            "relative, i.e. 0.005-0.035 absolute), cannot be resolved on this run. Read the verdicts with the "
            "intervals.")


def headline_metrics(rows: pd.DataFrame, table3: pd.DataFrame, ablations: pd.DataFrame,
                     gain_ci: tuple[float, float] | None = None, calibration: pd.DataFrame | None = None) -> dict:
    """reports/metrics/report.json (DVC metrics): MEDUSA's and the best single model's test balanced macro-F1
    with their intervals, plain macro-F1 and accuracy beside them, the average single model, MEDUSA's gain over
    the best single model (with its paired interval where given), and Table 2's changes of balanced macro-F1.
    With `calibration` (medusa.scoring.calibration.calibration_table with a "MEDUSA" row): MEDUSA's mean JSD and Brier
    score against the annotators' votes (null without votes), its ECE, and the test rows with votes."""
    subset = table3["subset"].iloc[0]
    soup = table3[(table3["subset"] == subset) & (table3["technique"] == "meta-classifier (soup)")].iloc[0]
    best = rows.loc[rows["balanced_macro_f1"].idxmax()]
    avg = ablations[(ablations["configuration"] == "AVG") & (ablations["variant"] != REFERENCE_VARIANT)]
    out = {"n_test": int(soup["n"]),
           "medusa_test_balanced_macro_f1": float(soup["balanced_macro_f1"]),
           "medusa_test_balanced_macro_f1_ci95": [float(soup["balanced_macro_f1_ci95_low"]),
                                                  float(soup["balanced_macro_f1_ci95_high"])],
           "medusa_test_macro_f1": float(soup["macro_f1"]), "medusa_test_accuracy": float(soup["accuracy"]),
           "best_single": str(best["model"]), "best_single_test_balanced_macro_f1": float(best["balanced_macro_f1"]),
           "best_single_test_balanced_macro_f1_ci95": [float(best["ci95_low"]), float(best["ci95_high"])],
           "best_single_test_macro_f1": float(best["macro_f1"]), "best_single_test_accuracy": float(best["accuracy"]),
           "average_single_test_balanced_macro_f1": float(rows["balanced_macro_f1"].mean()),
           "average_single_test_macro_f1": float(rows["macro_f1"].mean()),
           "medusa_gain_over_best_single_pct": float(relative_change(soup["balanced_macro_f1"],
                                                                     best["balanced_macro_f1"])),
           "ablation_delta_pct": {v: float(d) for v, d in zip(avg["variant"], avg["delta_pct"])}}
    if gain_ci is not None:
        out["medusa_gain_over_best_single_pct_ci95"] = [float(gain_ci[0]), float(gain_ci[1])]
    if calibration is not None:
        c = calibration.loc["MEDUSA"]
        out.update({"medusa_test_jsd_votes": float(c["jsd_votes"]), "medusa_test_brier_votes": float(c["brier_votes"]),
                    "medusa_test_ece": float(c["ece"]), "n_test_with_votes": int(c["n_votes"])})
    return out


def per_class_scores(posteriors: dict[str, pd.DataFrame], classes: tuple[str, ...] | None = None
                     ) -> dict[str, dict[str, float]]:
    """Per-class test F1 of each system from its posteriors frame, over `classes` (the run's classes; by default
    those the frame's posteriors are over)."""
    from medusa.model.members import predicted_labels
    from medusa.scoring.metrics import per_class_f1

    out = {}
    for name, frame in posteriors.items():
        scored = classes_of(frame) if classes is None else tuple(classes)
        test = frame[(frame["split"] == "test") & frame["label"].isin(scored)]
        out[name] = per_class_f1(test["label"].to_numpy(), predicted_labels(test), scored)
    return out


# ---------------------------------------------------------------- posteriors against the annotators (beyond the paper)
#: Table 2's variant trained on consensus labels instead of vote distributions.
ONE_HOT_VARIANT = "one_hot"
SOFT_VOTING = "soft voting"


def one_hot_pairs(one_hot_models: list[str]) -> dict[str, str]:
    """{system name of each model's one-hot run: its soft-target reference, the member itself}."""
    return {f"{m} {variant_title(ONE_HOT_VARIANT)}": m for m in one_hot_models}


def soft_voting_frame(posteriors: dict[str, pd.DataFrame], names: list[str]) -> pd.DataFrame:
    """Soft voting over the members `names` as a posteriors frame on test: their mean posterior (vote_frames
    keeps only its argmax, one-hot, which says nothing about calibration)."""
    from medusa.ensemble.voting import posteriors_frame, stack

    test = stack({n: posteriors[n] for n in names}, "test")
    return posteriors_frame(test, "test", test.probs.mean(axis=1))


def calibration_systems(posteriors: dict[str, pd.DataFrame], names: list[str], one_hot_models: list[str],
                        root: str | Path = paths.ABLATIONS, models_root: str | Path = paths.MODELS
                        ) -> dict[str, pd.DataFrame]:
    """The calibration table's systems, in its order: every member (`posteriors`, which also holds "MEDUSA"),
    each followed by its one-hot run where `one_hot_models` has one (read from the ablation folders), then any
    ablation model that is not a member (its reference read from `models_root`) with its one-hot run, soft
    voting over the members, and MEDUSA."""
    pairs = {m: name for name, m in one_hot_pairs(one_hot_models).items()}
    read = lambda variant, model: pd.read_parquet(run_dir(variant, model, root, models_root)  # noqa: E731
                                                  / "posteriors.parquet")
    out = {}
    for model in [*names, *(m for m in one_hot_models if m not in names)]:
        out[model] = posteriors[model] if model in posteriors else read(REFERENCE_VARIANT, model)
        if model in pairs:
            out[pairs[model]] = read(ONE_HOT_VARIANT, model)
    out[SOFT_VOTING] = soft_voting_frame(posteriors, names)
    out["MEDUSA"] = posteriors["MEDUSA"]
    return out


def calibration_view(table: pd.DataFrame) -> pd.DataFrame:
    """medusa.scoring.calibration.calibration_table as display strings."""
    return pd.DataFrame({"n": table["n"].map("{:,}".format), "rows with votes": table["n_votes"].map("{:,}".format),
                         "JSD vs votes": table["jsd_votes"].map(cell), "Brier vs votes": table["brier_votes"].map(cell),
                         "ECE": table["ece"].map(cell), "accuracy": table["accuracy"].map(cell),
                         "mean confidence": table["confidence"].map(cell)}, index=table.index)


def calibration_notes(table: pd.DataFrame, bins: int = BINS) -> list[str]:
    """What the calibration columns are computed over (the same rows for every system)."""
    n, voted = int(table["n"].iloc[0]), int(table["n_votes"].iloc[0])
    votes = (f"Scores against the votes (JSD, base 2: 0 = the votes' distribution, 1 = disjoint; Brier where shown): "
             f"over the {voted:,} of the {n:,} scored test utterances with 2 or more annotator votes; the others have "
             "one-hot targets, from which a divergence measures confidence, not agreement with the annotators."
             if voted else
             f"Scores against the votes (JSD, Brier): none of the {n:,} scored test utterances has 2 or more annotator "
             "votes (the corpus gives none), so they are not measured (–).")
    return [votes, f"ECE: top-label expected calibration error over {bins} equal-width confidence bins, accuracy "
                   f"against the consensus label, on all {n:,} scored test utterances."]


def reliability_highlight(best: str, one_hot: dict[str, str]) -> list[str]:
    """The systems the reliability diagram draws bold: MEDUSA, soft voting, the best member, and one one-hot run
    beside its reference (the best member's where it has one, else the first)."""
    pair = next(((o, r) for o, r in one_hot.items() if r == best), next(iter(one_hot.items()), ()))
    return list(dict.fromkeys(["MEDUSA", SOFT_VOTING, best, *pair[::-1]]))


def soft_target_findings(table: pd.DataFrame, one_hot: dict[str, str],
                         change: tuple[float, float, float] | None) -> list[str]:
    """One line: do Table 2's soft-target runs (the members) give posteriors closer to the annotators' votes
    than their one-hot runs? Judged by the mean JSD vs votes, with `change` (medusa.scoring.calibration.divergence_change
    of the references from the one-hot runs: (change, low, high), negative = soft targets closer) as its paired
    interval; the ECE beside it as point estimates. No line without one-hot runs."""
    if not one_hot:
        return []
    soft, hard = table.loc[list(one_hot.values())], table.loc[list(one_hot)]
    runs = f"{len(one_hot)} model{'s' if len(one_hot) > 1 else ''}"
    claim = ("Soft-target training gives posteriors closer to the annotators' votes than one-hot targets (the "
             f"premise of the paper's soft targets, which it does not measure; Table 2's one-hot runs against "
             f"their references, mean over {runs})")
    ece = (f"ECE {soft['ece'].mean():.3f} (soft) against {hard['ece'].mean():.3f} (one-hot), point estimates: "
           f"soft targets {'better' if soft['ece'].mean() < hard['ece'].mean() else 'not better'} calibrated")
    if change is None:
        return [f"{claim}: no scored test utterance has 2 or more annotator votes, so the distance to the votes "
                f"cannot be measured here; {ece}."]
    d, low, high = change
    return [f"{claim}: mean JSD vs votes {soft['jsd_votes'].mean():.3f} (soft) against {hard['jsd_votes'].mean():.3f} "
            f"(one-hot) over {int(soft['n_votes'].iloc[0]):,} test utterances with votes, a change of {d:+.3f} "
            f"[{low:+.3f}, {high:+.3f}] — {_verdict(d < 0, high < 0 or low > 0)}; {ece}."]
