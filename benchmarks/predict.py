"""Prediction speed and memory of a trained predict bundle (`medusa predict`, `medusa submission`).

    python benchmarks/predict.py --bundle work/bundle --audio data/Audios --files 100 [--device cpu]
                                 [--report reports/benchmarks.md] [--repeats 1] [--threads T]
                                 [--submission-files 1000] [--corrupt-files 20]

The first N audio files of the folder (sorted, subfolders included, as `medusa predict FOLDER` lists them) are
scored through `medusa.serving.predict.Predictor`:

* first call: a new Predictor's first `predict_files` call on WARM_UP_FILES files, which builds every encoder and
  the Whisper ASR (medusa.serving.featurizer); the later calls reuse them;
* batched: one `predict_files` call over the N files, with the default batch size;
* one file per call: N `predict_files` calls of one file each, with batch size 1;
* predict_array: N `predict_array` calls on the files' samples, read into memory before the clock starts.

For each: wall seconds, files per second, real-time factor (compute seconds per second of audio) and peak memory
(benchmarks/_common.measure). Every way must predict the same class for every file; the largest absolute
difference of their probabilities is reported too (batch invariance, as a side result). Loading the bundle is
timed on its own.

Submission memory: `medusa submission` run as its own process on a corpus of --submission-files blind files (the
folder's files linked under new names into an MSP-Podcast layout whose consensus file has no row for them): its
peak resident memory (the process's ru_maxrss: everything, models included) and wall time. Then on
--corrupt-files blind files, one of them a damaged WAV: the exit status, and whether the refusal names it after
scoring the others. The script prints the tables and writes the "## Prediction speed (medusa predict)" section of
the report (reports/benchmarks/predict.json, rendered by benchmarks/report.py with the other sections).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere, installed package or not
if str(REPO / "benchmarks") not in sys.path:  # _common, when this file is imported rather than run
    sys.path.insert(1, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import report  # noqa: E402  benchmarks/report.py: the Markdown
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from _common import busy, cpu_memory_method, device_name, load_average, measure, scoring_device  # noqa: E402

from medusa.labels import target_columns  # noqa: E402
from medusa.serving.predict import DEFAULT_BATCH_SIZE, Predictor, expand_inputs  # noqa: E402

SECTION = "predict"                 # reports/benchmarks/predict.json
REPORT_SECTION = "## Prediction speed (medusa predict)"
WARM_UP_FILES = 2
CPU_NOT_INCLUDED = "the bundle's members, loaded before, are not included; encoders built inside the call are"


@dataclass
class Row:
    way: str
    batch_size: int
    calls: int
    files: int
    audio_s: float
    wall_s: float
    peak_mb: float

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def s_per_file(self) -> float:
        return self.wall_s / self.files if self.files else float("nan")

    @property
    def rtf(self) -> float:
        """Compute seconds per second of audio (below 1: faster than real time)."""
        return self.wall_s / self.audio_s if self.audio_s > 0 else float("nan")


@dataclass
class Result:
    rows: list[Row]
    load_s: float
    files: list[str]
    audio_s: float
    errors: int                    # files some way could not score (excluded from the comparison)
    same_classes: bool
    differing: list[str]           # files whose predicted class differs between the ways
    max_abs_diff: float            # largest |p batched - p another way| over files and classes
    builds: dict[str, int]         # constructions per model over every call (medusa.serving.featurizer)
    submission: dict | None = None  # medusa submission's peak memory, and its refusal of a corrupt file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=REPO / "work" / "bundle", help="predict bundle (default work/bundle)")
    p.add_argument("--audio", type=Path, default=REPO / "data" / "Audios", help="folder of audio files")
    p.add_argument("--files", type=int, default=100, help="how many of its files (the first, sorted; default 100)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--report", type=Path, default=REPO / "reports" / "benchmarks.md", help="report to update")
    p.add_argument("--repeats", type=int, default=1,
                   help="time each way this many times and keep the fastest (default 1)")
    p.add_argument("--window", type=float, default=None,
                   help="predict_files window in seconds (default: the bundle's, Predictor.default_window)")
    p.add_argument("--submission-files", type=int, default=1000,
                   help="blind files of the `medusa submission` memory run (0: skip it; default 1000)")
    p.add_argument("--corrupt-files", type=int, default=20,
                   help="blind files of the run with one damaged file (0: skip it; default 20)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 on CPU, so that a busy machine gives steadier numbers)")
    p.add_argument("--cache-dir", type=Path, default=REPO / "work" / "cache",
                   help="where the encoders' converted checkpoints are kept (default work/cache)")
    args = p.parse_args(argv)
    if args.files < 1 or args.repeats < 1:
        p.error("--files and --repeats must be at least 1")
    return args


def list_files(folder: Path, n: int) -> list[str]:
    sources = [s for s in expand_inputs([folder]) if s.problem is None]
    if not sources:
        raise SystemExit(f"{folder}: no audio files")
    return [s.file for s in sources[:n]]


def file_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["level"] == "file"].set_index("file")


def timed(device: torch.device, repeats: int, run) -> tuple[float, float, pd.DataFrame]:
    """The fastest wall time of `repeats` calls of run(), the largest peak memory, and the last call's result."""
    walls, peaks, out = [], [], None
    for _ in range(repeats):
        with measure(device) as m:
            out = run()
        walls.append(m.wall_s)
        peaks.append(m.peak_mb)
    return min(walls), max(peaks), out


