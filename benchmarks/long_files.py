"""Long recordings: fixed windows vs training-length windows vs voice-activity segments, scored clip by clip.

    python benchmarks/long_files.py [--bundle work/bundle] [--manifest work/manifest.parquet] [--split test]
                                    [--file-seconds 60] [--seed 0] [--device cpu] [--threads T] [--limit N]
                                    [--report reports/benchmarks.md] [--out-dir work/benchmarks/long_files]

The pipeline's test scores come from clips cut for the corpus; people bring recordings minutes long. This
benchmark makes such recordings out of the split's labelled clips, so that every clip's place and emotion is
known, and measures how well each way of cutting a long file gets each clip's emotion back:

* Joined files. The split's clips whose label is one of the bundle's classes, shuffled (--seed), are laid end to
  end into files of about --file-seconds: clips are added to a file until the next one (with its silences) would
  make it longer. A silence of uniform 0.5-2.0 s comes before each clip and after the last one, and gaussian
  noise at -60 dBFS covers the whole file (clipped to full scale), so that the silences sound like a quiet room
  rather than digital zeros. Written as 16 kHz float WAV under --out-dir (scratch), with truth.csv: per clip its
  file, start_s, end_s, label and utt_id, and after the run each way's prediction.
* Three ways, one Predictor (the models are built once, by a warm-up call on the longest file, with segment="vad"
  so that it loads the voice-activity detector too): (a) fixed 30 s windows (`window=30`, the former default);
  (b) training-length windows (`window=None, segment="window"`: windows of the training clips' p95 duration; a
  file up to the longest training clip is scored whole); (c) speech segments (`segment="vad"`, the default since
  this benchmark found it best). Each is one timed `predict_files` call over all
  files (wall seconds).
* Clip-level scores. A clip's probabilities are the mean of those of the scored pieces that overlap it (segment
  rows; the file row where a file was not cut), weighted by the seconds each overlaps the clip's [start, end];
  its class is their argmax. A clip that no piece overlaps (the voice-activity detector found no speech there) is
  missed. Balanced macro-F1 with its 95 % interval (medusa.scoring.metrics.classification_scores: the reports'
  protocol), twice: with missed clips counted wrong (predicted class "none"), which ranks the ways, and with them
  left out. The best way is compared with the others on the same bootstrap resamples (paired intervals).
* Reference: each clip scored on its own (`window=predictor.utterance_window`: whole), as the pipeline's test
  scores are.

The script prints a table and writes the "## Long recordings: windows vs VAD segments" section of the report
(reports/benchmarks/long_files.json, rendered by benchmarks/report.py with the other sections).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere, installed package or not
if str(REPO / "benchmarks") not in sys.path:  # _common, report and predict, when this file is imported
    sys.path.insert(1, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import report  # noqa: E402  benchmarks/report.py: the Markdown
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from _common import busy, device_name, load_average, measure, scoring_device  # noqa: E402
from predict import describe_bundle  # noqa: E402  benchmarks/predict.py

from medusa.data.audio import SAMPLE_RATE, AudioError, read_any  # noqa: E402
from medusa.labels import target_columns  # noqa: E402
from medusa.scoring.metrics import (  # noqa: E402
    bootstrap_macro_f1,
    classification_scores,
    percentile_interval,
    stratified_bootstrap_indices,
)
from medusa.serving.predict import Predictor  # noqa: E402

SECTION = "long_files"              # reports/benchmarks/long_files.json
REPORT_SECTION = "## Long recordings: windows vs VAD segments"
FIXED_WINDOW_S = 30.0               # the former default window (Whisper's longest input)
SILENCE_S = (0.5, 2.0)              # uniform silence before each clip and after a file's last one
NOISE_DBFS = -60.0                  # gaussian noise over the whole file: a quiet room, not digital zeros
BOOTSTRAP = 1000
MISSED = "none"                     # a missed clip's class when counted: no class of the bundle, so always wrong
MANIFEST_COLUMNS = ("utt_id", "path", "duration_s", "split", "label")
JOINED_PATTERN = "joined_*.wav"


@dataclass(frozen=True)
class Way:
    """One way of cutting the joined files: predict_files' window (None: the bundle's default) and segment."""
    key: str
    window: float | None
    segment: str


WAYS = (Way("fixed", FIXED_WINDOW_S, "window"), Way("p95", None, "window"), Way("vad", None, "vad"))


# ------------------------------------------------------------------------------------------- joined files


@dataclass
class FilePlan:
    """One joined file: which clips (indices into the shuffled clips, in order), the silence before each, and the
    silence after the last, in seconds."""
    clips: list[int] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)
    tail_s: float = 0.0


def plan_files(durations: Sequence[float], file_seconds: float, rng: np.random.Generator) -> list[FilePlan]:
    """Group clips of `durations` (seconds, in the order they are to be laid) into files: each file takes clips
    in order while its length (silences included: one of SILENCE_S before each clip, one after the last) stays
    within `file_seconds`; a clip that alone is longer gets a file of its own. Every clip is in exactly one file,
    in order. Silences are drawn from `rng` up front, two per clip (before it, and after it if it ends its file),
    so a clip's silences do not depend on where the files break."""
    gaps = rng.uniform(*SILENCE_S, len(durations))
    tails = rng.uniform(*SILENCE_S, len(durations))
    plans: list[FilePlan] = []
    length = 0.0
    for i, (d, gap, tail) in enumerate(zip(durations, gaps, tails)):
        if plans and plans[-1].clips and length + gap + float(d) + tail <= file_seconds:
            plan = plans[-1]
        else:
            plan, length = FilePlan(), 0.0
            plans.append(plan)
        plan.clips.append(i)
        plan.gaps_s.append(float(gap))
        plan.tail_s = float(tail)
        length += gap + float(d)
    return plans


