"""The ensemble level: voting, the meta-classifier, the soup, and the split protocol."""
import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch
from meta_config import meta_config

from medusa.ensemble.meta import (
    MetaClassifier,
    MetaConfig,
    input_names,
    meta_inputs,
    meta_predict,
    soup,
    take,
    train_meta,
)
from medusa.ensemble.stage3 import choose_stage3
from medusa.ensemble.subsets import (
    BEST_PROBE,
    OTHER_FORM_SOUP,
    OTHER_PROBES_SOUP,
    SubsetResult,
    assert_no_leakage,
    ensemble_posteriors,
    member_table,
    run_subset,
    subsets,
    top_k_names,
)
from medusa.ensemble.tables import (
    calibration_columns,
    headline,
    headline_sentence,
    member_class_weights,
    probes_sentence,
    probes_summary,
    stage3_table,
    table3_view,
    technique_table,
)
from medusa.ensemble.voting import Stacked, majority_vote, read_probe_posteriors, soft_vote, stack
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS, classes_of, target_columns
from medusa.scoring.metrics import (
    balanced_macro_f1,
    bootstrap_macro_f1,
    macro_f1,
    percentile_interval,
    stratified_bootstrap_indices,
)


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


def test_run_subset_trains_on_dev_only_and_predicts_test():
    rng = np.random.default_rng(0)
    manifest = _manifest(rng)
    posteriors = {m: _posteriors(manifest, rng) for m in ("a", "b", "c")}
    cfg = meta_config(n_models=0, epochs=3, attributes_in=True)
    result = run_subset(posteriors, manifest, ["a", "c"], cfg, seeds=[0, 1])
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


def _stacked_with_attributes(n: int, seed: int, attribute_offset: float = 0.0) -> tuple[Stacked, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, n)
    probs = rng.dirichlet(np.ones(8), (n, 2)).astype(np.float32)
    probs[np.arange(n), 0, y] += 1.0
    probs /= probs.sum(-1, keepdims=True)
    attrs = (rng.uniform(1, 7, (n, 2, 3)) + attribute_offset).astype(np.float32)
    return Stacked(np.asarray([f"u{i}" for i in range(n)]), probs, attrs, np.asarray(CODES)[y]), y


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


# ------------------------------------------------------------------------------ stage 3 anchored at soft voting

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
        result = run_subset(posteriors, manifest, members, cfg, [0, 1], anchor_grid=[1.0, 0.01])
    assert "stage 3 trains on 30 scored dev clips but reads 40 inputs" in caplog.text
    assert result.stage3.warning and result.stage3.dev_rows == 30 and result.stage3.n_inputs == 40
    assert result.stage3.form == "voting"
    assert (result.predictions["meta-classifier (soup)"] == result.predictions["soft voting"]).all()
    assert "paper's meta-classifier soup" in result.predictions
    table = stage3_table({"all": result})
    assert table.loc["all", "form"] == "voting" and table.loc["all", "warning"] == "fewer dev clips than inputs"
    assert json.loads(json.dumps(result.stage3.record()))["form"] == "voting"


def _subset_result(truth: np.ndarray, predictions: dict[str, np.ndarray], singles: list[np.ndarray],
                   classes: tuple[str, ...]) -> SubsetResult:
    n = len(truth)
    test = Stacked(np.asarray([f"u{i}" for i in range(n)]), np.zeros((n, 1, len(classes)), np.float32),
                            np.zeros((n, 1, 3), np.float32), truth, classes=classes)
    return SubsetResult(["m"], predictions, singles, None, [], test, np.asarray([]), classes)


