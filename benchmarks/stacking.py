"""Stage 3 with little dev data: the meta-classifier, trained on subsets of dev, against voting (issue #22).

    python benchmarks/stacking.py [--work work] [--params params.yaml] [--sizes 48 100] [--draws 5]
                                  [--skewed 48] [--report reports/benchmarks.md]

On a finished run's members (their stored dev and test posteriors: no member is retrained), stage 3 is trained on
subsets of dev and scored on the whole test split:

* class-stratified subsets of `--sizes` dev clips (each class in dev's proportions), `--draws` seeded draws each;
* class-skewed subsets of `--skewed` clips: class shares halving from class to class in a seeded random order, so
  that one class dominates and the rarest have 2 clips each (the shape of a derived dev split on a corpus whose
  speakers each speak one emotion; a dev set that lacks a class altogether makes the anchored form keep soft
  voting by rule, medusa.ensemble.stage3.choose_stage3, so it is not measured here);
* the whole dev split once.

For each subset, the run's `ensemble` params train MEDUSA as the pipeline does (medusa.ensemble.subsets.run_subset over
every member, the params' seeds; the probes are left out): the voting-anchored soup (its penalty or soft voting
chosen by cross-validation within the subset) and its single meta-classifier (the first seed), the paper's soup,
soft and majority voting, and the best member by the subset's own dev score. Every technique is scored by test balanced macro-F1;
its difference from soft voting gets a paired 95 % interval (class-stratified resamples of the test clips, the
same for every technique and draw, averaged over a condition's draws). The script prints a table, writes the
"## Stage 3 on small dev sets" section of the report (reports/benchmarks/stacking.json, rendered by
benchmarks/report.py), every number to reports/metrics/stacking.json and a figure to
reports/benchmark_figures/stacking.png.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere, installed package or not
if str(REPO / "benchmarks") not in sys.path:  # _common, when this file is imported rather than run
    sys.path.insert(1, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import report  # noqa: E402  benchmarks/report.py: the Markdown
import torch  # noqa: E402
from _common import busy, device_name, load_average  # noqa: E402

from medusa.config.params import load_params  # noqa: E402
from medusa.ensemble.meta import MetaConfig  # noqa: E402
from medusa.ensemble.subsets import SubsetResult, run_subset, top_k_names  # noqa: E402
from medusa.ensemble.voting import stack  # noqa: E402
from medusa.io import write_json  # noqa: E402
from medusa.scoring.metrics import (  # noqa: E402
    balanced_macro_f1,
    bootstrap_macro_f1,
    percentile_interval,
    run_classes,
    stratified_bootstrap_indices,
)

SECTION = "stacking"                # reports/benchmarks/stacking.json
REPORT_SECTION = "## Stage 3 on small dev sets"
#: The rows of the report, in order: technique -> how the table names it.
TECHNIQUES = {"meta-classifier (soup)": "MEDUSA, voting-anchored soup",
              "paper's meta-classifier soup": "paper's stage-3 soup",
              "meta-classifier (single)": "voting-anchored single meta-classifier",
              "soft voting": "soft voting", "majority voting": "majority voting",
              "best member (by dev)": "best member (by the subset's dev)"}
REFERENCE = "soft voting"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=REPO / "work", help="a finished run's work/ folder")
    p.add_argument("--params", type=Path, default=REPO / "params.yaml", help="the run's params (ensemble section)")
    p.add_argument("--sizes", type=int, nargs="*", default=[48, 100], help="class-stratified dev subset sizes")
    p.add_argument("--skewed", type=int, nargs="*", default=[48], help="class-skewed dev subset sizes")
    p.add_argument("--draws", type=int, default=5, help="seeded draws per subset size")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--report", type=Path, default=REPO / "reports" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=REPO / "reports" / "metrics" / "stacking.json")
    p.add_argument("--figure", type=Path, default=REPO / "reports" / "benchmark_figures" / "stacking.png")
    p.add_argument("--describe", default="", help="what the report calls the run (default: the --work path)")
    return p.parse_args(argv)


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of `n` rows whose class shares follow `labels`' (scikit-learn's stratified split; every class keeps
    at least one row where n allows)."""
    from sklearn.model_selection import train_test_split

    if n >= len(labels):
        return np.arange(len(labels))
    rows, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed)
    return np.sort(rows)


