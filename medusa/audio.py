"""Audio files: header checks and loading. The corpora hold 16 kHz mono PCM16 wav (MSP-Podcast's format)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """An audio file is missing, unreadable, or not in the expected format; the message names the file."""


@dataclass(frozen=True)
class AudioInfo:
    duration_s: float
    sample_rate: int
    channels: int
    subtype: str


def audio_info(path: str | Path) -> AudioInfo:
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError with a terse message
        raise AudioError(f"{path}: cannot read audio header ({e})") from None
    return AudioInfo(info.frames / info.samplerate, info.samplerate, info.channels, info.subtype)


def check_corpus_audio(path: str | Path) -> AudioInfo:
    """Header of a corpus file; rejects anything but 16 kHz mono PCM16 and empty files."""
    info = audio_info(path)
    if (info.sample_rate, info.channels, info.subtype) != (SAMPLE_RATE, 1, "PCM_16"):
        raise AudioError(f"{path}: expected 16000 Hz mono PCM_16, got {info.sample_rate} Hz, "
                         f"{info.channels} channel(s), {info.subtype} (convert it, e.g. with sox or ffmpeg)")
    if info.duration_s <= 0:
        raise AudioError(f"{path}: empty audio")
    return info


def load_audio(path: str | Path) -> np.ndarray:
    """float32 mono samples in [-1, 1] at 16 kHz (downmixes several channels; rejects other rates)."""
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{path}: cannot read audio ({e})") from None
    if sr != SAMPLE_RATE:
        raise AudioError(f"{path}: sample rate {sr} Hz, expected {SAMPLE_RATE} Hz")
    return x.mean(axis=1)
