"""The summary report leads with balanced macro-F1 and its (paired, class-stratified) intervals: Tables 1-3,
Table 2's notes, the findings and report.json."""
import json

import numpy as np
import pandas as pd
import pytest

from medusa.config.params import REFERENCE_VARIANT
from medusa.ensemble.voting import majority_vote, soft_vote, stack
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS
from medusa.reporting import ablation, reports
from medusa.scoring.metrics import (
    balanced_macro_f1,
    bootstrap_macro_f1,
    macro_f1,
    percentile_interval,
    relative_change,
    stratified_bootstrap_indices,
)

# an imbalanced test split (like a real one): plain and balanced macro-F1 disagree on it
TRUTH = np.array(list("N" * 40 + "A" * 12 + "S" * 8))


def _predictions():
    rng = np.random.default_rng(5)
    good = np.where(rng.random(len(TRUTH)) < 0.8, TRUTH, rng.choice(list("NAS"), len(TRUTH)))
    always_n = np.full(len(TRUTH), "N")                          # the majority class: fine on plain, poor balanced
    return good, always_n


def test_table2_changes_are_of_balanced_macro_f1_with_paired_stratified_intervals():
    good, always_n = _predictions()
    predictions = {(REFERENCE_VARIANT, "m"): good, ("one_hot", "m"): always_n}
    runs = pd.DataFrame({"variant": [REFERENCE_VARIANT, "one_hot"], "model": ["m", "m"], "configuration": ["m", "m"]})
    classes = ("A", "S", "N")
    table = ablation.table2(runs, TRUTH, predictions, bootstrap=300, seed=4, classes=classes)
    row = table.set_index(["variant", "configuration"])
    bal_good, bal_n = balanced_macro_f1(TRUTH, good, classes), balanced_macro_f1(TRUTH, always_n, classes)
    assert row.loc[("one_hot", "AVG"), "balanced_macro_f1"] == pytest.approx(bal_n)
    assert row.loc[("one_hot", "m"), "macro_f1"] == pytest.approx(macro_f1(TRUTH, always_n, classes))
    assert row.loc[("one_hot", "m"), "accuracy"] == pytest.approx(40 / 60)
    # Δ is the relative change of balanced macro-F1, not of plain macro-F1
    assert row.loc[("one_hot", "AVG"), "delta_pct"] == pytest.approx(float(relative_change(bal_n, bal_good)))
    assert row.loc[("one_hot", "AVG"), "delta_pct"] != pytest.approx(
        float(relative_change(macro_f1(TRUTH, always_n), macro_f1(TRUTH, good))), abs=0.5)
    idx = stratified_bootstrap_indices(TRUTH, 300, 4)
    curve = lambda p: bootstrap_macro_f1(TRUTH, p, classes=classes, indices=idx, balanced=True)  # noqa: E731
    assert (row.loc[("one_hot", "AVG"), "delta_ci95_low"], row.loc[("one_hot", "AVG"), "delta_ci95_high"]) == \
        pytest.approx(percentile_interval(relative_change(curve(always_n), curve(good))))
    assert (row.loc[(REFERENCE_VARIANT, "m"), "balanced_macro_f1_ci95_low"],
            row.loc[(REFERENCE_VARIANT, "m"), "balanced_macro_f1_ci95_high"]) == pytest.approx(
        percentile_interval(curve(good)))
    view = reports.table2_view(table)
    assert list(view.columns) == ["m bal. F1", "m F1", "m ACC", "AVG bal. F1", "AVG F1", "AVG ACC", "Δ (%)"]
    assert view.loc["w. one-hot targets", "AVG bal. F1"].startswith(f"{bal_n:.3f} [")
    assert view.loc["w. one-hot targets", "Δ (%)"].startswith(f"{relative_change(bal_n, bal_good):.2f} [")
    # the paired interval of the report's own helper is the same computation
    assert reports.paired_change(TRUTH, always_n, good, 300, 4, classes) == pytest.approx(
        (row.loc[("one_hot", "AVG"), "delta_ci95_low"], row.loc[("one_hot", "AVG"), "delta_ci95_high"]))


