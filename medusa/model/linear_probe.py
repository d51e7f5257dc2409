"""Every member's linear probe: logistic regression on the member's own features, mean-pooled.

Each utterance becomes the concatenation, over the member's encoders, of the mean of its frames (text: of its
tokens); standardised on train; a class-balanced logistic regression (scikit-learn) is fitted on the train
utterances whose consensus is one of the run's classes (the manifest's p_ columns). Same encoders, same splits
as the DeepSER beside it, so the gap between the two is what the sequence model and the training recipe add
(issue #12: a member should not fall below its probe). Its posteriors are scored exactly like a member's
(medusa.model.members.classification_scores_of).

The fitted probe is kept as plain numbers (`probe.json`: standardisation, weights, the classes it was fitted on
and the run's classes it outputs), not a pickle, so a member folder and the predict bundle load without running
code from a file, and so that the meta-classifier may read the probe's posteriors on new audio
(ensemble.include_probes).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from medusa.features.store.reader import FeatureStore
from medusa.io import write_json
from medusa.labels import ATTRIBUTES, CODES, target_columns
from medusa.scoring.metrics import run_classes

PROBE_FILE = "probe.json"


def pooled_means(sequences_per_modality: list[list[np.ndarray]]) -> np.ndarray:
    """(N, sum of dims): per modality, each (T, D) sequence's frame mean (float32), concatenated."""
    return np.concatenate([np.stack([np.asarray(s, dtype=np.float32).mean(0) for s in seqs])
                           for seqs in sequences_per_modality], axis=1)


def mean_pooled(stores: list[FeatureStore], utt_ids: list[str]) -> np.ndarray:
    """pooled_means of the utterances `utt_ids` read from `stores`."""
    return pooled_means([[s[u] for u in utt_ids] for s in stores])


@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe as numbers: p = softmax(((x - mean) / scale) @ coef.T + intercept) over `classes`, laid
    out over `outputs`."""
    classes: list[str]                 # the classes it was fitted on (those of the run it saw, in sorted order)
    mean: list[float]
    scale: list[float]
    coef: list[list[float]]            # (n_classes, n_features)
    intercept: list[float]
    c: float
    seed: int
    # the run's classes (CODES order): the columns of predict_proba. Probes saved before it was recorded
    # output all 8 codes.
    outputs: list[str] = field(default_factory=lambda: list(CODES))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, len(outputs)) over the run's classes, in `outputs` order (0 for a class the
        probe never saw), from pooled features."""
        z = (np.asarray(x, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        logits = z @ np.asarray(self.coef).T + np.asarray(self.intercept)
        if len(self.classes) == 2:  # scikit-learn's binary model keeps one row of weights: logit of classes[1]
            logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        out = np.zeros((len(p), len(self.outputs)))
        out[:, [self.outputs.index(c) for c in self.classes]] = p
        return out.astype(np.float32)

    def save(self, folder: str | Path) -> None:
        write_json(asdict(self), Path(folder) / PROBE_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> "LinearProbe":
        path = Path(folder) / PROBE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no linear probe (a member trained by an older version of medusa); "
                                    f"retrain it: dvc repro train@{Path(folder).name}")
        return cls(**json.loads(path.read_text()))


def fit_probe(manifest: pd.DataFrame, stores: list[FeatureStore], c: float, seed: int) -> LinearProbe:
    """The probe fitted on the train utterances of `manifest` labelled with one of the run's classes, with
    outputs over all of them (medusa.scoring.metrics.run_classes)."""
    classes = run_classes(manifest)
    fit_rows = manifest[(manifest["split"] == "train") & manifest["label"].isin(classes)]
    if fit_rows.empty:
        raise ValueError(f"the manifest has no train utterance labelled with one of its classes {' '.join(classes)}")
    x = mean_pooled(stores, list(fit_rows["utt_id"])).astype(np.float64)
    y = fit_rows["label"].to_numpy()
    if len(set(y)) < 2:
        raise ValueError(f"the linear probe needs two classes among the train utterances, got only {set(y)}")
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed)
    clf.fit(scaler.transform(x), y)
    return LinearProbe(classes=[str(k) for k in clf.classes_], mean=scaler.mean_.tolist(),
                       scale=scaler.scale_.tolist(), coef=clf.coef_.tolist(), intercept=clf.intercept_.tolist(),
                       c=float(c), seed=int(seed), outputs=list(classes))


def probe_posteriors(probe: LinearProbe, rows: pd.DataFrame, stores: list[FeatureStore]) -> pd.DataFrame:
    """Posteriors (utt_id, split, label, p_<code> of each of the probe's outputs, the run's classes; attributes
    NaN: a probe predicts none) of `rows`."""
    frame = rows[["utt_id", "split", "label"]].reset_index(drop=True)
    frame[list(target_columns(probe.outputs))] = probe.predict_proba(mean_pooled(stores, list(frame["utt_id"])))
    for a in ATTRIBUTES:
        frame[a] = np.nan
    return frame


def logistic_baseline(manifest: pd.DataFrame, stores: list[FeatureStore], c: float, seed: int,
                      score_splits: tuple[str, ...] = ("dev", "test")) -> pd.DataFrame:
    """Posteriors of a probe fitted on `manifest`'s train split, on `score_splits`."""
    probe = fit_probe(manifest, stores, c, seed)
    return probe_posteriors(probe, manifest[manifest["split"].isin(score_splits)], stores)
