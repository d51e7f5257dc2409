"""The predict bundle: tiny randomly initialised members written by hand, saved, verified, loaded, and run on
random features and (eGeMAPS only: offline, no ASR) on synthesized wav files, through the API and the CLI."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from meta_config import meta_config
from safetensors.torch import save_file
from tiny_models import deepser_config, train_config

from medusa import cli
from medusa.data.audio import AudioError, load_audio
from medusa.ensemble.meta import MetaClassifier, Stacked, meta_predict
from medusa.ensemble.subsets import ensemble_posteriors, run_subset
from medusa.ensemble.voting import read_probe_posteriors
from medusa.features.encoders.opensmile_lld import OpenSmileEncoder
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS, target_columns
from medusa.model.dataset import batch_from_arrays, unscale_attributes
from medusa.model.deepser import DeepSER
from medusa.model.linear_probe import LinearProbe, pooled_means
from medusa.serving.bundle import BundleError, save_bundle
from medusa.serving.inference import load_bundle, stored_agreement

EGEMAPS_STORE = {"family": "opensmile", "feature_set": "eGeMAPSv02", "dim": 25, "kind": "audio", "frame_rate": 100.0}
EGEMAPS = {"family": "egemaps", "model": "eGeMAPSv02", "layers": [], "batch_size": 16, "batch_seconds": 60.0}
# Families only matter when audio is encoded; these members are run on given features.
SYNTHETIC = {"a": {"family": "hubert", "model": "/models/hubert", "layers": [-1], "batch_size": 8,
                   "batch_seconds": 30.0},
             "b": {"family": "minilm", "model": "", "layers": [-1], "batch_size": 8, "batch_seconds": 30.0}}
ASR = {"model": "demo:base", "language": "en", "batch_size": 4, "pad_seconds": 0.0, "beam_size": 1,
       "num_workers": 0, "device": "cpu", "compare_subset": 0}


def write_member(root, name, encoders: dict[str, int], pools, stores: dict[str, dict], seed: int,
                 fusion: str = "deep", classes: tuple[str, ...] = CODES) -> tuple:
    """A member folder as members.train_member lays it out (model.safetensors + config.json), random weights,
    one class output per class of `classes` (the run's); the class head is scaled up so the probabilities
    depend clearly on the input."""
    torch.manual_seed(seed)
    cfg = deepser_config(tuple(encoders.values()), hidden=8, layers=2, heads=2, dropout=0.1, ff_mult=2,
                        fusion=fusion, n_classes=len(classes))
    model = DeepSER(cfg).eval()
    with torch.no_grad():
        model.class_head.weight.mul_(20)
        model.attribute_head.weight.mul_(5)
    folder = root / name
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    config = {"name": name, "encoders": list(encoders), "pools": list(pools), "one_hot": False, "device": "cpu",
              "deepser": cfg.to_dict(), "train": train_config(seed=seed).model_dump(), "classes": list(classes),
              "feature_stores": stores}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, model


def make_meta(n_models: int, use_attributes: bool, hidden: int = 0, seed: int = 0) -> MetaClassifier:
    torch.manual_seed(seed)
    meta = MetaClassifier(meta_config(n_models, attributes_in=use_attributes, attributes_out=use_attributes,
                                       hidden=hidden)).eval()
    with torch.no_grad():
        for p in meta.parameters():
            p.mul_(5)
    return meta


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Two members over encoders a (6-d, pooled by 2) and b (4-d, text), deep and late fusion, and a meta-
    classifier with a hidden layer that also takes and predicts attributes."""
    root = tmp_path_factory.mktemp("synthetic")
    stores = {"a": {"family": "hubert", "model": "/models/hubert", "layers": [-1], "dim": 6, "kind": "audio"},
              "b": {"family": "minilm", "model": "", "layers": [-1], "dim": 4, "kind": "text"}}
    ab, model_ab = write_member(root / "models", "m_ab", {"a": 6, "b": 4}, [2, 1], stores, seed=1)
    a, model_a = write_member(root / "models", "m_a", {"a": 6}, [2], {"a": stores["a"]}, seed=2, fusion="late")
    meta = make_meta(2, use_attributes=True, hidden=4)
    out = save_bundle(root / "bundle", meta, [ab, a], SYNTHETIC, ASR)
    return {"root": root, "dirs": [ab, a], "models": [model_ab, model_a], "meta": meta, "bundle": out}


def random_features(n: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {"a": [rng.normal(0, 1, (int(rng.integers(1, 15)), 6)).astype(np.float32) for _ in range(n)],
            "b": [rng.normal(0, 1, (int(rng.integers(1, 6)), 4)).astype(np.float32) for _ in range(n)]}


def in_memory(models, encoders, pools, meta, features) -> tuple[np.ndarray, np.ndarray]:
    """The reference: each member on the whole set in one batch, then the meta-classifier."""
    probs, attrs = [], []
    with torch.no_grad():
        for model, keys, p in zip(models, encoders, pools):
            xs, masks = batch_from_arrays([features[k] for k in keys], p)
            logits, a = model(xs, masks)
            probs.append(torch.softmax(logits, -1).numpy())
            attrs.append(unscale_attributes(a.numpy()))
    n = len(probs[0])
    stacked = Stacked(np.arange(n), np.stack(probs, 1), np.stack(attrs, 1), np.full(n, None, dtype=object))
    return meta_predict(meta, stacked)[0], stacked.probs


def test_layout_and_manifest(synthetic):
    b = synthetic["bundle"]
    assert not b.with_name(b.name + ".partial").exists()
    names = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert names == ["asr.json", "encoders.json", "manifest.json", "members/m_a/config.json",
                     "members/m_a/model.safetensors", "members/m_ab/config.json", "members/m_ab/model.safetensors",
                     "meta.json", "meta.safetensors"]
    manifest = json.loads((b / "manifest.json").read_text())
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    assert manifest["format_version"] == 1
    assert manifest["created_by"]["medusa"] == "0.1.0" and manifest["created_by"]["torch"] == torch.__version__
    meta = json.loads((b / "meta.json").read_text())
    assert meta["members"] == ["m_ab", "m_a"] and meta["config"]["n_models"] == 2
    encoders = json.loads((b / "encoders.json").read_text())
    assert encoders["a"] == {**SYNTHETIC["a"], "pad_seconds": 0.0} and set(encoders) == {"a", "b"}
    assert json.loads((b / "asr.json").read_text())["model"] == "demo:base"
    assert not list(b.rglob("*.pt")) and not list(b.rglob("*.pkl"))  # nothing that needs pickle


def test_reload_reproduces_the_in_memory_ensemble(synthetic):
    bundle = load_bundle(synthetic["bundle"])
    assert bundle.member_names == ["m_ab", "m_a"] and bundle.encoder_keys == ["a", "b"] and bundle.needs_asr
    for member, model in zip(bundle.members, synthetic["models"]):
        reloaded, original = member.model.state_dict(), model.state_dict()
        assert all(torch.equal(reloaded[k], original[k]) for k in original)
    assert all(torch.equal(v, synthetic["meta"].state_dict()[k]) for k, v in bundle.meta.state_dict().items())
    features = random_features(37)
    bundle.batch_size = 8  # several length-sorted batches, against the reference's single one
    probs, member_probs = bundle.predict_features(features)
    ref_probs, ref_members = in_memory(synthetic["models"], [["a", "b"], ["a"]], [[2, 1], [2]], synthetic["meta"],
                                       features)
    assert probs.shape == (37, 8) and member_probs.shape == (37, 2, 8)
    np.testing.assert_allclose(member_probs, ref_members, rtol=0, atol=1e-6)
    np.testing.assert_allclose(probs, ref_probs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert probs.std(0).max() > 0.01  # the check means something: predictions vary with the input
    _, _, attrs = bundle.predict_all(features)
    assert attrs.shape == (37, 3)


def test_feature_errors_name_the_encoder(synthetic):
    bundle = load_bundle(synthetic["bundle"])
    features = random_features(3)
    with pytest.raises(KeyError, match=r"no features for encoder\(s\) b "):
        bundle.predict_features({"a": features["a"]})
    features["b"][1] = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match=r"b features of utterance 1: expected \(T >= 1, 4\)"):
        bundle.predict_features(features)


@pytest.mark.parametrize("target, change", [("members/m_a/model.safetensors", "flip"),
                                            ("encoders.json", "flip"), ("meta.safetensors", "delete")])
def test_a_changed_or_missing_file_is_named(synthetic, tmp_path, target, change):
    copy = shutil.copytree(synthetic["bundle"], tmp_path / "bundle")
    path = copy / target
    if change == "delete":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=target.replace(".", r"\.") + ".*" + ("missing" if change == "delete"
                                                                               else "sha256 differs")):
        load_bundle(copy)


def test_member_count_must_match_the_meta_classifier(synthetic, tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(BundleError, match=r"2 member\(s\) \(n_models=2\) but 1 member folder\(s\) were given: m_ab"):
        save_bundle(out, synthetic["meta"], synthetic["dirs"][:1], SYNTHETIC, ASR)
    with pytest.raises(BundleError, match=r"n_models=3\) but 2 member folder"):
        save_bundle(out, make_meta(3, use_attributes=False), synthetic["dirs"], SYNTHETIC, ASR)
    assert not out.exists() and not (tmp_path / "bundle.partial").exists()


def test_save_refuses_inconsistent_inputs(synthetic, tmp_path):
    meta, dirs = synthetic["meta"], synthetic["dirs"]
    with pytest.raises(BundleError, match="no ASR"):  # member m_ab reads text (b)
        save_bundle(tmp_path / "x", meta, dirs, SYNTHETIC, None)
    with pytest.raises(BundleError, match="does not define"):
        save_bundle(tmp_path / "x", meta, dirs, {"a": SYNTHETIC["a"]}, ASR)
    other = {**SYNTHETIC, "a": {**SYNTHETIC["a"], "model": "/models/other"}}
    with pytest.raises(BundleError, match="encoders.a does not match .* made with '/models/hubert'"):
        save_bundle(tmp_path / "x", meta, dirs, other, ASR)
    with pytest.raises(BundleError, match="two members are named 'm_a'"):
        save_bundle(tmp_path / "x", meta, [dirs[1], dirs[1]], SYNTHETIC, ASR)


# ------------------------------------------------------------------------------------------ from audio


@pytest.fixture(scope="module")
def egemaps_bundle(tmp_path_factory):
    """Two eGeMAPS-only members (no ASR, no hub) and two short 16 kHz wav files: a tone and noise."""
    root = tmp_path_factory.mktemp("egemaps")
    store = {"egemaps": EGEMAPS_STORE}
    dirs = [write_member(root / "models", "e_deep", {"egemaps": 25}, [20], store, seed=3)[0],
            write_member(root / "models", "e_late", {"egemaps": 25}, [5], store, seed=4, fusion="late")[0]]
    out = save_bundle(root / "bundle", make_meta(2, use_attributes=False), dirs, {"egemaps": EGEMAPS}, ASR)
    sr, rng = 16000, np.random.default_rng(0)
    t = np.arange(int(0.45 * sr)) / sr
    wavs = [root / "tone.wav", root / "noise.wav"]
    sf.write(wavs[0], 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)), sr, subtype="PCM_16")
    sf.write(wavs[1], 0.1 * rng.normal(0, 1, int(0.3 * sr)), sr, subtype="PCM_16")
    return out, wavs