def bench(predictor: Predictor, files: list[str], device: torch.device, repeats: int, window: float | None,
          load_s: float) -> Result:
    first_s, first_mb, _ = timed(device, 1, lambda: predictor.predict_files(files[:WARM_UP_FILES], window=window,
                                                                           progress=False))
    batched_s, batched_mb, batched = timed(
        device, repeats, lambda: predictor.predict_files(files, window=window, progress=False))
    single_s, single_mb, single = timed(
        device, repeats, lambda: pd.concat([predictor.predict_files([f], window=window, batch_size=1, progress=False)
                                            for f in files], ignore_index=True))
    clips = [(f, *sf.read(f, dtype="float32", always_2d=True)) for f in files]
    array_s, array_mb, arrays = timed(device, repeats, lambda: pd.DataFrame(
        [predictor.predict_array(x, sr, name=f, window=window) for f, x, sr in clips]).set_index("file"))
    a = file_rows(batched)
    others = [file_rows(single), arrays]
    audio_s = float(a["duration_s"].fillna(0).sum())
    ok = a["error"].isna()
    for b in others:
        ok &= b.loc[a.index, "error"].isna()
    probs = list(target_columns(predictor.classes))
    diff = max((float(np.abs(a.loc[ok, probs].to_numpy(float) - b.loc[a.index[ok], probs].to_numpy(float)).max())
                for b in others if ok.any()), default=float("nan"))
    differing = sorted({f for b in others for f in a.index[ok] if a.at[f, "predicted"] != b.at[f, "predicted"]})
    n = len(files)
    first = min(WARM_UP_FILES, n)
    rows = [Row("first call", DEFAULT_BATCH_SIZE, 1, first, float(a["duration_s"].iloc[:first].fillna(0).sum()),
                first_s, first_mb),
            Row("batched", DEFAULT_BATCH_SIZE, 1, n, audio_s, batched_s, batched_mb),
            Row("one file per call", 1, n, n, audio_s, single_s, single_mb),
            Row("predict_array per clip", 1, n, n, audio_s, array_s, array_mb)]
    return Result(rows, load_s, files, audio_s, int((~ok).sum()), not differing, differing, diff,
                  dict(predictor.featurizer.builds))


def blind_corpus(root: Path, files: list[str], n: int, corrupt: bool) -> Path:
    """An MSP-Podcast-layout folder of n blind files: the audio files linked (cycled when fewer) under new names,
    a consensus file without a row for them; with `corrupt`, the middle one a damaged WAV (a header and no data)."""
    from medusa.data.corpora.msp_podcast import CONSENSUS_HEADER

    (root / "Audios").mkdir(parents=True)
    (root / "Labels").mkdir()
    (root / "Labels" / "labels_consensus.csv").write_text(",".join(CONSENSUS_HEADER) + "\n")
    for i in range(n):
        target = root / "Audios" / f"MSP-PODCAST_9{i // 1000:03d}_{i % 1000:04d}.wav"
        if corrupt and i == n // 2:
            target.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")   # cut inside its header
        else:
            target.symlink_to(Path(files[i % len(files)]).resolve())
    return root


