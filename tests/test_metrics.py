"""Scores: plain and balanced macro-F1 over the run's classes, per-class F1, stratified bootstrap intervals."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from medusa.labels import balanced_epoch
from medusa.scoring.metrics import (
    accuracy,
    balanced_macro_f1,
    bootstrap_interval,
    bootstrap_macro_f1,
    ccc,
    classes_of,
    classification_scores,
    macro_f1,
    per_class_f1,
    percentile_interval,
    run_classes,
    stratified_bootstrap_indices,
)


def test_macro_f1_by_hand():
    y = ["A", "A", "S", "S", "N", "N"]
    p = ["A", "S", "S", "S", "N", "A"]
    # A: P 1/2 R 1/2 F 1/2; S: P 2/3 R 1 F 0.8; N: P 1 R 1/2 F 2/3
    assert macro_f1(y, p) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert balanced_macro_f1(y, p) == pytest.approx(macro_f1(y, p))    # a balanced set: the same number
    assert accuracy(y, p) == pytest.approx(4 / 6)
    f1 = per_class_f1(y, p)
    assert f1["S"] == pytest.approx(0.8) and np.isnan(f1["F"])       # F has no true utterance: no F1
    assert list(f1) == ["A", "S", "H", "U", "F", "D", "C", "N"]
    assert macro_f1(y, y) == 1.0


def test_balanced_macro_f1_weighs_each_class_equally_by_hand():
    y = np.array(["N"] * 90 + ["F"] * 10)
    always_n = np.array(["N"] * 100)
    assert macro_f1(y, always_n) == pytest.approx((2 * 90 / 190 + 0) / 2)   # F1(N) = 0.947, F1(F) = 0
    # balanced confusion: row N = [1 -> N], row F = [1 -> N]; F1(N) = 2 * 1 / (1 + 2) = 2/3, F1(F) = 0
    assert balanced_macro_f1(y, always_n) == pytest.approx((2 / 3) / 2)
    # 9 of the 90 N predicted F, every F right: weights N 1/90, F 1/10 -> TP_N 0.9, FP_F 0.1, TP_F 1
    p = y.copy()
    p[:9] = "F"
    f1_n, f1_f = 2 * 0.9 / (2 * 0.9 + 0.1), 2 * 1.0 / (2 * 1.0 + 0.1)
    assert balanced_macro_f1(y, p) == pytest.approx((f1_n + f1_f) / 2)
    assert macro_f1(y, p) == pytest.approx((2 * 81 / (2 * 81 + 9) + 2 * 10 / (2 * 10 + 9)) / 2)
    # deterministic: no resampling seed
    assert balanced_macro_f1(y, p) == balanced_macro_f1(y, p)


def test_balanced_macro_f1_equals_sklearn_with_inverse_class_frequency_weights():
    rng = np.random.default_rng(4)
    y = rng.choice(list("ASHNC"), 300, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    p = np.where(rng.random(300) < 0.55, y, rng.choice(list("ASHNCD"), 300))
    counts = pd.Series(y).value_counts()
    weights = 1.0 / counts[y].to_numpy()
    present = [c for c in "ASHUFDCN" if c in counts]
    expected = f1_score(y, p, labels=present, average="macro", sample_weight=weights, zero_division=0)
    assert balanced_macro_f1(y, p) == pytest.approx(expected, abs=1e-12)


def test_balanced_macro_f1_is_the_limit_of_class_balanced_resamples():
    """The mean macro-F1 over class-balanced resamples approaches balanced macro-F1 as the resamples grow (with
    the test's own size, the rarest class's, it is within the small bias of a ratio estimate)."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.array(list("NASF")), [400, 120, 40, 15])
    p = np.where(rng.random(len(y)) < 0.6, y, rng.choice(list("NASF"), len(y)))
    target, plain = balanced_macro_f1(y, p), macro_f1(y, p)
    assert abs(target - plain) > 0.05        # the two definitions differ here: the check below can tell them apart
    big = np.stack([balanced_epoch(y, rng, per_class=2000) for _ in range(200)])
    assert bootstrap_macro_f1(y, p, indices=big).mean() == pytest.approx(target, abs=0.002)
    small = np.stack([balanced_epoch(y, rng) for _ in range(2000)])   # 15 per class, without replacement
    assert bootstrap_macro_f1(y, p, indices=small).mean() == pytest.approx(target, abs=0.005)


def test_scores_are_over_the_run_classes_only():
    # a corpus with 4 emotions: a perfect predictor scores 1, not 4/8 (the old probes averaged over all 8 codes)
    y = np.array(list("ASHN") * 5)
    classes = classes_of(y)
    assert classes == ("A", "S", "H", "N")
    assert macro_f1(y, y, classes) == balanced_macro_f1(y, y, classes) == 1.0
    assert f1_score(y, y, labels=list("ASHUFDCN"), average="macro", zero_division=0) == 0.5
    # X and a class the run never trained on (F) are not scored; a prediction outside the classes is wrong
    y2 = np.append(y, ["X", "F"])
    p2 = np.append(y, ["A", "F"])
    assert macro_f1(y2, p2, classes) == 1.0 and accuracy(y2, p2, classes) == 1.0
    p3 = y.copy()
    p3[0] = "F"                                                  # one A predicted F: a miss for A only
    assert per_class_f1(y, p3, classes)["A"] == pytest.approx(2 * 4 / (2 * 4 + 1))
    assert macro_f1(y, p3, classes) == pytest.approx((8 / 9 + 3) / 4)


