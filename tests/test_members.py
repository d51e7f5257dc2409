"""A member end to end on small stores the test writes: resolve from params, train, write, load, score."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medusa.config.params import ParamsError, load_params
from medusa.features.store.writer import FeatureStoreWriter
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS
from medusa.model import members
from medusa.model.deepser import DeepSER, count_parameters
from medusa.model.linear_probe import logistic_baseline

TRAIN = {"device": "cpu", "amp": True, "hidden": 16, "layers": 2, "heads": 2, "dropout": 0.1, "ff_mult": 2,
         "fusion": "deep", "targets": "soft", "pool": {"a": 2}, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.01,
         "stage1_epochs": 4, "stage2_epochs": 1, "patience": 4, "grad_clip": 1.0, "mixup_p": 0.3,
         "mixup_alpha": 0.4, "ce_weight": 1.5, "mse_weight": 0.4, "class_weighted": True,
         "standardise": True, "epoch_steps": 24}
PROBE = {"c": 1.0}
#: The resampling the fixture member is scored with (report.bootstrap, report.seed): another seed than the
#: member's own (0), so that an interval drawn with the member's seed would show.
BOOTSTRAP, BOOTSTRAP_SEED = 300, 5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Manifest and two stores: store `a` carries the class in its frame mean, `b` is noise. Test rows include
    O/X consensus; blind rows have no labels at all."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1.5, (8, 5))
    rows = []
    with FeatureStoreWriter(root / "a", 5, {"kind": "audio"}) as wa, FeatureStoreWriter(root / "b", 3, {"kind": "text"}) as wb:
        for i in range(8 * 40):
            c = i % 8
            split = "train" if i % 10 < 6 else ("dev", "dev", "test", "blind")[i % 10 - 6]
            u = f"u{i:04d}"
            wa.add(u, centres[c] + rng.normal(0, 1.0, (int(rng.integers(4, 14)), 5)))
            wb.add(u, rng.normal(0, 1.0, (int(rng.integers(1, 5)), 3)))
            soft = np.full(8, 0.03)
            soft[c] = 1 - 0.03 * 7
            label = CODES[c] if not (split == "test" and i % 17 == 0) else "X"
            row = {"utt_id": u, "split": split, "label": label, **dict(zip(SOFT_TARGET_COLUMNS, soft)),
                   **dict(zip(ATTRIBUTES, [1 + c * 0.8, 4.0, 3.0]))}
            if split == "blind":
                row.update({k: np.nan for k in (*SOFT_TARGET_COLUMNS, *ATTRIBUTES)}, label=None)
            rows.append(row)
    return pd.DataFrame(rows), root


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    manifest, root = corpus
    spec = members.resolve_member("m", {"encoders": ["a", "b"], "seed": 0}, TRAIN, members.store_dims(["a", "b"], root),
                                  probe=PROBE)
    out = tmp_path_factory.mktemp("models") / "m"
    metrics = members.train_member(spec, manifest, root, out, out.with_name("m.checkpoint.pt"), bootstrap=BOOTSTRAP,
                                   bootstrap_seed=BOOTSTRAP_SEED)
    return spec, out, metrics


def test_resolve_applies_overrides_then_the_ablation_switch():
    spec = members.resolve_member("m", {"encoders": ["b", "a"], "seed": 4, "overrides": {"hidden": 32}}, TRAIN,
                                  {"a": 5, "b": 3}, extra_overrides={"targets": "one_hot", "mixup_p": 0.0}, probe=PROBE)
    assert spec.deepser.input_dims == (3, 5) and spec.pools == (1, 2)
    assert spec.deepser.hidden == 32 and spec.one_hot and spec.train.mixup_p == 0.0 and spec.train.seed == 4
    with pytest.raises(ParamsError, match="hiden: unknown key"):
        members.resolve_member("m", {"encoders": ["a"], "seed": 0, "overrides": {"hiden": 32}}, TRAIN, {"a": 5}, probe=PROBE)
    with pytest.raises(KeyError, match="'c'"):
        members.resolve_member("m", {"encoders": ["a", "c"], "seed": 0}, TRAIN, {"a": 5}, probe=PROBE)


def test_a_nested_override_merges_key_by_key_like_a_preset():
    """One override rule everywhere (medusa.config.params.merge_overrides): `{pool: {a: 4}}` changes a's pooling and keeps
    b's, where replacing the whole mapping silently reset b's to 1 (a different, far costlier model)."""
    base = {**TRAIN, "pool": {"a": 2, "b": 3}}
    spec = members.resolve_member("m", {"encoders": ["a", "b"], "seed": 0, "overrides": {"pool": {"a": 4}}}, base,
                                  {"a": 5, "b": 3}, probe=PROBE)
    assert spec.train.pool == {"a": 4, "b": 3} and spec.pools == (4, 3)
    with pytest.raises(ParamsError, match="overrides: hidden: the base value is not a mapping"):
        members.resolve_member("m", {"encoders": ["a"], "seed": 0, "overrides": {"hidden": {"x": 1}}}, TRAIN,
                               {"a": 5}, probe=PROBE)


def test_member_folder_is_complete_and_scores_far_above_chance(trained, corpus):
    spec, out, metrics = trained
    manifest, _ = corpus
    assert sorted(p.name for p in out.iterdir()) == sorted(members.FILES)
    assert not out.with_name("m.checkpoint.pt").exists() and not out.with_name("m.partial").exists()
    post = pd.read_parquet(out / "posteriors.parquet")
    # every dev, test and blind utterance, and nothing the model trained on
    assert set(post["utt_id"]) == set(manifest.loc[manifest["split"] != "train", "utt_id"])
    assert np.allclose(post[list(SOFT_TARGET_COLUMNS)].sum(axis=1), 1, atol=1e-5)
    assert metrics["test"]["macro_f1"] > 0.8 and metrics["test"]["n"] < (post["split"] == "test").sum()  # X dropped
    # the test block: the headline (balanced) and plain macro-F1, each with its interval, over the run's classes
    assert set(metrics["test"]) == {"n", "classes", "balanced_macro_f1", "balanced_macro_f1_ci95", "macro_f1",
                                    "macro_f1_ci95", "accuracy", "per_class_f1", "ccc"}
    assert metrics["test"]["classes"] == list(CODES) and list(metrics["test"]["per_class_f1"]) == list(CODES)
    low, high = metrics["test"]["balanced_macro_f1_ci95"]
    assert 0.8 < low <= metrics["test"]["balanced_macro_f1"] <= high
    # attribute predictions are back on the 1..7 rating scale (centred near the ratings' mean), CCC per attribute
    test = post[post["split"] == "test"].merge(manifest[["utt_id", *ATTRIBUTES]], on="utt_id", suffixes=("", "_true"))
    for a in ATTRIBUTES:
        assert abs(test[a].mean() - test[f"{a}_true"].mean()) < 1.0, a
    assert set(metrics["test"]["ccc"]) == set(ATTRIBUTES) and np.isfinite(metrics["test"]["ccc"]["arousal"])
    # per-class F1 of a run class absent from test (the fixture's test split holds A, H, F, C) is NaN: null on disk
    assert metrics["test"]["per_class_f1"]["A"] > 0.8 and np.isnan(metrics["test"]["per_class_f1"]["S"])
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics).replace("NaN", "null"))
    history = members.history_frame(out)
    assert list(history["stage"].unique()) == [1, 2] and history["step"].tolist() == list(range(1, len(history) + 1))
    # every training row has a soft target and one of the 8 classes here: all train in both stages
    n_train = int((manifest["split"] == "train").sum())
    assert metrics["train_rows"] == {"stage1": n_train, "stage2_pool": n_train}
    # epoch_steps 24 batches of 16 = two whole passes over the 192 training rows per epoch
    assert n_train == 192 and history.loc[history["stage"] == 1, "utterances"].eq(24 * 16).all()
    assert history["steps"].tolist() == [24 * (i + 1) for i in range(len(history))]


def test_training_rows_of_soft_and_one_hot_members(corpus, tmp_path):
    """metrics.json records the rows each run trained on: the soft run keeps X and O rows (their vote
    distributions), the one-hot run leaves them out, and neither trains a row without class votes."""
    manifest, root = corpus
    manifest = manifest.copy()
    train_ids = manifest.index[manifest["split"] == "train"]
    manifest.loc[train_ids[:10], "label"] = "X"
    manifest.loc[train_ids[10:14], "label"] = "O"
    manifest.loc[train_ids[14:17], list(SOFT_TARGET_COLUMNS)] = np.nan   # only Other votes (or none)
    n = len(train_ids)
    train = {**TRAIN, "stage1_epochs": 1, "stage2_epochs": 1, "epoch_steps": 0}  # one pass: utterances = rows
    for targets, expected in (("soft", {"stage1": n - 3, "stage2_pool": n - 17}),
                              ("one_hot", {"stage1": n - 17, "stage2_pool": n - 17})):
        spec = members.resolve_member("m", {"encoders": ["a"], "seed": 0}, {**train, "targets": targets},
                                      members.store_dims(["a"], root), probe=PROBE)
        metrics = members.train_member(spec, manifest, root, tmp_path / targets, bootstrap=200, bootstrap_seed=0)
        assert metrics["train_rows"] == expected, targets
        assert json.loads((tmp_path / targets / "metrics.json").read_text())["train_rows"] == expected
        history = members.history_frame(tmp_path / targets)
        assert history.loc[history["stage"] == 1, "utterances"].tolist() == [expected["stage1"]]
        assert np.isfinite(history["train_loss"]).all()
    spec = members.resolve_member("m", {"encoders": ["a"], "seed": 0}, {**train, "stage2_epochs": 0},
                                  members.store_dims(["a"], root), probe=PROBE)
    assert members.train_member(spec, manifest, root, tmp_path / "no_stage2", bootstrap=200,
                                bootstrap_seed=0)["train_rows"] == \
        {"stage1": n - 3, "stage2_pool": None}


def test_a_loaded_member_reproduces_its_posteriors(trained, corpus):
    spec, out, _ = trained
    manifest, root = corpus
    model, config = members.load_member(out)
    assert config["encoders"] == ["a", "b"] and config["pools"] == [2, 1] and config["feature_stores"]["a"]["dim"] == 5
    data = members.split_datasets(spec, manifest, members.open_stores(spec.encoders, root))["test"]
    from medusa.model.training import predict
    probs, _ = predict(model, data, 32, torch.device("cpu"), amp=True)
    saved = pd.read_parquet(out / "posteriors.parquet").set_index("utt_id").loc[data.rows["utt_id"]]
    np.testing.assert_allclose(probs, saved[list(SOFT_TARGET_COLUMNS)].to_numpy(), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not a trained member folder"):
        members.load_member(out.parent / "nothing")
    # the input standardisation travelled in the weights: the train split's pooled-frame statistics
    from medusa.model.dataset import input_statistics
    train = members.split_datasets(spec, manifest, members.open_stores(spec.encoders, root))["train"]
    for layer, (mean, scale) in zip(model.standardise, input_statistics(train)):
        np.testing.assert_allclose(layer.mean.numpy(), mean, rtol=1e-6)
        np.testing.assert_allclose(layer.scale.numpy(), scale, rtol=1e-6)
    assert not np.allclose(model.standardise[0].mean.numpy(), 0)
    # its probe reproduces its stored posteriors too
    from medusa.model.linear_probe import LinearProbe, probe_posteriors
    probe = probe_posteriors(LinearProbe.load(out), manifest[manifest["split"] == "test"],
                             members.open_stores(spec.encoders, root))
    stored = pd.read_parquet(out / members.PROBE_POSTERIORS).query("split == 'test'")
    np.testing.assert_allclose(probe[list(SOFT_TARGET_COLUMNS)].to_numpy(), stored[list(SOFT_TARGET_COLUMNS)].to_numpy(),
                               atol=1e-6)


def test_a_member_of_an_older_version_without_standardisation_is_refused_clearly(trained, tmp_path):
    from safetensors.torch import load_file, save_file
    _, out, _ = trained
    old = tmp_path / "old"
    shutil.copytree(out, old)
    state = {k: v for k, v in load_file(str(old / "model.safetensors")).items() if "standardise" not in k}
    save_file(state, str(old / "model.safetensors"))
    with pytest.raises(ValueError, match="older version of medusa; retrain"):
        members.load_member(old)


def test_baseline_posteriors_are_in_class_order(corpus):
    manifest, root = corpus
    post = logistic_baseline(manifest, members.open_stores(["a", "b"], root), 1.0, 0)
    assert set(post["split"]) == {"dev", "test"}
    assert np.allclose(post[list(SOFT_TARGET_COLUMNS)].sum(axis=1), 1)
    scores = members.classification_scores_of(post, "test", CODES, 0, 1000)
    assert scores["balanced_macro_f1"] > 0.8  # the class is in store a's frame mean: a linear model finds it


def four_class(manifest: pd.DataFrame) -> pd.DataFrame:
    """The corpus as a 4-class run (IEMOCAP's A S H N): the manifest holds p_A, p_S, p_H, p_N only, soft targets
    renormalised over them; train rows of the other classes are labelled X (no agreement), other splits keep
    their labels (a label outside the run's classes is not scored)."""
    four = ["A", "S", "H", "N"]
    out = manifest.drop(columns=[f"p_{c}" for c in CODES if c not in four])
    columns = [f"p_{c}" for c in four]
    out[columns] = out[columns].div(out[columns].sum(axis=1), axis=0)
    out["label"] = out["label"].where(out["label"].isin(four) | (out["split"] != "train"), "X")
    return out


def test_members_are_scored_over_the_run_classes(corpus):
    """A 4-class run is scored over those 4: the same predictions score higher than averaged over all 8 codes
    would, and test utterances of the other classes are not scored."""
    manifest, root = corpus
    four = four_class(manifest)
    post = logistic_baseline(four, members.open_stores(["a", "b"], root), 1.0, 0)
    assert [c for c in post.columns if c.startswith("p_")] == ["p_A", "p_S", "p_H", "p_N"]
    scores = members.score_test_split(four, post, seed=0, bootstrap=200)
    assert scores["classes"] == ["A", "S", "H", "N"] and list(scores["per_class_f1"]) == ["A", "S", "H", "N"]
    test = post[(post["split"] == "test") & post["label"].isin(["A", "S", "H", "N"])]
    assert scores["n"] == len(test)
    from medusa.scoring.metrics import balanced_macro_f1
    assert scores["balanced_macro_f1"] == pytest.approx(
        balanced_macro_f1(test["label"], members.predicted_labels(test), ("A", "S", "H", "N")))
    from sklearn.metrics import f1_score
    over_8 = f1_score(test["label"], members.predicted_labels(test), labels=list(CODES), average="macro",
                      zero_division=0)
    assert over_8 < 0.6 < scores["macro_f1"]          # 4 codes without utterances would each add a 0


def test_a_four_class_run_trains_a_member_over_its_classes(corpus, tmp_path):
    """The manifest's p_ columns are the run's classes: the member has one class output per class, its config
    records them, its posteriors (and its probe's) carry those columns only, and it is scored over them."""
    manifest, root = corpus
    four = four_class(manifest)
    train = {**TRAIN, "stage1_epochs": 2, "stage2_epochs": 1, "epoch_steps": 6}
    spec = members.resolve_member("m4", {"encoders": ["a", "b"], "seed": 0}, train,
                                  members.store_dims(["a", "b"], root), probe=PROBE)
    metrics = members.train_member(spec, four, root, tmp_path / "m4", bootstrap=200, bootstrap_seed=0)
    model, config = members.load_member(tmp_path / "m4")
    assert model.class_head.out_features == 4 and config["deepser"]["n_classes"] == 4
    assert config["classes"] == ["A", "S", "H", "N"] and members.member_classes(config) == ("A", "S", "H", "N")
    for file in ("posteriors.parquet", members.PROBE_POSTERIORS):
        post = pd.read_parquet(tmp_path / "m4" / file)
        assert [c for c in post.columns if c.startswith("p_")] == ["p_A", "p_S", "p_H", "p_N"], file
        np.testing.assert_allclose(post.filter(like="p_").sum(axis=1), 1, atol=1e-5)
        assert set(members.predicted_labels(post)) <= {"A", "S", "H", "N"}
    for block in ("test", "probe_test"):
        assert metrics[block]["classes"] == ["A", "S", "H", "N"], block
        assert list(metrics[block]["per_class_f1"]) == ["A", "S", "H", "N"], block
    # scored: the test utterances labelled with a run class (the fixture's test split holds A, H, F, C and X)
    test = four[four["split"] == "test"]
    assert metrics["test"]["n"] == int(test["label"].isin(["A", "S", "H", "N"]).sum())
    # stage 1 trains every row with votes (train rows of other classes are X now), stage 2 draws A S H N rows
    n_train = int((four["split"] == "train").sum())
    assert metrics["train_rows"] == {"stage1": n_train, "stage2_pool": n_train // 2}
    # a config whose classes do not match the model's outputs is refused by name
    config["classes"] = list(CODES)
    (tmp_path / "m4" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"m4/config\.json: 8 classes \(A S H U F D C N\) but the model has 4 class "
                                         r"outputs; retrain"):
        members.load_member(tmp_path / "m4")


def test_a_member_config_without_classes_predicts_all_8(trained, tmp_path):
    """Members trained before config.json recorded `classes` have 8 class outputs, in CODES order."""
    _, out, _ = trained
    old = Path(shutil.copytree(out, tmp_path / "old"))
    config = json.loads((old / "config.json").read_text())
    assert config.pop("classes") == list(CODES)
    (old / "config.json").write_text(json.dumps(config))
    model, config = members.load_member(old)
    assert members.member_classes(config) == CODES and model.class_head.out_features == 8


def test_config_json_stores_each_setting_once(trained):
    """The architecture only under `deepser`, the pooling only under `pools`, the probe's C under `probe`; `train`
    keeps the rest of the recipe."""
    spec, out, _ = trained
    config = json.loads((out / "config.json").read_text())
    architecture = {"hidden", "layers", "heads", "dropout", "ff_mult", "fusion"}
    assert architecture <= set(config["deepser"]) and not architecture & set(config["train"])
    assert "pool" not in config["train"] and config["pools"] == [2, 1]
    assert config["probe"] == PROBE and "baseline_c" not in config["train"]
    assert config["train"]["seed"] == 0 and config["train"]["amp"] is True  # read by ablation and the bundle
    from medusa.model.linear_probe import LinearProbe
    assert LinearProbe.load(out).c == PROBE["c"]  # the probe was fitted with the `probe` section's C
    # every key of `train` is in exactly one place
    assert set(TRAIN) <= set(config["train"]) | architecture | {"pool"}


def test_a_member_config_of_the_old_layout_still_loads(trained, tmp_path):
    """Configs written before each setting was stored once (the architecture and train.pool repeated in `train`,
    the probe's C as train.baseline_c, no `probe`) load the same model."""
    spec, out, _ = trained
    old = Path(shutil.copytree(out, tmp_path / "old"))
    config = json.loads((old / "config.json").read_text())
    config["train"].update({k: config["deepser"][k] for k in ("hidden", "layers", "heads", "dropout", "ff_mult",
                                                             "fusion")}, pool={"a": 2}, baseline_c=1.0)
    del config["probe"]
    (old / "config.json").write_text(json.dumps(config))
    model, loaded = members.load_member(old)
    reference, _ = members.load_member(out)
    assert model.cfg == reference.cfg
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_run_without_attribute_ratings_trains_and_reports_null_ccc(corpus, tmp_path):
    """A corpus without arousal/valence/dominance ratings (all NaN): the MSE term has nothing to read and adds
    nothing, training stays finite, and the member's CCC is NaN (null in metrics.json), not a number made up from
    zeros."""
    manifest, root = corpus
    unrated = manifest.assign(**{a: np.nan for a in ATTRIBUTES})
    train = {**TRAIN, "stage1_epochs": 2, "stage2_epochs": 1, "epoch_steps": 6}
    spec = members.resolve_member("u", {"encoders": ["a"], "seed": 0}, train, members.store_dims(["a"], root),
                                  probe=PROBE)
    metrics = members.train_member(spec, unrated, root, tmp_path / "u", bootstrap=200, bootstrap_seed=0)
    assert all(np.isnan(v) for v in metrics["test"]["ccc"].values())
    assert json.loads((tmp_path / "u" / "metrics.json").read_text())["test"]["ccc"] == dict.fromkeys(ATTRIBUTES)
    assert np.isfinite(members.history_frame(tmp_path / "u")["train_loss"]).all()
    post = pd.read_parquet(tmp_path / "u" / "posteriors.parquet")
    assert np.isfinite(post[list(SOFT_TARGET_COLUMNS)].to_numpy()).all() and metrics["test"]["macro_f1"] > 0.5


def test_score_table_rows_match_the_scores(corpus, trained):
    _, out, metrics = trained
    post = pd.read_parquet(out / "posteriors.parquet")
    scores = {"DeepSER": members.classification_scores_of(post, "test", CODES, BOOTSTRAP_SEED, BOOTSTRAP)}
    table = members.score_table(scores)
    # the same resamples and classes give exactly the figures train_member wrote
    for key in ("balanced_macro_f1", "macro_f1", "accuracy"):
        assert table.loc["DeepSER", key] == metrics["test"][key]
    assert [table.loc["DeepSER", "ci95_low"], table.loc["DeepSER", "ci95_high"]] == \
        metrics["test"]["balanced_macro_f1_ci95"]
    assert table.loc["DeepSER", "classes"] == 8


def test_compare_to_baseline_states_the_gap_and_the_overlap():
    table = pd.DataFrame({"n": [100, 100], "balanced_macro_f1": [0.40, 0.30], "ci95_low": [0.33, 0.24],
                          "ci95_high": [0.47, 0.36], "macro_f1": [0.1, 0.9], "classes": [4, 4]},
                         index=["DeepSER", "probe"])
    text = members.compare_to_baseline(table)
    assert "balanced macro-F1 0.400 is above" in text and "+0.100" in text and "overlap" in text
    assert "do not" not in text and "Chance is 0.250 (4 classes)" in text
    table.loc["DeepSER", ["balanced_macro_f1", "ci95_low", "ci95_high"]] = [0.2, 0.15, 0.22]
    text = members.compare_to_baseline(table)
    assert "below" in text and "do not overlap" in text


# Feature widths of the paper's encoders (the hidden size of each model's last layer).
PAPER_DIMS = {"wavlm": 1024, "hubert": 1024, "whisper": 1280, "roberta": 1024, "modernbert": 1024}


def test_every_paper_model_builds_at_the_presets_dims(repo_root):
    """The 14 models of Table 1 at hidden 1024, built on the meta device (no memory), parameters counted;
    one of them (model 2) is also built for real and run on a small padded batch."""
    params = load_params(repo_root / "configs" / "paper.yaml")
    assert len(params.models) == 14 and params.train.hidden == 1024 and params.train.batch_size == 16
    counts = {}
    for name, model in params.models.items():
        spec = members.resolve_member(name, model, params.train, PAPER_DIMS, probe=params.probe)
        with torch.device("meta"):
            counts[name] = count_parameters(DeepSER(spec.deepser))
    print("parameters per Table 1 model:", {k: f"{v / 1e6:.1f} M" for k, v in counts.items()})
    n_mod = {name: len(m.encoders) for name, m in params.models.items()}
    assert all(100e6 < counts[n] < 125e6 for n in counts if n_mod[n] == 2)
    assert all(130e6 < counts[n] < 160e6 for n in counts if n_mod[n] == 3)
    assert counts["m03"] > counts["m02"]  # Whisper's 1280-d input is wider
    spec = members.resolve_member("m02", params.models["m02"], params.train, PAPER_DIMS, probe=params.probe)
    torch.manual_seed(0)
    model = DeepSER(spec.deepser).eval()
    xs = [torch.randn(2, t, d) for t, d in zip((30, 30, 6), spec.deepser.input_dims)]
    masks = [torch.ones(2, t, dtype=torch.bool) for t in (30, 30, 6)]
    masks[0][1, 20:] = False
    with torch.no_grad():
        logits, attrs = model(xs, masks)
    assert logits.shape == (2, 8) and attrs.shape == (2, 3) and torch.isfinite(logits).all()


def test_paper_preset_names_table1_encoder_sets(repo_root):
    raw = yaml.safe_load((repo_root / "configs" / "paper.yaml").read_text())
    sets = [tuple(m["encoders"]) for m in raw["models"].values()]
    assert sets[1] == ("wavlm", "hubert", "roberta") and sets.count(("wavlm", "roberta")) == 4
    assert sets[13] == ("whisper", "wavlm", "modernbert")


def test_history_records_test_scores_and_the_selection_note_reads_them(trained):
    _, out, metrics = trained
    history = members.history_frame(out)
    assert history["test_balanced_macro_f1"].between(0, 1).all()
    hand = pd.DataFrame({"stage": [1, 1, 1, 2], "epoch": [1, 2, 3, 1], "dev_balanced_macro_f1": [0.1, 0.30, 0.29, 0.295],
                         "test_balanced_macro_f1": [0.1, 0.31, 0.40, 0.42]})
    note = members.selection_note(hand, 1, 2)
    assert "stage 1 epoch 2" in note and "test balanced macro-F1 0.310" in note
    assert "best test balanced macro-F1 of any epoch was 0.420 (stage 2 epoch 1)" in note
    assert "3 epoch(s) within 0.02" in note and "0.310-0.420" in note


def test_the_members_intervals_are_drawn_with_the_report_settings(corpus, tmp_path):
    """Table 1's per-model intervals (a member's metrics.json, test and probe) are the report's: `bootstrap`
    class-stratified resamples of its scored test utterances drawn with report.seed, not with the member's seed."""
    from medusa.scoring.metrics import bootstrap_macro_f1, percentile_interval, stratified_bootstrap_indices

    manifest, root = corpus
    # on the noise store alone the member is near chance: its intervals are wide and move with the resamples
    train = {**TRAIN, "stage1_epochs": 1, "stage2_epochs": 0, "epoch_steps": 4}
    spec = members.resolve_member("n", {"encoders": ["b"], "seed": 0}, train, members.store_dims(["b"], root),
                                  probe=PROBE)
    metrics = members.train_member(spec, manifest, root, tmp_path / "n", bootstrap=BOOTSTRAP,
                                   bootstrap_seed=BOOTSTRAP_SEED)
    assert metrics["intervals"] == {"bootstrap": BOOTSTRAP, "seed": BOOTSTRAP_SEED}
    for key, file in (("test", "posteriors.parquet"), ("probe_test", members.PROBE_POSTERIORS)):
        test = pd.read_parquet(tmp_path / "n" / file).query("split == 'test' and label in @CODES")
        truth, predicted = test["label"].to_numpy(), members.predicted_labels(test)

        def interval(n, seed):
            indices = stratified_bootstrap_indices(truth, n, seed)
            return list(percentile_interval(bootstrap_macro_f1(truth, predicted, indices, CODES, balanced=True)))

        assert metrics[key]["balanced_macro_f1_ci95"] == interval(BOOTSTRAP, BOOTSTRAP_SEED), key
        # and not what another seed (the member's own, 0, or the next) or another count would give
        for other in (interval(BOOTSTRAP, 0), interval(BOOTSTRAP, BOOTSTRAP_SEED + 1),
                      interval(BOOTSTRAP + 100, BOOTSTRAP_SEED)):
            assert other != metrics[key]["balanced_macro_f1_ci95"], (key, other)
    # a table that reads the folder under other settings (or from before they were recorded) is refused
    members.check_intervals(metrics, tmp_path / "n", BOOTSTRAP, BOOTSTRAP_SEED)
    with pytest.raises(ValueError, match=r"drawn from 300 resamples with seed 5, but report.bootstrap is 300 and "
                                         r"report.seed 6; rerun `dvc repro train@n`"):
        members.check_intervals(metrics, tmp_path / "n", BOOTSTRAP, BOOTSTRAP_SEED + 1)
    with pytest.raises(ValueError, match=r"record no resampling settings .*rerun `dvc repro ablate@x`"):
        members.check_intervals({"test": metrics["test"]}, tmp_path / "n", BOOTSTRAP, BOOTSTRAP_SEED, "ablate@x")
