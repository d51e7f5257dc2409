"""Scores used in every report: macro-F1 (plain and on class-balanced resamples), accuracy, per-class F1,
concordance correlation (attributes), bootstrap intervals.

Balanced macro-F1 — the paper selects models by "the best average macro-F1 on balanced held-out test sets"
without saying how they were drawn. Here it is defined as: draw K class-balanced subsets of the held-out
utterances (each class present contributes as many utterances as the rarest class has, drawn without
replacement, seeded), compute macro-F1 on each, report the mean. Every report uses this definition.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from medusa.labels import CODES, balanced_epoch


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] = CODES) -> float:
    """Macro-F1 over the classes present in y_true (a class never seen in y_true would only add a 0)."""
    present = [c for c in labels if c in set(y_true)]
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))


def accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    return float(accuracy_score(y_true, y_pred))


def per_class_f1(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] = CODES) -> dict[str, float]:
    scores = f1_score(y_true, y_pred, labels=list(labels), average=None, zero_division=0)
    return {c: float(s) for c, s in zip(labels, scores)}


def balanced_macro_f1(y_true: Sequence[str], y_pred: Sequence[str], resamples: int = 10, seed: int = 0
                      ) -> tuple[float, float]:
    """(mean, std) of macro-F1 over `resamples` class-balanced subsets (see the module docstring)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    scores = [macro_f1(y_true[idx], y_pred[idx]) for idx in (balanced_epoch(y_true, rng) for _ in range(resamples))]
    return float(np.mean(scores)), float(np.std(scores))


def ccc(x: Sequence[float], y: Sequence[float]) -> float:
    """Lin's concordance correlation coefficient: 2 cov / (var_x + var_y + (mean_x - mean_y)^2)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return float(2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2))


def bootstrap_interval(y_true: Sequence, y_pred: Sequence, metric: Callable[[np.ndarray, np.ndarray], float],
                       n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of metric(y_true, y_pred), resampling utterances with replacement."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    stats = [metric(y_true[idx], y_pred[idx]) for idx in (rng.integers(0, len(y_true), len(y_true)) for _ in range(n))]
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def classification_scores(y_true: Sequence[str], y_pred: Sequence[str], resamples: int = 10, seed: int = 0,
                          bootstrap: int = 1000) -> dict:
    """The scores every report shows for one set of predictions, over utterances whose consensus is one of
    the 8 classes: macro-F1 with its 95 % bootstrap interval, accuracy, balanced macro-F1 (mean and std over
    `resamples`), per-class F1, and n."""
    y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    keep = np.isin(y_true, CODES)
    y_true, y_pred = y_true[keep], y_pred[keep]
    if not len(y_true):
        raise ValueError("no utterance with one of the 8 class labels to score")
    bal, bal_std = balanced_macro_f1(y_true, y_pred, resamples, seed)
    return {"n": int(len(y_true)), "macro_f1": macro_f1(y_true, y_pred),
            "macro_f1_ci95": list(bootstrap_interval(y_true, y_pred, macro_f1, bootstrap, seed)),
            "accuracy": accuracy(y_true, y_pred), "balanced_macro_f1": bal, "balanced_macro_f1_std": bal_std,
            "per_class_f1": per_class_f1(y_true, y_pred)}