def test_run_classes_are_the_manifest_soft_target_columns():
    """The manifest holds a p_ column for exactly the run's classes (prepare writes them): those are the classes,
    in CODES order, whatever the labels (X, O, a code outside the run) say."""
    manifest = pd.DataFrame({"split": ["train", "train", "train", "dev", "test", "blind"],
                             "label": ["N", "X", "A", "S", "F", None],
                             "p_N": [1.0, 0.5, 0.0, 0.0, 0.0, None], "p_A": [0.0, 0.5, 1.0, 0.0, 0.0, None],
                             "p_S": [0.0, 0.0, 0.0, 1.0, 0.0, None]})
    assert run_classes(manifest) == ("A", "S", "N")            # CODES order; F has no column: not a run class
    with pytest.raises(ValueError, match="no soft-target column p_<code>.*rerun the prepare stage"):
        run_classes(manifest.drop(columns=["p_N", "p_A", "p_S"]))


def test_ccc_values():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(x - 2.5, 2.5 - x) == pytest.approx(-1.0)
    assert ccc(x, -x) == pytest.approx(-2.5 / 27.5)                      # different means count too
    assert ccc(x, x + 1) == pytest.approx(2 * 1.25 / (1.25 + 1.25 + 1))   # a shift lowers agreement


def test_stratified_resamples_keep_the_class_counts_and_are_seeded():
    y = np.array(list("NNNNNNAAS") + [None])
    idx = stratified_bootstrap_indices(y, n=50, seed=1)
    assert idx.shape == (50, 10)
    for row in idx:
        assert sorted(map(str, y[row])) == sorted(map(str, y))     # each class keeps n_c, drawn within itself
    assert len({tuple(sorted(r)) for r in idx}) > 1                  # with replacement: resamples differ
    np.testing.assert_array_equal(idx, stratified_bootstrap_indices(y, n=50, seed=1))


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.choice(list("ASHN"), 400, p=[0.55, 0.25, 0.15, 0.05])
    p = np.where(rng.random(400) < 0.6, y, rng.choice(list("ASHN"), 400))
    for balanced, point in ((False, macro_f1(y, p)), (True, balanced_macro_f1(y, p))):
        low, high = bootstrap_interval(y, p, balanced=balanced, n=300, seed=3)
        assert low < point < high and high - low < 0.25
        assert (low, high) == bootstrap_interval(y, p, balanced=balanced, n=300, seed=3)
        small = bootstrap_interval(y[:80], p[:80], balanced=balanced, n=300, seed=3)
        assert small[1] - small[0] > high - low                 # fewer utterances, wider interval


def test_resampled_scores_match_sklearn_on_every_resample():
    rng = np.random.default_rng(0)
    y = rng.choice(["A", "H", "S", "N", "C", "X"], 80)
    p = np.where(rng.random(80) < 0.5, y, rng.choice(["A", "H", "S", "N", "D", "oops"], 80))  # "oops": outside CODES
    classes = ("A", "S", "H", "N")                                 # C and X are not the run's: not scored
    idx = stratified_bootstrap_indices(y, n=40, seed=2)
    for balanced in (False, True):
        fast = bootstrap_macro_f1(y, p, classes=classes, indices=idx, balanced=balanced)
        slow = []
        for i in idx:
            keep = np.isin(y[i], classes)
            t, q = y[i][keep], p[i][keep]
            w = 1 / pd.Series(t).map(pd.Series(t).value_counts()).to_numpy() if balanced else None
            slow.append(f1_score(t, q, labels=[c for c in classes if c in t], average="macro", sample_weight=w,
                                 zero_division=0))
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_classification_scores_report_both_figures_with_intervals():
    y = np.array(["N"] * 60 + ["A"] * 20 + ["X"] * 5)
    p = np.array(["N"] * 55 + ["A"] * 5 + ["A"] * 15 + ["N"] * 5 + ["N"] * 5)
    scores = classification_scores(y, p, classes=("A", "N"), seed=0, bootstrap=200)
    assert set(scores) == {"n", "classes", "balanced_macro_f1", "balanced_macro_f1_ci95", "macro_f1",
                           "macro_f1_ci95", "accuracy", "per_class_f1"}
    assert scores["n"] == 80 and scores["classes"] == ["A", "N"]      # X dropped
    assert scores["balanced_macro_f1"] == pytest.approx(balanced_macro_f1(y, p, ("A", "N")))
    assert scores["accuracy"] == pytest.approx(70 / 80)
    assert list(scores["per_class_f1"]) == ["A", "N"]
    for key in ("balanced_macro_f1", "macro_f1"):
        low, high = scores[f"{key}_ci95"]
        assert low <= scores[key] <= high
    with pytest.raises(ValueError, match="run's classes"):
        classification_scores(["X", "O"], ["A", "A"], classes=("A", "N"), seed=0, bootstrap=10)


def test_relative_change_on_hand_made_numbers():
    from medusa.scoring.metrics import relative_change
    # Table 2 of the paper, average row: one-hot 0.389 against DeepSER 0.421
    assert relative_change(0.389, 0.421) == pytest.approx(-7.6010, abs=1e-4)
    assert relative_change(0.5, 0.4) == pytest.approx(25.0)
    np.testing.assert_allclose(relative_change(np.array([0.2, 0.4]), np.array([0.4, 0.4])), [-50.0, 0.0])


def test_bootstrap_interval_on_a_hand_made_case():
    # every prediction right: every resample scores 1, so the interval is the point
    y = np.array(["A", "N"] * 10)
    assert bootstrap_interval(y, y, n=50, seed=0) == (1.0, 1.0)
    assert bootstrap_interval(y, y, balanced=True, n=50, seed=0) == (1.0, 1.0)
    assert percentile_interval(np.arange(101), 0.9) == pytest.approx((5.0, 95.0))
