"""Quick channel probes of a corpus: how much of the label each channel carries on its own.

- audio only: eGeMAPS v02 functionals (openSMILE, 88 values per utterance) + logistic regression;
- text only: TF-IDF of the reference transcript (word 1-2 grams) + logistic regression;
- both: late fusion, the mean of the two probes' log-probabilities (a joint model over 88 dense and
  thousands of sparse columns lets one channel's regularisation starve the other).
Trained on `train`, scored on `test` and `dev` with the scores every report uses (medusa.scoring.metrics): balanced
macro-F1 (the headline), macro-F1 and accuracy, over the run's classes (those labelling a train row; a corpus
with 4 emotions is scored over 4, so a perfect probe scores 1, not 4/8). Used by the prepare notebook to check
the demo corpus's difficulty (and to size up a real corpus).
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from medusa.scoring.metrics import accuracy, balanced_macro_f1, classes_of, macro_f1, run_classes


def egemaps_functionals(paths: list[str]) -> np.ndarray:
    import opensmile

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals,
                            num_workers=os.cpu_count(), multiprocessing=True, verbose=True)  # verbose: a progress bar
    return smile.process_files(paths).to_numpy(dtype=np.float64)


def probe_sample(manifest: pd.DataFrame, max_utterances: int, seed: int) -> pd.DataFrame:
    """Utterances of train, dev and test labelled with one of the run's classes, subsampled (seeded) if needed; those with a reference
    transcript when the corpus has any (the text probe needs one), all of them when it has none."""
    rows = manifest[manifest["split"].isin(["train", "dev", "test"]) & manifest["label"].isin(run_classes(manifest))]
    if rows["ref_text"].notna().any():
        rows = rows[rows["ref_text"].notna()]
    if len(rows) > max_utterances:
        rows = rows.sample(n=max_utterances, random_state=seed).sort_index()
    return rows


def run_probes(rows: pd.DataFrame, audio_features: np.ndarray, seed: int,
               classes: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Balanced macro-F1, macro-F1 and accuracy of the three probes on test and dev (rows as from probe_sample),
    over `classes`: the run's classes (medusa.scoring.metrics.run_classes of the whole manifest; default: the classes
    labelling a train row of `rows`). Without reference transcripts (a corpus that has none) the text probe and
    the fusion are left out: only the audio probe is scored."""
    y = rows["label"].to_numpy()
    train = (rows["split"] == "train").to_numpy()
    classes = classes_of(y[train]) if classes is None else tuple(classes)
    audio = StandardScaler().fit(audio_features[train]).transform(audio_features)
    channels = [("audio (eGeMAPS)", np.nan_to_num(audio), 0.1)]
    if rows["ref_text"].notna().all():
        tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(rows["ref_text"][train])
        channels.append(("text (TF-IDF)", tfidf.transform(rows["ref_text"]), 1.0))
    log_probs = {}
    for name, x, c in channels:
        clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced", random_state=seed)
        clf.fit(x[train], y[train])
        log_probs[name] = pd.DataFrame(clf.predict_log_proba(x), columns=clf.classes_)
    if len(log_probs) == 2:
        log_probs["audio + text"] = (log_probs["audio (eGeMAPS)"] + log_probs["text (TF-IDF)"]) / 2
    results = []
    for name, lp in log_probs.items():
        for split in ("test", "dev"):
            mask = (rows["split"] == split).to_numpy() & np.isin(y, classes)
            if not mask.any():
                continue
            pred = lp[mask].idxmax(axis=1).to_numpy()
            results.append({"probe": name, "split": split, "n": int(mask.sum()),
                            "balanced_macro_f1": balanced_macro_f1(y[mask], pred, classes),
                            "macro_f1": macro_f1(y[mask], pred, classes), "accuracy": accuracy(y[mask], pred, classes),
                            "classes": len(classes)})
    return pd.DataFrame(results)
