"""The ensemble's tables: Table 3's techniques with balanced macro-F1 and intervals, the members and the headline,
and the techniques' calibration against the votes."""
import json

import numpy as np
import pandas as pd
import pytest
from ensemble_data import _manifest, _posteriors
from meta_config import meta_config

from medusa.ensemble.subsets import SubsetResult, member_table, run_subset, subsets
from medusa.ensemble.tables import calibration_columns, headline, headline_sentence, table3_view, technique_table
from medusa.ensemble.voting import Stacked, stack
from medusa.labels import CODES, SOFT_TARGET_COLUMNS
from medusa.scoring.metrics import (
    balanced_macro_f1,
    bootstrap_macro_f1,
    percentile_interval,
    stratified_bootstrap_indices,
)


def _subset_result(truth: np.ndarray, predictions: dict[str, np.ndarray], singles: list[np.ndarray],
                   classes: tuple[str, ...]) -> SubsetResult:
    n = len(truth)
    test = Stacked(np.asarray([f"u{i}" for i in range(n)]), np.zeros((n, 1, len(classes)), np.float32),
                            np.zeros((n, 1, 3), np.float32), truth, classes=classes)
    return SubsetResult(["m"], predictions, singles, None, [], test, np.asarray([]), classes)


def test_technique_table_leads_with_balanced_macro_f1_over_the_run_classes():
    rng = np.random.default_rng(3)
    truth = np.asarray(list("N" * 60 + "A" * 25 + "S" * 10 + "X" * 5 + "F" * 3))
    classes = ("A", "S", "N")                     # the run's: F is not one of them, so not scored, nor is X
    # predictions are indices into the run's classes (a 3-class system cannot predict X or F: N stands in there)
    idx = lambda labels: np.asarray([classes.index(c) if c in classes else 2 for c in labels])  # noqa: E731
    noisy = [np.where(rng.random(len(truth)) < 0.7, truth, rng.choice(list("NAS"), len(truth))) for _ in range(3)]
    preds = {"majority voting": idx(np.full(len(truth), "N")), "soft voting": idx(noisy[0]),
             "meta-classifier (single)": idx(noisy[1]), "meta-classifier (soup)": idx(noisy[2])}
    table = technique_table({"all": _subset_result(truth, preds, [idx(noisy[1]), idx(noisy[0])], classes)},
                                     bootstrap=300, seed=2).set_index("technique")
    scored = np.isin(truth, classes)
    t = truth[scored]
    assert (table["n"] == scored.sum()).all()
    always_n = table.loc["majority voting"]
    assert always_n["balanced_macro_f1"] == pytest.approx((2 / 4) / 3)   # balanced F1(N) = 2*1/(1+3), others 0
    assert always_n["macro_f1"] == pytest.approx(2 * 60 / (60 + 95) / 3) and always_n["accuracy"] == pytest.approx(60 / 95)
    soup = table.loc["meta-classifier (soup)"]
    assert soup["balanced_macro_f1"] == pytest.approx(balanced_macro_f1(t, noisy[2][scored], classes))
    indices = stratified_bootstrap_indices(t, 300, 2)
    expected = percentile_interval(bootstrap_macro_f1(t, noisy[2][scored], classes=classes, indices=indices,
                                                      balanced=True))
    assert (soup["balanced_macro_f1_ci95_low"], soup["balanced_macro_f1_ci95_high"]) == pytest.approx(expected)
    # the interval follows the seed it is given (report.seed): another seed draws other resamples
    other = technique_table({"all": _subset_result(truth, preds, [idx(noisy[1]), idx(noisy[0])], classes)},
                            bootstrap=300, seed=3).set_index("technique").loc["meta-classifier (soup)"]
    assert (other["balanced_macro_f1_ci95_low"], other["balanced_macro_f1_ci95_high"]) != pytest.approx(expected)
    single = table.loc["meta-classifier (single)"]
    seeds = [balanced_macro_f1(t, noisy[k][scored], classes) for k in (1, 0)]
    assert single["balanced_macro_f1"] == pytest.approx(np.mean(seeds))
    assert single["balanced_macro_f1_std"] == pytest.approx(np.std(seeds))
    view = table3_view(table.reset_index())
    assert list(view.columns) == [("all", "bal. F1"), ("all", "F1"), ("all", "ACC")]
    assert view.loc["meta-classifier (soup)", ("all", "bal. F1")].startswith(f"{soup['balanced_macro_f1']:.3f} [")
    assert " ± " in view.loc["meta-classifier (single)", ("all", "bal. F1")]


def _write_metrics(folder, test: dict, dev: float) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"test": test, "dev_balanced_macro_f1": dev}))