def test_predict_audio_matches_predict_features(egemaps_bundle):
    path, wavs = egemaps_bundle
    assert json.loads((path / "asr.json").read_text()) is None  # no member reads text
    bundle = load_bundle(path)
    assert not bundle.needs_asr
    frame = bundle.predict_audio(wavs)
    assert list(frame["utt_id"]) == ["tone", "noise"] and "text" not in frame
    assert list(frame.columns) == ["utt_id", "path", *SOFT_TARGET_COLUMNS, "predicted"]
    probs = frame[list(SOFT_TARGET_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert set(frame["predicted"]) <= set(CODES)
    # the same features as an extract stage would store them (float16), straight into predict_features
    feats = [f.astype(np.float16) for f in OpenSmileEncoder("eGeMAPSv02").encode([load_audio(w) for w in wavs])]
    expected, member_probs = bundle.predict_features({"egemaps": feats})
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    assert member_probs.shape == (2, 2, 8)
    assert np.abs(probs[0] - probs[1]).max() > 1e-3  # tone and noise are told apart


@pytest.fixture(scope="module")
def grid_bundle(tmp_path_factory):
    """Members over encoders whose frames depend on padding (a tiny random Whisper, a group-norm HuBERT used
    without a mask, as the base checkpoints are) and eGeMAPS, trained on stores made by the extract stage over
    nine wav files of 0.4-6.5 s; the bundle built from those stores' meta, as the bundle stage builds it."""
    import tiny_models

    from medusa.features.encoders import build_encoder
    from medusa.features.extract import extract_to_store
    from medusa.features.store.reader import FeatureStore

    root = tmp_path_factory.mktemp("grid")
    params = {"whisper": {"family": "whisper", "model": tiny_models.whisper_checkpoint(root), "layers": [-1],
                          "batch_size": 3, "batch_seconds": 20.0},
              "hubert": {"family": "hubert", "model": tiny_models.hf_audio(root, "hubert", "group"),
                         "layers": [-2, -1], "batch_size": 3, "batch_seconds": 20.0},
              "egemaps": EGEMAPS}
    rows = []
    for i, seconds in enumerate([0.4, 6.5, 1.2, 2.3, 2.9, 0.8, 4.1, 3.0, 1.7]):
        path = root / f"clip{i}.wav"
        sf.write(path, tiny_models.clip(seconds, 20 + i), 16000, subtype="PCM_16")
        rows.append({"utt_id": f"clip{i}", "path": str(path), "duration_s": sf.info(path).duration})
    items = pd.DataFrame(rows)
    stores = {}
    for key, e in params.items():
        enc = build_encoder(key, e["family"], e["model"], e["layers"], torch.device("cpu"), root / "cache")
        extract_to_store(enc, items, root / "features" / key, batch_size=e["batch_size"],
                         batch_seconds=e["batch_seconds"], num_workers=0, device=torch.device("cpu"))
        stores[key] = FeatureStore(root / "features" / key)
    metas = {k: dict(st.meta) for k, st in stores.items()}
    dirs = [write_member(root / "models", "m_all", {"whisper": 32, "hubert": 32, "egemaps": 25}, [5, 5, 10],
                         metas, seed=6)[0],
            write_member(root / "models", "m_wh", {"whisper": 32}, [2], {"whisper": metas["whisper"]}, seed=7,
                         fusion="late")[0]]
    out = save_bundle(root / "bundle", make_meta(2, use_attributes=False), dirs, params, None)
    return {"bundle": out, "items": items, "stores": stores, "cache": root / "cache"}


def test_predict_in_one_call_in_any_order_gives_the_stores_features(grid_bundle):
    """Several clips in one call, in any order: the features the extract stage stored (to float16 rounding: 2
    float16 steps), and the probabilities of those stored features (to 1e-3)."""
    items, stores = grid_bundle["items"], grid_bundle["stores"]
    bundle = load_bundle(grid_bundle["bundle"])
    encoders = json.loads((grid_bundle["bundle"] / "encoders.json").read_text())
    assert "whole seconds" in encoders["whisper"]["padding"] and encoders["hubert"]["versions"]["transformers"]
    audios = [load_audio(p) for p in items["path"]]
    for order in ([8, 1, 0, 4, 2, 7, 5, 3, 6], [3, 0, 6]):
        feats = bundle.encode([audios[i] for i in order], cache_dir=grid_bundle["cache"])
        for key, store in stores.items():
            for j, i in enumerate(order):
                stored = np.asarray(store[items.at[i, "utt_id"]], np.float32)
                np.testing.assert_allclose(feats[key][j].astype(np.float32), stored, rtol=2e-3, atol=1e-4,
                                           err_msg=f"{key} {items.at[i, 'utt_id']} at position {j}")
    order = [5, 1, 7, 0, 2]
    frame = bundle.predict_audio([items.at[i, "path"] for i in order], cache_dir=grid_bundle["cache"])
    stored = {k: [np.asarray(st[items.at[i, "utt_id"]]) for i in order] for k, st in stores.items()}
    expected, _ = bundle.predict_features(stored)
    np.testing.assert_allclose(frame[list(SOFT_TARGET_COLUMNS)].to_numpy(), expected, rtol=0, atol=1e-3)
    assert list(frame["predicted"]) == list(np.asarray(CODES)[expected.argmax(1)])


def test_a_bundle_refuses_features_padded_by_other_code(grid_bundle, tmp_path):
    """A bundle whose stores were padded by another rule (e.g. made before the whole-second grid) is refused
    when it would encode: its members never saw such features."""
    bundle = load_bundle(grid_bundle["bundle"])
    bundle.encoders["whisper"]["padding"] = "batches padded to their longest clip"
    with pytest.raises(BundleError, match=r"encoder 'whisper': the members were trained on features padded as "
                                          r"'batches padded to their longest clip'"):
        bundle.encode([load_audio(grid_bundle["items"].at[0, "path"])], cache_dir=grid_bundle["cache"])


def egemaps_member_bundle(root, versions: dict) -> Path:
    store = {"egemaps": {**EGEMAPS_STORE, "versions": versions}}
    folder = write_member(root / "models", "e", {"egemaps": 25}, [20], store, seed=8)[0]
    return save_bundle(root / "bundle", make_meta(1, use_attributes=False), [folder], {"egemaps": EGEMAPS}, None)


def test_other_library_versions_are_refused_unless_allowed(egemaps_bundle, tmp_path, capsys, caplog):
    import opensmile

    _, wavs = egemaps_bundle
    installed = opensmile.__version__
    major, minor, *_ = installed.split(".")
    # another patch release computes the same features: accepted
    same = egemaps_member_bundle(tmp_path / "same", {"torch": "0.0.0", "opensmile": f"{major}.{minor}.999"})
    assert load_bundle(same).member_names == ["e"]
    other = egemaps_member_bundle(tmp_path / "other", {"torch": torch.__version__, "opensmile": "1.0.0"})
    with pytest.raises(BundleError, match=rf"encoder 'egemaps': its features were made with opensmile 1\.0\.0, "
                                          rf"installed: {re.escape(installed)}(?s:.*)--allow-version-mismatch"):
        load_bundle(other)
    with caplog.at_level("WARNING", logger="medusa.serving.inference"):
        assert load_bundle(other, allow_version_mismatch=True).member_names == ["e"]
    assert "opensmile 1.0.0" in caplog.text
    assert cli.main(["predict", str(other), str(wavs[0]), "--device", "cpu"]) == 1
    assert "--allow-version-mismatch" in capsys.readouterr().err
    assert cli.main(["predict", str(other), str(wavs[0]), "--device", "cpu", "--allow-version-mismatch"]) == 0


def test_predict_audio_names_a_bad_file(egemaps_bundle, tmp_path):
    path, wavs = egemaps_bundle
    bad = tmp_path / "8k.wav"
    sf.write(bad, np.zeros(800), 8000, subtype="PCM_16")
    bundle = load_bundle(path)
    with pytest.raises(AudioError, match="8k.wav: sample rate 8000"):
        bundle.predict_audio([wavs[0], bad])
    with pytest.raises(AudioError, match="missing.wav"):
        bundle.predict_audio([tmp_path / "missing.wav"])


def test_cli_predict_writes_a_csv(egemaps_bundle, tmp_path, capsys):
    path, wavs = egemaps_bundle
    out = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(path), *map(str, wavs), "--out", str(out), "--device", "cpu"]) == 0
    frame = pd.read_csv(out)
    assert list(frame["utt_id"]) == ["tone", "noise"]
    np.testing.assert_allclose(frame[list(SOFT_TARGET_COLUMNS)].sum(axis=1), 1, atol=1e-5)
    printed = capsys.readouterr().out
    assert "tone" in printed and "noise" in printed and f"wrote 2 predictions to {out}" in printed
    # a broken bundle is an error message and exit status 1, not a traceback
    assert cli.main(["predict", str(tmp_path / "nowhere"), str(wavs[0]), "--device", "cpu"]) == 1
    assert "not a predict bundle" in capsys.readouterr().err


