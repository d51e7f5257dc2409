"""The ensemble level: voting, the meta-classifier, the soup, and the split protocol."""
import numpy as np
import pandas as pd
import pytest
import torch

from medusa import ensemble
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS
from medusa.metrics import macro_f1


def test_majority_vote_counts_argmaxes_and_breaks_ties_by_mean_posterior():
    p = np.full((3, 3, 8), 0.01)
    # utterance 0: members vote 2, 2, 5 -> 2 (even though member 3 is very sure of 5)
    p[0, 0, 2], p[0, 1, 2], p[0, 2, 5] = 0.5, 0.4, 0.99
    # utterance 1: votes 1, 4, 4 -> 4
    p[1, 0, 1], p[1, 1, 4], p[1, 2, 4] = 0.9, 0.3, 0.3
    # utterance 2: votes 0, 7 and 3 (three-way tie) -> the tied class with the highest mean posterior: 7
    p[2, 0, 0], p[2, 1, 7], p[2, 2, 3] = 0.4, 0.8, 0.5
    assert ensemble.majority_vote(p).tolist() == [2, 4, 7]
    # soft voting follows the mean posterior instead
    assert ensemble.soft_vote(p).tolist() == [5, 1, 7]


def test_soup_is_the_elementwise_mean_of_the_runs():
    cfg = ensemble.MetaConfig(n_models=2, use_attributes=True, hidden=4)
    runs = []
    for s in range(3):
        torch.manual_seed(s)
        runs.append(ensemble.MetaClassifier(cfg))
    mixed = ensemble.soup(runs)
    for k, v in mixed.state_dict().items():
        expected = sum(r.state_dict()[k] for r in runs) / 3
        torch.testing.assert_close(v, expected)
    with pytest.raises(ValueError):
        ensemble.soup([])


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
    return ensemble.Stacked(np.asarray([f"u{i}" for i in range(n)]), probs, np.full((n, 2, 3), 4.0, np.float32),
                            labels), y


def test_meta_classifier_learns_which_member_to_trust_and_beats_both():
    train, y = _complementary_members(800, 0)
    test, y_test = _complementary_members(400, 1)
    targets = np.eye(8, dtype=np.float32)[y]
    cfg = ensemble.MetaConfig(n_models=2, epochs=60, lr=1e-2, seed=0)
    meta = ensemble.train_meta(train, targets, np.full((len(y), 3), np.nan, np.float32), cfg)
    probs, attrs = ensemble.meta_predict(meta, test)
    assert attrs is None and np.allclose(probs.sum(1), 1, atol=1e-5)
    truth = np.asarray(CODES)[y_test]
    meta_f1 = macro_f1(truth, np.asarray(CODES)[probs.argmax(1)])
    member_f1 = [macro_f1(truth, np.asarray(CODES)[test.probs[:, m].argmax(1)]) for m in range(2)]
    soft_f1 = macro_f1(truth, np.asarray(CODES)[ensemble.soft_vote(test.probs)])
    assert meta_f1 > max(member_f1) + 0.2 and meta_f1 > soft_f1, (meta_f1, member_f1, soft_f1)
    weights = ensemble.member_class_weights(meta, ["A", "B"])
    assert (weights.loc["A", list(CODES[:4])].mean() > weights.loc["B", list(CODES[:4])].mean())
    assert (weights.loc["B", list(CODES[4:])].mean() > weights.loc["A", list(CODES[4:])].mean())


def _posteriors(manifest: pd.DataFrame, rng) -> pd.DataFrame:
    rows = manifest[manifest["split"] != "train"][["utt_id", "split", "label"]].reset_index(drop=True)
    p = rng.dirichlet(np.ones(8), len(rows))
    rows[list(SOFT_TARGET_COLUMNS)] = p
    rows[list(ATTRIBUTES)] = 4.0
    return rows


def test_run_subset_trains_on_dev_only_and_predicts_test():
    rng = np.random.default_rng(0)
    n = 240
    splits = np.asarray(["train", "dev", "test"])[np.arange(n) % 3]
    labels = np.asarray(CODES)[rng.integers(0, 8, n)]
    manifest = pd.DataFrame({"utt_id": [f"u{i}" for i in range(n)], "split": splits, "label": labels})
    manifest[list(SOFT_TARGET_COLUMNS)] = np.eye(8)[[CODES.index(c) for c in labels]]
    manifest[list(ATTRIBUTES)] = 3.0
    posteriors = {m: _posteriors(manifest, rng) for m in ("a", "b", "c")}
    cfg = ensemble.MetaConfig(n_models=0, epochs=3, use_attributes=True)
    result = ensemble.run_subset(posteriors, manifest, ["a", "c"], cfg, seeds=[0, 1])
    assert set(result.test.utt_ids) == set(manifest.loc[manifest["split"] == "test", "utt_id"])
    # no utterance a base model trained on (train), nor any test utterance, is in the meta-classifier's training set
    split_of = manifest.set_index("utt_id")["split"]
    assert set(split_of[result.meta_train_utt_ids]) == {"dev"}
    assert len(result.meta_train_utt_ids) == (manifest["split"] == "dev").sum()
    assert len(result.runs) == 2 and result.soup.cfg.n_models == 2
    assert set(result.predictions) == {"majority voting", "soft voting", "meta-classifier (single)",
                                       "meta-classifier (soup)"}
    table = ensemble.technique_table({"all": result})
    assert len(table) == 4 and table["macro_f1"].between(0, 1).all()
    # the guard itself: a train utterance among the meta-classifier's training rows is refused
    with pytest.raises(AssertionError, match="not in 'dev'"):
        ensemble.assert_no_leakage(manifest, np.asarray(["u1", "u0"]))


def test_top_k_by_held_out_score():
    assert ensemble.top_k_names({"a": 0.3, "b": 0.5, "c": 0.4, "d": 0.5}, 2) == ["b", "d"]
