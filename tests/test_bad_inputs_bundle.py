"""The bad-input matrix for predict bundles (issue 24): a damaged, edited or foreign bundle is refused when it is
loaded (medusa.serving.inference.load_bundle, and `medusa predict` through it) with one BundleError naming the
file and the key or tensor at fault, never a library traceback and never a silent NaN; a clip the bundle cannot
score gets an error naming the clip."""
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from bad_inputs import leftovers, refused, user_error
from meta_config import meta_config
from safetensors.torch import load_file, save_file
from tiny_bundles import EGEMAPS, EGEMAPS_STORE, write_member

from medusa import cli
from medusa.ensemble.meta import MetaClassifier
from medusa.io import sha256_file
from medusa.labels import CODES
from medusa.model.linear_probe import LinearProbe
from medusa.serving.bundle import MEMBER_CONFIG_KEYS, BundleError, save_bundle
from medusa.serving.inference import ClipError, load_bundle

HUBERT = {"family": "hubert", "model": "/models/hubert", "layers": [-1], "batch_size": 8, "batch_seconds": 30.0}
ASR = {"model": "demo:base", "language": "en", "batch_size": 4, "pad_seconds": 0.0, "beam_size": 1,
       "num_workers": 0, "device": "cpu", "compare_subset": 0}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Built once for the module (each case damages a copy): an eGeMAPS bundle (offline, no ASR) of two members
    with their linear probes, read by a meta-classifier that takes probes and attributes; a bundle whose member
    reads HuBERT weights at /models/hubert (not on this machine); two short 16 kHz wav files."""
    root = tmp_path_factory.mktemp("bad_bundles")
    store = {"egemaps": EGEMAPS_STORE}
    dirs = [write_member(root / "models", "e_deep", {"egemaps": 25}, [20], store, seed=3)[0],
            write_member(root / "models", "e_late", {"egemaps": 25}, [5], store, seed=4, fusion="late")[0]]
    rng = np.random.default_rng(0)
    for i, folder in enumerate(dirs):
        LinearProbe(classes=list(CODES), mean=[0.0] * 25, scale=[1.0] * 25,
                    coef=rng.normal(0, 0.1, (len(CODES), 25)).tolist(), intercept=[0.0] * len(CODES), c=1.0, seed=i,
                    outputs=list(CODES)).save(folder)
    torch.manual_seed(0)
    meta = MetaClassifier(meta_config(2, include_probes=True, attributes_in=True, attributes_out=True)).eval()
    egemaps = save_bundle(root / "egemaps_bundle", meta, dirs, {"egemaps": EGEMAPS}, None)
    hub_store = {"a": {"family": "hubert", "model": "/models/hubert", "layers": [-1], "dim": 6, "kind": "audio"}}
    hub_member = write_member(root / "models", "h", {"a": 6}, [1], hub_store, seed=5)[0]
    torch.manual_seed(1)
    hub_meta = MetaClassifier(meta_config(1, include_probes=False, attributes_in=False, attributes_out=False))
    hubert = save_bundle(root / "hubert_bundle", hub_meta.eval(), [hub_member], {"a": HUBERT}, None)
    sr, t = 16000, np.arange(int(0.45 * 16000)) / 16000
    wavs = [root / "tone.wav", root / "noise.wav"]
    sf.write(wavs[0], 0.3 * np.sin(2 * np.pi * 220 * t), sr, subtype="PCM_16")
    sf.write(wavs[1], 0.1 * rng.normal(0, 1, int(0.3 * sr)), sr, subtype="PCM_16")
    assert load_bundle(egemaps).member_names == ["e_deep", "e_late"]  # the undamaged bundle loads
    return {"egemaps": egemaps, "hubert": hubert, "wavs": wavs, "root": root}


def copy_of(built, tmp_path, which: str = "egemaps") -> Path:
    return Path(shutil.copytree(built[which], tmp_path / "bundle"))


def fix_checksums(bundle: Path, add: tuple[str, ...] = ()) -> None:
    """Rewrite the manifest's sha256 of every listed file (and of `add`), so that the checksum check passes and
    the check behind it is what the case tests: a bundle edited, or built wrong, by someone who also ran sha256."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = {rel: sha256_file(bundle / rel) for rel in [*manifest["files"], *add]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def edit_json(bundle: Path, rel: str, change) -> None:
    path = bundle / rel
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    fix_checksums(bundle)