def assemble(clips: Sequence[np.ndarray], gaps_s: Sequence[float], tail_s: float, rng: np.random.Generator
             ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The joined recording (float32, 16 kHz): silence of gaps_s[i] before clips[i], tail_s after the last, and
    gaussian noise at NOISE_DBFS (RMS, as medusa.serving.predict.rms_dbfs measures it) from `rng` over all of it,
    clipped to [-1, 1] as a recorder would (clips normalised to full scale would otherwise get the whole file
    scaled down when it is read: medusa.data.audio); and each clip's span (start, end) in samples, end exclusive."""
    gaps = [round(g * SAMPLE_RATE) for g in gaps_s]
    n = sum(gaps) + sum(len(c) for c in clips) + round(tail_s * SAMPLE_RATE)
    audio = rng.normal(0.0, 10 ** (NOISE_DBFS / 20), n).astype(np.float32)
    spans, at = [], 0
    for gap, clip in zip(gaps, clips):
        at += gap
        audio[at:at + len(clip)] += clip
        spans.append((at, at + len(clip)))
        at += len(clip)
    np.clip(audio, -1.0, 1.0, out=audio)
    return audio, spans


def load_clips(manifest: Path, split: str, classes: Sequence[str]) -> tuple[pd.DataFrame, int]:
    """The split's clips labelled with one of `classes` (utt_id, path, duration_s, label; manifest order), paths
    resolved against the manifest's repository (the folder above its work/ folder), and how many clips the split
    has. SystemExit naming the manifest for a missing file or column, or no such clip."""
    if not manifest.is_file():
        raise SystemExit(f"{manifest}: no such manifest (run the prepare stage, or give --manifest)")
    frame = pd.read_parquet(manifest)
    missing = [c for c in MANIFEST_COLUMNS if c not in frame]
    if missing:
        raise SystemExit(f"{manifest}: no column {', '.join(missing)} (a manifest of the prepare stage has them)")
    in_split = frame[frame["split"] == split]
    chosen = in_split[in_split["label"].isin(list(classes))].reset_index(drop=True)
    if chosen.empty:
        raise SystemExit(f"{manifest}: no clip of split {split!r} is labelled with one of the bundle's classes "
                         f"({', '.join(classes)}); the splits there: {', '.join(map(str, frame['split'].unique()))}")
    root = manifest.resolve().parent.parent
    chosen["path"] = [str(p if p.is_absolute() else root / p) for p in map(Path, chosen["path"])]
    return chosen[["utt_id", "path", "duration_s", "label"]].copy(), len(in_split)


@dataclass
class Joined:
    """The joined files and the truth: one row per clip (file, start_s, end_s, label, utt_id), files in order."""
    files: list[str]
    durations_s: list[float]
    truth: pd.DataFrame
    planned: int                    # files the clips make (--limit keeps the first ones)


def join_clips(clips: pd.DataFrame, file_seconds: float, seed: int, out_dir: Path, limit: int | None = None
               ) -> Joined:
    """Shuffle `clips` (load_clips' frame) with `seed`, group them (plan_files) and write the first `limit` files
    (all: None) to out_dir/joined_NNN.wav (16 kHz float WAV; earlier joined files there are removed first), with
    out_dir/truth.csv. SystemExit naming the clip that cannot be read."""
    rng = np.random.default_rng(seed)
    shuffled = clips.iloc[rng.permutation(len(clips))].reset_index(drop=True)
    plans = plan_files(shuffled["duration_s"].to_numpy(np.float64), file_seconds, rng)
    kept = plans[:limit] if limit else plans
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(JOINED_PATTERN):
        stale.unlink()
    files, durations, truth = [], [], []
    for k, plan in enumerate(kept):
        rows = shuffled.iloc[plan.clips]
        try:
            samples = [read_any(path)[0] for path in rows["path"]]
        except AudioError as e:
            raise SystemExit(f"a clip of the manifest cannot be read: {e}") from None
        audio, spans = assemble(samples, plan.gaps_s, plan.tail_s, np.random.default_rng([seed, k]))
        path = out_dir / f"joined_{k:03d}.wav"
        sf.write(path, audio, SAMPLE_RATE, subtype="FLOAT")
        files.append(str(path))
        durations.append(len(audio) / SAMPLE_RATE)
        truth += [{"file": str(path), "start_s": a / SAMPLE_RATE, "end_s": b / SAMPLE_RATE, "label": label,
                   "utt_id": utt, "path": clip_path}
                  for (a, b), label, utt, clip_path in zip(spans, rows["label"], rows["utt_id"], rows["path"])]
    frame = pd.DataFrame(truth, columns=["file", "start_s", "end_s", "label", "utt_id", "path"])
    frame.to_csv(out_dir / "truth.csv", index=False)
    return Joined(files, durations, frame, len(plans))


# ------------------------------------------------------------------------------------------ clip-level scores


def scored_pieces(frame: pd.DataFrame) -> pd.DataFrame:
    """The pieces of predict_files' rows that carry probabilities: a cut file's segment rows, an uncut file's file
    row; rows with an error (NaN probabilities) are left out."""
    segments = frame[frame["level"] == "segment"]
    whole = frame[(frame["level"] == "file") & ~frame["file"].isin(set(segments["file"]))]
    pieces = pd.concat([whole, segments], ignore_index=True)
    return pieces[pieces["error"].isna()].reset_index(drop=True)


def clip_probabilities(truth: pd.DataFrame, pieces: pd.DataFrame, classes: Sequence[str]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per true clip (truth's rows: file, start_s, end_s), the mean probabilities of the pieces of its file that
    overlap it, weighted by the seconds of overlap, (n_clips, n_classes), NaN for a clip no piece overlaps; and
    the seconds of overlap each clip got (pieces that overlap each other count each)."""
    columns = list(target_columns(classes))
    probs = np.full((len(truth), len(classes)), np.nan)
    covered = np.zeros(len(truth))
    by_file = dict(tuple(pieces.groupby("file"))) if len(pieces) else {}
    for file, idx in truth.groupby("file").indices.items():
        p = by_file.get(file)
        if p is None:
            continue
        t = truth.iloc[idx]
        overlap = np.clip(np.minimum(t["end_s"].to_numpy()[:, None], p["end_s"].to_numpy()[None])
                          - np.maximum(t["start_s"].to_numpy()[:, None], p["start_s"].to_numpy()[None]), 0, None)
        seconds = overlap.sum(1)
        covered[idx] = seconds
        hit = seconds > 0
        probs[idx[hit]] = overlap[hit] @ p[columns].to_numpy(np.float64) / seconds[hit, None]
    return probs, covered


def predicted_classes(probs: np.ndarray, classes: Sequence[str]) -> list[str | None]:
    """The argmax class of each row; None for a missed clip (a NaN row)."""
    return [None if np.isnan(row).any() else classes[int(np.argmax(row))] for row in probs]


@dataclass
class F1:
    value: float
    low: float
    high: float
    n: int

    def cell(self) -> str:
        if np.isnan(self.value):
            return "n/a"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def balanced_f1(labels: Sequence[str], predicted: Sequence[str | None], classes: Sequence[str], seed: int,
                bootstrap: int) -> tuple[F1, F1]:
    """Balanced macro-F1 and its 95 % interval (classification_scores) with missed clips (None) counted as wrong
    (predicted MISSED), and with them left out (NaN when every clip was missed)."""
    counted = classification_scores(labels, [MISSED if p is None else p for p in predicted], classes, seed,
                                     bootstrap)
    wrong = F1(counted["balanced_macro_f1"], *counted["balanced_macro_f1_ci95"], counted["n"])
    kept = [(t, p) for t, p in zip(labels, predicted) if p is not None]
    if not kept:
        return wrong, F1(float("nan"), float("nan"), float("nan"), 0)
    scores = classification_scores([t for t, _ in kept], [p for _, p in kept], classes, seed, bootstrap)
    return wrong, F1(scores["balanced_macro_f1"], *scores["balanced_macro_f1_ci95"], scores["n"])


def paired_difference(labels: Sequence[str], a: Sequence[str | None], b: Sequence[str | None],
                      classes: Sequence[str], seed: int, bootstrap: int) -> tuple[float, float, float]:
    """Balanced macro-F1 of predictions `a` minus that of `b` on the same clips (missed counted wrong), with the
    95 % interval of the difference over the same class-stratified resamples for both (paired)."""
    fill = lambda preds: [MISSED if p is None else p for p in preds]  # noqa: E731
    everything = np.arange(len(labels))[None]
    indices = np.concatenate([everything, stratified_bootstrap_indices(labels, bootstrap, seed)])
    diff = (bootstrap_macro_f1(labels, fill(a), indices, classes, balanced=True)
            - bootstrap_macro_f1(labels, fill(b), indices, classes, balanced=True))
    return (float(diff[0]), *percentile_interval(diff[1:]))


# ------------------------------------------------------------------------------------------------- the ways


@dataclass
class WayResult:
    way: str                        # in words, as the table names it
    pieces: int                     # pieces scored (segment rows, or file rows of files not cut)
    scored_s: float                 # the pieces' lengths, summed (overlapping windows count twice)
    audio_s: float                  # the input's length: the joined files' (or the clips', for the reference)
    wall_s: float
    missed: int                     # clips no scored piece overlaps (or, reference: clips not scored)
    errors: int                     # rows predict_files could not score
    predicted: list[str | None]
    f1_wrong: F1 | None = None      # missed counted wrong
    f1_left_out: F1 | None = None   # missed left out

    @property
    def rtf(self) -> float:
        """Compute seconds per second of input audio (below 1: faster than real time)."""
        return self.wall_s / self.audio_s if self.audio_s > 0 else float("nan")


@dataclass
class Result:
    ways: list[WayResult]           # fixed, default, vad
    reference: WayResult
    joined: Joined
    best: str                       # the way with the highest balanced macro-F1 (missed counted wrong)
    differences: dict[str, tuple[float, float, float]]  # best minus each other way: value, 95 % interval
    default_window: float
    longest_whole: float
    shortest_segment: float
    n_split: int                    # clips in the split, labelled or not
    n_available: int                # of them, labelled with one of the bundle's classes


def way_name(way: Way, predictor: Predictor) -> str:
    if way.segment == "vad":
        return "VAD segments (the default)"
    if way.window is None:
        return f"training-length windows ({predictor.default_window:.2f} s)"
    return f"fixed {way.window:g} s windows"


def score_way(predictor: Predictor, way: Way, joined: Joined, device: torch.device) -> WayResult:
    """One timed predict_files call over the joined files, cut as `way` says; the clips' predictions."""
    with measure(device) as m:
        frame = predictor.predict_files(joined.files, window=way.window, segment=way.segment, progress=False)
    pieces = scored_pieces(frame)
    probs, _ = clip_probabilities(joined.truth, pieces, predictor.classes)
    predicted = predicted_classes(probs, predictor.classes)
    return WayResult(way_name(way, predictor), len(pieces), float((pieces["end_s"] - pieces["start_s"]).sum()),
                     float(sum(joined.durations_s)), m.wall_s, sum(p is None for p in predicted),
                     int(frame["error"].notna().sum()), predicted)


def score_reference(predictor: Predictor, joined: Joined, device: torch.device) -> WayResult:
    """Each clip of the joined files scored on its own, whole, as the pipeline scores its test clips."""
    paths = list(joined.truth["path"])
    with measure(device) as m:
        frame = predictor.predict_files(paths, window=predictor.utterance_window, progress=False)
    rows = frame[frame["level"] == "file"].set_index("file").loc[paths]
    ok = rows["error"].isna().to_numpy()
    predicted = [p if good else None for p, good in zip(rows["predicted"], ok)]
    audio_s = float(rows["duration_s"].fillna(0).sum())
    return WayResult("each clip on its own (reference)", int(ok.sum()), float(rows["duration_s"][ok].sum()),
                     audio_s, m.wall_s, int((~ok).sum()), int(frame["error"].notna().sum()), predicted)


# ---------------------------------------------------------------------------------------------------- output


COLUMNS = ["Way", "Pieces", "Scored s", "File s", "Clips missed", "Balanced macro-F1, missed = wrong [95 % CI]",
           "Balanced macro-F1, missed left out [95 % CI]", "Wall s", "RTF"]


def table_rows(res: Result) -> list[list[str]]:
    return [[r.way, str(r.pieces), f"{r.scored_s:.1f}", f"{r.audio_s:.1f}", f"{r.missed} of {len(r.predicted)}",
             r.f1_wrong.cell(), f"{r.f1_left_out.cell()} (n={r.f1_left_out.n})", f"{r.wall_s:.2f}", f"{r.rtf:.4f}"]
            for r in [*res.ways, res.reference]]


def console_table(res: Result) -> str:
    heads = ["way", "pieces", "scored s", "file s", "missed", "bal. F1 (missed wrong) [CI]",
             "bal. F1 (missed left out) [CI]", "wall s", "RTF"]
    rows = table_rows(res)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(heads), "-" * len(line(heads)), *map(line, rows)])


def verdict(res: Result) -> str:
    """Which way is best on this data, by how much, and how far the reference is."""
    best = next(r for r in res.ways if r.way == res.best)
    parts = []
    for name, (diff, low, high) in res.differences.items():
        sure = "" if low > 0 or high < 0 else ", an interval that holds 0: not told apart at this size"
        parts.append(f"{diff:+.3f} [{low:+.3f}, {high:+.3f}] over {name}{sure}")
    gap = best.f1_wrong.value - res.reference.f1_wrong.value
    return (f"Best on this data: {best.way}, balanced macro-F1 {best.f1_wrong.value:.3f} with missed clips counted "
            f"wrong ({'; '.join(parts)}; differences on the same bootstrap resamples, 95 %). The same clips scored "
            f"each on its own give {res.reference.f1_wrong.value:.3f}"
            + (f", {abs(gap):.3f} {'above' if gap < 0 else 'below'} the best way of cutting the recordings." if gap
               else ", as the best way of cutting the recordings does."))


def describe_windows(predictor: Predictor) -> str:
    limit = predictor.bundle.max_clip_seconds
    cap = f", at most Whisper's {limit:g} s" if limit else ""
    if predictor.bundle.train_durations:
        source = f"the 95th percentile of the training clips' durations{cap}"
        longest = f"the longest training clip{cap}"
    else:
        source, longest = "the former 30 s: this bundle records no training durations", "the default window"
    whole, shortest = predictor.longest_whole, predictor.shortest_segment
    same = predictor.default_window == FIXED_WINDOW_S and whole == FIXED_WINDOW_S
    return (f"Windows: training-length window {predictor.default_window:.2f} s ({source}); by default a file up to "
            f"{whole:.2f} s ({longest}) is scored whole, a longer one is cut. VAD segments: silero-vad's speech, "
            f"merged across short pauses to at least {shortest:.2f} s where the pauses allow and split to at most "
            f"the default window; a file up to {whole:.2f} s is scored whole. Fixed windows: {FIXED_WINDOW_S:g} s; a "
            f"file up to {FIXED_WINDOW_S:g} s is scored whole"
            + (": with this bundle the default cuts the files exactly as the fixed windows do." if same else "."))


def clips_per_file(counts: pd.Series) -> str:
    if counts.min() == counts.max():
        return f"{counts.min()}"
    return f"{counts.min()}-{counts.max()} (median {counts.median():g})"


def describe_joined(args: argparse.Namespace, res: Result) -> str:
    j = res.joined
    per_file = j.truth.groupby("file").size()
    limit = f" (the first {len(j.files)} of {j.planned}: --limit)" if len(j.files) < j.planned else ""
    return (f"Joined files: {len(j.files)}{limit}, {sum(j.durations_s) / 60:.1f} min in all "
            f"({min(j.durations_s):.1f}-{max(j.durations_s):.1f} s each), made of {len(j.truth)} clips, "
            f"{clips_per_file(per_file)} per file, of split `{args.split}` of "
            f"`{args.manifest}` ({res.n_available} of its {res.n_split} clips are labelled with one of the bundle's "
            f"classes), shuffled with seed {args.seed}, in files of at most {args.file_seconds:g} s; a silence of "
            f"uniform {SILENCE_S[0]:g}-{SILENCE_S[1]:g} s before each clip and after the last, gaussian noise at "
            f"{NOISE_DBFS:g} dBFS over the whole file; 16 kHz float WAV.")


def errors_note(res: Result) -> list[str]:
    """A bullet naming the ways some of whose rows predict_files could not score (their pieces are left out)."""
    failed = [f"{r.way}: {r.errors}" for r in [*res.ways, res.reference] if r.errors]
    return [f"Rows not scored (errors; their pieces are left out): {'; '.join(failed)}."] if failed else []


def report_section(args: argparse.Namespace, argv: list[str], device: torch.device, predictor: Predictor,
                   res: Result, load: str) -> report.Doc:
    """The section as a document (benchmarks/report.py renders it)."""
    cmd = "python benchmarks/long_files.py" + "".join(f" {a}" for a in argv)
    return report.doc(REPORT_SECTION[3:], [
        report.bullets([
            f"Device: {device_name(device)}; torch {torch.__version__}; {torch.get_num_threads()} intra-op "
            "thread(s)" + (f"; load average at start {load} ({busy(load)})" if device.type == "cpu" else ""),
            f"Bundle: `{args.bundle}`: {describe_bundle(predictor)}.",
            describe_joined(args, res),
            describe_windows(predictor),
            "Clip-level scores: a clip's probabilities are the mean of those of the scored pieces that overlap it "
            "(segment rows; the file row of a file not cut), weighted by the seconds of overlap; its class is "
            "their argmax. A clip that no piece overlaps is missed: counted wrong (predicted class \"none\") in "
            "the first F1 column, left out of the second (n: the clips scored). Balanced macro-F1 as in every "
            f"report (medusa.scoring.metrics.classification_scores), 95 % class-stratified bootstrap interval of "
            f"{BOOTSTRAP} resamples, seed {args.seed}.",
            "Time: one `predict_files` call over all joined files per way, after a warm-up call (segment \"vad\") "
            "on the longest file that built the models and loaded the voice-activity detector. Scored s: the "
            "pieces' lengths summed (the last fixed window overlaps the one before; VAD skips silence). RTF: wall "
            "seconds per second of input (the joined files; for the reference, the clips).",
            *errors_note(res)]),
        report.table(COLUMNS, "lrrrrrrrr", table_rows(res)),
        report.text(verdict(res)),
        report.text(f"Command: `{cmd}`")])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=REPO / "work" / "bundle", help="predict bundle (default work/bundle)")
    p.add_argument("--manifest", type=Path, default=REPO / "work" / "manifest.parquet",
                   help="the prepare stage's manifest (default work/manifest.parquet); relative audio paths are "
                        "read from the folder above its work/ folder")
    p.add_argument("--split", default="test", help="whose clips are joined (default test)")
    p.add_argument("--file-seconds", type=float, default=60.0, help="length of a joined file, at most (default 60)")
    p.add_argument("--seed", type=int, default=0, help="shuffle, silences, noise and bootstrap (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 on CPU, so that a busy machine gives steadier numbers)")
    p.add_argument("--report", type=Path, default=REPO / "reports" / "benchmarks.md", help="report to update")
    p.add_argument("--out-dir", type=Path, default=REPO / "work" / "benchmarks" / "long_files",
                   help="where the joined files are written (scratch; default work/benchmarks/long_files)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N joined files (a quick trial)")
    p.add_argument("--cache-dir", type=Path, default=REPO / "work" / "cache",
                   help="where the encoders' converted checkpoints are kept (default work/cache)")
    args = p.parse_args(argv)
    if args.file_seconds <= 0:
        p.error(f"--file-seconds must be positive, got {args.file_seconds:g}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be at least 1, got {args.limit}")
    return args