def test_technique_table_leads_with_balanced_macro_f1_over_the_run_classes():
    rng = np.random.default_rng(3)
    truth = np.asarray(list("N" * 60 + "A" * 25 + "S" * 10 + "X" * 5 + "F" * 3))
    classes = ("A", "S", "N")                     # the run's: F is not one of them, so not scored, nor is X
    # predictions are indices into the run's classes (a 3-class system cannot predict X or F: N stands in there)
    idx = lambda labels: np.asarray([classes.index(c) if c in classes else 2 for c in labels])  # noqa: E731
    noisy = [np.where(rng.random(len(truth)) < 0.7, truth, rng.choice(list("NAS"), len(truth))) for _ in range(3)]
    preds = {"majority voting": idx(np.full(len(truth), "N")), "soft voting": idx(noisy[0]),
             "meta-classifier (single)": idx(noisy[1]), "meta-classifier (soup)": idx(noisy[2])}
    table = technique_table({"all": _subset_result(truth, preds, [idx(noisy[1]), idx(noisy[0])], classes)},
                                     bootstrap=300, seed=2).set_index("technique")
    scored = np.isin(truth, classes)
    t = truth[scored]
    assert (table["n"] == scored.sum()).all()
    always_n = table.loc["majority voting"]
    assert always_n["balanced_macro_f1"] == pytest.approx((2 / 4) / 3)   # balanced F1(N) = 2*1/(1+3), others 0
    assert always_n["macro_f1"] == pytest.approx(2 * 60 / (60 + 95) / 3) and always_n["accuracy"] == pytest.approx(60 / 95)
    soup = table.loc["meta-classifier (soup)"]
    assert soup["balanced_macro_f1"] == pytest.approx(balanced_macro_f1(t, noisy[2][scored], classes))
    indices = stratified_bootstrap_indices(t, 300, 2)
    expected = percentile_interval(bootstrap_macro_f1(t, noisy[2][scored], classes=classes, indices=indices,
                                                      balanced=True))
    assert (soup["balanced_macro_f1_ci95_low"], soup["balanced_macro_f1_ci95_high"]) == pytest.approx(expected)
    single = table.loc["meta-classifier (single)"]
    seeds = [balanced_macro_f1(t, noisy[k][scored], classes) for k in (1, 0)]
    assert single["balanced_macro_f1"] == pytest.approx(np.mean(seeds))
    assert single["balanced_macro_f1_std"] == pytest.approx(np.std(seeds))
    view = table3_view(table.reset_index())
    assert list(view.columns) == [("all", "bal. F1"), ("all", "F1"), ("all", "ACC")]
    assert view.loc["meta-classifier (soup)", ("all", "bal. F1")].startswith(f"{soup['balanced_macro_f1']:.3f} [")
    assert " ± " in view.loc["meta-classifier (single)", ("all", "bal. F1")]


def _write_metrics(folder, test: dict, dev: float) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"test": test, "dev_balanced_macro_f1": dev}))


def test_member_table_and_headline_rank_by_balanced_macro_f1(tmp_path):
    scores = {"a": (0.50, 0.60, 0.30), "b": (0.45, 0.40, 0.55), "c": (0.40, 0.70, 0.20)}  # test bal., plain, dev
    for name, (bal, plain, dev) in scores.items():
        _write_metrics(tmp_path / name, {"balanced_macro_f1": bal, "balanced_macro_f1_ci95": [bal - 0.1, bal + 0.1],
                                         "macro_f1": plain, "macro_f1_ci95": [0, 1], "accuracy": plain}, dev)
    members = member_table(list(scores), tmp_path)
    assert members.loc["b", "test_balanced_macro_f1"] == 0.45 and members.loc["c", "test_macro_f1"] == 0.70
    assert subsets(members, [2])["top-2"] == ["b", "a"]           # by dev, never by test
    table = pd.DataFrame([{"technique": t, "subset": "all (3)", "n": 95, "balanced_macro_f1": f, "macro_f1": f - 0.05,
                           "accuracy": 0.5, "balanced_macro_f1_std": s, "balanced_macro_f1_ci95_low": f - 0.08,
                           "balanced_macro_f1_ci95_high": f + 0.08}
                          for t, f, s in (("majority voting", 0.44, np.nan), ("soft voting", 0.46, np.nan),
                                          ("meta-classifier (single)", 0.52, 0.01), ("meta-classifier (soup)", 0.55, np.nan))])
    summary = headline(table, members, "all (3)")
    # the best single member by test balanced macro-F1 is a (0.50), not c (best plain macro-F1)
    assert summary["best_single"] == "a" and summary["relative_gain_pct"] == pytest.approx(10.0)
    assert summary["medusa_test_balanced_macro_f1_ci95"] == pytest.approx([0.47, 0.63])
    text = headline_sentence(summary)
    assert "balanced macro-F1 0.550 [0.470, 0.630]" in text and "+10.0 %" in text and "±0.080" in text
    _write_metrics(tmp_path / "old", {"macro_f1": 0.5, "macro_f1_ci95": [0.4, 0.6], "accuracy": 0.5}, 0.3)
    with pytest.raises(ValueError, match=r"no balanced_macro_f1_ci95 .*`dvc repro train@old`"):
        member_table(["old"], tmp_path)
    with pytest.raises(FileNotFoundError, match="dvc repro train@nope"):
        member_table(["nope"], tmp_path)