def set_tensor(bundle: Path, rel: str, value: float) -> str:
    """One value of the first floating tensor of `rel` set to `value`; returns the tensor's name."""
    state = load_file(str(bundle / rel))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[0] = value
    save_file(state, str(bundle / rel))
    fix_checksums(bundle)
    return name


def predict_argv(bundle: Path, wav: Path, *extra: str) -> list[str]:
    return ["predict", str(bundle), str(wav), "--device", "cpu", *extra]


# ---------------------------------------------------------------------------------------- non-finite weights


def test_nan_tensor_in_a_member(built, tmp_path):
    bundle = copy_of(built, tmp_path)
    name = set_tensor(bundle, "members/e_late/model.safetensors", float("nan"))
    with pytest.raises(BundleError):
        load_bundle(bundle)
    message = user_error(load_bundle, bundle, names=("members/e_late/model.safetensors", repr(name), "NaN or inf"))
    assert "\n" not in message


def test_inf_tensor_in_the_meta_classifier_cli(built, tmp_path, capsys):
    """Exit 1 with the file and tensor named, and no --out file (before the fix: exit 0, `dominance inf`)."""
    bundle = copy_of(built, tmp_path)
    name = set_tensor(bundle, "meta.safetensors", float("inf"))
    out = tmp_path / "predictions.csv"
    refused(cli.main, predict_argv(bundle, built["wavs"][0], "--out", str(out)), capsys, "meta.safetensors",
            repr(name), "non-finite")
    assert not out.exists() and leftovers(tmp_path) == []


def test_nan_tensor_in_any_listed_safetensors_file(built, tmp_path):
    """The rule covers every safetensors file the manifest lists, not only those a loader reads today."""
    bundle = copy_of(built, tmp_path)
    save_file({"x": torch.tensor([1.0, float("nan")])}, str(bundle / "members" / "e_deep" / "extra.safetensors"))
    fix_checksums(bundle, add=("members/e_deep/extra.safetensors",))
    user_error(load_bundle, bundle, names=("members/e_deep/extra.safetensors", "'x'", "1 non-finite"))


def test_nan_number_in_a_probe(built, tmp_path):
    """JSON reads NaN too: a probe's coefficients are checked like tensors."""
    bundle = copy_of(built, tmp_path)
    text = (bundle / "members/e_deep/probe.json").read_text()
    probe = json.loads(text)
    probe["coef"][2][3] = float("nan")
    (bundle / "members/e_deep/probe.json").write_text(json.dumps(probe))  # json writes NaN
    fix_checksums(bundle)
    user_error(load_bundle, bundle, names=("members/e_deep/probe.json", "coef", "finite"))


def test_non_finite_output_names_the_clip(built):
    """Finite weights, but a clip whose features take a model out of range (here: NaN frames handed in): a
    ClipError naming that clip, not NaN probabilities."""
    bundle = load_bundle(built["egemaps"])
    rng = np.random.default_rng(0)
    features = [rng.normal(0, 1, (30, 25)).astype(np.float32) for _ in range(3)]
    features[1][4, 7] = np.nan
    message = user_error(bundle.predict_features, {"egemaps": features}, ["a.wav", "b.wav", "c.wav"],
                         names=("b.wav", "not finite"))
    assert "a.wav" not in message and "c.wav" not in message
    with pytest.raises(ClipError, match="utterance 1"):
        bundle.predict_all({"egemaps": features})


def test_non_finite_output_is_the_rows_error_in_predict(built, tmp_path, capsys, monkeypatch):
    """Through `medusa predict`: the clip whose outputs are not finite gets an error row naming it (exit 1); the
    other is scored; no probability in the written file is NaN or inf."""
    from medusa.serving.featurizer import Featurizer

    encode = Featurizer.encode

    def nan_for_noise(self, audios, texts=None, names=None):
        features = encode(self, audios, texts, names)
        for i, name in enumerate(names):
            if "noise" in name:
                features["egemaps"][i] = np.full_like(features["egemaps"][i], np.nan)
        return features

    monkeypatch.setattr(Featurizer, "encode", nan_for_noise)
    out = tmp_path / "predictions.csv"
    argv = ["predict", str(built["egemaps"]), *map(str, built["wavs"]), "--device", "cpu", "--out", str(out)]
    refused(cli.main, argv, capsys, "noise.wav", "not finite")

    frame = pd.read_csv(out).set_index("utt_id")
    assert pd.isna(frame.loc["tone", "error"]) and "not finite" in frame.loc["noise", "error"]
    p_columns = [c for c in frame if c.startswith("p_")]
    assert np.isfinite(frame.loc["tone", p_columns].to_numpy(dtype=float)).all()
    assert frame.loc["noise", p_columns].isna().all()  # no number, the error says why


