"""Scores used in every report: balanced macro-F1 (the headline), plain macro-F1, accuracy, per-class F1, their
95 % intervals (class-stratified percentile bootstrap), and concordance correlation (attributes).

What is scored. The run's classes (`run_classes`) are the codes, in CODES order, whose soft-target column p_<code>
the manifest holds (medusa.labels.classes_of; the prepare stage writes exactly the classes with training rows):
a corpus with 4 emotions is scored over those 4, not over 8. Every score is over the
utterances whose consensus is one of the run's classes (X, O, and a class the run never trained on, are not part
of its task, so they are not scored); macro averages run over the run's classes present among those utterances (a
class with no utterance to recall has no F1 and is left out, rather than counted as 0, so that a small test split
missing a class is not penalised for it). A prediction outside the run's classes is simply wrong: a miss for the
true class, a false positive for none. Per-class F1 is reported for every run class (NaN where absent).

Balanced macro-F1 (the headline of every table, and the dev selection score). The paper selects and reports "on
balanced held-out test sets" without saying how they were drawn. Here it is the macro-F1 of the class-balanced
confusion matrix: every scored utterance weighs 1/n_c (n_c = scored utterances of its true class), so that each
class carries the same total weight, as on a test set with equally many utterances per class. It is what the
macro-F1 of class-balanced resamples converges to as they grow (tests/test_metrics.py checks it), without their
sampling noise, and it is deterministic, so selection does not depend on a resampling seed. Plain macro-F1
weighs every utterance 1, so the false positives that frequent classes send to rare ones weigh more; accuracy
(the share of scored utterances predicted right) is shown beside both. On a balanced set all three nearly agree,
as in the paper's tables.

Intervals: a class-stratified percentile bootstrap. Each resample draws, within each class, as many utterances as
the class has, with replacement (so the class composition, and with it the weights 1/n_c, are those of the scored
set); `report.bootstrap` resamples from a seed; the 95 % interval is their 2.5 and 97.5 percentiles. Systems
scored on the same utterances share the resample indices (`stratified_bootstrap_indices`), so that intervals of
differences (Table 2's changes, MEDUSA's gain) are paired. Everything is computed from weighted confusion counts
(one bincount for all resamples), because sklearn's f1_score costs ~3 ms a call and reports need thousands.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

import medusa.labels
from medusa.labels import CODES


def classes_of(labels: Sequence) -> tuple[str, ...]:
    """The codes (in CODES order) that occur in `labels`."""
    present = set(pd.Series(labels, dtype=object).dropna())
    return tuple(c for c in CODES if c in present)


def run_classes(manifest: pd.DataFrame) -> tuple[str, ...]:
    """The run's classes: the codes (in CODES order) whose p_<code> column the manifest holds
    (medusa.labels.classes_of). Every model, posteriors table and score of the run follows them."""
    try:
        return medusa.labels.classes_of(manifest)  # its columns (classes_of above reads label values)
    except ValueError as e:
        raise ValueError(f"the manifest has no soft-target column p_<code> for any of the classes "
                         f"{', '.join(CODES)}, so it names no class to train or score ({e}); rerun the prepare "
                         "stage") from None


def _class_indices(y_true: Sequence, y_pred: Sequence, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labels as indices into `classes`; anything else (X, O, a class outside `classes`, None) gets index
    len(classes): a true label there is not scored, a prediction there is always wrong."""
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    lookup = {c: i for i, c in enumerate(classes)}
    return (np.array([lookup.get(c, len(classes)) for c in y_true], dtype=np.int64),
            np.array([lookup.get(c, len(classes)) for c in y_pred], dtype=np.int64))


def utterance_weights(t: np.ndarray, n_labels: int, balanced: bool) -> np.ndarray:
    """Weight of each utterance (class indices `t`) in the confusion counts: 0 if not scored (t == n_labels);
    else 1 (plain), or 1/n_c (balanced: each scored class carries a total weight of 1)."""
    scored = t < n_labels
    if not balanced:
        return scored.astype(np.float64)
    n_c = np.bincount(t, minlength=n_labels + 1)
    return np.where(scored, 1.0 / np.maximum(n_c[t], 1), 0.0)