def skewed_subset(labels: np.ndarray, n: int, seed: int, floor: int = 2) -> np.ndarray:
    """Indices of `n` rows whose class shares halve from class to class in a seeded random order (1/2, 1/4, ...):
    one class dominates and the rarest have `floor` rows each (0: the rarest have none)."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(labels))
    shares = 0.5 ** np.arange(1, len(classes) + 1)
    wanted = np.maximum(floor, np.floor((n - floor * len(classes)) * shares / shares.sum()).astype(int))
    wanted[0] += n - wanted.sum()
    available = np.array([(labels == c).sum() for c in classes])
    wanted = np.minimum(wanted, available)
    for i in range(len(classes)):  # a class with fewer rows than its share: the next classes in order make up for it
        wanted[i] += min(n - wanted.sum(), available[i] - wanted[i])
    rows = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, wanted) if k]
    return np.sort(np.concatenate(rows))


def restrict_dev(posteriors: dict[str, pd.DataFrame], keep: set[str]) -> dict[str, pd.DataFrame]:
    """The members' posteriors with every dev row outside `keep` moved to a split stage 3 never reads."""
    out = {}
    for name, frame in posteriors.items():
        frame = frame.copy()
        frame.loc[(frame["split"] == "dev") & ~frame["utt_id"].isin(keep), "split"] = "unused dev"
        out[name] = frame
    return out


def run_condition(posteriors, manifest, names, cfg, seeds, grid, folds, dev_ids) -> tuple[dict, SubsetResult]:
    """Stage 3 on the dev clips `dev_ids`: {technique: test predictions (class indices)} and the result."""
    chosen = restrict_dev(posteriors, set(dev_ids))
    result = run_subset(chosen, manifest, names, cfg, seeds, anchor_grid=grid, cv_folds=folds)
    dev = stack(chosen, "dev")
    dev_scores = {m: balanced_macro_f1(dev.labels, np.asarray(dev.classes)[dev.probs[:, i].argmax(1)], dev.classes)
                  for i, m in enumerate(names)}
    best = top_k_names(dev_scores, 1)[0]
    predictions = {t: result.predictions[t] for t in TECHNIQUES if t in result.predictions}
    predictions["best member (by dev)"] = result.test.probs[:, names.index(best)].argmax(1)
    return predictions, result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    load = load_average()
    params = load_params(args.params)
    e = params.ensemble
    if e.stage3 != "anchored":
        raise SystemExit(f"{args.params}: ensemble.stage3 is {e.stage3!r}; this benchmark measures the anchored form "
                         "(set ensemble.stage3: anchored)")
    manifest = pd.read_parquet(args.work / "manifest.parquet")
    names = e.members or list(params.models)
    posteriors = {n: pd.read_parquet(args.work / "models" / n / "posteriors.parquet") for n in names}
    classes = run_classes(manifest)
    cfg = MetaConfig.from_params(e, len(names), include_probes=False)
    dev_all = stack(posteriors, "dev")
    scored = np.isin(dev_all.labels, classes)
    dev_ids, dev_labels = dev_all.utt_ids[scored], dev_all.labels[scored]
    conditions = [(f"stratified {n}", n, d, stratified_subset(dev_labels, n, d))
                  for n in args.sizes for d in range(args.draws)]
    conditions += [(f"skewed {n}", n, d, skewed_subset(dev_labels, n, d)) for n in args.skewed
                   for d in range(args.draws)]
    conditions.append((f"whole dev ({len(dev_ids)})", len(dev_ids), 0, np.arange(len(dev_ids))))

    torch.set_num_threads(1)
    start = time.perf_counter()
    runs = []
    truth = indices = None
    for condition, n, draw, rows in conditions:
        predictions, result = run_condition(posteriors, manifest, names, cfg, e.seeds, e.anchor_l2, e.cv_folds,
                                            dev_ids[rows])
        keep = np.isin(result.test.labels, classes)
        if truth is None:
            truth = result.test.labels[keep]
            indices = stratified_bootstrap_indices(truth, args.bootstrap, 0)
        named = {t: np.asarray(classes)[p][keep] for t, p in predictions.items()}
        curves = {t: bootstrap_macro_f1(truth, p, classes=classes, indices=indices, balanced=True)
                  for t, p in named.items()}
        runs.append({"condition": condition, "dev_clips": int(len(rows)), "draw": draw,
                     "dev_classes": {c: int((dev_labels[rows] == c).sum()) for c in classes},
                     "form": result.stage3.form, "anchor_l2": result.stage3.anchor_l2,
                     "warning": bool(result.stage3.warning),
                     "scores": {t: balanced_macro_f1(truth, p, classes) for t, p in named.items()},
                     "curves": curves})
        print(f"{condition:>22} draw {draw}: form {result.stage3.form:8} "
              + " ".join(f"{t.split(' (')[0][:12]}={s:.3f}" for t, s in runs[-1]["scores"].items()), flush=True)
    wall = time.perf_counter() - start
    summary = summarise(runs)
    out = {"work": args.describe or str(args.work), "params": str(args.params), "members": names, "classes": list(classes),
           "test_clips": int(len(truth)), "bootstrap": args.bootstrap, "wall_s": wall, "load_before": load,
           "device": device_name(torch.device("cpu")), "ensemble": e.model_dump(), "summary": summary,
           "runs": [{k: v for k, v in r.items() if k != "curves"} for r in runs]}
    write_json(out, args.json)
    figure(summary, args.figure)
    report.publish(report_section(out, sys.argv[1:] if argv is None else argv, busy(load)), SECTION, args.report)
    print(f"{wall:.0f} s; wrote {args.json}, {args.figure} and the '{REPORT_SECTION[3:]}' section of {args.report}")
    return out