# ------------------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("damage", [
    pytest.param(lambda data: data[:20], id="truncated_header"),
    pytest.param(lambda data: b"\0" * 8 + data[8:], id="header_length_zeroed"),
    pytest.param(lambda data: data[:8] + b"#" * 12 + data[20:], id="header_json_overwritten"),
    pytest.param(lambda data: b"\xff" * 8 + data[8:], id="header_length_huge"),
    pytest.param(lambda data: data[:-7], id="truncated_data"),
])
def test_damaged_safetensors_with_checksums_fixed(built, tmp_path, damage):
    bundle = copy_of(built, tmp_path)
    path = bundle / "members" / "e_deep" / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    fix_checksums(bundle)
    message = user_error(load_bundle, bundle, names=("members/e_deep/model.safetensors", "safetensors"))
    assert "\n" not in message and "copy it again" in message


def test_damaged_safetensors_caught_by_the_checksum_cli(built, tmp_path, capsys):
    bundle = copy_of(built, tmp_path)
    path = bundle / "meta.safetensors"
    path.write_bytes(b"\0" * 8 + path.read_bytes()[8:])
    refused(cli.main, predict_argv(bundle, built["wavs"][0]), capsys, "meta.safetensors", "sha256 differs")


def test_checksum_tampering(built, tmp_path):
    """One bit of a member's weights changed, the manifest left as it was."""
    bundle = copy_of(built, tmp_path)
    path = bundle / "members" / "e_late" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    user_error(load_bundle, bundle, names=("members/e_late/model.safetensors", "sha256 differs"))


@pytest.mark.parametrize("rel", ["members/e_deep/config.json", "encoders.json", "asr.json",
                                 "members/e_late/probe.json"])
def test_json_file_not_json(built, tmp_path, rel):
    bundle = copy_of(built, tmp_path)
    (bundle / rel).write_text('{"name": "e_deep", oops')
    fix_checksums(bundle)
    message = user_error(load_bundle, bundle, names=(rel, "cannot be read as JSON"))
    assert "\n" not in message


def test_meta_json_not_json_cli(built, tmp_path, capsys):
    bundle = copy_of(built, tmp_path)
    (bundle / "meta.json").write_bytes(b"\xff\xfe not text")
    fix_checksums(bundle)
    refused(cli.main, predict_argv(bundle, built["wavs"][0]), capsys, "meta.json", "cannot be read as JSON")


def test_manifest_not_json(built, tmp_path):
    bundle = copy_of(built, tmp_path)
    (bundle / "manifest.json").write_text("format_version: 1")
    user_error(load_bundle, bundle, names=("manifest.json", "cannot be read as JSON"))


# --------------------------------------------------------------------------------- unknown or missing keys


