"""Stage 3's forms: the paper's meta-classifier, the layer anchored at soft voting, soft voting itself, and the
cross-validation within dev that chooses among them."""
import json

import numpy as np
import torch
from ensemble_data import _complementary_members, _manifest, _posteriors, _stacked_with_attributes
from meta_config import meta_config

from medusa.ensemble.meta import MetaClassifier, meta_predict, take, train_meta
from medusa.ensemble.stage3 import choose_stage3
from medusa.ensemble.subsets import run_subset
from medusa.ensemble.tables import stage3_table
from medusa.ensemble.voting import Stacked, soft_vote
from medusa.labels import CODES
from medusa.scoring.metrics import macro_f1


def test_the_anchored_layer_starts_at_soft_voting_and_the_voting_form_stays_there():
    """logits = log(mean posterior) + W x + b: with W, b = 0 the class probabilities are soft voting's exactly;
    the "voting" form (what cross-validation may choose) trains its attribute outputs and keeps that."""
    stacked, y = _stacked_with_attributes(120, 0)
    mean = stacked.probs.mean(1)
    start = MetaClassifier(meta_config(n_models=2, stage3="anchored"))
    with torch.no_grad():
        for p in start.parameters():
            p.zero_()
    assert np.allclose(meta_predict(start.eval(), stacked)[0], mean, atol=1e-6)
    targets = np.eye(8, dtype=np.float32)[y]
    attributes = stacked.attributes.mean(1)
    voting = train_meta(stacked, targets, attributes,
                                 meta_config(n_models=2, stage3="voting", epochs=40, lr=3e-2))
    probs, attrs = meta_predict(voting, stacked)
    assert np.allclose(probs, mean, atol=1e-6) and attrs is not None
    untrained = meta_predict(MetaClassifier(voting.cfg).eval(), stacked)[1]
    error = lambda a: np.abs(a - attributes).mean()  # noqa: E731
    assert error(attrs) < error(untrained)
    # the paper's form has no anchor: the same zero weights give the uniform distribution
    paper = MetaClassifier(meta_config(n_models=2))
    with torch.no_grad():
        for p in paper.parameters():
            p.zero_()
    assert np.allclose(meta_predict(paper.eval(), stacked)[0], 1 / 8)


def test_the_penalty_pulls_the_anchored_layer_back_to_voting():
    train, y = _complementary_members(400, 0)
    targets = np.eye(8, dtype=np.float32)[y]
    none = np.full((len(y), 3), np.nan, np.float32)
    norms = []
    for l2 in (0.0, 1.0):
        cfg = meta_config(n_models=2, stage3="anchored", anchor_l2=l2, epochs=20, lr=1e-2, mse_weight=0.0)
        weight, bias = train_meta(train, targets, none, cfg).class_head()
        norms.append(float((weight.pow(2).sum() + bias.pow(2).sum()).detach()))
    assert norms[1] < 0.2 * norms[0], norms


def test_cross_validation_learns_where_dev_teaches_and_keeps_voting_where_it_cannot():
    """Complementary members (a meta-classifier can learn whom to trust): cross-validation within dev picks an
    anchored layer, which beats soft voting on test. Members that are noise on a dev of a few dozen clips: it keeps
    soft voting, exactly."""
    dev, y = _complementary_members(600, 0)
    test, y_test = _complementary_members(400, 1)
    targets = np.eye(8, dtype=np.float32)[y]
    none = np.full((len(y), 3), np.nan, np.float32)
    cfg = meta_config(n_models=2, stage3="anchored", epochs=20, lr=1e-2, mse_weight=0.0)
    chosen, choice = choose_stage3(dev, targets, none, cfg, [1.0, 0.01], folds=3)
    assert choice.form == "anchored" and chosen.stage3 == "anchored" and chosen.anchor_l2 == choice.anchor_l2
    assert choice.folds == 3 and list(choice.cv["candidate"]) == ["voting", "anchored", "anchored"]
    assert choice.cv["chosen"].sum() == 1 and choice.dev_rows == 600 and choice.warning is None
    meta = train_meta(dev, targets, none, chosen)
    truth = np.asarray(CODES)[y_test]
    learnt = macro_f1(truth, np.asarray(CODES)[meta_predict(meta, test)[0].argmax(1)])
    assert learnt > macro_f1(truth, np.asarray(CODES)[soft_vote(test.probs)]) + 0.1

    noise = Stacked(dev.utt_ids[:40], np.random.default_rng(1).dirichlet(np.ones(8), (40, 2)).astype(
        np.float32), dev.attributes[:40], dev.labels[:40])
    chosen, choice = choose_stage3(noise, targets[:40], none[:40], cfg, [1.0, 0.01], folds=3)
    assert choice.form == "voting" and chosen.stage3 == "voting"


def test_a_dev_smaller_than_the_inputs_warns_and_stays_with_voting(caplog):
    """Issue #22's shape: a few dozen dev clips against M x C inputs. The run warns (log and result), and the
    anchored form keeps soft voting's predictions; the paper's form, trained alike, is Table 3's extra row."""
    rng = np.random.default_rng(3)
    manifest = _manifest(rng, n=90)                                # 30 dev clips
    members = [f"m{i}" for i in range(5)]                          # 5 x 8 = 40 inputs
    posteriors = {m: _posteriors(manifest, rng) for m in members}
    cfg = meta_config(n_models=0, stage3="anchored", epochs=30, lr=1e-2)
    with caplog.at_level("WARNING", logger="medusa.ensemble.subsets"):
        result = run_subset(posteriors, manifest, members, cfg, [0, 1], anchor_grid=[1.0, 0.01], cv_folds=5)
    assert "stage 3 trains on 30 scored dev clips but reads 40 inputs" in caplog.text
    assert result.stage3.warning and result.stage3.dev_rows == 30 and result.stage3.n_inputs == 40
    assert result.stage3.form == "voting"
    assert (result.predictions["meta-classifier (soup)"] == result.predictions["soft voting"]).all()
    assert "paper's meta-classifier soup" in result.predictions
    table = stage3_table({"all": result})
    assert table.loc["all", "form"] == "voting" and table.loc["all", "warning"] == "fewer dev clips than inputs"
    assert json.loads(json.dumps(result.stage3.record()))["form"] == "voting"


def test_a_dev_without_a_class_keeps_voting_and_says_which_class():
    """Issue #22's dev of two classes: a layer trained on it learns never to predict the others, and no fold of a
    cross-validation can show that. The anchored form keeps soft voting; the paper's form is trained as asked,
    with the same warning."""
    dev, y = _complementary_members(400, 0)
    keep = np.flatnonzero(y != CODES.index("S"))                 # no Sad clip in dev
    dev, y = take(dev, keep), y[keep]
    targets = np.eye(8, dtype=np.float32)[y]
    none = np.full((len(y), 3), np.nan, np.float32)
    anchored = meta_config(n_models=2, stage3="anchored", epochs=10, lr=1e-2, mse_weight=0.0)
    chosen, choice = choose_stage3(dev, targets, none, anchored, [1.0, 0.01], folds=3)
    assert choice.form == "voting" and choice.dev_classes["S"] == 0 and choice.cv is None
    assert "no dev clip of class S" in choice.warning
    _, paper = choose_stage3(dev, targets, none, meta_config(n_models=2), [1.0], folds=3)
    assert paper.form == "paper" and "no dev clip of class S" in paper.warning
