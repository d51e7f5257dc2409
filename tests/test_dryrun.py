"""The paper preset's dry run: its params are the preset's but for sizes, and its stand-ins load and encode like the
real checkpoints. (The dry run itself, `make paper-dry-run`, runs in CI: ~10 minutes, too long for `make test`.)"""
import numpy as np
import pytest
import torch
import yaml

from medusa.config.params import ParamsError, merge_overrides
from medusa.pipeline.dryrun import OVERRIDE, PRESET, dry_run_params


def test_merge_overrides_merges_mappings_and_replaces_everything_else():
    base = {"a": {"x": 1, "y": [1, 2], "z": {"deep": 1, "keep": 2}}, "b": 3}
    merged = merge_overrides(base, {"a": {"y": [9], "z": {"deep": 5}}, "b": 4})
    assert merged == {"a": {"x": 1, "y": [9], "z": {"deep": 5, "keep": 2}}, "b": 4}
    assert base["a"]["z"] == {"deep": 1, "keep": 2}   # the base is not modified
    assert merge_overrides(base, {"a": {"z": {"new": 1}}})["a"]["z"] == {"deep": 1, "keep": 2, "new": 1}
    with pytest.raises(ParamsError, match=r"over.yaml: b: the base value is not a mapping"):
        merge_overrides(base, {"b": {"c": 1}}, source="over.yaml")


def test_a_misspelt_override_is_a_params_error_naming_it(repo_root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  hiden: 16\n")
    with pytest.raises(ParamsError, match=r"train\.hiden: unknown key"):
        dry_run_params(repo_root / PRESET, bad)


def test_the_dry_run_keeps_the_presets_dag_and_recipe(repo_root):
    preset = yaml.safe_load((repo_root / PRESET).read_text())
    override = yaml.safe_load((repo_root / OVERRIDE).read_text())
    params = dry_run_params(repo_root / PRESET, repo_root / OVERRIDE)
    # The DAG: the 14 members, Table 2's models and variants, the ensembles -- untouched.
    for section in ("models", "ablate", "ensemble", "report"):
        assert section not in override and params[section] == preset[section]
    assert params["ensemble"]["stage3"] == "paper"         # the paper's stage 3, not the voting-anchored one
    assert len(params["models"]) == 14 and len(params["ablate"]["models"]) * len(params["ablate"]["variants"]) == 20
    # Every encoder keeps its family and layers; only its weights (a stand-in) and batch sizes change.
    assert params["encoders"].keys() == preset["encoders"].keys()
    for key, enc in params["encoders"].items():
        assert (enc["family"], enc["layers"]) == (preset["encoders"][key]["family"], preset["encoders"][key]["layers"])
        assert enc["model"].startswith("standins/")
    # The training recipe: only sizes (width, heads, epochs and their steps, patience, threads) differ.
    changed = {k for k in params["train"] if params["train"][k] != preset["train"][k]}
    assert changed == {"hidden", "heads", "pool", "epoch_steps", "stage1_epochs", "stage2_epochs", "patience",
                       "threads"}
    assert set(params["train"]["pool"]) == set(params["encoders"]) and params["train"]["fusion"] == "deep"


def test_tiny_standins_load_and_encode_like_the_real_checkpoints(tmp_path):
    """Each stand-in loads through build_encoder (and Whisper through the ASR's loader) with the structure of the
    checkpoint it stands for: an attention mask for WavLM/HuBERT-large, 128 mel bins for Whisper-large-v3."""
    from medusa.features.encoders import build_encoder
    from medusa.pipeline.standins import architectures, save_standins

    models = save_standins(tmp_path, size="tiny", seed=0)
    clip = (0.1 * np.sin(np.arange(16000 * 2) / 7.0)).astype(np.float32)
    for arch in architectures("tiny"):
        enc = build_encoder(arch.key, arch.family, models[arch.key], arch.layers, torch.device("cpu"),
                            cache_dir=tmp_path / "cache")
        out = enc.encode(["hello there, how are you"] if arch.kind == "text" else [clip])
        assert out[0].ndim == 2 and out[0].shape[1] == 32 and np.isfinite(out[0]).all()
        if arch.family in ("wavlm", "hubert"):
            assert enc.padding_invariant   # layer-norm feature encoder used with a mask, as the large checkpoints
        if arch.family == "whisper":
            assert enc.whisper.dims.n_mels == 128 and enc.whisper.is_multilingual
            assert out[0].shape[0] == 100   # 50 frames per second of the clip, no padding frames