@pytest.mark.parametrize("rel, change, names", [
    pytest.param("meta.json", lambda m: {**m, "config": {**m["config"], "hidden_size": 4}},
                 ("meta.json", "config.hidden_size", "unknown key"), id="meta_config_unknown_key"),
    pytest.param("meta.json", lambda m: {**m, "notes": "x"}, ("meta.json", "notes", "unknown key"),
                 id="meta_json_unknown_key"),
    pytest.param("members/e_late/config.json", lambda c: {**c, "pool": [5]},
                 ("members/e_late/config.json", "pool", "unknown key"), id="member_config_unknown_key"),
    pytest.param("members/e_late/config.json", lambda c: {**c, "deepser": {**c["deepser"], "depth": 3}},
                 ("members/e_late/config.json", "deepser.depth", "unknown key"), id="member_deepser_unknown_key"),
    pytest.param("encoders.json", lambda e: {"egemaps": {**e["egemaps"], "sample_rate": 8000}},
                 ("encoders.json", "egemaps.sample_rate", "unknown key"), id="encoder_entry_unknown_key"),
    pytest.param("asr.json", lambda a: {**ASR, "temperature": 0.5},
                 ("asr.json", "temperature", "unknown key"), id="asr_unknown_key"),
    pytest.param("members/e_deep/probe.json", lambda p: {**p, "penalty": "l2"},
                 ("members/e_deep/probe.json", "penalty", "unknown key"), id="probe_unknown_key"),
    pytest.param("meta.json", lambda m: {**m, "train_durations": {"n": 5, "min": 1, "p05": 1, "p50": 2, "p95": 3}},
                 ("meta.json", "train_durations.max", "missing"), id="meta_durations_missing_key"),
    pytest.param("meta.json", lambda m: {**m, "train_durations": {"n": 5, "min": 1, "p05": 1, "p50": 2, "p95": 9,
                                                                   "max": 3}},
                 ("meta.json", "train_durations", "min <= p05 <= p50 <= p95 <= max"), id="meta_durations_unordered"),
    pytest.param("meta.json", lambda m: {**m, "train_durations": {"n": 5, "min": 0, "p05": 1, "p50": 2, "p95": 3,
                                                                   "max": 3}},
                 ("meta.json", "train_durations", "finite positive"), id="meta_durations_zero"),
])
def test_unknown_key(built, tmp_path, rel, change, names):
    """Before the fix: a TypeError from a dataclass's constructor (meta.json's config, probe.json) or a key
    silently ignored; now a BundleError naming the file and the key."""
    bundle = copy_of(built, tmp_path)
    edit_json(bundle, rel, change)
    message = user_error(load_bundle, bundle, names=names)
    assert "\n" not in message


