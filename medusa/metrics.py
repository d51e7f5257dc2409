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
    indices = np.stack([balanced_epoch(y_true, rng) for _ in range(resamples)])
    t, p = _class_indices(y_true, y_pred, CODES)
    scores = resampled_macro_f1(t, p, indices, len(CODES))
    return float(np.mean(scores)), float(np.std(scores))


def ccc(x: Sequence[float], y: Sequence[float]) -> float:
    """Lin's concordance correlation coefficient: 2 cov / (var_x + var_y + (mean_x - mean_y)^2)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return float(2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2))


def _class_indices(y_true: Sequence, y_pred: Sequence, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labels as indices into `labels` (a prediction outside it gets index len(labels): always wrong)."""
    lookup = {c: i for i, c in enumerate(labels)}
    return (np.array([lookup.get(c, len(labels)) for c in y_true]),
            np.array([lookup.get(c, len(labels)) for c in y_pred]))


def resampled_macro_f1(t: np.ndarray, p: np.ndarray, indices: np.ndarray, n_labels: int) -> np.ndarray:
    """macro_f1 on each row of `indices` (resamples of the utterances), from class indices `t`, `p`.

    Written out with numpy because sklearn's f1_score costs ~3 ms a call, and reports need it on 1000
    resamples of dozens of systems; a test checks it against macro_f1 (sklearn) resample by resample."""
    k = n_labels + 1                        # one more slot for predictions outside the label set
    rows = np.arange(len(indices))[:, None] * k * k
    counts = np.bincount((rows + t[indices] * k + p[indices]).ravel(), minlength=len(indices) * k * k)
    confusion = counts.reshape(len(indices), k, k)                     # true class x predicted class
    tp = np.diagonal(confusion, axis1=1, axis2=2)[:, :n_labels]
    support = confusion[:, :n_labels, :].sum(2)                         # utterances of each true class
    predicted = confusion[:, :, :n_labels].sum(1)                       # predictions of each class
    present = support > 0               # macro_f1 averages over the classes present in y_true
    f1 = np.where(present, 2 * tp / np.maximum(support + predicted, 1), 0.0)
    return f1.sum(1) / np.maximum(present.sum(1), 1)


def bootstrap_indices(n_items: int, n: int = 1000, seed: int = 0) -> np.ndarray:
    """`n` resamples (rows) of `n_items` utterances with replacement, seeded; share them across systems
    scored on the same utterances to get paired intervals."""
    return np.random.default_rng(seed).integers(0, n_items, (n, n_items))


def bootstrap_macro_f1(y_true: Sequence, y_pred: Sequence, n: int = 1000, seed: int = 0,
                       labels: Sequence[str] = CODES, indices: np.ndarray | None = None) -> np.ndarray:
    """macro-F1 on each bootstrap resample of the utterances (rows of `indices`, or drawn from `seed`)."""
    t, p = _class_indices(y_true, y_pred, labels)
    indices = bootstrap_indices(len(t), n, seed) if indices is None else indices
    return resampled_macro_f1(t, p, indices, len(labels))


def percentile_interval(stats: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    alpha = (1 - level) / 2
    low, high = np.quantile(np.asarray(stats, dtype=np.float64), [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_interval(y_true: Sequence, y_pred: Sequence, metric: Callable[[np.ndarray, np.ndarray], float] | None = None,
                       n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of metric(y_true, y_pred) (default macro_f1, computed vectorised),
    resampling utterances with replacement."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    indices = bootstrap_indices(len(y_true), n, seed)
    if metric is None or metric is macro_f1:
        stats = bootstrap_macro_f1(y_true, y_pred, indices=indices)
    else:
        stats = [metric(y_true[idx], y_pred[idx]) for idx in indices]
    return percentile_interval(stats, level)


def relative_change(value: float | np.ndarray, reference: float | np.ndarray) -> float | np.ndarray:
    """100 (value - reference) / reference: Table 2's "relative F1 degradation" in %, negative when worse."""
    return 100.0 * (np.asarray(value, dtype=np.float64) - reference) / np.asarray(reference, dtype=np.float64)


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
