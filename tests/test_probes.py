"""The prepare notebook's channel probes score with the run's metrics, over the run's classes."""
import numpy as np
import pandas as pd
import pytest

from medusa.data.channel_probes import run_probes
from medusa.scoring.metrics import balanced_macro_f1, macro_f1

WORDS = {"A": "furious shouting", "S": "tears grief", "H": "joy laughter", "N": "weather report"}


def _corpus(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A corpus with 4 of the 8 emotions, an imbalanced test split; both channels carry the class cleanly."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, counts in (("train", {"A": 30, "S": 30, "H": 30, "N": 30}), ("test", {"A": 4, "S": 6, "H": 10, "N": 40}),
                          ("dev", {"A": 8, "S": 8, "H": 8, "N": 8})):
        for code, n in counts.items():
            rows += [{"split": split, "label": code, "ref_text": f"{WORDS[code]} filler{rng.integers(0, 50)}"}
                     for _ in range(n)]
    rows = pd.DataFrame(rows)
    centres = {c: rng.normal(0, 5, 6) for c in WORDS}
    audio = np.stack([centres[c] + rng.normal(0, 0.1, 6) for c in rows["label"]])
    return rows, audio


def test_probes_score_over_the_run_classes_with_the_balanced_headline():
    rows, audio = _corpus()
    results = run_probes(rows, audio, seed=0).set_index(["probe", "split"])
    # a perfect probe on a 4-class corpus scores 1 (the old average over all 8 codes gave 0.5)
    for probe in ("audio (eGeMAPS)", "text (TF-IDF)", "audio + text"):
        r = results.loc[(probe, "test")]
        assert r["balanced_macro_f1"] == r["macro_f1"] == r["accuracy"] == 1.0 and r["classes"] == 4
        assert r["n"] == 60


def test_probe_scores_are_the_metrics_functions_on_its_predictions():
    rows, audio = _corpus(1)
    rng = np.random.default_rng(2)
    noisy = audio + rng.normal(0, 6, audio.shape)                 # an audio channel that errs
    blank = rows.assign(ref_text="same words here")               # a text channel that carries nothing
    results = run_probes(blank, noisy, seed=0).set_index(["probe", "split"])
    r = results.loc[("audio (eGeMAPS)", "test")]
    assert r["balanced_macro_f1"] != pytest.approx(r["macro_f1"], abs=1e-3)   # imbalanced test: they differ
    # recompute from the fitted probe's own predictions to pin the definitions
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    train = (rows["split"] == "train").to_numpy()
    x = StandardScaler().fit(noisy[train]).transform(noisy)
    clf = LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced", random_state=0).fit(x[train],
                                                                                                rows["label"][train])
    test = (rows["split"] == "test").to_numpy()
    pred = clf.classes_[clf.predict_log_proba(x[test]).argmax(1)]
    y = rows["label"].to_numpy()[test]
    classes = ("A", "S", "H", "N")
    assert r["balanced_macro_f1"] == pytest.approx(balanced_macro_f1(y, pred, classes))
    assert r["macro_f1"] == pytest.approx(macro_f1(y, pred, classes))


def test_probes_use_the_given_run_classes():
    rows, audio = _corpus()
    # the run's classes come from the whole manifest's train split; here they name a fifth class (F) that the
    # probe sample lacks: it is in none of the scored utterances, so the scores do not change
    base = run_probes(rows, audio, seed=0)
    wider = run_probes(rows, audio, seed=0, classes=("A", "S", "H", "F", "N"))
    np.testing.assert_allclose(base["balanced_macro_f1"], wider["balanced_macro_f1"])
    assert (wider["classes"] == 5).all()
