"""Audio files: header checks and loading. The corpora hold 16 kHz mono PCM16 wav (MSP-Podcast's format).

Truncated files are errors, at prepare time (check_corpus_audio) and at load time (load_audio): libsndfile
clamps a WAV's frame count to the bytes present, so a file cut short in a copy (header intact) would otherwise
be read as a shorter clip without a word. For WAV the data chunk's declared size is compared with the bytes
the file holds (wav_data_sizes); for other formats, the frame count of the header with the frames decoded.

Corpora in any other shape (any format libsndfile reads: wav, flac, ogg, mp3; any rate; any channel count; 8-32 bit
integer or float) go through prepare_audio once: a file already in the corpus format is used where it lies, any
other is decoded (read_any: channels averaged, resampled with soxr) and written once as 16 kHz mono PCM16 WAV to a
cache keyed by the source's path, size and mtime, which later runs reuse. So every later stage, and the predict
bundle, read only 16 kHz files, and load_audio keeps refusing anything else.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import soundfile as sf

from medusa.errors import UserError

SAMPLE_RATE = 16000

log = logging.getLogger(__name__)

#: The longest clip an utterance may be: Whisper's encoder window (medusa.features.encoders.whisper.MAX_SAMPLES).
MAX_SECONDS = 30.0
#: The shortest clip every encoder of the repo gives at least one real frame for. Measured (tests/tiny_models
#: checkpoints, openSMILE 2.5 / libsndfile 1.2.2): openSMILE eGeMAPSv02 and ComParE_2016 LLDs need 960 samples
#: (60 ms, eGeMAPS' pitch window): 959 samples give one all-NaN row, 0.06 s 2 frames, 0.1 s 6, 0.2 s 16.
#: wav2vec 2.0 / HuBERT / WavLM's conv front end has a receptive field of 400 samples (25 ms; kernels 10,3,3,3,3,2,2,
#: strides 5,2,2,2,2,2,2): 399 samples give 0 frames (a forward pass on them fails), 400 give 1, 0.1 s 4.
#: Whisper pads every clip to whole seconds and keeps >= 1 frame (0.01 s: 1, 0.1 s: 5). openSMILE's 60 ms decides;
#: rounded up to 0.1 s, which also leaves a few frames for the frame-level statistics.
MIN_SECONDS = 0.1
#: Part of the cache key: change it when the conversion changes (resampler, quality, segmenting, sample format), so
#: that files converted the old way are not reused.
CONVERSION_VERSION = "soxr-HQ/pcm16/v2"  # v2: above full scale scaled down, not clipped
#: soxr's high-quality mode: 20-bit precision, ~ -120 dB stopband, more than the PCM16 output keeps; deterministic.
_SOXR_QUALITY = "HQ"
LONG_AUDIO_MODES = ("reject", "segment")
_MAX_LISTED = 20  # bad files named in the error; the rest are counted


class AudioError(UserError, ValueError):
    """An audio file is missing, unreadable, or not in the expected format; the message names the file."""


@dataclass(frozen=True)
class AudioInfo:
    duration_s: float
    sample_rate: int
    channels: int
    subtype: str


def _sf_info(path: str | Path):
    try:
        return sf.info(str(path))
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError with a terse message
        raise AudioError(f"{path}: cannot read audio header ({e})") from None


#: libsndfile's frame count for a stream whose header gives no length (SF_COUNT_MAX, e.g. a FLAC written to a pipe:
#: 576460752303423.5 s at 16 kHz). Any count this large is not a length.
_UNKNOWN_FRAMES = 1 << 60


def _frame_count(path: str | Path, info) -> int:
    """The file's real number of frames: the header's, or, where the header leaves it unknown (a streamed FLAC or
    WAV), the frames that decode (read in blocks, so a long file is not held in memory)."""
    if info.frames < _UNKNOWN_FRAMES:
        return int(info.frames)
    try:
        with sf.SoundFile(str(path)) as f:
            return sum(len(block) for block in _blocks(f))
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError with a terse message
        raise AudioError(f"{path}: cannot read audio ({e})") from None


def _blocks(f, size: int = 1 << 16):
    """A file's frames as float32 blocks (n, channels), read forwards to the end through libsndfile's sf_readf_float.
    Written here because soundfile's read(), buffer_read() and blocks() all ask libsndfile for the position before
    each read, and on a stream of unknown length (a FLAC whose header gives no length) that seek fails before the
    last frame ("Internal psf_fseek() failed"); the plain forward read has no such step."""
    from soundfile import _ffi, _snd

    while True:
        block = np.empty((size, f.channels), dtype=np.float32)
        n = _snd.sf_readf_float(f._file, _ffi.cast("float *", block.ctypes.data), size)
        if n <= 0:
            return
        yield block[:n]


def audio_info(path: str | Path) -> AudioInfo:
    info = _sf_info(path)
    return AudioInfo(_frame_count(path, info) / info.samplerate, info.samplerate, info.channels, info.subtype)


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
            if declared < _UNKNOWN_FRAMES:
                x = f.read(dtype="float32", always_2d=True)
            else:  # a length the header leaves unknown: read() would allocate that many frames
                x = np.concatenate(list(_blocks(f)) or [np.zeros((0, f.channels), np.float32)])
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError with a terse message
        raise AudioError(f"{path}: cannot read audio ({e})") from None
    if len(x) < declared < _UNKNOWN_FRAMES:
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


def read_any(path: str | Path) -> tuple[np.ndarray, AudioInfo]:
    """float32 mono samples at 16 kHz of a file in any format libsndfile reads, and the file's own AudioInfo.

    Channels are averaged; another rate is resampled with soxr (a band-limited resampler: content above the new
    Nyquist frequency is filtered out instead of folding back as aliases, which naive decimation or linear
    interpolation would do). AudioError naming the file for an unreadable, empty or truncated file, or one that
    holds NaN or infinite samples (float formats can)."""
    info = audio_info(path)
    _check_wav_complete(path)  # libsndfile would read a cut-short WAV as a shorter clip
    return _decode(path), info


def _decode(path: str | Path) -> np.ndarray:
    """The samples of a file whose header was checked, at 16 kHz mono (to_mono_16k); AudioError if it decodes to
    nothing, to fewer frames than its header counts, or to NaN / infinite values."""
    x, sr = _read_frames(path)
    if not len(x):
        raise AudioError(f"{path}: empty audio (0 samples)")
    return to_mono_16k(x, sr, name=str(path))


def check_min_duration(name: str | Path, seconds: float) -> None:
    """AudioError naming `name` when a clip is shorter than MIN_SECONDS."""
    if seconds < MIN_SECONDS:
        # %g with 6 digits: a clip of 0.0999 s must not read "too short: 0.100 s, the minimum is 0.1 s"
        raise AudioError(f"{name}: too short: {seconds:.6g} s ({round(seconds * SAMPLE_RATE)} samples at 16 kHz), "
                         f"the minimum is {MIN_SECONDS:g} s ({round(MIN_SECONDS * SAMPLE_RATE)} samples: the shortest "
                         "clip every encoder gives a frame for)")


#: PCM16's grid: every sample the models see is k / 32768 for an integer k in [-32768, 32767] (see to_mono_16k).
_PCM16_SCALE = 32768.0


def to_mono_16k(frames: np.ndarray, sample_rate: int, *, name: str | None = None) -> np.ndarray:
    """The one conversion of audio for the models, for every path (prepare's converted files, predict's files and
    arrays, evaluate, submission): float32 mono samples at 16 kHz of float32 frames (N, channels) at `sample_rate`.

    - NaN or infinite samples: AudioError naming `name` (float formats can hold them).
    - Above full scale (float formats can exceed +-1): the whole clip scaled down so that its peak is full scale,
      with a warning naming `name` and the peak. Hard-clipping instead would distort it (and once did so in prepare
      only, while predict passed the samples through: the same file got different predictions).
    - Channels averaged; another rate resampled with soxr (a band-limited resampler: content above the new Nyquist
      frequency is filtered out instead of folding back as aliases).
    - Rounded to PCM16's grid and clipped to its range (resampling can overshoot full scale by a little): the
      samples prepare writes as a 16 kHz PCM16 file and reads back are exactly those predict computes in memory.
      A 16 kHz PCM16 source passes unchanged."""
    import soxr

    where = name or "the audio"
    if not np.isfinite(frames).all():
        raise AudioError(f"{where}: holds NaN or infinite samples (export it again)")
    peak = float(np.abs(frames).max()) if frames.size else 0.0
    if peak > 1.0:
        log.warning("%s: float samples reach %.3f (%.1f dB above full scale): scaled down by that factor to fit",
                    where, peak, 20 * math.log10(peak))
        frames = frames / np.float32(peak)
    mono = frames.mean(axis=1, dtype=np.float32) if frames.shape[1] > 1 else frames[:, 0]
    if sample_rate != SAMPLE_RATE:
        mono = soxr.resample(mono, sample_rate, SAMPLE_RATE, quality=_SOXR_QUALITY)
    grid = np.clip(np.rint(np.asarray(mono, dtype=np.float64) * _PCM16_SCALE), -32768, 32767) / _PCM16_SCALE
    return np.ascontiguousarray(grid, dtype=np.float32)


def _is_corpus_wav(info) -> bool:
    """A plain WAV in the corpus format (soundfile's info): used where it lies, no copy."""
    return info.format == "WAV" and (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")


def cache_key(path: str | Path) -> str:
    """Names a source's converted files: its resolved path, size and mtime (a changed or replaced source gets a new
    key, so it is converted again; an unchanged one reuses its files without being decoded), and everything that
    shapes the conversion's output."""
    st = os.stat(path)
    ident = "\0".join([str(Path(path).resolve()), str(st.st_size), str(st.st_mtime_ns), CONVERSION_VERSION,
                       str(SAMPLE_RATE), repr(MAX_SECONDS)])
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def _segments(frames: int, sample_rate: int) -> int:
    """The fewest equal segments of at most MAX_SECONDS that a clip of `frames` at `sample_rate` cuts into.
    From the header's count, so that a cached conversion is found without decoding the source. (Resampled, the clip
    has round(frames * 16000 / rate) samples <= segments * MAX_SECONDS * 16000: no segment exceeds the limit.)"""
    return max(1, math.ceil(frames / (MAX_SECONDS * sample_rate)))


def _write_pcm16(samples: np.ndarray, path: Path) -> None:
    from medusa.io import atomic_path

    # The samples are on PCM16's grid already (to_mono_16k): k / 32768, the inverse of how libsndfile reads PCM16
    # as float (load_audio), so writing them loses nothing (libsndfile's own float->PCM16 scales by 32767).
    ints = np.clip(np.rint(samples * _PCM16_SCALE), -32768, 32767).astype(np.int16)
    with atomic_path(path) as tmp:  # an interrupted run never leaves half a file that a rerun would reuse
        sf.write(str(tmp), ints, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def _cached_durations(targets: list[Path]) -> list[float] | None:
    """Durations of a source's converted files when all are present and sound, else None (convert again)."""
    durations = []
    for target in targets:
        if not target.exists():
            return None
        try:
            durations.append(check_corpus_audio(target).duration_s)
        except AudioError as e:  # e.g. a cache folder copied only in part: convert again rather than fail
            log.warning("converting again: cached file unusable (%s)", e)
            return None
    return durations


@dataclass
class _Prepared:
    rows: list[dict]
    status: str  # "kept", "converted", "reused" (converted by an earlier run) or "segmented"


class ContentHashes:
    """sha256 of every source file, kept beside the conversion cache (work/audio -> work/.audio-hashes.json) and
    reused while a file's resolved path, size and mtime are unchanged, so that a corpus is read in full once, not
    on every prepare. (Not inside the cache folder: that folder is a DVC output, and the entries hold this machine's
    paths and mtimes, which would give every clone another hash of it.)

    The manifest records each utterance's hash (audio_sha256), so a recording replaced by another of the same
    length changes the manifest, and DVC reruns every stage that reads audio (the journals and partial stores of
    those stages fingerprint it too). The path and duration alone left such a change unseen."""

    def __init__(self, cache_dir: Path):
        self.file = cache_dir.parent / f".{cache_dir.name}-hashes.json"
        try:
            self.known = json.loads(self.file.read_text()) if self.file.is_file() else {}
        except (OSError, ValueError):  # a damaged cache is rebuilt, not trusted
            self.known = {}
        self.used: dict[str, list] = {}

    def __call__(self, source: str) -> str:
        from medusa.io import sha256_file

        key = str(Path(source).resolve())
        st = os.stat(source)
        entry = self.known.get(key)
        if not (isinstance(entry, list) and entry[:2] == [st.st_size, st.st_mtime_ns]):
            entry = [st.st_size, st.st_mtime_ns, sha256_file(source)]
        self.used[key] = entry
        return entry[2]

    def save(self) -> None:
        """Keep the entries of this run's files (a file no longer in the corpus drops out)."""
        from medusa.io import write_json

        if self.used != self.known:
            write_json(self.used, self.file)


def _prepare_one(source: str, cache_dir: Path, long_audio: str, content_hash: ContentHashes) -> _Prepared:
    info = _sf_info(source)
    # First: libsndfile counts a cut-short WAV's frames from the bytes present, so it would pass as a shorter (or
    # too short) clip. (Other formats are compared with their decoded frames in read_any.)
    _check_wav_complete(source)
    orig = {"orig_sample_rate": int(info.samplerate), "orig_channels": int(info.channels),
            "sha256": content_hash(source)}
    frames = _frame_count(source, info)  # a streamed file's header gives no length
    if frames <= 0:
        raise AudioError(f"{source}: empty audio (0 samples)")
    duration = frames / info.samplerate
    check_min_duration(source, duration)
    n = _segments(frames, info.samplerate)
    if n > 1 and long_audio == "reject":
        raise AudioError(f"{source}: too long: {duration:.2f} s, the limit is {MAX_SECONDS:g} s (Whisper's window); "
                         f"cut it, or set `prepare.long_audio: segment` to split such files into equal segments "
                         f"of at most {MAX_SECONDS:g} s")
    if n == 1 and _is_corpus_wav(info):  # complete: checked above
        return _Prepared([{"source": source, "segment": 0, "path": source, "duration_s": duration, **orig,
                           "converted": False}], "kept")
    key = cache_key(source)
    targets = [cache_dir / (f"{key}.wav" if n == 1 else f"{key}-seg{i:03d}.wav") for i in range(n)]
    durations = _cached_durations(targets)
    status = "reused" if durations is not None else "segmented" if n > 1 else "converted"
    if durations is None:
        samples = _decode(source)  # its header and WAV chunks were checked above
        parts = np.array_split(samples, n)  # lengths differ by at most one sample
        for part, target in zip(parts, targets):
            _write_pcm16(part, target)
        durations = [len(part) / SAMPLE_RATE for part in parts]
    return _Prepared([{"source": source, "segment": i, "path": str(target), "duration_s": d, **orig,
                       "converted": True} for i, (target, d) in enumerate(zip(targets, durations))], status)


PREPARED_COLUMNS = {"source": object, "segment": "int64", "path": object, "duration_s": "float64",
                    "orig_sample_rate": "int64", "orig_channels": "int64", "sha256": object, "converted": bool}


def prepare_audio(paths: Iterable[str | Path], cache_dir: str | Path, *, long_audio: str,
                  skip_bad: bool = False, listed_at: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every source file once and make it readable by load_audio: (table, skipped).

    A plain 16 kHz mono PCM16 WAV of MIN_SECONDS..MAX_SECONDS is used where it lies. Any other file is converted
    once (read_any) to a 16 kHz mono PCM16 WAV in cache_dir, named by cache_key, written atomically; a rerun reuses
    it. Longer than MAX_SECONDS: an error with long_audio="reject"; with "segment", cut into the fewest equal
    segments of at most MAX_SECONDS, one row each.

    table: one row per (source, segment), in the order of `paths`: source (as given), segment (0-based), path (the
    16 kHz file to read), duration_s (of that file), orig_sample_rate, orig_channels, sha256 (of the source's
    bytes: ContentHashes), converted (path is a file written to the cache). Bad files (unreadable, empty, truncated, too short, too long under "reject") raise one
    AudioError listing them all, or with skip_bad are left out and returned in skipped (source, reason).
    `listed_at` (one per path, e.g. "corpus.csv:12") prefixes each reason with where the file is listed."""
    from tqdm import tqdm

    from medusa.io import remove_stale_temps

    if long_audio not in LONG_AUDIO_MODES:
        raise ValueError(f"long_audio must be one of {', '.join(LONG_AUDIO_MODES)}, got {long_audio!r}")
    paths, cache_dir = [str(p) for p in paths], Path(cache_dir)
    rows: list[dict] = []
    bad: list[tuple[str, str]] = []
    counts = dict.fromkeys(("kept", "converted", "reused", "segmented"), 0)
    remove_stale_temps(cache_dir)  # a conversion killed mid-write (kill -9) left its `.NAME.tmp-PID` behind
    content_hash = ContentHashes(cache_dir)
    for i, source in enumerate(tqdm(paths, desc="checking and converting audio", unit="file")):
        try:
            prepared = _prepare_one(source, cache_dir, long_audio, content_hash)
        except AudioError as e:  # collect them all: one run names every file to fix, not the first
            bad.append((source, str(e) if listed_at is None else f"{listed_at[i]}: {e}"))
            continue
        rows.extend(prepared.rows)
        counts[prepared.status] += 1
    content_hash.save()
    log.info("audio: %d files: %d kept as they are, %d converted, %d segmented, %d reused from an earlier "
             "conversion in %s, %d bad", len(paths), counts["kept"], counts["converted"], counts["segmented"],
             counts["reused"], cache_dir, len(bad))
    if bad and not skip_bad:
        listed = [f"  {reason}" for _, reason in bad[:_MAX_LISTED]]
        if len(bad) > _MAX_LISTED:
            listed.append(f"  ... and {len(bad) - _MAX_LISTED} more")
        raise AudioError(f"{len(bad)} of {len(paths)} audio files cannot be used:\n" + "\n".join(listed) +
                         "\nfix or remove them, or set `prepare.skip_bad_audio: true` to leave them out")
    if bad:
        log.warning("%d of %d audio files skipped (prepare.skip_bad_audio), e.g. %s", len(bad), len(paths),
                    bad[0][1])
    table = pd.DataFrame(rows, columns=list(PREPARED_COLUMNS)).astype(PREPARED_COLUMNS)
    skipped = pd.DataFrame(bad, columns=["source", "reason"])
    return table, skipped
