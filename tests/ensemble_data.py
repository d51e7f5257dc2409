"""Stacked member outputs and manifests the ensemble tests build (test_meta_classifier, test_stage3, test_subsets,
test_probe_inputs, test_ensemble_tables): members a meta-classifier can learn to combine, random posteriors over a
random manifest's dev and test rows."""
import numpy as np
import pandas as pd

from medusa.ensemble.voting import Stacked
from medusa.labels import ATTRIBUTES, CODES, classes_of, target_columns


def _complementary_members(n: int, seed: int):
    """Member A's posteriors carry the class among 0-3 and are pure noise on 4-7; member B the reverse.
    Each member is right only about half the time, and the noise peaks mislead soft voting too; a linear
    meta-classifier can learn to read A on 0-3 and B on 4-7."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, n)
    probs = np.zeros((n, 2, 8), np.float32)
    for m, known in enumerate((np.arange(0, 4), np.arange(4, 8))):
        noise = np.setdiff1d(np.arange(8), known)
        for i, c in enumerate(y):
            logits = np.zeros(8)
            logits[known] = rng.normal(0, 0.5, 4) + 2.5 * (known == c)
            logits[noise] = rng.normal(1.0, 1.5, 4)
            probs[i, m] = np.exp(logits) / np.exp(logits).sum()
    labels = np.asarray(CODES)[y]
    return Stacked(np.asarray([f"u{i}" for i in range(n)]), probs, np.full((n, 2, 3), 4.0, np.float32),
                            labels), y


def _posteriors(manifest: pd.DataFrame, rng) -> pd.DataFrame:
    """Random posteriors over the manifest's classes (its p_ columns) of its dev and test rows."""
    rows = manifest[manifest["split"] != "train"][["utt_id", "split", "label"]].reset_index(drop=True)
    classes = classes_of(manifest)
    p = rng.dirichlet(np.ones(len(classes)), len(rows))
    rows[list(target_columns(classes))] = p
    rows[list(ATTRIBUTES)] = 4.0
    return rows


def _manifest(rng, n: int = 240, classes: tuple[str, ...] = CODES) -> pd.DataFrame:
    """train/dev/test in turn, random labels, one-hot soft targets over `classes` (the run's), attributes 3."""
    splits = np.asarray(["train", "dev", "test"])[np.arange(n) % 3]
    labels = np.asarray(classes)[rng.integers(0, len(classes), n)]
    manifest = pd.DataFrame({"utt_id": [f"u{i}" for i in range(n)], "split": splits, "label": labels})
    manifest[list(target_columns(classes))] = np.eye(len(classes))[[classes.index(c) for c in labels]]
    manifest[list(ATTRIBUTES)] = 3.0
    return manifest


def _stacked_with_attributes(n: int, seed: int, attribute_offset: float = 0.0) -> tuple[Stacked, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, n)
    probs = rng.dirichlet(np.ones(8), (n, 2)).astype(np.float32)
    probs[np.arange(n), 0, y] += 1.0
    probs /= probs.sum(-1, keepdims=True)
    attrs = (rng.uniform(1, 7, (n, 2, 3)) + attribute_offset).astype(np.float32)
    return Stacked(np.asarray([f"u{i}" for i in range(n)]), probs, attrs, np.asarray(CODES)[y]), y
