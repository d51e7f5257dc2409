"""The summary report (notebook 06_ablations): the paper's Tables 1-3 on this run's data, with 95 % bootstrap
intervals, written as Markdown, CSV and LaTeX, and the findings: which of the paper's claims hold here.

Every table is built as one frame of display strings (numbers rounded once, here) and each writer lays out that
same frame, so the three formats carry the same numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medusa import paths
from medusa.ablation import PAPER_DELTA_PCT, variant_title
from medusa.labels import CODES
from medusa.metrics import bootstrap_indices, bootstrap_macro_f1, percentile_interval, relative_change
from medusa.params import REFERENCE_VARIANT

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


def write_table(table: pd.DataFrame, stem: str, caption: str, root: str | Path = paths.TABLES) -> dict[str, Path]:
    """Write a frame of display strings as root/stem.md (caption, then a pipe table), .csv and .tex (a booktabs
    tabular with the caption as a comment); atomically. Returns {format: path}."""
    from medusa.io import atomic_path

    table = table.astype(str)
    root = Path(root)
    # disable_numparse: tabulate would otherwise reprint "0.430" as "0.43"
    texts = {"md": f"{caption}\n\n{table.to_markdown(disable_numparse=True)}\n",
             "csv": table.to_csv(),
             "tex": f"% {caption}\n" + table.style.to_latex(hrules=True, column_format="l" + "r" * table.shape[1])}
    out = {}
    for fmt in TABLE_FORMATS:
        out[fmt] = root / f"{stem}.{fmt}"
        with atomic_path(out[fmt]) as tmp:
            tmp.write_text(texts[fmt], encoding="utf-8")
    return out


# ---------------------------------------------------------------- Table 1: every model, the average, MEDUSA
def member_rows(names: list[str], models: dict, models_root: str | Path = paths.MODELS) -> pd.DataFrame:
    """Each member's encoders, seed and test scores (from its metrics.json)."""
    rows = []
    for name in names:
        m = json.loads((Path(models_root) / name / "metrics.json").read_text())
        rows.append({"model": name, "encoders": " + ".join(models[name]["encoders"]), "seed": models[name]["seed"],
                     "macro_f1": m["test"]["macro_f1"], "ci95_low": m["test"]["macro_f1_ci95"][0],
                     "ci95_high": m["test"]["macro_f1_ci95"][1], "accuracy": m["test"]["accuracy"],
                     "dev_balanced_macro_f1": m["dev_balanced_macro_f1"]})
    return pd.DataFrame(rows)


def paired_change(truth: np.ndarray, system: np.ndarray, reference: np.ndarray, bootstrap: int, seed: int
                  ) -> tuple[float, float]:
    """95 % interval of the relative macro-F1 change (%) of `system` from `reference`, both scored on each
    resample of the same utterances."""
    indices = bootstrap_indices(len(truth), bootstrap, seed)
    return percentile_interval(relative_change(bootstrap_macro_f1(truth, system, indices=indices),
                                               bootstrap_macro_f1(truth, reference, indices=indices)))


def mean_interval(truth: np.ndarray, predictions: list[np.ndarray], bootstrap: int, seed: int) -> tuple[float, float]:
    """95 % interval of the mean macro-F1 of several systems scored on the same utterances (paired resamples)."""
    indices = bootstrap_indices(len(truth), bootstrap, seed)
    return percentile_interval(np.mean([bootstrap_macro_f1(truth, p, indices=indices) for p in predictions], axis=0))


def table1(rows: pd.DataFrame, average_ci: tuple[float, float], medusa: pd.Series) -> pd.DataFrame:
    """Display frame: one line per model (the top one marked), the average, and MEDUSA (the soup over all
    members, from the ensemble's technique table)."""
    top = rows["macro_f1"].idxmax()
    lines = [{"model": r["model"] + (" (top)" if i == top else ""), "encoders": r["encoders"], "seed": str(r["seed"]),
              "test macro-F1 [95 % CI]": cell(r["macro_f1"], r["ci95_low"], r["ci95_high"]),
              "test accuracy": cell(r["accuracy"]), "dev balanced macro-F1": cell(r["dev_balanced_macro_f1"])}
             for i, r in rows.iterrows()]
    lines.append({"model": "AVG", "encoders": f"{len(rows)} models", "seed": "–",
                  "test macro-F1 [95 % CI]": cell(rows["macro_f1"].mean(), *average_ci),
                  "test accuracy": cell(rows["accuracy"].mean()), "dev balanced macro-F1": cell(rows["dev_balanced_macro_f1"].mean())})
    lines.append({"model": "MEDUSA", "encoders": f"meta-classifier soup over {medusa['subset']}", "seed": "–",
                  "test macro-F1 [95 % CI]": cell(medusa["macro_f1"], medusa["macro_f1_ci95_low"], medusa["macro_f1_ci95_high"]),
                  "test accuracy": cell(medusa["accuracy"]), "dev balanced macro-F1": "–"})
    return pd.DataFrame(lines).set_index("model")