def test_dev_rows_without_a_target_never_train_the_meta_classifier():
    """A dev row with no class votes (all Other-..., or no annotator rows) has NaN targets: drawn into a batch, it
    turned every weight of the soup into NaN and every prediction into class A, with exit 0."""
    rng = np.random.default_rng(0)
    manifest = _manifest(rng)
    no_votes = manifest.index[manifest["split"] == "dev"][:3]
    manifest.loc[no_votes, list(SOFT_TARGET_COLUMNS)] = np.nan   # labelled, but no class votes
    posteriors = {m: _posteriors(manifest, rng) for m in ("a", "b")}
    result = run_subset(posteriors, manifest, ["a", "b"], meta_config(n_models=0, epochs=5), [0])
    for weights in result.soup.state_dict().values():
        assert torch.isfinite(weights).all()
    probs, _ = meta_predict(result.soup, result.test)
    assert np.isfinite(probs).all()
    # and a loss that is not finite (here: NaN posteriors from a broken member) stops, naming utterances
    broken = {m: f.copy() for m, f in posteriors.items()}
    broken["a"].loc[broken["a"]["split"] == "dev", "p_A"] = np.nan
    with pytest.raises(ValueError, match=r"loss is not finite on a batch of dev utterances u\d+"):
        run_subset(broken, manifest, ["a", "b"], meta_config(n_models=0, epochs=2), [0])


# ------------------------------------------------------------------------------ the members' probes as inputs


def _distinct_stacked(n: int = 5, m: int = 3) -> Stacked:
    """Every value tells where it came from: posteriors 1xx, attributes 2..4 (scaled to 2xx-like), probes 3xx."""
    probs = 100 + np.arange(n * m * 8, dtype=np.float32).reshape(n, m, 8)
    attrs = np.arange(n * m * 3, dtype=np.float32).reshape(n, m, 3)
    probe = 300 + np.arange(n * m * 8, dtype=np.float32).reshape(n, m, 8)
    return Stacked(np.asarray([f"u{i}" for i in range(n)]), probs, attrs, np.full(n, "A"), probe)


@pytest.mark.parametrize("attributes_in", [False, True])
@pytest.mark.parametrize("include_probes", [False, True])
def test_stacking_width_and_order_follow_the_flags(attributes_in, include_probes):
    from medusa.model.dataset import scale_attributes

    s = _distinct_stacked()
    n, m = s.probs.shape[:2]
    cfg = meta_config(n_models=m, attributes_in=attributes_in, include_probes=include_probes)
    x = meta_inputs(s, cfg)
    assert x.shape == (n, cfg.n_inputs) == (n, m * (8 + 3 * attributes_in + 8 * include_probes))
    assert MetaClassifier(cfg).net.weight.shape[1] == cfg.n_inputs
    # posteriors first (member after member), then attributes, then the probes' posteriors
    expected = [s.probs.reshape(n, -1)]
    if attributes_in:
        expected.append(scale_attributes(s.attributes).reshape(n, -1))
    if include_probes:
        expected.append(s.probe_probs.reshape(n, -1))
    np.testing.assert_array_equal(x, np.concatenate(expected, 1))
    names = input_names(cfg, ["a", "b", "c"])
    assert len(names) == cfg.n_inputs and names[:2] == ["a p_A", "a p_S"] and names[8] == "b p_A"
    if include_probes:
        assert names[-8 * m:][:9] == [f"a probe {c}" for c in SOFT_TARGET_COLUMNS] + ["b probe p_A"]
    if attributes_in:
        assert names[8 * m:8 * m + 4] == ["a arousal", "a valence", "a dominance", "b arousal"]


def test_probe_inputs_are_required_when_switched_on_and_stacked_by_utt_id():
    s = _distinct_stacked()
    cfg = meta_config(n_models=3, include_probes=True)
    with pytest.raises(ValueError, match=r"probe posteriors \(include_probes\), but none were stacked"):
        meta_inputs(Stacked(s.utt_ids, s.probs, s.attributes, s.labels), cfg)
    with pytest.raises(ValueError, match=r"probe posteriors of 3 member\(s\) x 8, got shape \(2, 8\)"):
        meta_inputs(Stacked(s.utt_ids, s.probs, s.attributes, s.labels, s.probe_probs[:, :2]), cfg)
    # stack aligns each probe's rows on the member's utterances, whatever their order in the file
    rng = np.random.default_rng(0)
    manifest = _manifest(rng, 60)
    posteriors = {m: _posteriors(manifest, rng) for m in ("a", "b")}
    probes = {m: _posteriors(manifest, rng).sample(frac=1, random_state=i) for i, m in enumerate(("a", "b"))}
    dev = stack(posteriors, "dev", probes)
    for j, m in enumerate(("a", "b")):
        expected = probes[m].set_index("utt_id").loc[dev.utt_ids, list(SOFT_TARGET_COLUMNS)].to_numpy(np.float32)
        np.testing.assert_array_equal(dev.probe_probs[:, j], expected)
    short = {**probes, "b": probes["b"][probes["b"]["utt_id"] != dev.utt_ids[3]]}
    with pytest.raises(ValueError, match=rf"probe of member 'b' does not score 1 of its dev utterances "
                                         rf"\(e\.g\. {dev.utt_ids[3]}\); retrain it: dvc repro train@b"):
        stack(posteriors, "dev", short)
    with pytest.raises(ValueError, match="include_probes: .*pass them"):
        run_subset(posteriors, manifest, ["a", "b"], meta_config(n_models=0, include_probes=True), [0])


