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