def test_table2_notes_say_how_many_training_rows_each_variant_used():
    runs = pd.DataFrame({"variant": [REFERENCE_VARIANT, REFERENCE_VARIANT, "one_hot", "one_hot", "no_stage2"],
                         "model": ["a", "b", "a", "b", "a"],
                         "train_rows_stage1": [923.0, 923.0, 748.0, 748.0, 923.0],
                         "train_rows_stage2_pool": [748.0, 748.0, 748.0, 740.0, np.nan]})
    notes = reports.train_rows_note(runs)
    assert notes == ["DeepSER: stage 1 trained on 923 rows; stage 2 drew its balanced subsets from 748.",
                     "w. one-hot targets: stage 1 trained on 748 rows; stage 2 drew its balanced subsets from 740-748.",
                     "w/o stage 2: stage 1 trained on 923 rows; no stage 2."]
    # runs from before train_rows was recorded (no columns, or NaN): said so, no made-up count
    assert reports.train_rows_note(runs[["variant", "model"]])[0] == \
        "DeepSER: training rows not recorded (trained before they were)."


def test_table_notes_go_under_the_markdown_and_into_the_latex(tmp_path):
    table = pd.DataFrame({"F1": ["0.500"]}, index=pd.Index(["DeepSER"], name="variant"))
    out = reports.write_table(table, "t", "Table X.", tmp_path, notes=["DeepSER: stage 1 trained on 923 rows."])
    assert out["md"].read_text().endswith("\n- DeepSER: stage 1 trained on 923 rows.\n")
    assert "% DeepSER: stage 1 trained on 923 rows." in out["tex"].read_text()
    assert "923" not in out["csv"].read_text()                     # a CSV holds the table only


def _scores(bal, low, high, plain, acc):
    return {"n": 60, "balanced_macro_f1": bal, "balanced_macro_f1_ci95": [low, high], "macro_f1": plain,
            "macro_f1_ci95": [0.0, 1.0], "accuracy": acc, "per_class_f1": {}, "classes": ["A", "S", "N"]}


#: The report's resampling (report.bootstrap, report.seed) that the members' intervals were drawn with.
BOOTSTRAP, SEED = 1000, 0


def _member(folder, bal, low, high, plain, acc, dev, probe=(0.30, 0.20, 0.40), intervals=(BOOTSTRAP, SEED)):
    """A member's metrics.json: its test scores, its dev selection score, its probe's test scores and the
    resampling their intervals were drawn with (None: not recorded, as before it was)."""
    folder.mkdir(parents=True)
    metrics = {"test": _scores(bal, low, high, plain, acc), "dev_balanced_macro_f1": dev}
    if intervals is not None:
        metrics["intervals"] = dict(zip(("bootstrap", "seed"), intervals))
    if probe is not None:
        metrics["probe_test"] = _scores(*probe, probe[0] + 0.1, probe[0] + 0.2)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def _table3():
    rows = []
    for technique, bal in (("majority voting", 0.40), ("soft voting", 0.45), ("meta-classifier (single)", 0.50),
                           ("meta-classifier (soup)", 0.55)):
        rows.append({"technique": technique, "subset": "all (2)", "n": 60, "balanced_macro_f1": bal,
                     "balanced_macro_f1_std": 0.01 if "single" in technique else np.nan,
                     "balanced_macro_f1_ci95_low": bal - 0.1, "balanced_macro_f1_ci95_high": bal + 0.1,
                     "macro_f1": bal - 0.05, "macro_f1_std": np.nan, "accuracy": bal + 0.1, "accuracy_std": np.nan})
    return pd.DataFrame(rows)