# ---------------------------------------------------------------- Table 2: ablations
def table2_view(table: pd.DataFrame) -> pd.DataFrame:
    """medusa.ablation.table2 laid out like the paper: rows = variants; per configuration F1 [CI] and ACC
    (mean ± std over seeds where there are several), then AVG F1 [CI], AVG ACC and Δ (%) [CI] of the average."""
    lines = []
    for variant, group in table.groupby("variant", sort=False):
        line = {"variant": variant_title(variant)}
        for r in group.itertuples():
            prefix = "AVG" if r.configuration == "AVG" else r.configuration
            line[f"{prefix} F1"] = cell(r.macro_f1, r.ci95_low, r.ci95_high, r.macro_f1_std)
            line[f"{prefix} ACC"] = cell(r.accuracy, std=r.accuracy_std)
        avg = group[group["configuration"] == "AVG"].iloc[0]
        line["Δ (%)"] = ("–" if variant == REFERENCE_VARIANT
                         else cell(avg["delta_pct"], avg["delta_ci95_low"], avg["delta_ci95_high"], digits=2))
        lines.append(line)
    return pd.DataFrame(lines).set_index("variant")


# ---------------------------------------------------------------- Table 3: ensembles
def table3_view(table: pd.DataFrame) -> pd.DataFrame:
    """medusa.ensemble.technique_table laid out like the paper's Table 3, every macro-F1 with its interval
    (the single meta-classifier: mean ± std over seeds)."""
    lines = {}
    for r in table.itertuples():
        line = lines.setdefault(r.technique, {"technique": r.technique})
        line[f"{r.subset} F1"] = cell(r.macro_f1, r.macro_f1_ci95_low, r.macro_f1_ci95_high, r.macro_f1_std)
        line[f"{r.subset} ACC"] = cell(r.accuracy, std=r.accuracy_std)
    return pd.DataFrame(list(lines.values())).set_index("technique")


# ---------------------------------------------------------------- findings
def _verdict(holds: bool, significant: bool) -> str:
    """`significant`: the 95 % interval excludes no change, on the side the point estimate is on."""
    if holds:
        return "**holds**" if significant else ("**holds in the point estimate, within noise** (the 95 % interval "
                                                "includes no change)")
    return "**does not hold**" if significant else ("**does not hold in the point estimate, within noise** (the 95 % "
                                                    "interval includes no change)")


def ablation_findings(table: pd.DataFrame) -> list[str]:
    """One line per variant (does removing the component hurt, as the paper says?) and one on which matters most."""
    avg = table[(table["configuration"] == "AVG") & (table["variant"] != REFERENCE_VARIANT)].set_index("variant")
    lines = []
    for variant, r in avg.iterrows():
        paper = PAPER_DELTA_PCT.get(variant)
        claim = f"{variant_title(variant)} lowers macro-F1" + (f" (paper: {paper:+.2f} %)" if paper is not None else "")
        lines.append(f"{claim}: {r['delta_pct']:+.2f} % here [{r['delta_ci95_low']:+.2f}, {r['delta_ci95_high']:+.2f}] "
                     f"— {_verdict(r['delta_pct'] < 0, r['delta_ci95_high'] < 0 or r['delta_ci95_low'] > 0)}.")
    known = [v for v in avg.index if v in PAPER_DELTA_PCT]
    if known:
        worst = avg.loc[known, "delta_pct"].idxmin()
        paper_worst = min(known, key=PAPER_DELTA_PCT.get)
        lines.append(f"The largest drop comes with {variant_title(paper_worst)} (the paper's most important component): "
                     f"here it comes with {variant_title(worst)} ({avg.loc[worst, 'delta_pct']:+.2f} %) — "
                     f"{'**holds**' if worst == paper_worst else '**does not hold**'}.")
    return lines