def _noise_members_one_informative_probe(seed: int = 0, n: int = 1200):
    """Three members whose posteriors are noise; their probes are noise too except b's, which knows the class
    but leans towards N (a bias a linear meta-classifier can undo through its own bias, argmax cannot)."""
    rng = np.random.default_rng(seed)
    manifest = _manifest(rng, n)
    rows = manifest[manifest["split"] != "train"].reset_index(drop=True)
    y = np.asarray([CODES.index(c) for c in rows["label"]])

    def frame(p: np.ndarray) -> pd.DataFrame:
        f = rows[["utt_id", "split", "label"]].copy()
        f[list(SOFT_TARGET_COLUMNS)] = p
        f[list(ATTRIBUTES)] = np.nan
        return f

    noise = lambda: rng.dirichlet(np.ones(8), len(rows))  # noqa: E731
    posteriors = {m: frame(noise()) for m in ("a", "b", "c")}
    logits = rng.normal(0, 1, (len(rows), 8)) + 2.5 * np.eye(8)[y]
    logits[:, CODES.index("N")] += 2.5
    informative = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probes = {"a": frame(noise()), "b": frame(informative), "c": frame(noise())}
    return manifest, posteriors, probes


@pytest.mark.parametrize("include_probes", [True, False])
def test_meta_classifier_with_probes_reaches_the_best_probe(include_probes):
    manifest, posteriors, probes = _noise_members_one_informative_probe()
    cfg = meta_config(n_models=0, epochs=30, lr=1e-2, mse_weight=0.0, include_probes=include_probes)
    result = run_subset(posteriors, manifest, ["a", "b", "c"], cfg, seeds=[0, 1], probes=probes)
    assert result.soup.cfg.include_probes is include_probes          # the main soup follows the switch
    assert result.other_soup.cfg.include_probes is not include_probes and result.best_probe == "b"
    assert result.probe_dev_scores["b"] > 0.3 > max(result.probe_dev_scores["a"], result.probe_dev_scores["c"])
    other = OTHER_PROBES_SOUP[include_probes]
    assert list(result.predictions) == ["majority voting", "soft voting", "meta-classifier (single)",
                                        "meta-classifier (soup)", OTHER_FORM_SOUP["anchored"], other,
                                        BEST_PROBE]
    table = technique_table({"all (3)": result}, bootstrap=200, seed=0).set_index("technique")["balanced_macro_f1"]
    with_probes, without = ((table["meta-classifier (soup)"], table[other]) if include_probes
                            else (table[other], table["meta-classifier (soup)"]))
    # seeded throughout (data, draws, initial weights): here 0.630 against 0.558; the meta-classifier also undoes
    # the probe's lean towards N, which the probe's own argmax cannot
    assert with_probes >= table[BEST_PROBE] > 0.3, table
    assert without < 0.2, table                                       # noise members alone: about chance (1/8)
    # the best probe row is that probe's own test argmax
    test = probes["b"].set_index("utt_id").loc[result.test.utt_ids]
    assert table[BEST_PROBE] == pytest.approx(balanced_macro_f1(
        result.test.labels, np.asarray(CODES)[test[list(SOFT_TARGET_COLUMNS)].to_numpy().argmax(1)]))
    # the stored posteriors are the main soup's; a soup with probes in needs them
    stored = ensemble_posteriors(posteriors, result, ("test",), probes)
    np.testing.assert_allclose(stored[list(SOFT_TARGET_COLUMNS)].to_numpy(),
                               meta_predict(result.soup, result.test)[0], atol=1e-6)
    if include_probes:
        with pytest.raises(ValueError, match="none were stacked"):
            ensemble_posteriors(posteriors, result, ("test",))
    summary = probes_summary(table.reset_index().assign(
        subset="all (3)", balanced_macro_f1_ci95_low=0.0, balanced_macro_f1_ci95_high=1.0), result, "all (3)")
    assert summary["with_probes_test_balanced_macro_f1"] == pytest.approx(with_probes)
    assert summary["best_probe"] == "b" and summary["include_probes"] is include_probes
    text = probes_sentence(summary)
    assert f"With them it reaches test balanced macro-F1 {with_probes:.3f}" in text
    assert f"without them {without:.3f}" in text and "best probe by dev (b," in text
    weights = member_class_weights(result.soup if include_probes else result.other_soup, ["a", "b", "c"])
    assert list(weights.index) == ["a", "b", "c", "a (probe)", "b (probe)", "c (probe)"]
    assert weights.loc["b (probe)"].mean() > max(weights.loc["a (probe)"].mean(), weights.loc["a"].mean())


