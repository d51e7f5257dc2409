"""Prediction as people use it: a predict bundle (medusa.serving.bundle) on audio files of any format, rate, channel count
and length, in files, folders or list files, each bad file reported in its own row instead of stopping the run.

    from medusa import Predictor

    predictor = Predictor.from_bundle("work/bundle")
    frame = predictor.predict_files(["calls/", "@todo.txt", "one.flac"])     # a DataFrame, one row per file
    predictor.predict_array(samples, 44100)                                  # one clip in memory: a Series
    write_predictions(frame, "predictions.parquet")                          # .csv, .json or .parquet

Inputs. A file is read whatever its extension; a folder stands for the audio files under it (subfolders too;
AUDIO_EXTENSIONS, any case; hidden files and folders skipped; sorted by path); `@list.txt` for the paths it lists,
one a line, relative to the list file's folder (UTF-8, a BOM allowed; blank lines and `#` comments skipped; a listed
folder is expanded). A path that names nothing (missing, a broken symbolic link, also one found in a folder) gets
its own error row, as an unreadable file does.
Every file goes through medusa.data.audio.read_any: channels averaged, resampled to 16 kHz with soxr, exactly as the
pipeline converts a corpus, so a file and its own 16 kHz mono conversion get the same probabilities.

Rows (columns in COLUMNS order; `text` only when the bundle reads transcripts, p_<code> for the bundle's classes,
arousal/valence/dominance only when it predicts them):
    file, utt_id        the file as given or found (path), and its stem (the pipeline's utterance id)
    level               "file": the whole file; "segment": one piece (window or speech segment) of a longer file
    start_s, end_s      the row's span in the file, seconds
    duration_s          the whole file's duration
    text                the Whisper transcript (a file row of a cut file: its pieces' texts, joined)
    p_<code>, predicted the ensemble's class probabilities and their argmax
    warning             scored, but the result deserves suspicion (silence, a very short clip)
    error               not scored (missing, unreadable, empty, too short): probabilities NaN, `predicted` empty

Long files. A file longer than the window (by default: than the longest training clip, recorded in the bundle)
is scored in pieces, each with a "segment" row, and its "file" row holds
the mean of their probabilities (and attributes) in which each second of audio counts once (overlapping pieces
share the seconds they both cover: medusa.serving.segments.coverage_weights); `predicted` is its argmax.
* segment="vad" (the default): the file is cut at speech boundaries found by a voice-activity detector (silero-vad,
  whose package ships its model), pieces merged across pauses under 0.5 s and split to at most the window; silence
  is not scored. A podcast or a call comes back as a timeline of speech segments: start_s, end_s, text and emotion
  per segment. Where no speech is found, windows are scored, with a warning. It is the default because it got
  long recordings' emotions right best (benchmarks/long_files.py: the demo's test clips joined into minute-long
  recordings; reports/benchmarks.md).
* segment="window": windows of `window` s, one every `hop` s (default: the window, no overlap); the last ends at
  the file's end, shifted back so that it is a full window.
The default window is the 95th percentile of the durations of the clips the members were trained on (recorded in
the bundle; 30 s for bundles that did not record them): the models see pieces as long as what they learned from.
Whisper (encoder or ASR) reads at most 30 s, so a bundle with Whisper refuses a longer window.

Models and batches. A Predictor builds each encoder and the Whisper ASR once, on first use, and keeps them for
the next calls (medusa.serving.featurizer.Featurizer; close() or a `with` block frees them; resident="one" keeps
one at a time for a small GPU), so one file per call costs about what a batched call costs per file. Pieces are
read, encoded and scored `batch_size` at a time; a clip's features and transcript depend on that clip alone
(medusa.features.encoders.base), and the members' masks make padding harmless, so a row does not depend on the
other files of the call nor on `batch_size` (up to float32 rounding: a few 1e-6 at most, measured on attributes).
A batch that fails on one clip's values (e.g. features float16 cannot hold) is scored again clip by clip, so that
only that clip's row gets the error. Memory is bounded by a batch, whatever the number of files.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import pandas as pd

from medusa.data.audio import MIN_SECONDS, SAMPLE_RATE, AudioError, check_min_duration, read_any, to_mono_16k
from medusa.errors import UserError
from medusa.labels import ATTRIBUTES, target_columns
from medusa.serving.segments import coverage_weights

if TYPE_CHECKING:
    from medusa.serving.featurizer import Featurizer
    from medusa.serving.inference import Bundle

log = logging.getLogger(__name__)

#: What a folder is searched for (compared case-insensitively): the formats libsndfile reads that people keep
#: speech in. A file named explicitly is read whatever its extension.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf")
#: Below this RMS level (dB relative to a full-scale square wave, 20*log10(rms)) a clip counts as silence: speech
#: recorded at any usable level sits around -35..-15 dBFS, a quiet room's noise floor through a consumer microphone
#: around -60..-50 dBFS. Such a clip is still scored, with a warning: the probabilities say nothing about emotion.
SILENCE_DBFS = -50.0
#: Clips shorter than this are scored with a warning: the members were trained on utterances of a few seconds
#: (MSP-Podcast's are 2.75-11 s), and under a second there is hardly a word, let alone its prosody. Clips under
#: medusa.data.audio.MIN_SECONDS (0.1 s; the shortest clip every encoder gives a frame for) are errors.
SHORT_SECONDS = 1.0
#: Pieces (clips, windows or speech segments) read, encoded and scored together when batch_size is not given; 64
#: pieces of 30 s are 123 MB of audio and, for a 1024-d encoder, ~0.2 GB of float16 frames per layer average.
DEFAULT_BATCH_SIZE = 64
#: The window of long files for bundles that do not record their training clips' durations (written before they
#: did): Whisper's longest input, the former default.
LEGACY_WINDOW_SECONDS = 30.0
#: How a file longer than the window is cut: fixed windows, or speech segments found by a voice-activity detector.
SEGMENTATIONS = ("vad", "window")
#: The default: speech segments (benchmarks/long_files.py measured them best on long recordings)
DEFAULT_SEGMENT = "vad"
#: What write_predictions writes, by the output's suffix.
OUTPUT_SUFFIXES = (".csv", ".json", ".parquet")


class PredictError(UserError, ValueError):
    """A request the Predictor cannot do as asked (a window, hop or batch size out of range, an output of unknown
    format or that cannot be a file); the message says what is allowed. Bad audio is never this: it is reported in its file's row."""


