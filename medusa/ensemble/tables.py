"""Table 3 and the ensemble stage's summaries: techniques per subset with intervals, calibration columns, headline sentences."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medusa.ensemble.meta import MetaClassifier, input_names, meta_predict
from medusa.ensemble.subsets import BEST_PROBE, OTHER_FORM_SOUP, OTHER_PROBES_SOUP, SubsetResult
from medusa.ensemble.voting import posteriors_frame
from medusa.labels import target_columns
from medusa.scoring.metrics import (
    accuracy,
    balanced_macro_f1,
    bootstrap_macro_f1,
    macro_f1,
    percentile_interval,
    stratified_bootstrap_indices,
)


def technique_probabilities(result: SubsetResult) -> dict[str, list[np.ndarray]]:
    """{technique: its (N, C) test posteriors, one array per run} for the techniques of Table 3 that have posteriors
    (majority voting has none): soft voting is the members' mean posterior, the single meta-classifier one array
    per seed."""
    test = result.test
    out = {"soft voting": [test.probs.mean(1)],
           "meta-classifier (single)": [meta_predict(run, test)[0] for run in result.runs],
           "meta-classifier (soup)": [meta_predict(result.soup, test)[0]]}
    for model, names in ((result.other_form_soup, OTHER_FORM_SOUP.values()),
                         (result.other_soup, OTHER_PROBES_SOUP.values())):
        technique = next((t for t in names if t in result.predictions), None)
        if model is not None and technique is not None:
            out[technique] = [meta_predict(model, test)[0]]
    if result.best_probe is not None:
        out[BEST_PROBE] = [test.probe_probs[:, result.members.index(result.best_probe)]]
    return out



def calibration_columns(results: dict[str, SubsetResult], manifest: pd.DataFrame) -> pd.DataFrame:
    """(technique, subset, jsd_votes, ece): Table 3's posteriors against the annotators on test (beyond the paper;
    medusa.scoring.calibration.calibration_table): mean JSD from the vote distributions and expected calibration error,
    the single meta-classifier's as the mean over its seeds."""
    from medusa.scoring.calibration import calibration_table

    rows = []
    for subset, r in results.items():
        for technique, runs in technique_probabilities(r).items():
            frames = {f"run {i}": posteriors_frame(r.test, "test", probs) for i, probs in enumerate(runs)}
            scores = calibration_table(frames, manifest)
            rows.append({"technique": technique, "subset": subset, "jsd_votes": float(scores["jsd_votes"].mean()),
                         "ece": float(scores["ece"].mean())})
    return pd.DataFrame(rows, columns=["technique", "subset", "jsd_votes", "ece"])



def stage3_table(results: dict[str, SubsetResult]) -> pd.DataFrame:
    """Per subset: the stage-3 form its soup was trained as, the penalty, the folds that chose it, the dev clips and
    classes it learnt from, its inputs, and the warning when dev holds fewer clips than inputs."""
    rows = []
    for subset, r in results.items():
        c = r.stage3
        rows.append({"subset": subset, "form": c.form, "anchor_l2": c.anchor_l2 if c.form == "anchored" else None,
                     "cv_folds": c.folds or None, "dev_clips": c.dev_rows,
                     "dev_classes": " ".join(f"{k}:{n}" for k, n in c.dev_classes.items()), "inputs": c.n_inputs,
                     "warning": ", ".join(w for w, bad in (
                         ("fewer dev clips than inputs", c.dev_rows < c.n_inputs),
                         ("classes without dev clips", not all(c.dev_classes.values()))) if bad)})
    return pd.DataFrame(rows).set_index("subset")



