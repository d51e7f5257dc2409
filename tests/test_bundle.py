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
from tiny_bundles import EGEMAPS, EGEMAPS_STORE, make_meta, score_files, write_member

from medusa import cli
from medusa.data.audio import load_audio
from medusa.ensemble.meta import Stacked, meta_predict
from medusa.features.encoders.opensmile_lld import OpenSmileEncoder
from medusa.labels import CODES, SOFT_TARGET_COLUMNS
from medusa.model.dataset import batch_from_arrays, unscale_attributes
from medusa.serving.bundle import BundleError, save_bundle
from medusa.serving.inference import load_bundle

# Families only matter when audio is encoded; these members are run on given features.
SYNTHETIC = {"a": {"family": "hubert", "model": "/models/hubert", "layers": [-1], "batch_size": 8,
                   "batch_seconds": 30.0},
             "b": {"family": "minilm", "model": "", "layers": [-1], "batch_size": 8, "batch_seconds": 30.0}}
ASR = {"model": "demo:base", "language": "en", "batch_size": 4, "pad_seconds": 0.0, "beam_size": 1,
       "num_workers": 0, "device": "cpu", "compare_subset": 0}


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


def test_predicted_files_match_predict_features(egemaps_bundle):
    path, wavs = egemaps_bundle
    assert json.loads((path / "asr.json").read_text()) is None  # no member reads text
    bundle = load_bundle(path)
    assert not bundle.needs_asr
    frame = score_files(bundle, wavs)
    assert list(frame["utt_id"]) == ["tone", "noise"] and "text" not in frame
    assert list(frame.columns) == ["file", "utt_id", "level", "start_s", "end_s", "duration_s", *SOFT_TARGET_COLUMNS,
                                   "predicted", "warning", "error"]
    probs = frame[list(SOFT_TARGET_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert set(frame["predicted"]) <= set(CODES)
    # the same features as an extract stage would store them (float16), straight into predict_features
    feats = [f.astype(np.float16) for f in OpenSmileEncoder("eGeMAPSv02").encode([load_audio(w) for w in wavs])]
    expected, member_probs = bundle.predict_features({"egemaps": feats})
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    assert member_probs.shape == (2, 2, 8)
    assert np.abs(probs[0] - probs[1]).max() > 1e-3  # tone and noise are told apart


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


def test_a_bad_file_gets_its_own_row(egemaps_bundle, tmp_path):
    path, wavs = egemaps_bundle
    frame = score_files(load_bundle(path), [wavs[0], tmp_path / "missing.wav"])
    assert frame["error"].isna().tolist() == [True, False]
    assert frame["error"].iloc[1] == f"{tmp_path / 'missing.wav'}: no such file or folder"
    assert frame.loc[1, list(SOFT_TARGET_COLUMNS)].isna().all()


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