def output_file_problem(out: str | Path) -> str | None:
    """Why `out` cannot become a file (an existing folder, or a path below a file; missing folders above it are
    made when it is written), as `<out>: <what> (<how to fix>)`; None when it can. Cheap: a command says it before
    any model loads, instead of after scoring everything."""
    path = Path(out)
    if path.is_dir():
        return f"{out}: is a folder, not a file (give a file name, e.g. {path / 'predictions'}{path.suffix})"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{out}: cannot be written: {parent} is a file, not a folder (choose another path)"
            break
    return None


def check_output_path(out: str | Path) -> str:
    """The format of an output file by its suffix (csv, json or parquet). PredictError naming it for another
    suffix, and for a path that cannot become a file (output_file_problem)."""
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise PredictError(f"{out}: cannot write predictions as {suffix or 'a file without suffix'!r}; the output "
                           f"must end in {', '.join(OUTPUT_SUFFIXES)}")
    problem = output_file_problem(out)
    if problem is not None:
        raise PredictError(problem)
    return suffix[1:]


def write_predictions(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write predictions to `out`, in the format its suffix names: .csv, .json (a list of records, one per row,
    missing values as null) or .parquet; atomically (a reader never sees half a file). PredictError for another
    suffix, before anything is written."""
    from medusa.io import atomic_path

    kind, out = check_output_path(out), Path(out)
    with atomic_path(out) as tmp:
        if kind == "csv":
            frame.to_csv(tmp, index=False)
        elif kind == "parquet":
            frame.to_parquet(tmp, index=False)
        else:
            records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
            tmp.write_text(json.dumps(records, indent=1, allow_nan=False, default=_json_scalar) + "\n")
    return out


def _json_scalar(value):
    if hasattr(value, "item"):  # numpy scalars that are not float subclasses (ints, bools)
        return value.item()
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as JSON")


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """First samples of the windows of `window` samples, one every `hop`, that cover a clip of n_samples: one
    window (0) for a clip no longer than the window; else 0, hop, 2*hop, ... and a last one ending at the clip's
    end (a full window, overlapping the one before when the hops do not land there)."""
    if n_samples <= window:
        return [0]
    return [*range(0, n_samples - window, hop), n_samples - window]


def rms_dbfs(samples: np.ndarray) -> float:
    """The clip's RMS level in dB relative to full scale (a full-scale square wave is 0 dBFS); -inf for zeros."""
    power = float(np.mean(np.square(samples, dtype=np.float64))) if len(samples) else 0.0
    return 10 * math.log10(power) if power > 0 else -math.inf


def clip_warning(samples: np.ndarray) -> str | None:
    """Why a scorable clip's prediction deserves suspicion (silence, very short), or None."""
    notes = []
    level = rms_dbfs(samples)
    if level < SILENCE_DBFS:
        notes.append(f"silence: RMS level {level:.1f} dBFS, below {SILENCE_DBFS:g} dBFS; the probabilities say "
                     "nothing about emotion")
    seconds = len(samples) / SAMPLE_RATE
    if seconds < SHORT_SECONDS:
        notes.append(f"very short: {seconds:.2f} s (under {SHORT_SECONDS:g} s); too little speech for a reliable "
                     "prediction")
    return "; ".join(notes) or None


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Source:
    """One input of predict_files: `file` as the rows name it, `where` it was listed (list file and line), and
    the problem found while finding it (no such file, an unreadable list, a folder without audio), if any."""
    file: str
    where: str | None = None
    problem: str | None = None


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _broken_link(path: Path) -> str | None:
    """`broken symbolic link -> TARGET` for a symbolic link whose target does not exist (or a loop), else None."""
    if not path.is_symlink() or path.exists():
        return None
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return f"broken symbolic link -> {target}"


def _folder_files(folder: Path) -> list[Path]:
    """The audio files under `folder`, and the broken links among the audio names (each gets its error row: a
    file the user put there must not vanish from the output without a word)."""
    found = [p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS
             and not _is_hidden(p.relative_to(folder)) and (p.is_file() or _broken_link(p))]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _file_source(path: Path, where: str | None) -> Source:
    """A path that is not a folder: a file to read, or the problem that it names nothing."""
    at = f" (listed at {where})" if where else ""
    broken = _broken_link(path)
    if broken is not None:
        return Source(str(path), where, f"{path}: {broken}{at} (the file it points to does not exist; fix or "
                                        "remove the link)")
    if not path.exists():
        return Source(str(path), where, f"{path}: no such file or folder{at}")
    return Source(str(path), where)


def _expand_path(path: Path, where: str | None) -> list[Source]:
    if path.is_dir():
        files = _folder_files(path)
        if not files:
            at = f" (listed at {where})" if where else ""
            return [Source(str(path), where, f"{path}: a folder without audio files{at} (looked for "
                                              f"{' '.join(AUDIO_EXTENSIONS)}, in subfolders too)")]
        return [_file_source(p, where) for p in files]
    return [_file_source(path, where)]


def _expand_list(list_file: Path) -> list[Source]:
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = "no such list file" if isinstance(e, FileNotFoundError) else f"cannot read the list ({e})"
        return [Source(f"@{list_file}", None, f"@{list_file}: {reason}")]
    sources: list[Source] = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        sources.extend(_expand_path(path if path.is_absolute() else list_file.parent / path,
                                    f"{list_file}:{number}"))
    if not sources:
        return [Source(f"@{list_file}", None, f"@{list_file}: lists no files")]
    return sources


def expand_inputs(paths: Iterable[str | Path]) -> list[Source]:
    """The audio inputs that `paths` stand for, in order: files as given, folders expanded (recursively,
    AUDIO_EXTENSIONS, sorted), `@list.txt` replaced by the paths it lists (relative to its folder). A missing path,
    a broken symbolic link (given, listed or in a folder), an unreadable or empty list or a folder without audio
    becomes a Source with its `problem`, reported in its row."""
    sources: list[Source] = []
    for p in paths:
        text = str(p)
        if text.startswith("@"):
            sources.extend(_expand_list(Path(text[1:]).expanduser()))
        else:
            sources.extend(_expand_path(Path(text).expanduser(), None))
    return sources


# ------------------------------------------------------------------------------------------------ scoring


@dataclass
class _Clip:
    """One input being scored: its samples' spans (one per row), and per span what came back."""
    file: str
    utt_id: str
    duration_s: float = math.nan
    error: str | None = None
    warning: str | None = None
    spans: list[tuple[int, int]] = field(default_factory=list)
    warnings: list[str | None] = field(default_factory=list)
    results: list[tuple[str | None, np.ndarray, np.ndarray | None] | str | None] = field(default_factory=list)


Loader = Callable[[], np.ndarray]  # 16 kHz mono samples, or AudioError with the reason


@dataclass
class Predictor:
    """A loaded predict bundle, and its models: each encoder and the Whisper ASR is built on first use and kept
    for the next calls (medusa.serving.featurizer.Featurizer), until close() or the end of a `with` block.

        with Predictor.from_bundle("work/bundle") as predictor:
            predictor.predict_files(["a.wav", "b.flac"])

    `resident="one"` keeps at most one model in memory at a time (a GPU too small for all of them): the same
    results, more time."""
    bundle: Bundle
    cache_dir: Path = Path("work/cache")
    resident: str = "all"
    featurizer: Featurizer = field(init=False, repr=False)
    _vad: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from medusa.serving.featurizer import Featurizer

        self.cache_dir = Path(self.cache_dir)
        self.featurizer = Featurizer(self.bundle, self.bundle.device, self.cache_dir, self.resident)

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "auto", cache_dir: str | Path = "work/cache",
                    allow_version_mismatch: bool = False, resident: str = "all") -> Predictor:
        """Load (and verify) the bundle at `path` (medusa.serving.inference.load_bundle: BundleError names what is wrong);
        its encoders, members and ASR run on `device` (auto: cuda if there is one)."""
        from medusa.serving.inference import load_bundle

        return cls(load_bundle(path, device, allow_version_mismatch=allow_version_mismatch), Path(cache_dir), resident)

    def close(self) -> None:
        """Free the encoders and the ASR model (a later call builds them again)."""
        self.featurizer.close()
        self._vad = None

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.bundle.classes

    @property
    def columns(self) -> list[str]:
        """The columns of this bundle's predictions, in order."""
        text = ["text"] if self.bundle.needs_asr else []
        attributes = list(ATTRIBUTES) if self.bundle.meta.cfg.attributes_out else []
        return ["file", "utt_id", "level", "start_s", "end_s", "duration_s", *text,
                *target_columns(self.classes), "predicted", *attributes, "warning", "error"]

    @property
    def default_window(self) -> float:
        """The window of long files when none is given: the 95th percentile of the durations of the clips the
        members were trained on (the bundle's meta.json `train_durations`), at most what Whisper reads; bundles
        that did not record them: LEGACY_WINDOW_SECONDS."""
        durations = self.bundle.train_durations
        return self._readable(max(MIN_SECONDS, durations["p95"]) if durations else LEGACY_WINDOW_SECONDS)

    def _readable(self, seconds: float) -> float:
        """`seconds`, at most the longest clip the bundle reads (Whisper's 30 s; no limit without Whisper)."""
        limit = self.bundle.max_clip_seconds
        return min(seconds, limit) if limit is not None else seconds

    @property
    def utterance_window(self) -> float:
        """The window for corpora of utterances (medusa evaluate, medusa submission, the ensemble stage's bundle
        check): the longest clip the bundle reads whole (Whisper's 30 s), so that each utterance is scored whole,
        as the pipeline scored its test clips, whatever the training clips' durations."""
        return self.bundle.max_clip_seconds or LEGACY_WINDOW_SECONDS

    @property
    def shortest_segment(self) -> float:
        """VAD segments shorter than this are merged with a neighbour where the pause allows: the 5th percentile
        of the training clips' durations (SHORT_SECONDS for bundles that did not record them)."""
        durations = self.bundle.train_durations
        return min(durations["p05"], self.default_window) if durations else SHORT_SECONDS

    def check_window(self, window: float | None, hop: float | None) -> tuple[int, int]:
        """(window, hop) in samples (window None: default_window); PredictError unless MIN_SECONDS <= window
        (<= 30 s with Whisper) and 0 < hop <= window."""
        window = self.default_window if window is None else window
        limit = self.bundle.max_clip_seconds
        if not (isinstance(window, (int, float)) and math.isfinite(window) and window >= MIN_SECONDS):
            raise PredictError(f"window must be at least {MIN_SECONDS:g} s, got {window!r}")
        if limit is not None and window > limit:
            keys = self.bundle.whisper_keys
            reader = f"encoder {', '.join(keys)}" if keys else "ASR"
            raise PredictError(f"window {window:g} s: this bundle reads audio with Whisper ({reader}), which takes "
                               f"at most {limit:g} s; use a window of {limit:g} s or less")
        hop = window if hop is None else hop
        if not (isinstance(hop, (int, float)) and math.isfinite(hop) and 0 < hop <= window):
            raise PredictError(f"hop must be more than 0 and at most the window ({window:g} s), got {hop!r}")
        return round(window * SAMPLE_RATE), max(1, round(hop * SAMPLE_RATE))

    def predict_files(self, paths: Iterable[str | Path] | str | Path, window: float | None = None,
                      hop: float | None = None, batch_size: int | None = None, *, segment: str = DEFAULT_SEGMENT,
                      progress: bool = True) -> pd.DataFrame:
        """Predictions for audio files, folders and @list files (see the module's doc for the rows and columns).
        A bad file gets a row with its `error` and NaN probabilities; nothing is raised for one. PredictError for
        a window, hop, segmentation or batch size out of range."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        return self.predict_sources(expand_inputs(paths), window, hop, batch_size, segment=segment, progress=progress)

    def predict_sources(self, sources: Iterable[Source], window: float | None = None, hop: float | None = None,
                        batch_size: int | None = None, *, segment: str = DEFAULT_SEGMENT, progress: bool = True
                        ) -> pd.DataFrame:
        """predict_files for inputs already found (expand_inputs' Sources, or a caller's own: a Source's `where`,
        e.g. a CSV's file:line, is named in its file's error). One file row per source, in order."""
        inputs = [(s.file, Path(s.file).stem, _file_loader(s)) for s in sources]
        return self._predict(inputs, window, hop, batch_size, segment, progress)

    def predict_array(self, samples: np.ndarray, sample_rate: int | float, *, name: str = "<array>",
                      window: float | None = None, hop: float | None = None, segment: str = DEFAULT_SEGMENT) -> pd.Series:
        """The prediction of one clip held in memory: `samples` (n,) or (n, channels), float in [-1, 1] or signed
        integers (scaled as libsndfile reads PCM), at any `sample_rate`; averaged and resampled as a file's samples
        are (medusa.data.audio.to_mono_16k). Its file row, as predict_files gives it (file = `name`); an empty,
        too short or non-finite clip gets its `error` there. ValueError for an array that is no clip."""
        frames = _as_frames(samples, sample_rate)
        frame = self._predict([(name, name, lambda: _array_samples(frames, sample_rate, name))], window, hop, None,
                              segment, progress=False)
        row = frame[frame["level"] == "file"].iloc[0]
        row.name = name
        return row

    # ---- internals

    @property
    def longest_whole(self) -> float:
        """With the default window, files up to this long are scored whole: the longest training clip (at most
        what Whisper reads), so a clip like those the members learned from is never cut; a longer file is cut
        into pieces of default_window. Bundles that did not record durations: the default window."""
        durations = self.bundle.train_durations
        return self._readable(max(durations["max"], self.default_window)) if durations else self.default_window

    def _spans(self, samples: np.ndarray, w: int, h: int, whole: int, segment: str
               ) -> tuple[list[tuple[int, int]], str | None]:
        """The spans of a clip that get rows, and a note for the file's warning. A clip of at most `whole` samples
        is one span; a longer one is cut at speech boundaries (segment="vad": medusa.serving.segments, shaped to the
        trained durations; silence is not scored) or into windows (segment="window")."""
        n = len(samples)
        if n <= whole:
            return [(0, n)], None
        if segment == "window":
            return [(s, s + w) for s in window_starts(n, w, h)], None
        from medusa.serving.segments import load_vad, vad_segments

        if self._vad is None:
            self._vad = load_vad()
        spans = [(a, b) for a, b in vad_segments(samples, self._vad, min_s=self.shortest_segment, max_s=w / SAMPLE_RATE)
                 if b - a >= MIN_SECONDS * SAMPLE_RATE]
        if not spans:  # no speech found: the windows are scored, and the row says so
            return ([(s, s + w) for s in window_starts(n, w, h)],
                    "no speech found by the voice-activity detector: scored in fixed windows")
        return spans, None

    def _predict(self, inputs: list[tuple[str, str, Loader]], window: float | None, hop: float | None,
                 batch_size: int | None, segment: str, progress: bool) -> pd.DataFrame:
        from tqdm import tqdm

        w, h = self.check_window(window, hop)
        # a window given is also the longest file scored whole; by default, the longest training clip is
        whole = w if window is not None else max(w, round(self.longest_whole * SAMPLE_RATE))
        if segment not in SEGMENTATIONS:
            raise PredictError(f"segment must be one of {', '.join(SEGMENTATIONS)}, got {segment!r}")
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise PredictError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        clips: list[_Clip] = []
        pending: list[tuple[_Clip, int, np.ndarray]] = []
        for file, utt_id, load in tqdm(inputs, desc="predicting", unit="file", disable=not progress or None):
            clip = _Clip(file, utt_id)
            clips.append(clip)
            try:
                samples = load()
            except AudioError as e:
                clip.error = str(e)
                continue
            n = len(samples)
            clip.duration_s = n / SAMPLE_RATE
            try:
                check_min_duration(file, clip.duration_s)
            except AudioError as e:
                clip.error = str(e)
                continue
            clip.warning = clip_warning(samples)
            spans, note = self._spans(samples, w, h, whole, segment)
            if note:
                clip.warning = "; ".join(filter(None, [clip.warning, note]))
            for j, (a, b) in enumerate(spans):
                clip.spans.append((a, b))
                clip.warnings.append(clip.warning if len(spans) == 1 else clip_warning(samples[a:b]))
                clip.results.append(None)
                pending.append((clip, j, samples[a:b]))
                if len(pending) >= batch_size:
                    self._score(pending)
                    pending = []
        if pending:
            self._score(pending)
        rows = [row for clip in clips for row in self._rows(clip)]
        frame = pd.DataFrame(rows, columns=self.columns)
        floats = ["start_s", "end_s", "duration_s", *target_columns(self.classes),
                  *(ATTRIBUTES if "arousal" in frame else ())]
        return frame.astype({c: "float64" for c in floats})

    def _score(self, pending: list[tuple[_Clip, int, np.ndarray]]) -> None:
        """Score a batch of spans into their clips' results: (text, probabilities, attributes) or an error."""
        for (clip, j, _), result in zip(pending, self._score_clips([s for _, _, s in pending],
                                                                   [_span_name(c, j) for c, j, _ in pending])):
            clip.results[j] = result

    def _score_clips(self, audios: list[np.ndarray], names: list[str]) -> list:
        from medusa.serving.bundle import BundleError

        try:
            texts, features = self.featurizer.features(audios, names)
            probs, _, attrs = self.bundle.predict_all(features, names)
        except BundleError:
            raise  # the bundle, not the clip
        except (AudioError, ValueError) as e:  # a clip's values (e.g. frames float16 cannot hold), named in e
            if len(audios) == 1:
                return [str(e)]
            # the models are kept (Featurizer), so scoring the batch again clip by clip rebuilds nothing
            log.warning("a batch of %d clips failed (%s); scoring them one at a time", len(audios), e)
            return [self._score_clips([a], [n])[0] for a, n in zip(audios, names)]
        return [(None if texts is None else texts[i], probs[i], None if attrs is None else attrs[i])
                for i in range(len(audios))]

    def _rows(self, clip: _Clip) -> list[dict]:
        base = {"file": clip.file, "utt_id": clip.utt_id, "duration_s": clip.duration_s}
        if clip.error is not None:
            return [{**base, "level": "file", "start_s": 0.0, "end_s": clip.duration_s, "error": clip.error}]
        segments = [self._row(base, "segment", span, result, warning)
                    for span, result, warning in zip(clip.spans, clip.results, clip.warnings)]
        if len(segments) == 1 and clip.spans[0] == (0, round(clip.duration_s * SAMPLE_RATE)):
            return [{**segments[0], "level": "file"}]
        whole = {**base, "level": "file", "start_s": 0.0, "end_s": clip.duration_s, "warning": clip.warning}
        failed = [r for r in clip.results if isinstance(r, str)]
        if failed:
            whole["error"] = (f"{clip.file}: {len(failed)} of {len(segments)} pieces could not be scored "
                              f"(the first: {failed[0]})")
            return [whole, *segments]
        # each second of audio counts once: overlapping windows share the seconds they both cover
        weights = coverage_weights(clip.spans)
        weights /= weights.sum()
        probs = weights @ np.stack([np.asarray(r[1], np.float64) for r in clip.results])
        whole.update(self._values(probs))
        if clip.results[0][2] is not None:
            whole.update(zip(ATTRIBUTES, weights @ np.stack([np.asarray(r[2], np.float64) for r in clip.results])))
        if clip.results[0][0] is not None:
            whole["text"] = " ".join(t for t in (r[0].strip() for r in clip.results) if t)
        return [whole, *segments]

    def _row(self, base: dict, level: str, span: tuple[int, int], result, warning: str | None) -> dict:
        row = {**base, "level": level, "start_s": span[0] / SAMPLE_RATE, "end_s": span[1] / SAMPLE_RATE,
               "warning": warning}
        if isinstance(result, str):
            row["error"] = result
            return row
        text, probs, attrs = result
        row.update(self._values(probs))
        if attrs is not None:
            row.update(zip(ATTRIBUTES, (float(v) for v in attrs)))
        if text is not None:
            row["text"] = text
        return row

    def _values(self, probs: np.ndarray) -> dict:
        probs = np.asarray(probs, dtype=np.float64)
        return {**dict(zip(target_columns(self.classes), probs.tolist())),
                "predicted": self.classes[int(probs.argmax())]}


