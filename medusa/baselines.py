"""The simple baseline shown beside every DeepSER: logistic regression on mean-pooled features.

Each utterance becomes the concatenation, over the model's encoders, of the mean of its frames (text: of its
tokens); standardised on train; a class-balanced logistic regression (scikit-learn) is fitted on the train
utterances whose consensus is one of the 8 classes. Same encoders, same splits as the DeepSER it is compared to,
so the gap between the two is what the sequence model and the training recipe add. Its posteriors are scored
exactly like a member's (medusa.members.classification_scores_of: balanced macro-F1 first, over the run's
classes); the train utterances it fits on are those labelled with one of them (the run's classes are, by
definition, the codes labelling a train utterance).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medusa.feature_store import FeatureStore
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS


def mean_pooled(stores: list[FeatureStore], utt_ids: list[str]) -> np.ndarray:
    """(N, sum of dims): each store's frame mean per utterance, concatenated."""
    return np.concatenate([np.stack([np.asarray(s[u], dtype=np.float32).mean(0) for u in utt_ids])
                           for s in stores], axis=1)


def logistic_baseline(manifest: pd.DataFrame, stores: list[FeatureStore], c: float, seed: int,
                      score_splits: tuple[str, ...] = ("dev", "test")) -> pd.DataFrame:
    """Posteriors (utt_id, split, label, p_A..p_N; attributes NaN) of the baseline on `score_splits`."""
    fit_rows = manifest[(manifest["split"] == "train") & manifest["label"].isin(CODES)]
    if fit_rows.empty:
        raise ValueError("the manifest has no train utterance with one of the 8 class labels")
    clf = make_pipeline(StandardScaler(),
                        LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed))
    clf.fit(mean_pooled(stores, list(fit_rows["utt_id"])), fit_rows["label"].to_numpy())
    rows = manifest[manifest["split"].isin(score_splits)]
    probs = clf.predict_proba(mean_pooled(stores, list(rows["utt_id"])))
    frame = rows[["utt_id", "split", "label"]].reset_index(drop=True)
    # classes_ follow sorted order; place them in the one class order every posterior file uses
    order = [list(clf.classes_).index(code) if code in clf.classes_ else None for code in CODES]
    for column, j in zip(SOFT_TARGET_COLUMNS, order):
        frame[column] = probs[:, j] if j is not None else 0.0
    for a in ATTRIBUTES:
        frame[a] = np.nan
    return frame