def _confusions(t: np.ndarray, p: np.ndarray, indices: np.ndarray, n_labels: int, weights: np.ndarray
                ) -> np.ndarray:
    """(R, k, k) weighted confusion counts (true x predicted, k = n_labels + 1, the last slot for anything
    outside the classes), one per row of `indices` (resamples of the utterances)."""
    k = n_labels + 1
    rows = np.arange(len(indices))[:, None] * k * k
    counts = np.bincount((rows + t[indices] * k + p[indices]).ravel(), weights=weights[indices].ravel(),
                         minlength=len(indices) * k * k)
    return counts.reshape(len(indices), k, k)


def _per_class_f1(confusion: np.ndarray, n_labels: int) -> np.ndarray:
    """(R, n_labels) F1 per class from (R, k, k) confusion counts; NaN for a class with no true utterance."""
    tp = np.diagonal(confusion, axis1=1, axis2=2)[:, :n_labels]
    support = confusion[:, :n_labels, :].sum(2)          # weight of each true class
    predicted = confusion[:, :, :n_labels].sum(1)        # weight predicted as each class
    present = support > 0
    # weights may be fractions (balanced): guard the division by presence, not by max(., 1)
    return np.where(present, 2 * tp / np.where(present, support + predicted, 1.0), np.nan)


def resampled_macro_f1(t: np.ndarray, p: np.ndarray, indices: np.ndarray, n_labels: int, balanced: bool = False
                       ) -> np.ndarray:
    """Macro-F1 (plain or balanced) on each row of `indices` (resamples of the utterances), from class indices
    `t`, `p` (as from _class_indices). The balanced weights 1/n_c are those of the whole scored set, which a
    stratified resample keeps. A resample with no scored utterance gives NaN."""
    weights = utterance_weights(t, n_labels, balanced)
    f1 = _per_class_f1(_confusions(t, p, np.asarray(indices), n_labels, weights), n_labels)
    present = ~np.isnan(f1)
    with np.errstate(invalid="ignore"):
        return np.where(present, f1, 0.0).sum(1) / np.where(present.any(1), present.sum(1), np.nan)


def macro_f1(y_true: Sequence, y_pred: Sequence, classes: Sequence[str] = CODES) -> float:
    """Plain macro-F1 over `classes` present among the scored utterances (see the module docstring)."""
    t, p = _class_indices(y_true, y_pred, classes)
    return float(resampled_macro_f1(t, p, np.arange(len(t))[None], len(classes))[0])


def balanced_macro_f1(y_true: Sequence, y_pred: Sequence, classes: Sequence[str] = CODES) -> float:
    """Macro-F1 of the class-balanced confusion matrix (each scored utterance weighs 1/n_c; module docstring)."""
    t, p = _class_indices(y_true, y_pred, classes)
    return float(resampled_macro_f1(t, p, np.arange(len(t))[None], len(classes), balanced=True)[0])


def accuracy(y_true: Sequence, y_pred: Sequence, classes: Sequence[str] = CODES) -> float:
    """Share of the scored utterances (consensus in `classes`) predicted right."""
    t, p = _class_indices(y_true, y_pred, classes)
    scored = t < len(classes)
    return float(np.mean(t[scored] == p[scored])) if scored.any() else float("nan")


def per_class_f1(y_true: Sequence, y_pred: Sequence, classes: Sequence[str] = CODES) -> dict[str, float]:
    """F1 of every class of `classes` over the scored utterances (NaN for a class with no true utterance)."""
    t, p = _class_indices(y_true, y_pred, classes)
    weights = utterance_weights(t, len(classes), balanced=False)
    f1 = _per_class_f1(_confusions(t, p, np.arange(len(t))[None], len(classes), weights), len(classes))[0]
    return {c: float(v) for c, v in zip(classes, f1)}