def _span_name(clip: _Clip, j: int) -> str:
    if len(clip.spans) == 1:
        return clip.file
    a, b = clip.spans[j]
    return f"{clip.file} [{a / SAMPLE_RATE:.2f}-{b / SAMPLE_RATE:.2f} s]"


def _file_loader(source: Source) -> Loader:
    def load() -> np.ndarray:
        if source.problem is not None:
            raise AudioError(source.problem)
        try:
            return read_any(source.file)[0]
        except AudioError as e:
            raise AudioError(f"{e} (listed at {source.where})" if source.where else str(e)) from None
    return load


def _as_frames(samples: np.ndarray, sample_rate: int | float) -> np.ndarray:
    """A clip as float32 frames (n, channels), as libsndfile reads a file; ValueError for what is no clip."""
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"samples must be (n,) or (n, channels), got shape {x.shape}")
    if x.shape[1] < 1:
        raise ValueError(f"samples must have at least one channel, got shape {x.shape}")
    if len(x) and x.shape[1] > x.shape[0]:
        raise ValueError(f"samples must be (n, channels), got shape {x.shape}: more channels than samples "
                         "(channels first? pass samples.T)")
    if not (isinstance(sample_rate, (int, float, np.integer, np.floating)) and math.isfinite(sample_rate)
            and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    if np.issubdtype(x.dtype, np.signedinteger):
        return (x / float(2 ** (8 * x.dtype.itemsize - 1))).astype(np.float32)  # as libsndfile reads PCM
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"samples must be floats in [-1, 1] or signed integers, got {x.dtype}")
    return x.astype(np.float32, copy=False)


def _array_samples(frames: np.ndarray, sample_rate: int | float, name: str) -> np.ndarray:
    if not len(frames):
        raise AudioError(f"{name}: empty audio (0 samples)")
    if not np.isfinite(frames).all():
        raise AudioError(f"{name}: holds NaN or infinite samples")
    rate = int(sample_rate) if float(sample_rate).is_integer() else float(sample_rate)
    return to_mono_16k(frames, rate)


__all__ = ["AUDIO_EXTENSIONS", "DEFAULT_BATCH_SIZE", "OUTPUT_SUFFIXES", "SHORT_SECONDS", "SILENCE_DBFS",
           "PredictError", "Predictor", "Source", "check_output_path", "clip_warning", "expand_inputs",
           "output_file_problem", "rms_dbfs", "window_starts", "write_predictions"]
