"""Audio files: header checks and loading. The corpora hold 16 kHz mono PCM16 wav (MSP-Podcast's format).

Truncated files are errors, at prepare time (check_corpus_audio) and at load time (load_audio): libsndfile
clamps a WAV's frame count to the bytes present, so a file cut short in a copy (header intact) would otherwise
be read as a shorter clip without a word. For WAV the data chunk's declared size is compared with the bytes
the file holds (wav_data_sizes); for other formats, the frame count of the header with the frames decoded.
"""
from __future__ import annotations

import os
import struct
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


@dataclass(frozen=True)
class WavDataSizes:
    declared: int      # bytes of sample data the header's data chunk declares
    present: int       # bytes the file holds from the start of the data chunk to its end
    block_align: int   # bytes per sample frame (all channels)
    sample_rate: int


#: Data chunk sizes that mean "unknown" (a stream written without seeking back), not a length.
_UNKNOWN_SIZE = 0xFFFFFFFF


def wav_data_sizes(path: str | Path) -> WavDataSizes | None:
    """The data chunk's declared and present sizes of a RIFF/RIFX/RF64 WAVE file, read from its chunk headers
    (a few hundred bytes, whatever the file's length). None for another format, a file without fmt/data chunk
    (libsndfile reports those itself), or a size the header leaves unknown."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX", b"RF64") or head[8:12] != b"WAVE":
            return None
        order = ">" if head[:4] == b"RIFX" else "<"
        pos, fmt, ds64_data = 12, None, None
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack(order + "4sI", f.read(8))
            if chunk_id == b"ds64":  # RF64: the 64-bit sizes (riff, data, sample count) live here
                body = f.read(24)
                if len(body) >= 16:
                    ds64_data = struct.unpack(order + "Q", body[8:16])[0]
            elif chunk_id == b"fmt ":
                body = f.read(16)
                if len(body) < 16:
                    return None
                _, _, sample_rate, _, block_align = struct.unpack(order + "HHIIH", body[:14])
                fmt = (block_align, sample_rate)
            elif chunk_id == b"data":
                if fmt is None or not fmt[0]:
                    return None
                declared = ds64_data if head[:4] == b"RF64" and chunk_size == _UNKNOWN_SIZE else chunk_size
                if declared is None or declared == _UNKNOWN_SIZE:
                    return None
                return WavDataSizes(int(declared), size - (pos + 8), fmt[0], fmt[1])
            pos += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to even sizes
    return None


def _truncated(path: str | Path, expected_frames: int, actual_frames: int, sample_rate: int) -> AudioError:
    return AudioError(f"{path}: truncated audio: the header declares {expected_frames} samples "
                      f"({expected_frames / sample_rate:.3f} s) but the file holds {actual_frames} "
                      f"({actual_frames / sample_rate:.3f} s); the file was cut short (an interrupted copy or "
                      "download?): copy or export it again")


def _check_wav_complete(path: str | Path) -> bool:
    """For a WAV: raise AudioError if its data chunk is shorter than declared, and return True. False for
    another format. (A WAV whose data size the header leaves unknown has nothing to compare against.)"""
    try:
        with open(path, "rb") as f:
            is_wav = f.read(4) in (b"RIFF", b"RIFX", b"RF64")
        sizes = wav_data_sizes(path) if is_wav else None
    except OSError as e:
        raise AudioError(f"{path}: cannot read audio ({e})") from None
    if sizes is not None and sizes.present < sizes.declared:
        raise _truncated(path, sizes.declared // sizes.block_align, sizes.present // sizes.block_align,
                         sizes.sample_rate)
    return is_wav


def check_complete(path: str | Path) -> None:
    """Raise AudioError naming the file and both lengths if it holds less sample data than its header says.

    WAV: compares the header's data size with the bytes present (cheap: chunk headers and the file size).
    Another format: decodes the file and compares the frames read with the header's count."""
    if not _check_wav_complete(path):
        _read_frames(path)


def _read_frames(path: str | Path) -> tuple[np.ndarray, int]:
    """(frames (N, channels) float32, sample rate); AudioError if fewer frames decode than the header counts."""
    try:
        with sf.SoundFile(str(path)) as f:
            declared, sr = f.frames, f.samplerate
            x = f.read(dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError with a terse message
        raise AudioError(f"{path}: cannot read audio ({e})") from None
    if len(x) < declared:
        raise _truncated(path, declared, len(x), sr)
    return x, sr


def check_corpus_audio(path: str | Path) -> AudioInfo:
    """Header of a corpus file; rejects anything but 16 kHz mono PCM16, empty files and truncated files."""
    info = audio_info(path)
    if (info.sample_rate, info.channels, info.subtype) != (SAMPLE_RATE, 1, "PCM_16"):
        raise AudioError(f"{path}: expected 16000 Hz mono PCM_16, got {info.sample_rate} Hz, "
                         f"{info.channels} channel(s), {info.subtype} (convert it, e.g. with sox or ffmpeg)")
    if info.duration_s <= 0:
        raise AudioError(f"{path}: empty audio")
    check_complete(path)
    return info


def load_audio(path: str | Path) -> np.ndarray:
    """float32 mono samples in [-1, 1] at 16 kHz (downmixes several channels; rejects other rates and
    truncated files)."""
    _check_wav_complete(path)  # libsndfile would read a cut-short WAV as a shorter clip
    x, sr = _read_frames(path)
    if sr != SAMPLE_RATE:
        raise AudioError(f"{path}: sample rate {sr} Hz, expected {SAMPLE_RATE} Hz")
    return x.mean(axis=1)