def technique_table(results: dict[str, SubsetResult], bootstrap: int, seed: int) -> pd.DataFrame:
    """Table 3's analogue: one row per (technique, subset), scored on the test utterances whose consensus is one
    of the run's classes: balanced macro-F1 (the headline) and macro-F1, each with a 95 % class-stratified
    bootstrap interval (the same resamples for every technique of a subset), and accuracy. The single
    meta-classifier is the mean over seeds, with its std (`*_std`); its interval is that of the mean."""
    rows = []
    for subset, r in results.items():
        keep = np.isin(r.test.labels, r.classes)
        truth = r.test.labels[keep]
        named = lambda idx: np.asarray(r.classes)[idx][keep]  # noqa: E731
        indices = stratified_bootstrap_indices(truth, bootstrap, seed)
        for technique, idx in r.predictions.items():
            runs = [named(run) for run in (r.single_runs if technique == "meta-classifier (single)" else [idx])]
            several = len(runs) > 1
            row = {"technique": technique, "subset": subset, "n": int(len(truth))}
            for key, score, balanced in (("balanced_macro_f1", balanced_macro_f1, True),
                                         ("macro_f1", macro_f1, False)):
                values = [score(truth, run, r.classes) for run in runs]
                low, high = percentile_interval(np.mean(
                    [bootstrap_macro_f1(truth, run, classes=r.classes, indices=indices, balanced=balanced)
                     for run in runs], axis=0))
                row.update({key: float(np.mean(values)), f"{key}_std": float(np.std(values)) if several else np.nan,
                            f"{key}_ci95_low": low, f"{key}_ci95_high": high})
            accs = [accuracy(truth, run, r.classes) for run in runs]
            row.update({"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)) if several else np.nan})
            rows.append(row)
    return pd.DataFrame(rows)



def member_class_weights(meta: MetaClassifier, members: list[str]) -> pd.DataFrame:
    """For a linear meta-classifier: the weight from member m's posterior of class c to the logit of class c
    (rows: members, then, with include_probes, "<member> (probe)" for their probes; columns: classes) -- how much
    each member (and probe) is trusted for each class."""
    if meta.cfg.hidden:
        raise ValueError("per-member weights are defined for the linear meta-classifier (hidden: 0) only")
    classes = meta.cfg.classes
    w = meta.net.weight.detach().numpy()[:len(classes)]
    column = {name: i for i, name in enumerate(input_names(meta.cfg, members))}
    sources = [(m, f"{m} ") for m in members]
    if meta.cfg.include_probes:
        sources += [(f"{m} (probe)", f"{m} probe ") for m in members]
    diag = [[w[k, column[prefix + c]] for k, c in enumerate(target_columns(classes))] for _, prefix in sources]
    return pd.DataFrame(np.asarray(diag), index=[row for row, _ in sources], columns=list(classes))



def headline(table: pd.DataFrame, members: pd.DataFrame, subset: str) -> dict[str, Any]:
    """MEDUSA (the soup over `subset`) against the best single member on test and the two votes, by balanced
    macro-F1 (with plain macro-F1 and accuracy beside it)."""
    row = lambda technique: table[(table["technique"] == technique) & (table["subset"] == subset)].iloc[0]  # noqa: E731
    best = members["test_balanced_macro_f1"].idxmax()
    medusa, single = row("meta-classifier (soup)"), row("meta-classifier (single)")
    return {"subset": subset, "n": int(medusa["n"]),
            "medusa_test_balanced_macro_f1": float(medusa["balanced_macro_f1"]),
            "medusa_test_balanced_macro_f1_ci95": [float(medusa["balanced_macro_f1_ci95_low"]),
                                                   float(medusa["balanced_macro_f1_ci95_high"])],
            "medusa_test_macro_f1": float(medusa["macro_f1"]), "medusa_test_accuracy": float(medusa["accuracy"]),
            "majority_voting_test_balanced_macro_f1": float(row("majority voting")["balanced_macro_f1"]),
            "soft_voting_test_balanced_macro_f1": float(row("soft voting")["balanced_macro_f1"]),
            "meta_single_test_balanced_macro_f1_mean": float(single["balanced_macro_f1"]),
            "meta_single_test_balanced_macro_f1_std": float(single["balanced_macro_f1_std"]),
            "best_single": best,
            "best_single_test_balanced_macro_f1": float(members.loc[best, "test_balanced_macro_f1"]),
            "best_single_test_macro_f1": float(members.loc[best, "test_macro_f1"]),
            "relative_gain_pct": float(100 * (medusa["balanced_macro_f1"] / members.loc[best, "test_balanced_macro_f1"]
                                              - 1))}



def table3_view(table: pd.DataFrame) -> pd.DataFrame:
    """technique_table laid out like the paper's Table 3: rows = technique, columns = (subset, bal. F1 [95 % CI] |
    F1 | ACC); the single meta-classifier's cells read "mean ± std" over seeds."""
    def cell(value: float, std: float, low: float | None = None, high: float | None = None) -> str:
        text = f"{value:.3f}" if np.isnan(std) else f"{value:.3f} ± {std:.3f}"
        return text if low is None else f"{text} [{low:.3f}, {high:.3f}]"

    # with calibration_columns merged in: JSD vs votes and ECE beside the scores ("–": no posteriors)
    extra = {"JSD": "jsd_votes", "ECE": "ece"} if "jsd_votes" in table else {}
    view = table.assign(**{
        "bal. F1": [cell(*v) for v in zip(table["balanced_macro_f1"], table["balanced_macro_f1_std"],
                                          table["balanced_macro_f1_ci95_low"], table["balanced_macro_f1_ci95_high"])],
        "F1": [cell(v, s) for v, s in zip(table["macro_f1"], table["macro_f1_std"])],
        "ACC": [cell(v, s) for v, s in zip(table["accuracy"], table["accuracy_std"])],
        **{name: ["–" if np.isnan(v) else f"{v:.3f}" for v in table[column]] for name, column in extra.items()}})
    order = list(dict.fromkeys(table["technique"]))
    metrics = ["bal. F1", "F1", "ACC", *extra]
    wide = view.pivot(index="technique", columns="subset", values=metrics).swaplevel(axis=1)
    return wide.reindex(index=order, columns=[(s, m) for s in dict.fromkeys(table["subset"]) for m in metrics])



def headline_sentence(summary: dict) -> str:
    """What the numbers of `headline` say, in words (the paper's claim: meta > voting, MEDUSA > best single)."""
    medusa, best = summary["medusa_test_balanced_macro_f1"], summary["best_single_test_balanced_macro_f1"]
    low, high = summary["medusa_test_balanced_macro_f1_ci95"]
    votes = max(summary["majority_voting_test_balanced_macro_f1"], summary["soft_voting_test_balanced_macro_f1"])
    return (f"MEDUSA (meta-classifier soup over {summary['subset']}) reaches test balanced macro-F1 {medusa:.3f} "
            f"[{low:.3f}, {high:.3f}] (macro-F1 {summary['medusa_test_macro_f1']:.3f}, accuracy "
            f"{summary['medusa_test_accuracy']:.3f}), {summary['relative_gain_pct']:+.1f} % relative to the best single "
            f"member ({summary['best_single']}, {best:.3f}; the paper: +7.23 %). The better vote reaches {votes:.3f}, "
            f"so the meta-classifier is {'above' if medusa > votes else 'not above'} voting here (the paper: above). "
            f"The single meta-classifiers average {summary['meta_single_test_balanced_macro_f1_mean']:.3f} ± "
            f"{summary['meta_single_test_balanced_macro_f1_std']:.3f}. On {summary['n']} test utterances the 95 % "
            f"interval is ±{(high - low) / 2:.3f} wide: differences smaller than that are within noise here.")



def probes_summary(table: pd.DataFrame, result: SubsetResult, subset: str) -> dict[str, Any]:
    """MEDUSA (the soup over `subset`) with and without the members' probe posteriors in, and the best probe by
    dev, on test (balanced macro-F1 with its interval). One of the two soups is the main result (`include_probes`,
    the param), the other is Table 3's OTHER_PROBES_SOUP row; `result` (of `subset`) must have read the probes."""
    if result.best_probe is None:
        raise ValueError(f"subset {subset!r} was run without the members' probe posteriors (run_subset(probes=...))")
    on = result.soup.cfg.include_probes

    def scores(technique: str) -> tuple[float, list[float]]:
        r = table[(table["technique"] == technique) & (table["subset"] == subset)].iloc[0]
        return float(r["balanced_macro_f1"]), [float(r["balanced_macro_f1_ci95_low"]),
                                               float(r["balanced_macro_f1_ci95_high"])]

    main, other = scores("meta-classifier (soup)"), scores(OTHER_PROBES_SOUP[on])
    (with_f1, with_ci), (without_f1, without_ci) = (main, other) if on else (other, main)
    probe_f1, probe_ci = scores(BEST_PROBE)
    return {"subset": subset, "include_probes": on,
            "with_probes_test_balanced_macro_f1": with_f1, "with_probes_test_balanced_macro_f1_ci95": with_ci,
            "without_probes_test_balanced_macro_f1": without_f1,
            "without_probes_test_balanced_macro_f1_ci95": without_ci,
            "best_probe": result.best_probe,
            "best_probe_dev_balanced_macro_f1": float(result.probe_dev_scores[result.best_probe]),
            "best_probe_test_balanced_macro_f1": probe_f1, "best_probe_test_balanced_macro_f1_ci95": probe_ci}



def probes_sentence(summary: dict) -> str:
    """What probes_summary says, in words: MEDUSA with against without the probes, and against the best probe."""
    with_f1 = summary["with_probes_test_balanced_macro_f1"]
    without_f1 = summary["without_probes_test_balanced_macro_f1"]
    probe_f1 = summary["best_probe_test_balanced_macro_f1"]
    low, high = summary["with_probes_test_balanced_macro_f1_ci95"]
    half = (high - low) / 2
    gain, over_probe = with_f1 - without_f1, with_f1 - probe_f1
    ci = lambda key: "[{:.3f}, {:.3f}]".format(*summary[key])  # noqa: E731
    where = lambda d: "above" if d > 0 else "below" if d < 0 else "level with"  # noqa: E731
    on = summary["include_probes"]
    return (f"MEDUSA here (soup over {summary['subset']}) is the soup {'with' if on else 'without'} the members' "
            f"probe posteriors in (`ensemble.include_probes: {str(on).lower()}`). With them it reaches test balanced "
            f"macro-F1 {with_f1:.3f} {ci('with_probes_test_balanced_macro_f1_ci95')}, without them {without_f1:.3f} "
            f"{ci('without_probes_test_balanced_macro_f1_ci95')} (same dev rows and seeds): the probes move it by "
            f"{gain:+.3f}, {'within' if abs(gain) <= half else 'beyond'} the ±{half:.3f} half-width of the "
            f"with-probes soup's 95 % interval. The best probe by dev ({summary['best_probe']}, dev "
            f"{summary['best_probe_dev_balanced_macro_f1']:.3f}) reaches {probe_f1:.3f} "
            f"{ci('best_probe_test_balanced_macro_f1_ci95')} on test; the soup with probes is {where(over_probe)} it "
            f"({over_probe:+.3f}).")