def ccc(x: Sequence[float], y: Sequence[float]) -> float:
    """Lin's concordance correlation coefficient: 2 cov / (var_x + var_y + (mean_x - mean_y)^2)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return float(2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2))


def stratified_bootstrap_indices(y_true: Sequence, n: int, seed: int) -> np.ndarray:
    """(n, N) indices: `n` class-stratified resamples of N utterances, seeded. Within each distinct true label,
    as many draws as it has utterances, with replacement; every resample keeps the class composition. Share
    them across systems scored on the same utterances (in the same order) to get paired intervals."""
    strata = np.asarray([str(v) for v in y_true])  # str: None/NaN (unscored) form a stratum of their own
    rng = np.random.default_rng(seed)
    blocks = []
    for label in sorted(set(strata)):       # a fixed order: the same labels give the same resamples
        members = np.flatnonzero(strata == label)
        blocks.append(members[rng.integers(0, len(members), (n, len(members)))])
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0), dtype=np.int64)


def bootstrap_macro_f1(y_true: Sequence, y_pred: Sequence, indices: np.ndarray, classes: Sequence[str] = CODES,
                       balanced: bool = False) -> np.ndarray:
    """Macro-F1 (plain, or balanced) on each resample: the rows of `indices` (stratified_bootstrap_indices)."""
    t, p = _class_indices(y_true, y_pred, classes)
    return resampled_macro_f1(t, p, indices, len(classes), balanced)


def percentile_interval(stats: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    alpha = (1 - level) / 2
    low, high = np.quantile(np.asarray(stats, dtype=np.float64), [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_interval(y_true: Sequence, y_pred: Sequence, n: int, seed: int, classes: Sequence[str] = CODES,
                       balanced: bool = False, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of macro-F1 (plain, or balanced) over `n` class-stratified resamples from `seed`."""
    indices = stratified_bootstrap_indices(y_true, n, seed)
    return percentile_interval(bootstrap_macro_f1(y_true, y_pred, indices, classes, balanced=balanced), level)


def relative_change(value: float | np.ndarray, reference: float | np.ndarray) -> float | np.ndarray:
    """100 (value - reference) / reference: Table 2's "relative F1 degradation" in %, negative when worse."""
    return 100.0 * (np.asarray(value, dtype=np.float64) - reference) / np.asarray(reference, dtype=np.float64)


def classification_scores(y_true: Sequence, y_pred: Sequence, classes: Sequence[str], seed: int, bootstrap: int
                          ) -> dict:
    """The scores every report shows for one set of predictions, over the utterances whose consensus is one of
    `classes` (the run's classes): balanced macro-F1 and macro-F1, each with its 95 % interval (the same
    `bootstrap` stratified resamples from `seed`), accuracy, per-class F1, n, and the classes."""
    t, p = _class_indices(y_true, y_pred, classes)
    scored = t < len(classes)
    if not scored.any():
        raise ValueError(f"no utterance labelled with one of the run's classes ({', '.join(classes)}) to score")
    y_true, y_pred = np.asarray(list(y_true), dtype=object)[scored], np.asarray(list(y_pred), dtype=object)[scored]
    indices = stratified_bootstrap_indices(y_true, bootstrap, seed)
    interval = lambda balanced: list(percentile_interval(  # noqa: E731
        bootstrap_macro_f1(y_true, y_pred, classes=classes, indices=indices, balanced=balanced)))
    return {"n": int(scored.sum()), "classes": list(classes),
            "balanced_macro_f1": balanced_macro_f1(y_true, y_pred, classes), "balanced_macro_f1_ci95": interval(True),
            "macro_f1": macro_f1(y_true, y_pred, classes), "macro_f1_ci95": interval(False),
            "accuracy": accuracy(y_true, y_pred, classes), "per_class_f1": per_class_f1(y_true, y_pred, classes)}