def test_table1_and_report_json_lead_with_balanced_macro_f1(tmp_path):
    _member(tmp_path / "a", 0.50, 0.40, 0.60, 0.62, 0.70, 0.30)     # best balanced
    _member(tmp_path / "b", 0.45, 0.35, 0.55, 0.66, 0.75, 0.35, probe=(0.52, 0.41, 0.63))   # below its probe
    models = {"a": {"encoders": ["w", "t"], "seed": 0}, "b": {"encoders": ["e"], "seed": 1}}
    rows = reports.member_rows(["a", "b"], models, BOOTSTRAP, SEED, tmp_path)
    table3 = _table3()
    t1 = reports.table1(rows, (0.41, 0.55), table3.iloc[3])
    assert list(t1.index) == ["a (top)", "b", "AVG", "MEDUSA"]
    assert list(t1.columns) == ["encoders", "seed", "test bal. macro-F1 [95 % CI]",
                                "probe test bal. macro-F1 [95 % CI]", "test macro-F1", "test accuracy",
                                "dev bal. macro-F1"]
    # each member's probe beside it, from metrics.json's probe_test; nothing marked on the probe side
    assert t1.loc["a (top)", "probe test bal. macro-F1 [95 % CI]"] == "0.300 [0.200, 0.400]"
    assert t1.loc["b", "probe test bal. macro-F1 [95 % CI]"] == "0.520 [0.410, 0.630]"
    assert t1.loc["AVG", "probe test bal. macro-F1 [95 % CI]"] == "0.410"
    assert t1.loc["MEDUSA", "probe test bal. macro-F1 [95 % CI]"] == "–"
    assert t1.loc["a (top)", "test bal. macro-F1 [95 % CI]"] == "0.500 [0.400, 0.600]"
    assert t1.loc["AVG", "test bal. macro-F1 [95 % CI]"] == "0.475 [0.410, 0.550]"
    assert t1.loc["MEDUSA", "test bal. macro-F1 [95 % CI]"] == "0.550 [0.450, 0.650]"
    assert t1.loc["MEDUSA", "test macro-F1"] == "0.500" and t1.loc["b", "test accuracy"] == "0.750"
    ablations = pd.DataFrame({"variant": [REFERENCE_VARIANT, "no_mixup"], "configuration": ["AVG", "AVG"],
                              "delta_pct": [0.0, -3.5]})
    report = reports.headline_metrics(rows, table3, ablations, gain_ci=(-5.0, 30.0))
    assert report["medusa_test_balanced_macro_f1"] == 0.55
    assert report["medusa_test_balanced_macro_f1_ci95"] == pytest.approx([0.45, 0.65])
    assert report["medusa_test_macro_f1"] == pytest.approx(0.50) and report["medusa_test_accuracy"] == pytest.approx(0.65)
    assert report["best_single"] == "a" and report["best_single_test_balanced_macro_f1_ci95"] == [0.40, 0.60]
    assert report["medusa_gain_over_best_single_pct"] == pytest.approx(10.0)
    assert report["medusa_gain_over_best_single_pct_ci95"] == [-5.0, 30.0]
    assert report["ablation_delta_pct"] == {"no_mixup": -3.5} and report["n_test"] == 60
    # every value is plain JSON (DVC reads this file)
    json.dumps(report, allow_nan=False)
    view = reports.table3_view(table3)
    assert list(view.columns) == ["all (2) bal. F1", "all (2) F1", "all (2) ACC"]
    assert view.loc["meta-classifier (single)", "all (2) bal. F1"] == "0.500 ± 0.010 [0.400, 0.600]"


def test_findings_judge_by_the_balanced_paired_intervals():
    rows = pd.DataFrame({"model": ["a", "b"], "balanced_macro_f1": [0.50, 0.45], "macro_f1": [0.40, 0.70]})
    lines = reports.ensemble_findings(_table3(), rows, (2.0, 18.0), vote_ci=(-4.0, 40.0))
    assert "soup 0.550 against a 0.500 (balanced macro-F1), +10.00 % [+2.00, +18.00]" in lines[0]
    assert lines[0].endswith("**holds**.")
    assert "best vote (soft voting) 0.450" in lines[1] and "+22.22 % [-4.00, +40.00]" in lines[1]
    assert lines[1].endswith("**holds in the point estimate, within noise** (the 95 % interval includes no change).")
    assert reports.ensemble_findings(_table3(), rows, (2.0, 18.0), vote_ci=(5.0, 40.0))[1].endswith("**holds**.")
    assert "within noise" in reports.ensemble_findings(_table3(), rows, (-1.0, 18.0))[0]
    assert "±0.07 " in reports.noise_note(60, 0.07) and "balanced macro-F1" in reports.noise_note(60, 0.07)


def test_vote_frames_pair_the_votes_with_other_systems():
    rng = np.random.default_rng(0)
    n = 30
    frames = {}
    for m in ("a", "b", "c"):
        frame = pd.DataFrame({"utt_id": [f"u{i}" for i in range(n)], "split": "test",
                              "label": rng.choice(list("ASN"), n)})
        frame[list(SOFT_TARGET_COLUMNS)] = rng.dirichlet(np.ones(8), n)
        frame[list(ATTRIBUTES)] = 4.0
        frames[m] = frame
    for m in ("b", "c"):
        frames[m]["label"] = frames["a"]["label"]
    votes = reports.vote_frames(frames, ["a", "b", "c"])
    stacked = stack(frames, "test")
    truth, predictions = ablation.aligned_test_predictions({**votes, "a": frames["a"]})
    order = np.argsort(stacked.utt_ids)                          # aligned_test_predictions sorts by utt_id
    np.testing.assert_array_equal(predictions["majority voting"],
                                  np.asarray(CODES)[majority_vote(stacked.probs)][order])
    np.testing.assert_array_equal(predictions["soft voting"], np.asarray(CODES)[soft_vote(stacked.probs)][order])
    np.testing.assert_array_equal(truth, stacked.labels[order])