def summarise(runs: list[dict]) -> list[dict]:
    """Per condition and technique: the mean test balanced macro-F1 over draws (and its std), the mean difference
    from soft voting with the paired 95 % interval of that mean (resamples shared by draws), and how often the
    anchored form fell back to soft voting."""
    rows = []
    for condition in dict.fromkeys(r["condition"] for r in runs):
        group = [r for r in runs if r["condition"] == condition]
        reference = np.mean([r["curves"][REFERENCE] for r in group], axis=0)
        for technique in TECHNIQUES:
            if technique not in group[0]["scores"]:
                continue
            values = [r["scores"][technique] for r in group]
            diff = np.mean([r["curves"][technique] for r in group], axis=0) - reference
            low, high = percentile_interval(diff)
            rows.append({"condition": condition, "dev_clips": group[0]["dev_clips"], "draws": len(group),
                         "technique": technique, "balanced_macro_f1": float(np.mean(values)),
                         "balanced_macro_f1_std": float(np.std(values)),
                         "minus_soft_voting": float(np.mean(values) - np.mean([r["scores"][REFERENCE] for r in group])),
                         "minus_soft_voting_ci95": [low, high],
                         "fell_back_to_voting": sum(r["form"] == "voting" for r in group)})
    return rows


def figure(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(summary)
    conditions = list(dict.fromkeys(frame["condition"]))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for k, (technique, label) in enumerate(TECHNIQUES.items()):
        part = frame[frame["technique"] == technique].set_index("condition").reindex(conditions)
        x = np.arange(len(conditions)) + (k - len(TECHNIQUES) / 2) * 0.1
        ax.errorbar(x, part["balanced_macro_f1"], yerr=part["balanced_macro_f1_std"], fmt="o", capsize=3,
                    label=label, lw=2 if technique == "meta-classifier (soup)" else 1)
    ax.set_xticks(np.arange(len(conditions)), conditions)
    ax.set_ylabel("test balanced macro-F1 (mean ± std over draws)")
    ax.set_title("Stage 3 trained on subsets of dev, scored on the whole test split")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_section(out: dict, argv: list[str] | None, machine: str) -> report.Doc:
    """The section as a document (benchmarks/report.py renders it)."""
    frame = pd.DataFrame(out["summary"])
    rows = []
    for condition in dict.fromkeys(frame["condition"]):
        part = frame[frame["condition"] == condition].set_index("technique")
        cells = []
        for technique in TECHNIQUES:
            r = part.loc[technique]
            text = f"{r['balanced_macro_f1']:.3f} ± {r['balanced_macro_f1_std']:.3f}"
            if technique != REFERENCE:
                low, high = r["minus_soft_voting_ci95"]
                text += f"<br>Δ {r['minus_soft_voting']:+.3f} [{low:+.3f}, {high:+.3f}]"
            cells.append(text)
        first = part.iloc[0]
        rows.append([condition, first["dev_clips"], first["draws"], *cells,
                     f"{first['fell_back_to_voting']}/{first['draws']}"])
    e = out["ensemble"]
    return report.doc(REPORT_SECTION[3:], [
        report.text(
            f"`{shlex.join(['python', 'benchmarks/stacking.py', *(argv or [])])}`"
            f" on the members of {out['work']} ({', '.join(out['members'])}), {out['test_clips']} scored test "
            f"clips, classes {' '.join(out['classes'])}; {out['wall_s']:.0f} s on {out['device']} ({machine}). "
            f"Stage 3 as `ensemble` in {Path(out['params']).name} says (stage3 {e['stage3']}, anchor_l2 "
            f"{e['anchor_l2']}, {e['cv_folds']} folds, {e['epochs']} epochs at lr {e['lr']}, seeds {e['seeds']}), "
            "probes left out. Each cell: test balanced macro-F1, mean ± std over the condition's draws; Δ: the mean "
            "difference from soft voting with its paired 95 % interval; \"voting\": the draws where "
            "cross-validation kept the anchored layer at soft voting."),
        report.table(["dev subset", "clips", "draws", *TECHNIQUES.values(), "voting"],
                     "lrr" + "l" * len(TECHNIQUES) + "r", rows),
        report.figure("stage 3 on small dev sets", "benchmark_figures/stacking.png")])


if __name__ == "__main__":
    main()
