"""The split protocol of run_subset: the meta-classifier trains on dev only and predicts test; top-k subsets; dev
rows without targets; runs over fewer classes than all 8."""
import numpy as np
import pytest
import torch
from ensemble_data import _manifest, _posteriors
from meta_config import meta_config

from medusa.ensemble.meta import MetaClassifier, meta_predict
from medusa.ensemble.subsets import assert_no_leakage, ensemble_posteriors, run_subset, top_k_names
from medusa.ensemble.tables import member_class_weights, technique_table
from medusa.ensemble.voting import stack
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS


def test_run_subset_trains_on_dev_only_and_predicts_test():
    rng = np.random.default_rng(0)
    manifest = _manifest(rng)
    posteriors = {m: _posteriors(manifest, rng) for m in ("a", "b", "c")}
    cfg = meta_config(n_models=0, epochs=3, attributes_in=True)
    result = run_subset(posteriors, manifest, ["a", "c"], cfg, seeds=[0, 1], anchor_grid=(), cv_folds=5)
    assert set(result.test.utt_ids) == set(manifest.loc[manifest["split"] == "test", "utt_id"])
    # no utterance a base model trained on (train), nor any test utterance, is in the meta-classifier's training set
    split_of = manifest.set_index("utt_id")["split"]
    assert set(split_of[result.meta_train_utt_ids]) == {"dev"}
    assert len(result.meta_train_utt_ids) == (manifest["split"] == "dev").sum()
    assert len(result.runs) == 2 and result.soup.cfg.n_models == 2
    # the paper's form (the default), and beside it the voting-anchored soup trained alike (Table 3's extra row)
    assert set(result.predictions) == {"majority voting", "soft voting", "meta-classifier (single)",
                                       "meta-classifier (soup)", "voting-anchored meta-classifier soup"}
    assert result.stage3.form == "paper" and result.stage3.cv is None
    table = technique_table({"all": result}, 1000, 0)
    assert len(table) == 5 and table["balanced_macro_f1"].between(0, 1).all() and table["macro_f1"].between(0, 1).all()
    assert result.classes == CODES                  # every code labels a train row of this manifest
    # the guard itself: a train utterance among the meta-classifier's training rows is refused
    with pytest.raises(AssertionError, match="not in 'dev'"):
        assert_no_leakage(manifest, np.asarray(["u1", "u0"]))


def test_top_k_by_held_out_score():
    assert top_k_names({"a": 0.3, "b": 0.5, "c": 0.4, "d": 0.5}, 2) == ["b", "d"]


def test_dev_rows_without_a_target_never_train_the_meta_classifier():
    """A dev row with no class votes (all Other-..., or no annotator rows) has NaN targets: drawn into a batch, it
    turned every weight of the soup into NaN and every prediction into class A, with exit 0."""
    rng = np.random.default_rng(0)
    manifest = _manifest(rng)
    no_votes = manifest.index[manifest["split"] == "dev"][:3]
    manifest.loc[no_votes, list(SOFT_TARGET_COLUMNS)] = np.nan   # labelled, but no class votes
    posteriors = {m: _posteriors(manifest, rng) for m in ("a", "b")}
    result = run_subset(posteriors, manifest, ["a", "b"], meta_config(n_models=0, epochs=5), [0],
                        anchor_grid=(), cv_folds=5)
    for weights in result.soup.state_dict().values():
        assert torch.isfinite(weights).all()
    probs, _ = meta_predict(result.soup, result.test)
    assert np.isfinite(probs).all()
    # and a loss that is not finite (here: NaN posteriors from a broken member) stops, naming utterances
    broken = {m: f.copy() for m, f in posteriors.items()}
    broken["a"].loc[broken["a"]["split"] == "dev", "p_A"] = np.nan
    with pytest.raises(ValueError, match=r"loss is not finite on a batch of dev utterances u\d+"):
        run_subset(broken, manifest, ["a", "b"], meta_config(n_models=0, epochs=2), [0], anchor_grid=(), cv_folds=5)


# ------------------------------------------------------------------------------ the run's classes