def run_submission(bundle: Path, corpus: Path, out: Path, device: str, threads: int | None,
                   cache_dir: Path) -> dict:
    """`medusa submission` as its own process: exit status, wall seconds, peak resident memory (MB), stderr."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "medusa", "submission", str(bundle), str(corpus), "--out", str(out),
                             "--device", device, "--cache-dir", str(cache_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO, text=True)
    _, stderr = proc.communicate()
    wall = time.perf_counter() - start
    # ru_maxrss of this child alone: os.wait4 would need the pid before communicate() reaps it; Popen's own
    # rusage is not kept, so the children's maximum is read and the benchmark runs one child at a time
    import resource
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"exit": proc.returncode, "wall_s": wall, "peak_mb": peak_mb, "stderr": stderr.strip()}


def bench_submission(args: argparse.Namespace, files: list[str], threads: int | None) -> dict:
    """Peak memory of `medusa submission` on args.submission_files blind files; its refusal of a corrupt one."""
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="medusa-submission-") as tmp:
        tmp = Path(tmp)
        if args.submission_files:
            corpus = blind_corpus(tmp / "blind", files, args.submission_files, corrupt=False)
            out["clean"] = {"files": args.submission_files, **run_submission(
                args.bundle, corpus, tmp / "submission.csv", args.device, threads, args.cache_dir)}
            rows = (len(pd.read_csv(tmp / "submission.csv")) if (tmp / "submission.csv").exists() else 0)
            out["clean"]["rows"] = rows
            shutil.rmtree(corpus)
        if args.corrupt_files:
            corpus = blind_corpus(tmp / "corrupt", files, args.corrupt_files, corrupt=True)
            bad = sorted((corpus / "Audios").iterdir())[args.corrupt_files // 2]
            run = run_submission(args.bundle, corpus, tmp / "refused.csv", args.device, threads, args.cache_dir)
            counted = f"1 of {args.corrupt_files} blind file(s) could not be scored" in run["stderr"]
            out["corrupt"] = {"files": args.corrupt_files, "bad": bad.name, **run, "counted": counted,
                              "written": (tmp / "refused.csv").exists(), "names_it": bad.name in run["stderr"]}
    return out


def console_table(rows: list[Row]) -> str:
    head = f"{'way':<22} {'batch':>5} {'calls':>5} {'files':>5} {'audio s':>8} {'wall s':>8} {'files/s':>8} " \
           f"{'RTF':>7} {'peak MB':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.way:<22} {r.batch_size:>5} {r.calls:>5} {r.files:>5} {r.audio_s:>8.1f} {r.wall_s:>8.2f} "
                     f"{r.files_per_s:>8.2f} {r.rtf:>7.4f} {r.peak_mb:>8.0f}")
    return "\n".join(lines)


def describe_bundle(predictor: Predictor) -> str:
    b = predictor.bundle
    members = ", ".join(f"{m.name} ({' + '.join(m.encoders)})" for m in b.members)
    encoders = ", ".join(f"{k}: {b.encoders[k]['family']} `{b.encoders[k]['model']}`" for k in b.encoder_keys)
    asr = f"; ASR Whisper `{b.asr['model']}`" if b.needs_asr and b.asr else ""
    return f"{len(b.members)} member(s): {members}; encoders {encoders}{asr}; classes {', '.join(b.classes)}"


def submission_lines(sub: dict | None) -> list[str]:
    lines = []
    if sub and "clean" in sub:
        c = sub["clean"]
        lines.append(f"`medusa submission` on {c['files']} blind files (its own process): exit {c['exit']}, "
                     f"{c['rows']} rows written, {c['wall_s']:.0f} s, peak resident memory {c['peak_mb']:.0f} MB "
                     "(the whole process: Python, torch, every model, the batch).")
    if sub and "corrupt" in sub:
        c = sub["corrupt"]
        lines.append(f"`medusa submission` on {c['files']} blind files, one of them (`{c['bad']}`) a damaged WAV: "
                     f"exit {c['exit']}; the refusal {'names' if c['names_it'] else 'does NOT name'} it"
                     f"{' and counts 1 unscorable file of ' + str(c['files']) if c['counted'] else ''} after scoring "
                     f"the others; {'a submission was written' if c['written'] else 'no submission was written'}.")
    return lines


def report_section(args: argparse.Namespace, argv: list[str], device: torch.device, predictor: Predictor,
                   res: Result, load: str) -> report.Doc:
    """The section as a document (benchmarks/report.py renders it)."""
    cmd = "python benchmarks/predict.py" + "".join(f" {a}" for a in argv)
    memory = ("torch.cuda.max_memory_allocated during the timed call(s)" if device.type == "cuda"
              else cpu_memory_method(CPU_NOT_INCLUDED))
    first, batched, single, array = res.rows
    table = report.table(["Way", "Batch size", "Calls", "Files", "Audio s", "Wall s", "s/file", "Files/s", "RTF",
                          "Peak MB"], "lrrrrrrrrr",
                         [[r.way, r.batch_size, r.calls, r.files, f"{r.audio_s:.1f}", f"{r.wall_s:.2f}",
                           f"{r.s_per_file:.3f}", f"{r.files_per_s:.2f}", f"{r.rtf:.4f}", f"{r.peak_mb:.0f}"]
                          for r in res.rows])
    same = ("the same predicted class for every file" if res.same_classes else
            f"different predicted classes for {len(res.differing)} file(s): {', '.join(res.differing[:5])}")
    errors = f"; {res.errors} file(s) could not be scored and are left out of the comparison" if res.errors else ""
    builds = ", ".join(f"{k} {v}" for k, v in res.builds.items())
    window = args.window if args.window is not None else predictor.default_window
    return report.doc(REPORT_SECTION[3:], [
        report.text(f"Command: `{cmd}`"),
        report.bullets([
            f"Device: {device_name(device)}; torch {torch.__version__}; {torch.get_num_threads()} intra-op "
            "thread(s)" + (f"; load average at start {load} ({busy(load)})" if device.type == "cpu" else ""),
            f"Bundle: `{args.bundle}`: {describe_bundle(predictor)}.",
            f"Loading the bundle (`Predictor.from_bundle`, files verified against the manifest, members built): "
            f"{res.load_s:.2f} s.",
            f"Audio: the first {len(res.files)} files (sorted) of `{args.audio}`, {res.audio_s:.1f} s in all; "
            f"window {window:g} s (files up to {predictor.longest_whole if args.window is None else window:g} s "
            f"scored whole). Each way's time is the fastest of {args.repeats} run(s), in the order of the table.",
            f"First call: a new Predictor's first call, on {first.files} file(s): it builds every encoder and the "
            "Whisper ASR (medusa.serving.featurizer), which the later calls reuse. Batched: one `predict_files` call "
            f"over every file (batch size {DEFAULT_BATCH_SIZE}); one file per call: one call per file (batch size "
            "1); predict_array: one call per clip held in memory (read before the clock starts).",
            f"Models built over all {2 + 2 * len(res.files)} calls: {builds} (each once).",
            f"RTF: compute seconds per second of audio. Peak memory: {memory}.",
            f"Batch invariance: the ways give {same}{errors}; largest absolute probability difference "
            f"{res.max_abs_diff:.2e}.",
            *submission_lines(res.submission)]),
        table,
        report.text(f"Batched, the bundle scores {batched.files_per_s:.2f} files/s, "
                    f"{1 / batched.rtf if batched.rtf else 0:.1f} seconds of audio per second of compute (RTF "
                    f"{batched.rtf:.4f}) on this device; one file per call takes "
                    f"{single.s_per_file / batched.s_per_file:.2f}x the batched time per file, predict_array "
                    f"{array.s_per_file / batched.s_per_file:.2f}x; the first call, which builds the models, "
                    f"{first.wall_s:.1f} s.")])


def main(argv: list[str] | None = None) -> Result:
    """Run the benchmark, print the table, write the report section; returns what was measured."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device, threads = scoring_device(args.device, args.threads)
    load = load_average()
    files = list_files(args.audio, args.files)
    print(f"device {device_name(device)}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"{len(files)} file(s) of {args.audio}", flush=True)
    start = time.perf_counter()
    predictor = Predictor.from_bundle(args.bundle, device=str(device), cache_dir=args.cache_dir)
    load_s = time.perf_counter() - start
    print(f"bundle loaded in {load_s:.2f} s: {describe_bundle(predictor)}", flush=True)
    res = bench(predictor, files, device, args.repeats, args.window, load_s)
    print()
    print(console_table(res.rows))
    predictor.close()
    if args.submission_files or args.corrupt_files:
        res.submission = bench_submission(args, files, threads)
        print("\n".join(submission_lines(res.submission)))
    print(f"\nsame predicted classes: {res.same_classes}; largest |probability difference| {res.max_abs_diff:.2e}"
          + (f"; {res.errors} file(s) not scored" if res.errors else ""))
    report.publish(report_section(args, argv, device, predictor, res, load), SECTION, args.report)
    print(f"wrote the '{REPORT_SECTION[3:]}' section of {args.report}")
    return res


if __name__ == "__main__":
    main()