def ensemble_findings(table3: pd.DataFrame, members: pd.DataFrame, gain_ci: tuple[float, float]) -> list[str]:
    """MEDUSA above the best single model (with the paired interval `gain_ci` of its relative change, %),
    the meta-classifier above voting, and the soup against a single meta-classifier (all members)."""
    subset = table3["subset"].iloc[0]
    rows = table3[table3["subset"] == subset].set_index("technique")
    soup, single = rows.loc["meta-classifier (soup)"], rows.loc["meta-classifier (single)"]
    best = members.loc[members["macro_f1"].idxmax()]
    gain = float(relative_change(soup["macro_f1"], best["macro_f1"]))
    votes = rows.loc[["majority voting", "soft voting"], "macro_f1"].max()
    return [f"MEDUSA beats the best single model (paper: +{PAPER_MEDUSA_GAIN_PCT} %, {PAPER_MEDUSA_F1:.3f} against "
            f"{PAPER_BEST_SINGLE_F1:.3f}): soup {soup['macro_f1']:.3f} against {best['model']} {best['macro_f1']:.3f}, "
            f"{gain:+.2f} % [{gain_ci[0]:+.2f}, {gain_ci[1]:+.2f}] — {_verdict(gain > 0, gain_ci[0] > 0 or gain_ci[1] < 0)}.",
            f"The meta-classifier beats voting (paper: 0.472 against 0.439): soup {soup['macro_f1']:.3f}, single "
            f"{single['macro_f1']:.3f} ± {single['macro_f1_std']:.3f}, best vote {votes:.3f} — "
            f"{'**holds**' if min(soup['macro_f1'], single['macro_f1']) > votes else '**does not hold**'}.",
            f"With all members the soup is at least as good as a single meta-classifier (paper: 0.472 against "
            f"0.471): {soup['macro_f1']:.3f} against {single['macro_f1']:.3f} — "
            f"{'**holds**' if soup['macro_f1'] >= single['macro_f1'] else '**does not hold**'}."]


def noise_note(n: int, half_width: float) -> str:
    return (f"Every score here is on {n} test utterances; a macro-F1 interval is about ±{half_width:.2f} wide, so "
            "differences of a few points, including most of the paper's ablation effects (1-8 % relative, i.e. "
            "0.005-0.035 absolute), cannot be resolved on this run. Read the verdicts with the intervals.")


def headline_metrics(rows: pd.DataFrame, table3: pd.DataFrame, ablations: pd.DataFrame) -> dict:
    """reports/metrics/report.json: MEDUSA and best single test macro-F1, the Table 2 changes (DVC metrics)."""
    subset = table3["subset"].iloc[0]
    soup = table3[(table3["subset"] == subset) & (table3["technique"] == "meta-classifier (soup)")].iloc[0]
    best = rows.loc[rows["macro_f1"].idxmax()]
    avg = ablations[(ablations["configuration"] == "AVG") & (ablations["variant"] != REFERENCE_VARIANT)]
    return {"medusa_test_macro_f1": float(soup["macro_f1"]),
            "medusa_test_macro_f1_ci95": [float(soup["macro_f1_ci95_low"]), float(soup["macro_f1_ci95_high"])],
            "best_single": str(best["model"]), "best_single_test_macro_f1": float(best["macro_f1"]),
            "average_single_test_macro_f1": float(rows["macro_f1"].mean()),
            "ablation_delta_pct": {v: float(d) for v, d in zip(avg["variant"], avg["delta_pct"])}}


def per_class_scores(posteriors: dict[str, pd.DataFrame]) -> dict[str, dict[str, float]]:
    """Per-class test F1 of each system from its posteriors frame."""
    from medusa.members import predicted_labels
    from medusa.metrics import per_class_f1

    out = {}
    for name, frame in posteriors.items():
        test = frame[(frame["split"] == "test") & frame["label"].isin(CODES)]
        out[name] = per_class_f1(test["label"].to_numpy(), predicted_labels(test))
    return out
