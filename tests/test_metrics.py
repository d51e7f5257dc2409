import numpy as np
import pytest

from medusa.metrics import accuracy, balanced_macro_f1, bootstrap_interval, ccc, macro_f1, per_class_f1


def test_macro_f1_by_hand():
    y = ["A", "A", "S", "S", "N", "N"]
    p = ["A", "S", "S", "S", "N", "A"]
    # A: P 1/2 R 1/2 F 1/2; S: P 2/3 R 1 F 0.8; N: P 1 R 1/2 F 2/3
    assert macro_f1(y, p) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert accuracy(y, p) == pytest.approx(4 / 6)
    assert per_class_f1(y, p)["S"] == pytest.approx(0.8) and per_class_f1(y, p)["F"] == 0.0
    assert macro_f1(y, y) == 1.0


def test_balanced_macro_f1_resamples_classes_equally():
    rng = np.random.default_rng(0)
    y = np.array(["N"] * 90 + ["F"] * 10)
    always_n = np.array(["N"] * 100)
    plain = macro_f1(y, always_n)                       # F1(N) = 0.947, F1(F) = 0: 0.47
    mean, std = balanced_macro_f1(y, always_n, resamples=5)
    assert mean == pytest.approx((2 / 3) / 2) and std == pytest.approx(0.0)   # balanced: F1(N) = 2/3
    assert mean < plain
    noisy = np.where(rng.random(100) < 0.2, "F", y)
    assert balanced_macro_f1(y, noisy, seed=1) == balanced_macro_f1(y, noisy, seed=1)


def test_ccc_values():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(x - 2.5, 2.5 - x) == pytest.approx(-1.0)
    assert ccc(x, -x) == pytest.approx(-2.5 / 27.5)                      # different means count too
    assert ccc(x, x + 1) == pytest.approx(2 * 1.25 / (1.25 + 1.25 + 1))   # a shift lowers agreement


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.choice(list("ASHN"), 400)
    p = np.where(rng.random(400) < 0.6, y, rng.choice(list("ASHN"), 400))
    low, high = bootstrap_interval(y, p, macro_f1, n=300, seed=3)
    assert low < macro_f1(y, p) < high and high - low < 0.15
    assert (low, high) == bootstrap_interval(y, p, macro_f1, n=300, seed=3)
    small = bootstrap_interval(y[:50], p[:50], macro_f1, n=300, seed=3)
    assert small[1] - small[0] > high - low                 # fewer utterances, wider interval


def test_resampled_macro_f1_matches_sklearn_on_every_resample():
    from medusa.metrics import bootstrap_indices, bootstrap_macro_f1
    rng = np.random.default_rng(0)
    y = rng.choice(["A", "H", "S", "N", "C"], 60)
    p = np.where(rng.random(60) < 0.5, y, rng.choice(["A", "H", "S", "N", "D", "oops"], 60))  # "oops": outside CODES
    idx = bootstrap_indices(60, n=40, seed=2)
    fast = bootstrap_macro_f1(y, p, indices=idx)
    slow = [macro_f1(y[i], p[i]) for i in idx]
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_balanced_macro_f1_counts_false_positives_from_unscored_true_labels():
    # a true "X" (no class) predicted as "A" is a false positive of A, as in sklearn
    y, p = np.array(["A", "A", "N", "N", "X"]), np.array(["A", "A", "N", "N", "A"])
    from medusa.metrics import bootstrap_macro_f1
    assert bootstrap_macro_f1(y, p, indices=np.arange(5)[None])[0] == pytest.approx(macro_f1(y, p))
    assert macro_f1(y, p) == pytest.approx((0.8 + 1.0) / 2)


def test_relative_change_on_hand_made_numbers():
    from medusa.metrics import relative_change
    # Table 2 of the paper, average row: one-hot 0.389 against DeepSER 0.421
    assert relative_change(0.389, 0.421) == pytest.approx(-7.6010, abs=1e-4)
    assert relative_change(0.5, 0.4) == pytest.approx(25.0)
    np.testing.assert_allclose(relative_change(np.array([0.2, 0.4]), np.array([0.4, 0.4])), [-50.0, 0.0])


def test_bootstrap_interval_on_a_hand_made_case():
    from medusa.metrics import percentile_interval
    # every prediction right: every resample scores 1, so the interval is the point
    y = np.array(["A", "N"] * 10)
    assert bootstrap_interval(y, y, n=50) == (1.0, 1.0)
    assert percentile_interval(np.arange(101), 0.9) == pytest.approx((5.0, 95.0))