def test_missing_encoder_weights_are_a_clear_cli_error(egemaps_bundle, tmp_path, capsys):
    """A member over an encoder whose pretrained weights are not on this machine: the CLI says which and how."""
    store = {"a": {"family": "hubert", "model": "/models/hubert", "layers": [-1], "dim": 6, "kind": "audio"}}
    folder, _ = write_member(tmp_path / "models", "h", {"a": 6}, [1], store, seed=5)
    path = save_bundle(tmp_path / "bundle", make_meta(1, use_attributes=False), [folder], SYNTHETIC, None)
    _, wavs = egemaps_bundle
    assert cli.main(["predict", str(path), str(wavs[0]), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "cannot load the hubert weights '/models/hubert'" in err and "encoders.a.model" in err


# ------------------------------------------------------------------------------ with the members' probes


def write_probe(folder: Path, pooled: np.ndarray, seed: int, classes: tuple[str, ...] = CODES) -> LinearProbe:
    """A member's probe.json as members.train_member writes it: standardised on `pooled` (N, D frame means),
    random weights over every class of the run (`classes`), steep enough for the probabilities to depend
    clearly on the input."""
    rng = np.random.default_rng(seed)
    probe = LinearProbe(classes=list(classes), mean=pooled.mean(0).tolist(), scale=(pooled.std(0) + 1e-3).tolist(),
                        coef=rng.normal(0, 1.5, (len(classes), pooled.shape[1])).tolist(),
                        intercept=[0.0] * len(classes), c=1.0, seed=seed, outputs=list(classes))
    probe.save(folder)
    return probe


def member_frames(models, pools, features: list[np.ndarray], rows: pd.DataFrame, classes: tuple[str, ...] = CODES
                  ) -> list[pd.DataFrame]:
    """posteriors.parquet of eGeMAPS-only members over `rows` (utt_id, split, label), each member on the whole
    set in one batch, as the training stage scores them."""
    frames = []
    with torch.no_grad():
        for model, p in zip(models, pools):
            xs, masks = batch_from_arrays([features], p)
            logits, a = model(xs, masks)
            frame = rows[["utt_id", "split", "label"]].copy()
            frame[list(target_columns(classes))] = torch.softmax(logits, -1).numpy()
            frame[list(ATTRIBUTES)] = unscale_attributes(a.numpy())
            frames.append(frame)
    return frames


def probe_run(root: Path, classes: tuple[str, ...], stage3: str = "paper") -> dict:
    """Two eGeMAPS members of a run over `classes` (the manifest's p_ columns), each with its linear probe
    (probe.json, probe_posteriors.parquet), scored on 24 synthesized clips (dev 12, test 6, blind 6); the
    ensemble stage's soup over them with include_probes and the stage-3 form `stage3` (anchored: its penalty, or
    soft voting, chosen by cross-validation within dev), its stored posteriors, and its bundle."""
    sr, rng = 16000, np.random.default_rng(1)
    wavs = []
    for i in range(24):
        t = np.arange(int(rng.uniform(0.3, 0.7) * sr)) / sr
        tone = rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(100, 600) * t)
        clip = tone + rng.uniform(0, 0.1) * rng.normal(0, 1, len(t))
        wavs.append(root / f"clip{i:02d}.wav")
        sf.write(wavs[-1], clip, sr, subtype="PCM_16")
    features = [f.astype(np.float16) for f in OpenSmileEncoder("eGeMAPSv02").encode([load_audio(w) for w in wavs])]
    splits = ["dev"] * 12 + ["test"] * 6 + ["blind"] * 6
    labels = [str(c) for c in rng.choice(list("ASHN"), 18)] + [None] * 6
    rows = pd.DataFrame({"utt_id": [w.stem for w in wavs], "split": splits, "label": labels})
    train = pd.DataFrame({"utt_id": [f"t{i}" for i in range(8)], "split": "train", "label": list("ASHNASHN")})
    manifest = pd.concat([train, rows], ignore_index=True)
    labelled = manifest["label"].notna().to_numpy()
    targets = np.full((len(manifest), len(classes)), np.nan)
    targets[labelled] = np.eye(len(classes))[[classes.index(c) for c in manifest.loc[labelled, "label"]]]
    manifest[list(target_columns(classes))] = targets
    manifest[list(ATTRIBUTES)] = 4.0

    store, pools, names = {"egemaps": EGEMAPS_STORE}, [[20], [5]], ["p_deep", "p_late"]
    written = [write_member(root / "models", "p_deep", {"egemaps": 25}, pools[0], store, seed=11, classes=classes),
               write_member(root / "models", "p_late", {"egemaps": 25}, pools[1], store, seed=12, fusion="late",
                            classes=classes)]
    dirs, models = [d for d, _ in written], [m for _, m in written]
    pooled = pooled_means([features])
    probes = [write_probe(d, pooled, seed=20 + i, classes=classes) for i, d in enumerate(dirs)]
    for d, frame, probe in zip(dirs, member_frames(models, pools, features, rows, classes), probes):
        frame.to_parquet(d / "posteriors.parquet")
        probe_frame = rows[["utt_id", "split", "label"]].copy()
        probe_frame[list(target_columns(classes))] = probe.predict_proba(pooled)
        probe_frame[list(ATTRIBUTES)] = np.nan
        probe_frame.to_parquet(d / "probe_posteriors.parquet")
    posteriors = {n: pd.read_parquet(d / "posteriors.parquet") for n, d in zip(names, dirs)}
    probe_posteriors = read_probe_posteriors(names, root / "models")
    cfg = meta_config(0, include_probes=True, epochs=20, lr=1e-2, stage3=stage3)
    result = run_subset(posteriors, manifest, names, cfg, [0, 1], probe_posteriors, anchor_grid=[0.0],
                                 cv_folds=2)
    stored = ensemble_posteriors(posteriors, result, ("test", "blind"), probe_posteriors)
    out = save_bundle(root / "bundle", result.soup, dirs, {"egemaps": EGEMAPS}, None)
    return {"bundle": out, "dirs": dirs, "probes": probes, "soup": result.soup, "stored": stored, "wavs": wavs,
            "features": features, "rows": rows}


@pytest.fixture(scope="module")
def probe_bundle(tmp_path_factory):
    """probe_run over all 8 classes."""
    return probe_run(tmp_path_factory.mktemp("probes"), CODES)


@pytest.fixture(scope="module")
def four_class_bundle(tmp_path_factory):
    """probe_run of a 4-class run (IEMOCAP's A S H N): the manifest holds p_A, p_S, p_H, p_N only; stage 3
    anchored at soft voting (the demo's form)."""
    return probe_run(tmp_path_factory.mktemp("four"), ("A", "S", "H", "N"), stage3="anchored")


def test_a_bundle_with_probes_reproduces_the_ensembles_stored_posteriors(probe_bundle):
    path = probe_bundle["bundle"]
    names = sorted(p.relative_to(path).as_posix() for p in path.rglob("probe.json"))
    assert names == ["members/p_deep/probe.json", "members/p_late/probe.json"]
    assert set(names) <= set(json.loads((path / "manifest.json").read_text())["files"])   # checksummed
    assert json.loads((path / "meta.json").read_text())["config"]["include_probes"] is True
    bundle = load_bundle(path)
    assert bundle.meta.cfg.include_probes and bundle.meta.cfg.n_inputs == 2 * (8 + 8)
    assert [m.probe for m in bundle.members] == probe_bundle["probes"]
    stored, rows = probe_bundle["stored"], probe_bundle["rows"]
    # from the same features: the ensemble's stored posteriors of test and blind
    scored = rows.index[rows["split"].isin(["test", "blind"])]
    probs, _ = bundle.predict_features({"egemaps": [probe_bundle["features"][i] for i in scored]})
    expected = stored.set_index("utt_id").loc[rows.loc[scored, "utt_id"], list(SOFT_TARGET_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)
    # from the wav files, blind clips in a shuffled request: the stage's own check
    blind = [probe_bundle["wavs"][i] for i in rows.index[rows["split"] == "blind"]][::-1]
    check = stored_agreement(bundle, blind, stored)
    assert check["clips"] == 6 and check["argmax_agree"] == 6 and check["max_abs_diff"] <= 1e-5, check
    # the probes are really read: another probe for one member changes the ensemble's output
    bundle.members[0].probe = bundle.members[1].probe
    moved, _ = bundle.predict_features({"egemaps": [probe_bundle["features"][i] for i in scored]})
    assert np.abs(moved - probs).max() > 1e-3


def test_a_bundle_with_probes_needs_every_members_probe(probe_bundle, tmp_path):
    dirs, soup = probe_bundle["dirs"], probe_bundle["soup"]
    # writing: a member trained before members had probes
    old = Path(shutil.copytree(dirs[1], tmp_path / "models" / "p_late"))
    (old / "probe.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"p_late/probe\.json: no linear probe .*retrain it: dvc repro "
                                                r"train@p_late"):
        save_bundle(tmp_path / "b", soup, [dirs[0], old], {"egemaps": EGEMAPS}, None)
    write_probe(old, np.random.default_rng(0).normal(0, 1, (5, 10)), seed=0)       # 10 features, not 25
    with pytest.raises(BundleError, match=r"p_late/probe\.json: the probe reads 10 features, but the member's "
                                          r"encoders \(egemaps\) give 25"):
        save_bundle(tmp_path / "b", soup, [dirs[0], old], {"egemaps": EGEMAPS}, None)
    # loading: the file gone, or gone from the manifest too
    gone = Path(shutil.copytree(probe_bundle["bundle"], tmp_path / "gone"))
    (gone / "members/p_deep/probe.json").unlink()
    with pytest.raises(BundleError, match=r"members/p_deep/probe\.json: listed in the bundle's manifest but missing"):
        load_bundle(gone)
    manifest = json.loads((gone / "manifest.json").read_text())
    del manifest["files"]["members/p_deep/probe.json"]
    (gone / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"members/p_deep/probe\.json: the meta-classifier reads the members' probe "
                                          r"posteriors \(include_probes\) but the bundle has no probe for member "
                                          r"'p_deep'"):
        load_bundle(gone)


# ------------------------------------------------------------------------------ the run's classes


def test_a_four_class_bundle_predicts_its_classes_only(four_class_bundle):
    """A bundle of a 4-class run: meta.json and every member record the classes, predictions carry p_A, p_S, p_H,
    p_N only (and `predicted` among them), and agree with the ensemble stage's stored posteriors."""
    four = ("A", "S", "H", "N")
    path, rows, features = four_class_bundle["bundle"], four_class_bundle["rows"], four_class_bundle["features"]
    assert json.loads((path / "meta.json").read_text())["config"]["classes"] == list(four)
    for name in ("p_deep", "p_late"):
        assert json.loads((path / "members" / name / "config.json").read_text())["classes"] == list(four)
        assert json.loads((path / "members" / name / "probe.json").read_text())["outputs"] == list(four)
    bundle = load_bundle(path)
    assert bundle.classes == four and [m.classes for m in bundle.members] == [four, four]
    assert bundle.meta.cfg.n_inputs == 2 * (4 + 4)               # each member's posteriors and its probe's
    assert bundle.meta.cfg.stage3 == four_class_bundle["soup"].cfg.stage3 != "paper"   # the anchor travels
    test = list(rows.index[rows["split"] == "test"])
    frame = bundle.predict_audio([four_class_bundle["wavs"][i] for i in test])
    assert list(frame.columns) == ["utt_id", "path", "p_A", "p_S", "p_H", "p_N", "predicted", *ATTRIBUTES]
    assert set(frame["predicted"]) <= set(four)
    probs, member_probs = bundle.predict_features({"egemaps": [features[i] for i in test]})
    assert probs.shape == (len(test), 4) and member_probs.shape == (len(test), 2, 4)
    np.testing.assert_allclose(frame[["p_A", "p_S", "p_H", "p_N"]].to_numpy(), probs, rtol=0, atol=1e-6)
    assert list(frame["predicted"]) == list(np.asarray(four)[probs.argmax(1)])
    stored = four_class_bundle["stored"]
    assert [c for c in stored.columns if c.startswith("p_")] == ["p_A", "p_S", "p_H", "p_N"]
    check = stored_agreement(bundle, [four_class_bundle["wavs"][i] for i in test], stored)
    assert check["argmax_agree"] == len(test) and check["max_abs_diff"] <= 1e-5, check
    empty, empty_members, _ = bundle.predict_all({"egemaps": []})
    assert empty.shape == (0, 4) and empty_members.shape == (0, 2, 4)


def _rewrite(bundle: Path, rel: str, change) -> None:
    """Edit one JSON file of a bundle (change(dict) -> dict) and record its new checksum in the manifest."""
    from medusa.io import sha256_file

    path = bundle / rel
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][rel] = sha256_file(path)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_members_of_other_classes_are_refused(four_class_bundle, probe_bundle, tmp_path):
    four = four_class_bundle
    # writing: a member of the 8-class run beside one of the 4-class run
    with pytest.raises(BundleError, match=r"the members are over different classes \(member 'p_deep': A S H N; "
                                          r"member 'p_late': A S H U F D C N\)"):
        save_bundle(tmp_path / "b", four["soup"], [four["dirs"][0], probe_bundle["dirs"][1]], {"egemaps": EGEMAPS},
                    None)
    # loading: a meta-classifier over other classes than its members' (same count, so the weights would load)
    other = Path(shutil.copytree(four["bundle"], tmp_path / "other"))
    _rewrite(other, "meta.json", lambda m: {**m, "config": {**m["config"], "classes": ["A", "S", "H", "U"]}})
    with pytest.raises(BundleError, match=r"reads posteriors over the classes A S H U, its members \(p_deep, "
                                          r"p_late\) predict A S H N"):
        load_bundle(other)


def test_a_bundle_written_before_classes_were_recorded_predicts_all_8(probe_bundle, tmp_path):
    """meta.json, the members' config.json and probe.json of older bundles name no classes: all 8 codes."""
    old = Path(shutil.copytree(probe_bundle["bundle"], tmp_path / "old"))
    drop = lambda key: lambda d: {k: v for k, v in d.items() if k != key}  # noqa: E731
    _rewrite(old, "meta.json", lambda m: {**m, "config": drop("classes")(m["config"])})
    for name in ("p_deep", "p_late"):
        _rewrite(old, f"members/{name}/config.json", drop("classes"))
        _rewrite(old, f"members/{name}/probe.json", drop("outputs"))
    bundle = load_bundle(old)
    assert bundle.classes == CODES and bundle.members[0].probe.outputs == list(CODES)
    features = {"egemaps": probe_bundle["features"][:5]}
    np.testing.assert_array_equal(bundle.predict_features(features)[0],
                                  load_bundle(probe_bundle["bundle"]).predict_features(features)[0])
