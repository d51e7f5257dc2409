"""The ensemble's combiners: voting, the meta-classifier (what it reads and predicts, its saved config) and the soup."""
import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from ensemble_data import _complementary_members, _stacked_with_attributes
from meta_config import meta_config

from medusa.ensemble.meta import MetaClassifier, MetaConfig, meta_predict, soup, soup_runs, train_meta
from medusa.ensemble.tables import member_class_weights
from medusa.ensemble.voting import majority_vote, soft_vote
from medusa.labels import CODES
from medusa.scoring.metrics import macro_f1


def test_majority_vote_counts_argmaxes_and_breaks_ties_by_mean_posterior():
    p = np.full((3, 3, 8), 0.01)
    # utterance 0: members vote 2, 2, 5 -> 2 (even though member 3 is very sure of 5)
    p[0, 0, 2], p[0, 1, 2], p[0, 2, 5] = 0.5, 0.4, 0.99
    # utterance 1: votes 1, 4, 4 -> 4
    p[1, 0, 1], p[1, 1, 4], p[1, 2, 4] = 0.9, 0.3, 0.3
    # utterance 2: votes 0, 7 and 3 (three-way tie) -> the tied class with the highest mean posterior: 7
    p[2, 0, 0], p[2, 1, 7], p[2, 2, 3] = 0.4, 0.8, 0.5
    assert majority_vote(p).tolist() == [2, 4, 7]
    # soft voting follows the mean posterior instead
    assert soft_vote(p).tolist() == [5, 1, 7]


def test_soup_is_the_elementwise_mean_of_the_runs():
    cfg = meta_config(n_models=2, attributes_in=True, hidden=4)
    runs = []
    for s in range(3):
        torch.manual_seed(s)
        runs.append(MetaClassifier(cfg))
    mixed = soup(runs)
    for k, v in mixed.state_dict().items():
        expected = sum(r.state_dict()[k] for r in runs) / 3
        torch.testing.assert_close(v, expected)
    with pytest.raises(ValueError):
        soup([])


def test_meta_classifier_learns_which_member_to_trust_and_beats_both():
    train, y = _complementary_members(800, 0)
    test, y_test = _complementary_members(400, 1)
    targets = np.eye(8, dtype=np.float32)[y]
    cfg = meta_config(n_models=2, epochs=60, lr=1e-2, seed=0, mse_weight=0.0)
    meta = train_meta(train, targets, np.full((len(y), 3), np.nan, np.float32), cfg)
    probs, attrs = meta_predict(meta, test)
    assert attrs is None and np.allclose(probs.sum(1), 1, atol=1e-5)   # mse_weight 0: class outputs only
    truth = np.asarray(CODES)[y_test]
    meta_f1 = macro_f1(truth, np.asarray(CODES)[probs.argmax(1)])
    member_f1 = [macro_f1(truth, np.asarray(CODES)[test.probs[:, m].argmax(1)]) for m in range(2)]
    soft_f1 = macro_f1(truth, np.asarray(CODES)[soft_vote(test.probs)])
    assert meta_f1 > max(member_f1) + 0.2 and meta_f1 > soft_f1, (meta_f1, member_f1, soft_f1)
    weights = member_class_weights(meta, ["A", "B"])
    assert (weights.loc["A", list(CODES[:4])].mean() > weights.loc["B", list(CODES[:4])].mean())
    assert (weights.loc["B", list(CODES[4:])].mean() > weights.loc["A", list(CODES[4:])].mean())


def test_meta_classifier_reads_the_posteriors_only_unless_attributes_in():
    """The paper's meta-classifier combines the members' posteriors; attribute predictions go in only with
    attributes_in. Attribute outputs are a separate switch, on when mse_weight > 0."""
    paper = meta_config(n_models=2, epochs=5, lr=1e-2)
    assert not paper.attributes_in and paper.attributes_out and paper.n_inputs == 2 * 8
    assert MetaClassifier(paper).net.weight.shape == (8 + 3, 2 * 8)
    with_in = meta_config(n_models=2, attributes_in=True, mse_weight=0.0)
    assert with_in.n_inputs == 2 * 11 and not with_in.attributes_out
    assert MetaClassifier(with_in).net.weight.shape == (8, 2 * 11)
    # behaviour: members' attribute predictions moved by +3 change nothing without attributes_in ...
    a, y = _stacked_with_attributes(200, 0)
    b, _ = _stacked_with_attributes(200, 0, attribute_offset=3.0)
    targets = np.eye(8, dtype=np.float32)[y]
    ratings = np.full((200, 3), 4.0, np.float32)
    pa = meta_predict(train_meta(a, targets, ratings, paper), a)
    pb = meta_predict(train_meta(b, targets, ratings, paper), b)
    np.testing.assert_array_equal(pa[0], pb[0])
    np.testing.assert_array_equal(pa[1], pb[1])
    # ... and change the predictions with it
    cfg_in = meta_config(n_models=2, epochs=5, lr=1e-2, attributes_in=True)
    qa = meta_predict(train_meta(a, targets, ratings, cfg_in), a)[0]
    qb = meta_predict(train_meta(b, targets, ratings, cfg_in), b)[0]
    assert np.abs(qa - qb).max() > 1e-3