def drop(key: str):
    return lambda d: {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("rel, change, names", [
    pytest.param("meta.json", lambda m: {**m, "config": drop("epochs")(m["config"])},
                 ("meta.json", "config.epochs", "missing"), id="meta_config_missing_key"),
    pytest.param("meta.json", drop("members"), ("meta.json", "members", "missing"), id="meta_members_missing"),
    pytest.param("members/e_deep/config.json", drop("pools"), ("members/e_deep/config.json", "pools", "missing"),
                 id="member_config_missing_key"),
    pytest.param("members/e_deep/config.json", lambda c: {**c, "deepser": drop("hidden")(c["deepser"])},
                 ("members/e_deep/config.json", "deepser.hidden"), id="member_deepser_missing_key"),
    pytest.param("encoders.json", lambda e: {"egemaps": drop("batch_seconds")(e["egemaps"])},
                 ("encoders.json", "egemaps.batch_seconds", "missing"), id="encoder_entry_missing_key"),
    pytest.param("members/e_late/probe.json", drop("coef"), ("members/e_late/probe.json", "coef", "missing"),
                 id="probe_missing_key"),
])
def test_missing_key(built, tmp_path, rel, change, names):
    bundle = copy_of(built, tmp_path)
    edit_json(bundle, rel, change)
    message = user_error(load_bundle, bundle, names=names)
    assert "\n" not in message


def test_unknown_meta_config_key_cli(built, tmp_path, capsys):
    bundle = copy_of(built, tmp_path)
    edit_json(bundle, "meta.json", lambda m: {**m, "config": {**m["config"], "dropout": 0.1}})
    refused(cli.main, predict_argv(bundle, built["wavs"][0]), capsys, "meta.json", "config.dropout")


def test_meta_config_of_other_weights(built, tmp_path):
    """meta.json's config edited to another architecture: the weights do not fit it (load_state_dict's
    multi-line RuntimeError before), one line naming meta.safetensors."""
    bundle = copy_of(built, tmp_path)
    edit_json(bundle, "meta.json", lambda m: {**m, "config": {**m["config"], "hidden": 7}})
    message = user_error(load_bundle, bundle, names=("meta.safetensors", "meta.json"))
    assert "\n" not in message


def test_member_config_of_other_weights(built, tmp_path):
    bundle = copy_of(built, tmp_path)
    edit_json(bundle, "members/e_deep/config.json", lambda c: {**c, "deepser": {**c["deepser"], "hidden": 16}})
    message = user_error(load_bundle, bundle, names=("members/e_deep",))
    assert "\n" not in message


def test_member_config_encoders_and_pools_disagree(built, tmp_path):
    bundle = copy_of(built, tmp_path)
    edit_json(bundle, "members/e_deep/config.json", lambda c: {**c, "pools": [20, 5]})
    user_error(load_bundle, bundle, names=("members/e_deep/config.json", "pools"))


def test_every_key_a_trained_member_writes_is_known():
    """MEMBER_CONFIG_KEYS cannot fall behind what train_member writes to config.json (MemberSpec.to_dict, then
    classes and feature_stores): a new key would make every new bundle unloadable."""
    from medusa.config.params import load_params
    from medusa.model.members import resolve_member

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    name, model = next(iter(params.models.items()))
    spec = resolve_member(name, model, params.train, {e: 8 for e in model.encoders}, probe=params.probe)
    assert {*spec.to_dict(), "classes", "feature_stores"} <= set(MEMBER_CONFIG_KEYS)


# ------------------------------------------------------------------------------ encoders not on this machine


def test_encoder_weights_missing_are_blamed_on_the_bundle_cli(built, tmp_path, capsys):
    """The member reads HuBERT weights at /models/hubert, which this machine lacks: the message names the
    bundle's encoders.json and key and says to copy the weights or rebuild the bundle, not to edit params.yaml
    (which this user may not even have)."""
    err = refused(cli.main, predict_argv(built["hubert"], built["wavs"][0]), capsys,
                  str(built["hubert"] / "encoders.json"), "a.model", "'/models/hubert'", "rebuild the bundle")
    assert "params.yaml" not in err and len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_whisper_asr_weights_missing_are_blamed_on_the_bundle(built, tmp_path):
    bundle = copy_of(built, tmp_path)
    edit_json(bundle, "asr.json", lambda a: {**ASR, "model": str(tmp_path / "no" / "large-v3.pt")})
    from medusa.serving.featurizer import Featurizer

    featurizer = Featurizer(load_bundle(bundle), torch.device("cpu"), tmp_path / "cache")
    message = user_error(featurizer.transcribe, [np.zeros(8000, np.float32)],
                         names=("asr.json", "large-v3.pt", "rebuild the bundle"))
    assert "params.yaml" not in message


# ----------------------------------------------------------------------------- paths, folders and pickles


def test_path_traversal_in_the_file_list(built, tmp_path):
    bundle = copy_of(built, tmp_path)
    (tmp_path / "outside.json").write_text("{}")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["../outside.json"] = sha256_file(tmp_path / "outside.json")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    user_error(load_bundle, bundle, names=("../outside.json", "outside the bundle"))


def test_path_traversal_in_a_member_name(built, tmp_path):
    bundle = copy_of(built, tmp_path)
    edit_json(bundle, "meta.json", lambda m: {**m, "members": ["../../e_deep", "e_late"]})
    user_error(load_bundle, bundle, names=("meta.json", "../../e_deep"))


def test_bundle_folder_missing_cli(built, tmp_path, capsys):
    refused(cli.main, predict_argv(tmp_path / "nowhere", built["wavs"][0]), capsys, str(tmp_path / "nowhere"),
            "not a predict bundle")


def test_listed_file_missing(built, tmp_path):
    bundle = copy_of(built, tmp_path)
    (bundle / "members" / "e_late" / "probe.json").unlink()
    user_error(load_bundle, bundle, names=("members/e_late/probe.json", "missing"))


class _Marker:
    """Unpickling it would create a file: the proof that something was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickle_in_place_of_safetensors_is_refused_unread(built, tmp_path):
    bundle = copy_of(built, tmp_path)
    marker = tmp_path / "unpickled"
    with open(bundle / "members" / "e_deep" / "model.safetensors", "wb") as f:
        pickle.dump({"weights": _Marker(marker)}, f)
    fix_checksums(bundle)
    user_error(load_bundle, bundle, names=("members/e_deep/model.safetensors", "not a readable safetensors"))
    assert not marker.exists()


def test_pickle_beside_the_bundle_files_is_never_loaded(built, tmp_path):
    bundle = copy_of(built, tmp_path)
    marker = tmp_path / "unpickled"
    for rel in ("members/e_deep/model.pt", "meta.pkl"):
        with open(bundle / rel, "wb") as f:
            pickle.dump(_Marker(marker), f)
    fix_checksums(bundle, add=("members/e_deep/model.pt", "meta.pkl"))
    assert load_bundle(bundle).member_names == ["e_deep", "e_late"]
    assert not marker.exists()