def test_missing_probe_files_name_the_member_folder_and_the_stage(tmp_path):
    (tmp_path / "m1").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'm1'}: member 'm1' has no linear probe "
                                                r"\(probe_posteriors\.parquet missing.*retrain it: dvc repro train@m1"):
        read_probe_posteriors(["m1"], tmp_path)
    pd.DataFrame({"utt_id": ["u0"], "split": ["dev"]}).to_parquet(tmp_path / "m1" / "probe_posteriors.parquet")
    with pytest.raises(ValueError, match=r"probe_posteriors\.parquet: no column\(s\) label, p_<code>"):
        read_probe_posteriors(["m1"], tmp_path)


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
        run_subset(posteriors, manifest, ["a", "b"], cfg, [0, 1], probes)
    cfg = meta_config(n_models=0, epochs=5, include_probes=True, mse_weight=0.4)
    result = run_subset(posteriors, manifest, ["a", "b"], cfg, [0, 1], probes)
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
        run_subset({"a": posteriors["a"]}, eight, ["a"], meta_config(n_models=0, epochs=1), [0])
    meta = MetaClassifier(meta_config(n_models=1))               # 8 classes
    with pytest.raises(ValueError, match=r"reads posteriors over the classes A S H U F D C N, the members' are over "
                                         r"A S N"):
        meta_predict(meta, stack({"a": posteriors["a"]}, "test"))


def test_table3_carries_the_techniques_posteriors_against_the_votes():
    """calibration_columns: JSD vs votes and ECE for every technique with posteriors (soft voting is the mean
    posterior; majority voting has none), shown by table3_view; a soup equal to soft voting scores alike."""
    rng = np.random.default_rng(5)
    manifest = _manifest(rng, n=150)
    test = manifest["split"] == "test"
    votes = rng.dirichlet(np.ones(8), test.sum())
    votes[np.arange(len(votes)), [CODES.index(c) for c in manifest.loc[test, "label"]]] += 1.0   # label leads
    manifest.loc[test, list(SOFT_TARGET_COLUMNS)] = votes / votes.sum(1, keepdims=True)
    manifest["n_votes"] = np.where(test, 5.0, 1.0)
    members = ["a", "b"]
    posteriors = {m: _posteriors(manifest, rng) for m in members}
    cfg = meta_config(n_models=0, stage3="anchored", epochs=5)
    result = run_subset(posteriors, manifest, members, cfg, [0, 1], anchor_grid=[1.0])
    columns = calibration_columns({"all": result}, manifest).set_index("technique")
    assert "majority voting" not in columns.index and len(columns.loc["meta-classifier (single)"]) == 3
    assert columns[["jsd_votes", "ece"]].apply(lambda v: v.between(0, 1)).all().all()
    # random members: cross-validation keeps voting, so the soup's posteriors are soft voting's
    assert result.stage3.form == "voting"
    assert np.isclose(columns.loc["meta-classifier (soup)", "jsd_votes"], columns.loc["soft voting", "jsd_votes"])
    mean = stack(posteriors, "test").probs.mean(1)
    mean_frame = pd.DataFrame({"utt_id": result.test.utt_ids, "split": "test", "label": result.test.labels})
    mean_frame[list(SOFT_TARGET_COLUMNS)] = mean
    from medusa.scoring.calibration import calibration_table
    assert np.isclose(columns.loc["soft voting", "jsd_votes"],
                      calibration_table({"mean": mean_frame}, manifest).loc["mean", "jsd_votes"])
    table = technique_table({"all": result}, bootstrap=100, seed=0).merge(
        calibration_columns({"all": result}, manifest), how="left", on=["technique", "subset"])
    view = table3_view(table)
    assert view.loc["majority voting", ("all", "JSD")] == "–" and view.loc["soft voting", ("all", "ECE")] != "–"


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
