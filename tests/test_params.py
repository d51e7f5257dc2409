import copy

import pytest
import yaml

from medusa.config.params import ParamsError, load_params, validate_params


@pytest.fixture()
def raw(repo_root):
    return yaml.safe_load((repo_root / "params.yaml").read_text())


def test_committed_params_validate(repo_root):
    p = load_params(repo_root / "params.yaml")
    assert p.prepare.test_fraction == 0.3  # the demo's test cut, sized for +-0.06 intervals
    assert p.prepare.train_sets == ["Train"]


def _error(raw) -> str:
    with pytest.raises(ParamsError) as e:
        validate_params(raw)
    return str(e.value)


def test_unknown_key_is_named(raw):
    bad = copy.deepcopy(raw)
    bad["prepare"]["test_fracton"] = 0.2
    assert "prepare.test_fracton: unknown key" in _error(bad)


def test_missing_key_is_named(raw):
    bad = copy.deepcopy(raw)
    del bad["demo_corpus"]["seed"]
    assert "demo_corpus.seed: missing key" in _error(bad)


def test_wrong_type_names_key_and_expected_type(raw):
    bad = copy.deepcopy(raw)
    bad["prepare"]["seed"] = "seven"
    assert "prepare.seed: expected int, got str 'seven'" in _error(bad)
    bad = copy.deepcopy(raw)
    bad["prepare"]["train_sets"] = "Train"
    assert "prepare.train_sets: expected list" in _error(bad)


def test_out_of_range_value_is_named(raw):
    bad = copy.deepcopy(raw)
    bad["prepare"]["test_fraction"] = 1.5
    assert "prepare.test_fraction" in _error(bad)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "params.yaml")


def test_paper_preset_validates_with_the_papers_encoders(repo_root):
    p = load_params(repo_root / "configs" / "paper.yaml")
    assert {e.family for e in p.encoders.values()} == {"wavlm", "hubert", "whisper", "roberta", "modernbert"}
    assert p.transcribe.model == "large-v3" and p.prepare.test_fraction == 0.1


def test_a_model_naming_an_unknown_encoder_is_named(raw):
    bad = copy.deepcopy(raw)
    first = next(iter(bad["models"]))
    bad["models"][first]["encoders"] = ["whisper", "wavlm"]
    assert f"models.{first}.encoders: no encoder 'wavlm' in `encoders`" in _error(bad)


def test_a_bad_override_and_a_bad_pool_key_are_named(raw):
    bad = copy.deepcopy(raw)
    first = next(iter(bad["models"]))
    bad["models"][first]["overrides"] = {"hidden": "big"}
    bad["train"]["pool"]["hubert"] = 2
    message = _error(bad)
    assert f"models.{first}.overrides: hidden: expected int, got str 'big'" in message
    assert "train.pool.hubert: no encoder 'hubert'" in message


def test_heads_must_divide_hidden(raw):
    bad = copy.deepcopy(raw)
    bad["train"]["heads"] = 5
    assert "must be divisible by heads (5)" in _error(bad)


def test_ensemble_members_and_top_k_are_checked(raw):
    bad = copy.deepcopy(raw)
    bad["ensemble"]["members"] = ["nope"]
    bad["ensemble"]["top_k"] = [0]
    message = _error(bad)
    assert "ensemble.members: no model 'nope' in `models`" in message
    assert "ensemble.top_k: 0 is not in 1..1" in message


@pytest.mark.parametrize("preset", ["params.yaml", "configs/paper.yaml", "configs/small-corpus.yaml"])
def test_meta_classifier_reads_posteriors_only_in_both_presets(repo_root, preset):
    """The paper's meta-classifier combines the members' posteriors: attribute inputs are off in both presets;
    attribute outputs (eq. (1)'s MSE) stay on through mse_weight."""
    p = load_params(repo_root / preset)
    assert p.ensemble.attributes_in is False and p.ensemble.mse_weight > 0


def test_removed_keys_are_named_as_unknown(raw):
    """Selection is the deterministic balanced macro-F1 (no resamples to set), and the former single attribute
    switch of the ensemble is split: an old params.yaml says which key to drop."""
    bad = copy.deepcopy(raw)
    bad["train"]["eval_resamples"] = 10
    bad["ensemble"]["use_attributes"] = True
    message = _error(bad)
    assert "train.eval_resamples: unknown key" in message and "ensemble.use_attributes: unknown key" in message
    bad = copy.deepcopy(raw)
    del bad["ensemble"]["attributes_in"]
    assert "ensemble.attributes_in: missing key" in _error(bad)