def test_per_class_scores_cover_the_run_classes():
    """Posteriors of a 3-class run (p_A, p_S, p_N): per-class F1 of those 3 (NaN for S, absent from test), by
    default the classes the posteriors are over."""
    frame = pd.DataFrame({"utt_id": ["u0", "u1", "u2", "u3"], "split": "test", "label": ["A", "N", "N", "X"]})
    frame[["p_A", "p_S", "p_N"]] = np.eye(3)[[0, 2, 0, 0]]
    scores = reports.per_class_scores({"m": frame})["m"]
    assert pd.Series(scores).equals(pd.Series(reports.per_class_scores({"m": frame}, ("A", "S", "N"))["m"]))
    assert list(scores) == ["A", "S", "N"] and np.isnan(scores["S"])
    assert scores["A"] == pytest.approx(2 / 3) and scores["N"] == pytest.approx(2 / 3)
    # the figures show those 3 classes, not 8
    from medusa.reporting import plots
    heatmap = plots.per_class_f1_heatmap({"m": scores, "n": {"A": 0.5, "S": 0.1, "N": 0.2}})
    assert [t.get_text() for t in heatmap.axes[0].get_xticklabels()] == ["A", "S", "N"]
    bars = plots.per_class_f1({"m": scores})
    assert [t.get_text() for t in bars.axes[0].get_xticklabels()] == ["A", "S", "N"]
    matrix = plots.confusion_matrix(frame["label"], ["A", "N", "A", "A"], ("A", "S", "N"))
    assert [t.get_text() for t in matrix.axes[0].get_xticklabels()] == ["A", "S", "N"]
    curves = plots.training_curves(pd.DataFrame({"step": [1, 2], "stage": [1, 2], "train_loss": [1.0, 0.8],
                                                 "dev_balanced_macro_f1": [0.4, 0.5]}), "m", n_classes=3)
    assert any(list(line.get_ydata()) == [1 / 3, 1 / 3] for line in curves.axes[1].get_lines())
    import matplotlib.pyplot as plt
    plt.close("all")


def test_no_largest_drop_when_no_variant_lowers_the_score():
    table = pd.DataFrame([
        {"variant": "one_hot", "configuration": "AVG", "delta_pct": 3.0, "delta_ci95_low": -5.0, "delta_ci95_high": 9.0},
        {"variant": "no_mixup", "configuration": "AVG", "delta_pct": 1.0, "delta_ci95_low": -4.0, "delta_ci95_high": 6.0}])
    lines = reports.ablation_findings(table)
    assert "w. one-hot targets lowers balanced macro-F1" in lines[0]
    assert lines[-1].endswith("no variant lowers balanced macro-F1 here — **does not hold**.")


def test_table1_names_the_member_to_retrain_when_its_probe_scores_are_missing(tmp_path):
    _member(tmp_path / "old", 0.50, 0.40, 0.60, 0.62, 0.70, 0.30, probe=None)
    models = {"old": {"encoders": ["w"], "seed": 0}}
    with pytest.raises(ValueError, match=rf"{tmp_path / 'old' / 'metrics.json'}: no probe_test scores .*"
                                         r"rerun `dvc repro train@old`"):
        reports.member_rows(["old"], models, BOOTSTRAP, SEED, tmp_path)