def test_attribute_outputs_learn_the_ratings_when_mse_weight_is_positive():
    stacked, y = _stacked_with_attributes(300, 1)
    targets = np.eye(8, dtype=np.float32)[y]
    ratings = np.tile(np.array([[6.0, 2.0, 5.0]], np.float32), (300, 1))
    cfg = meta_config(n_models=2, epochs=40, lr=3e-2, mse_weight=0.4)
    probs, attrs = meta_predict(train_meta(stacked, targets, ratings, cfg), stacked)
    assert attrs.shape == (300, 3)
    np.testing.assert_allclose(attrs.mean(0), [6.0, 2.0, 5.0], atol=0.3)


def test_a_bundle_config_saved_before_the_split_loads_with_its_shapes():
    """meta.json of a bundle saved with the former single switch `use_attributes` (bundle.load_bundle calls
    MetaConfig.from_saved(config)): attributes in and out, as that model was trained; the new fields round-trip."""
    legacy = {"n_models": 3, "use_attributes": True, "hidden": 0, "epochs": 30, "batch_size": 128, "lr": 1e-3,
              "weight_decay": 0.01, "ce_weight": 1.5, "mse_weight": 0.4, "seed": 0}
    cfg = MetaConfig.from_saved(legacy)
    assert cfg.attributes_in and cfg.attributes_out
    assert MetaClassifier(cfg).net.weight.shape == (11, 33)
    off = MetaConfig.from_saved({**legacy, "use_attributes": False})
    assert not off.attributes_in and not off.attributes_out
    saved = json.loads(json.dumps(asdict(cfg)))
    assert "use_attributes" not in saved and MetaConfig.from_saved(saved) == cfg
    assert cfg.stage3 == "paper"          # a bundle saved before stage-3 forms existed is the paper's layer
    anchored = MetaConfig.from_saved({**legacy, "stage3": "anchored", "anchor_l2": 0.1})
    assert MetaConfig.from_saved(json.loads(json.dumps(asdict(anchored)))) == anchored
    with pytest.raises(ValueError, match="stage3 'vote': one of paper, anchored, voting"):
        meta_config(n_models=2, stage3="vote")


def _same_weights(a: MetaClassifier, b: MetaClassifier) -> bool:
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_a_hidden_layer_soup_starts_every_seed_from_the_first_seeds_weights():
    """Stage 4 averages weights unit by unit: with a hidden layer the runs must start alike (the first seed's
    initial weights) and differ only by their seeds' class-balanced draws; the linear layer keeps a start per
    seed (the committed demo's behaviour)."""
    train, y = _complementary_members(200, 0)
    targets, unrated = np.eye(8, dtype=np.float32)[y], np.full((len(y), 3), np.nan, np.float32)
    cfg = meta_config(n_models=2, hidden=8, epochs=0, mse_weight=0.0)   # 0 epochs: the runs as they start
    start = soup_runs(train, targets, unrated, cfg, [3, 7])
    assert _same_weights(*start) and [r.cfg.seed for r in start] == [3, 7]
    assert _same_weights(start[0], train_meta(train, targets, unrated, replace(cfg, seed=3)))
    assert not _same_weights(start[0], train_meta(train, targets, unrated, replace(cfg, seed=7)))
    trained = soup_runs(train, targets, unrated, replace(cfg, epochs=3), [3, 7])
    assert not _same_weights(*trained)                     # the seeds' draws made them differ
    probs, _ = meta_predict(soup(trained), train)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-5)
    # linear: each seed its own start, as before (sharing it would move the committed demo soup's weights)
    linear = soup_runs(train, targets, unrated, replace(cfg, hidden=0), [3, 7])
    assert not _same_weights(*linear)
    with pytest.raises(ValueError, match="at least one seed"):
        soup_runs(train, targets, unrated, cfg, [])