def main(argv: list[str] | None = None) -> Result:
    """Join the clips, score them the three ways and on their own, print the table, write the report section;
    returns what was measured."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(f"{args.bundle}: no predict bundle there (no manifest.json; build one with the ensemble "
                         "stage, or give --bundle)")
    device, threads = scoring_device(args.device, args.threads)
    load = load_average()
    predictor = Predictor.from_bundle(args.bundle, device=str(device), cache_dir=args.cache_dir)
    classes = predictor.classes
    clips, n_split = load_clips(args.manifest, args.split, classes)
    joined = join_clips(clips, args.file_seconds, args.seed, args.out_dir, args.limit)
    print(f"device {device_name(device)}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"{len(joined.files)} joined file(s), {sum(joined.durations_s) / 60:.1f} min, {len(joined.truth)} clips; "
          f"default window {predictor.default_window:.2f} s, scored whole up to {predictor.longest_whole:.2f} s",
          flush=True)
    longest = joined.files[int(np.argmax(joined.durations_s))]
    predictor.predict_files([longest], segment="vad", progress=False)  # warm-up: models and the VAD, built once

    ways = [score_way(predictor, way, joined, device) for way in WAYS]
    reference = score_reference(predictor, joined, device)
    labels = list(joined.truth["label"])
    for r in [*ways, reference]:
        r.f1_wrong, r.f1_left_out = balanced_f1(labels, r.predicted, classes, args.seed, BOOTSTRAP)
    best = max(ways, key=lambda r: r.f1_wrong.value)
    differences = {r.way: paired_difference(labels, best.predicted, r.predicted, classes, args.seed, BOOTSTRAP)
                   for r in ways if r is not best}
    res = Result(ways, reference, joined, best.way, differences, predictor.default_window, predictor.longest_whole,
                 predictor.shortest_segment, n_split, len(clips))

    out = joined.truth.copy()
    for key, r in zip([w.key for w in WAYS] + ["reference"], [*ways, reference]):
        out[f"predicted_{key}"] = r.predicted
    out.to_csv(args.out_dir / "truth.csv", index=False)
    print()
    print(console_table(res))
    print()
    print(verdict(res))
    report.publish(report_section(args, argv, device, predictor, res, load), SECTION, args.report)
    print(f"wrote the '{REPORT_SECTION[3:]}' section of {args.report}")
    return res


if __name__ == "__main__":
    main()
