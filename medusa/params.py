"""Load and validate params.yaml.

Each stage has one section; a pydantic model per section declares its keys and types. Validation is strict
(no silent coercion of "3" to 3) and forbids unknown keys, so a typo never falls back to a default.
Errors name the key path, e.g. ``prepare.test_fraction: expected float, got str 'ten'``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml (or a preset) is missing a key, has an unknown one, or has a value of the wrong type."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DemoCorpusParams(Section):
    """The synthetic demo corpus (medusa.corpora.demo). Changing any value changes data/ and data.dvc."""
    seed: int
    n_speakers: int = Field(ge=6)
    n_train: int = Field(ge=1)
    n_development: int = Field(ge=1)
    n_blind: int = Field(ge=0)
    annotators_min: int = Field(ge=1)
    annotators_max: int = Field(ge=1)


class PrepareParams(Section):
    """Corpus -> manifest (medusa.corpora.manifest)."""
    corpus_dir: str
    #: Split_Set values of the corpus that form the training pool (cut into train/test) and dev.
    train_sets: list[str]
    dev_sets: list[str]
    test_fraction: float = Field(gt=0, lt=1)
    seed: int
    #: The channel probes of the prepare notebook run on at most this many train+test utterances.
    probe_max_utterances: int = Field(ge=50)


class TranscribeParams(Section):
    """Whisper ASR (medusa.asr)."""
    model: str                  # checkpoint path, openai-whisper name (large-v3), or demo:base / demo:tiny.en
    language: str
    batch_size: int = Field(ge=1)
    #: Pad each batch to max(longest clip + 1 s, pad_seconds); 30 = Whisper's fixed 30 s window.
    pad_seconds: float = Field(ge=0, le=30)
    beam_size: int = Field(ge=1)
    num_workers: int = Field(ge=0)
    device: str
    #: Utterances on which the notebook also runs 30 s padding, to compare speed and WER.
    compare_subset: int = Field(ge=0)


class EncoderParams(Section):
    """One encoder of the registry (medusa.encoders); its key in `encoders` names its feature store."""
    family: Literal["wavlm", "hubert", "wav2vec2", "whisper", "roberta", "modernbert", "minilm", "egemaps",
                    "compare"]
    model: str                  # hub name or local path; demo:base for the offline Whisper; "" = the wheel's
    layers: list[int]           # hidden states averaged: [-1] = last, [-4, -3, -2, -1] = mean of the last 4
    batch_size: int = Field(ge=1)
    batch_seconds: float = Field(gt=0)   # at most this much padded audio per batch (audio encoders)


class ExtractParams(Section):
    """Settings shared by every extract@ENCODER stage (medusa.extract)."""
    device: str
    num_workers: int = Field(ge=0)
    #: Whisper encoder: pad each batch to at least this many seconds (its longest clip otherwise).
    whisper_pad_seconds: float = Field(ge=0, le=30)


class Params(Section):
    demo_corpus: DemoCorpusParams
    prepare: PrepareParams
    transcribe: TranscribeParams
    encoders: dict[str, EncoderParams]
    extract: ExtractParams


_TYPE_WORDS = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool",
               "list_type": "list", "dict_type": "mapping", "model_type": "mapping"}


def _describe(err: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "missing":
        return f"{path}: missing key"
    if kind == "extra_forbidden":
        return f"{path}: unknown key"
    got = err.get("input")
    if kind in _TYPE_WORDS:
        return f"{path}: expected {_TYPE_WORDS[kind]}, got {type(got).__name__} {got!r}"
    return f"{path}: {err['msg']} (got {got!r})"


def validate_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ParamsError listing every bad key path."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        lines = "\n  ".join(_describe(err) for err in e.errors())
        raise ParamsError(f"{source}: invalid params:\n  {lines}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the repository root, or pass its path)")
    with path.open() as f:
        return validate_params(yaml.safe_load(f), source=str(path))
