"""Emotion classes, their codes, and the label arithmetic every stage shares.

This module is the one source of truth for class order: MSP-Podcast's order A S H U F D C N.
"""
from __future__ import annotations

import numpy as np

#: The 8 classes of the challenge's categorical task, in MSP-Podcast order.
EMOTIONS: tuple[str, ...] = ("Angry", "Sad", "Happy", "Surprise", "Fear", "Disgust", "Contempt", "Neutral")
#: One-letter codes, same order as EMOTIONS.
CODES: tuple[str, ...] = ("A", "S", "H", "U", "F", "D", "C", "N")
CODE_OF: dict[str, str] = dict(zip(EMOTIONS, CODES))
EMOTION_OF: dict[str, str] = dict(zip(CODES, EMOTIONS))
#: Consensus codes that are not one of the 8 classes: O = other, X = no agreement.
OTHER, NO_AGREEMENT = "O", "X"
CONSENSUS_CODES: tuple[str, ...] = CODES + (OTHER, NO_AGREEMENT)
#: Manifest columns holding the soft targets, in class order.
SOFT_TARGET_COLUMNS: tuple[str, ...] = tuple(f"p_{c}" for c in CODES)


def target_columns(classes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The soft-target / posterior columns of a run over `classes` (codes, in CODES order): p_<code> each."""
    return tuple(f"p_{c}" for c in classes)


def classes_of(frame) -> tuple[str, ...]:
    """The run's classes recorded by a table (the manifest, a posteriors frame, a prediction): the codes whose
    p_<code> column it holds, in CODES order. The manifest holds exactly the run's classes (medusa.data.corpora),
    so every later table and model follows it. ValueError if it holds none."""
    columns = set(getattr(frame, "columns", frame))
    found = tuple(c for c in CODES if f"p_{c}" in columns)
    if not found:
        raise ValueError(f"no class column (p_A .. p_N) among {sorted(map(str, columns))[:12]}")
    return found


def common_classes(classes: dict[str, tuple[str, ...]], what: str) -> tuple[str, ...]:
    """The one class list shared by every entry of `classes` ({name: its classes}, e.g. an ensemble's members);
    ValueError naming each entry with its classes when they differ (`what` names the entries in the message).
    Posteriors over other classes cannot be stacked or compared column by column."""
    if not classes:
        raise ValueError(f"no {what} to take the classes of")
    if len(set(classes.values())) > 1:
        listed = "; ".join(f"{name}: {' '.join(c)}" for name, c in classes.items())
        raise ValueError(f"the {what} are over different classes ({listed}); they must all come from one run "
                         "(the same manifest): retrain those of another run")
    return next(iter(classes.values()))


#: Emotional attributes (MSP-Podcast EmoAct, EmoVal, EmoDom), rated 1..7.
ATTRIBUTES: tuple[str, ...] = ("arousal", "valence", "dominance")

# Spellings of the primary emotion seen in annotator files (full words, adjectives, codes). Anything starting
# with "Other" is an Other vote; anything else is an error (see primary_code).
_PRIMARY_SPELLINGS: dict[str, str] = {
    **{e.lower(): c for e, c in CODE_OF.items()},
    **{c.lower(): c for c in CODES},
    "anger": "A", "sadness": "S", "happiness": "H", "surprised": "U", "afraid": "F", "fearful": "F",
    "disgusted": "D", "contemptuous": "C", "neutrality": "N",
}


def primary_code(word: str) -> str | None:
    """Map an annotator's primary emotion to a class code, OTHER for `Other-...`, None if unknown."""
    w = word.strip().lower()
    if w.startswith("other"):
        return OTHER
    return _PRIMARY_SPELLINGS.get(w)


def vote_counts(codes: list[str]) -> np.ndarray:
    """Count votes per class in class order; Other votes are not counted (they name no class)."""
    counts = np.zeros(len(CODES), dtype=np.int64)
    for c in codes:
        if c in CODES:
            counts[CODES.index(c)] += 1
    return counts


def soft_targets(counts: np.ndarray) -> np.ndarray:
    """Normalise vote counts (..., 8) to distributions; rows with no class vote become NaN (no target)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, counts / np.where(total > 0, total, 1), np.nan)


def plurality(codes: list[str]) -> str:
    """Consensus by plurality over all primary votes (Other included): the top code, X when the top is tied."""
    if not codes:
        return NO_AGREEMENT
    values, counts = np.unique(np.asarray(codes), return_counts=True)
    top = counts.max()
    winners = values[counts == top]
    return str(winners[0]) if len(winners) == 1 else NO_AGREEMENT


def class_weights(counts: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Stage-1 class weights alpha_c = (N / (|C| f_c)) ** power (paper: power 0.5), N = sum of f_c.

    A class with no examples gets weight 0 (it cannot appear in the loss anyway)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"counts must be a 1-d array of non-negative numbers, got {counts!r}")
    total = counts.sum()
    with np.errstate(divide="ignore"):
        w = (total / (len(counts) * counts)) ** power
    return np.where(counts > 0, w, 0.0)


def balanced_epoch(labels: np.ndarray, rng: np.random.Generator, per_class: int | None = None,
                   classes: tuple[str, ...] = CODES) -> np.ndarray:
    """Indices of a class-balanced subset, shuffled: `per_class` of each class (default: the size of the
    smallest class present), drawn without replacement (with replacement for a class that has fewer).
    Stage 2 draws a fresh one every epoch."""
    labels = np.asarray(labels)
    pools = {c: np.flatnonzero(labels == c) for c in classes}
    present = {c: p for c, p in pools.items() if len(p)}
    if not present:
        raise ValueError(f"no label of {classes} present")
    k = min(len(p) for p in present.values()) if per_class is None else per_class
    picks = [rng.choice(p, size=k, replace=len(p) < k) for p in present.values()]
    return rng.permutation(np.concatenate(picks))