def test_a_three_class_run_stacks_trains_and_predicts_over_its_classes():
    """A 3-class run (the manifest's p_ columns: A S N) without attribute ratings: the meta-classifier reads and
    predicts 3 classes, its posteriors carry p_A, p_S, p_N only, votes and weights are over those classes, and
    there are no attribute outputs (nothing would train them) and attribute inputs are refused."""
    three = ("A", "S", "N")
    rng = np.random.default_rng(0)
    manifest = _manifest(rng, 240, three).assign(**{a: np.nan for a in ATTRIBUTES})
    posteriors = {m: _posteriors(manifest, rng) for m in ("a", "b")}
    probes = {m: _posteriors(manifest, rng) for m in ("a", "b")}
    cfg = meta_config(n_models=0, epochs=5, attributes_in=True, include_probes=True, mse_weight=0.4)
    with pytest.raises(ValueError, match="ensemble.attributes_in: no dev utterance has attribute ratings"):
        run_subset(posteriors, manifest, ["a", "b"], cfg, [0, 1], probes, anchor_grid=(), cv_folds=5)
    cfg = meta_config(n_models=0, epochs=5, include_probes=True, mse_weight=0.4)
    result = run_subset(posteriors, manifest, ["a", "b"], cfg, [0, 1], probes, anchor_grid=(), cv_folds=5)
    assert result.classes == three and result.soup.cfg.classes == three and result.test.classes == three
    assert result.soup.cfg.n_inputs == 2 * (3 + 3)
    assert result.soup.net.out_features == 3                              # 3 classes, no attribute outputs
    for weights in result.soup.state_dict().values():
        assert torch.isfinite(weights).all()
    assert all(p.max() < 3 for p in result.predictions.values())          # indices into the 3 classes
    table = technique_table({"all": result}, bootstrap=100, seed=0)
    assert (table["n"] == (manifest["split"] == "test").sum()).all()
    frame = ensemble_posteriors(posteriors, result, ("test",), probes)
    assert [c for c in frame.columns if c.startswith("p_")] == ["p_A", "p_S", "p_N"]
    assert frame[list(ATTRIBUTES)].isna().all().all()
    weights = member_class_weights(result.soup, ["a", "b"])
    assert list(weights.columns) == list(three) and list(weights.index) == ["a", "b", "a (probe)", "b (probe)"]
    from medusa.reporting import reports
    votes = reports.vote_frames(posteriors, ["a", "b"])
    assert all([c for c in f.columns if c.startswith("p_")] == ["p_A", "p_S", "p_N"] for f in votes.values())
    assert list(reports.per_class_scores({"soup": frame})["soup"]) == list(three)


def test_members_over_other_classes_are_refused_by_name():
    rng = np.random.default_rng(0)
    manifest = _manifest(rng, 120, ("A", "S", "N"))
    posteriors = {"a": _posteriors(manifest, rng), "b": _posteriors(manifest, rng)}
    posteriors["b"]["p_H"] = 0.0                                          # a member of a 4-class run
    with pytest.raises(ValueError, match=r"the members' posteriors are over different classes \(member 'a': A S N; "
                                         r"member 'b': A S H N\)"):
        stack(posteriors, "dev")
    eight = _manifest(rng, 120)
    with pytest.raises(ValueError, match=r"the members' posteriors are over the classes A S N, the manifest's run "
                                         r"over A S H U F D C N: retrain the members"):
        run_subset({"a": posteriors["a"]}, eight, ["a"], meta_config(n_models=0, epochs=1), [0],
                   anchor_grid=(), cv_folds=5)
    meta = MetaClassifier(meta_config(n_models=1))               # 8 classes
    with pytest.raises(ValueError, match=r"reads posteriors over the classes A S H U F D C N, the members' are over "
                                         r"A S N"):
        meta_predict(meta, stack({"a": posteriors["a"]}, "test"))


def test_a_hidden_layer_soup_trains_and_predicts_from_one_shared_start(monkeypatch):
    """run_subset with ensemble.hidden > 0: every soup run is initialised with the first of the seeds (the seeds
    vary only the draws), and the soup predicts test."""
    import medusa.ensemble.meta as meta

    starts = []
    real = meta.MetaClassifier

    def recorded(cfg):
        model = real(cfg)
        starts.append((cfg.seed, {k: v.clone() for k, v in model.state_dict().items()}))
        return model

    monkeypatch.setattr(meta, "MetaClassifier", recorded)
    rng = np.random.default_rng(1)
    manifest = _manifest(rng)
    posteriors = {m: _posteriors(manifest, rng) for m in ("a", "b")}
    result = run_subset(posteriors, manifest, ["a", "b"], meta_config(n_models=0, epochs=3, hidden=6), [4, 9],
                        anchor_grid=(), cv_folds=5)
    main = starts[:2]                                  # the main soup's two runs come first
    assert [seed for seed, _ in main] == [4, 9]
    assert all(torch.equal(main[0][1][k], main[1][1][k]) for k in main[0][1])
    assert not all(torch.equal(result.runs[0].state_dict()[k], result.runs[1].state_dict()[k])
                   for k in main[0][1])
    probs, _ = meta_predict(result.soup, result.test)
    assert np.isfinite(probs).all() and len(probs) == (manifest["split"] == "test").sum()