def test_the_reports_own_intervals_follow_bootstrap_and_seed():
    """Table 1's AVG interval and the findings' paired change are drawn from `bootstrap` resamples seeded by
    `seed` (report.bootstrap, report.seed): equal to the direct computation, and moved by another seed."""
    rng = np.random.default_rng(4)
    classes = ("A", "S", "N")
    truth = rng.choice(list(classes), 90)
    a, b = (np.where(rng.random(90) < 0.6, truth, rng.choice(list(classes), 90)) for _ in range(2))
    curve = lambda pred, seed: bootstrap_macro_f1(  # noqa: E731
        truth, pred, stratified_bootstrap_indices(truth, 250, seed), classes, balanced=True)
    average = reports.mean_interval(truth, [a, b], 250, 7, classes)
    assert average == pytest.approx(percentile_interval(np.mean([curve(a, 7), curve(b, 7)], axis=0)))
    assert average != pytest.approx(reports.mean_interval(truth, [a, b], 250, 8, classes))
    change = reports.paired_change(truth, a, b, 250, 7, classes)
    assert change == pytest.approx(percentile_interval(relative_change(curve(a, 7), curve(b, 7))))
    assert change != pytest.approx(reports.paired_change(truth, a, b, 250, 8, classes))


def test_table1_refuses_member_intervals_drawn_under_other_report_settings(tmp_path):
    """Every interval uses report.bootstrap and report.seed: a member scored with other settings (its stage did
    not read the report section, or the section changed since) is refused, naming the stage to rerun."""
    _member(tmp_path / "a", 0.50, 0.40, 0.60, 0.62, 0.70, 0.30, intervals=(BOOTSTRAP, SEED + 1))
    _member(tmp_path / "b", 0.45, 0.35, 0.55, 0.66, 0.75, 0.35, intervals=None)
    models = {"a": {"encoders": ["w"], "seed": 0}, "b": {"encoders": ["e"], "seed": 1}}
    with pytest.raises(ValueError, match=rf"{tmp_path / 'a' / 'metrics.json'}: its intervals were drawn from 1000 "
                                         r"resamples with seed 1, .*rerun `dvc repro train@a`"):
        reports.member_rows(["a"], models, BOOTSTRAP, SEED, tmp_path)
    assert len(reports.member_rows(["a"], models, BOOTSTRAP, SEED + 1, tmp_path)) == 1
    with pytest.raises(ValueError, match=r"record no resampling settings .*rerun `dvc repro train@b`"):
        reports.member_rows(["b"], models, BOOTSTRAP, SEED, tmp_path)


def test_table1_and_report_json_carry_the_calibration_against_the_votes(tmp_path):
    _member(tmp_path / "a", 0.50, 0.40, 0.60, 0.62, 0.70, 0.30)
    _member(tmp_path / "b", 0.45, 0.35, 0.55, 0.66, 0.75, 0.35)
    rows = reports.member_rows(["a", "b"], {"a": {"encoders": ["w"], "seed": 0}, "b": {"encoders": ["e"], "seed": 1}},
                               BOOTSTRAP, SEED, tmp_path)
    # medusa.scoring.calibration.calibration_table's columns, with a system Table 1 does not show
    scores = pd.DataFrame({"n": 60, "n_votes": 40, "jsd_votes": [0.20, 0.30, 0.10, 0.50],
                           "brier_votes": [0.3, 0.4, 0.2, 0.6], "ece": [0.10, 0.04, 0.02, 0.30],
                           "accuracy": 0.6, "confidence": 0.7},
                          index=pd.Index(["a", "b", "MEDUSA", "a w. one-hot targets"], name="system"))
    table3 = _table3()
    t1 = reports.table1(rows, (0.41, 0.55), table3.iloc[3], calibration=scores)
    assert list(t1.columns)[-2:] == [reports.TABLE1_JSD, reports.TABLE1_ECE]
    assert t1[reports.TABLE1_JSD].tolist() == ["0.200", "0.300", "0.250", "0.100"]   # AVG: the members' mean
    assert t1[reports.TABLE1_ECE].tolist() == ["0.100", "0.040", "0.070", "0.020"]
    # without the scores, Table 1 is as before
    assert reports.TABLE1_ECE not in reports.table1(rows, (0.41, 0.55), table3.iloc[3]).columns
    ablations = pd.DataFrame({"variant": [REFERENCE_VARIANT], "configuration": ["AVG"], "delta_pct": [0.0]})
    report = reports.headline_metrics(rows, table3, ablations, calibration=scores)
    assert report["medusa_test_jsd_votes"] == 0.10 and report["medusa_test_ece"] == 0.02
    assert report["medusa_test_brier_votes"] == 0.2 and report["n_test_with_votes"] == 40
    json.dumps(report, allow_nan=False)
    assert "medusa_test_ece" not in reports.headline_metrics(rows, table3, ablations)