def test_member_table_and_headline_rank_by_balanced_macro_f1(tmp_path):
    scores = {"a": (0.50, 0.60, 0.30), "b": (0.45, 0.40, 0.55), "c": (0.40, 0.70, 0.20)}  # test bal., plain, dev
    for name, (bal, plain, dev) in scores.items():
        _write_metrics(tmp_path / name, {"balanced_macro_f1": bal, "balanced_macro_f1_ci95": [bal - 0.1, bal + 0.1],
                                         "macro_f1": plain, "macro_f1_ci95": [0, 1], "accuracy": plain}, dev)
    members = member_table(list(scores), tmp_path)
    assert members.loc["b", "test_balanced_macro_f1"] == 0.45 and members.loc["c", "test_macro_f1"] == 0.70
    assert subsets(members, [2])["top-2"] == ["b", "a"]           # by dev, never by test
    table = pd.DataFrame([{"technique": t, "subset": "all (3)", "n": 95, "balanced_macro_f1": f, "macro_f1": f - 0.05,
                           "accuracy": 0.5, "balanced_macro_f1_std": s, "balanced_macro_f1_ci95_low": f - 0.08,
                           "balanced_macro_f1_ci95_high": f + 0.08}
                          for t, f, s in (("majority voting", 0.44, np.nan), ("soft voting", 0.46, np.nan),
                                          ("meta-classifier (single)", 0.52, 0.01), ("meta-classifier (soup)", 0.55, np.nan))])
    summary = headline(table, members, "all (3)")
    # the best single member by test balanced macro-F1 is a (0.50), not c (best plain macro-F1)
    assert summary["best_single"] == "a" and summary["relative_gain_pct"] == pytest.approx(10.0)
    assert summary["medusa_test_balanced_macro_f1_ci95"] == pytest.approx([0.47, 0.63])
    text = headline_sentence(summary)
    assert "balanced macro-F1 0.550 [0.470, 0.630]" in text and "+10.0 %" in text and "±0.080" in text
    _write_metrics(tmp_path / "old", {"macro_f1": 0.5, "macro_f1_ci95": [0.4, 0.6], "accuracy": 0.5}, 0.3)
    with pytest.raises(ValueError, match=r"no balanced_macro_f1_ci95 .*`dvc repro train@old`"):
        member_table(["old"], tmp_path)
    with pytest.raises(FileNotFoundError, match="dvc repro train@nope"):
        member_table(["nope"], tmp_path)


def test_table3_carries_the_techniques_posteriors_against_the_votes():
    """calibration_columns: JSD vs votes and ECE for every technique with posteriors (soft voting is the mean
    posterior; majority voting has none), shown by table3_view; a soup equal to soft voting scores alike."""
    rng = np.random.default_rng(5)
    manifest = _manifest(rng, n=150)
    test = manifest["split"] == "test"
    votes = rng.dirichlet(np.ones(8), test.sum())
    votes[np.arange(len(votes)), [CODES.index(c) for c in manifest.loc[test, "label"]]] += 1.0   # label leads
    manifest.loc[test, list(SOFT_TARGET_COLUMNS)] = votes / votes.sum(1, keepdims=True)
    manifest["n_votes"] = np.where(test, 5.0, 1.0)
    members = ["a", "b"]
    posteriors = {m: _posteriors(manifest, rng) for m in members}
    cfg = meta_config(n_models=0, stage3="anchored", epochs=5)
    result = run_subset(posteriors, manifest, members, cfg, [0, 1], anchor_grid=[1.0], cv_folds=5)
    columns = calibration_columns({"all": result}, manifest).set_index("technique")
    assert "majority voting" not in columns.index and len(columns.loc["meta-classifier (single)"]) == 3
    assert columns[["jsd_votes", "ece"]].apply(lambda v: v.between(0, 1)).all().all()
    # random members: cross-validation keeps voting, so the soup's posteriors are soft voting's
    assert result.stage3.form == "voting"
    assert np.isclose(columns.loc["meta-classifier (soup)", "jsd_votes"], columns.loc["soft voting", "jsd_votes"])
    mean = stack(posteriors, "test").probs.mean(1)
    mean_frame = pd.DataFrame({"utt_id": result.test.utt_ids, "split": "test", "label": result.test.labels})
    mean_frame[list(SOFT_TARGET_COLUMNS)] = mean
    from medusa.scoring.calibration import calibration_table
    assert np.isclose(columns.loc["soft voting", "jsd_votes"],
                      calibration_table({"mean": mean_frame}, manifest).loc["mean", "jsd_votes"])
    table = technique_table({"all": result}, bootstrap=100, seed=0).merge(
        calibration_columns({"all": result}, manifest), how="left", on=["technique", "subset"])
    view = table3_view(table)
    assert view.loc["majority voting", ("all", "JSD")] == "–" and view.loc["soft voting", ("all", "ECE")] != "–"
