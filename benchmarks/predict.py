"""Prediction speed of a trained predict bundle (`medusa predict`): batched vs one file at a time.

    python benchmarks/predict.py --bundle work/bundle --audio data/Audios --files 100 [--device cpu]
                                 [--report reports/benchmarks.md] [--repeats 1] [--threads T]

The first N audio files of the folder (sorted, subfolders included, as `medusa predict FOLDER` lists them) are
scored through `medusa.serving.predict.Predictor` after a warm-up call on a few of them:

* batched: one `predict_files` call over the N files, with the default batch size;
* one at a time: N `predict_files` calls of one file each, with batch size 1.

For each: wall seconds, files per second, real-time factor (compute seconds per second of audio) and peak memory
(benchmarks/_common.measure). Both ways must predict the same class for every file; the largest absolute
difference of their probabilities is reported too (batch invariance, as a side result). Loading the bundle is
timed on its own. The script prints a table and writes the "## Prediction speed (medusa predict)" section of the
report (reports/benchmarks/predict.json, rendered by benchmarks/report.py with the other sections).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
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
import torch  # noqa: E402
from _common import busy, cpu_memory_method, device_name, load_average, measure  # noqa: E402

from medusa.features.batches import pick_device  # noqa: E402
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
    def rtf(self) -> float:
        """Compute seconds per second of audio (below 1: faster than real time)."""
        return self.wall_s / self.audio_s if self.audio_s > 0 else float("nan")


@dataclass
class Result:
    rows: list[Row]
    load_s: float
    files: list[str]
    audio_s: float
    errors: int                    # files either way could not score (excluded from the comparison)
    same_classes: bool
    differing: list[str]           # files whose predicted class differs between the two ways
    max_abs_diff: float            # largest |p batched - p one at a time| over files and classes


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
    p.add_argument("--window", type=float, default=30.0, help="predict_files window in seconds (default 30)")
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


def bench(predictor: Predictor, files: list[str], device: torch.device, repeats: int, window: float,
          load_s: float) -> Result:
    predictor.predict_files(files[:WARM_UP_FILES], window=window, progress=False)  # warm-up: first-call costs
    batched_s, batched_mb, batched = timed(
        device, repeats, lambda: predictor.predict_files(files, window=window, progress=False))
    single_s, single_mb, single = timed(
        device, repeats, lambda: pd.concat([predictor.predict_files([f], window=window, batch_size=1, progress=False)
                                            for f in files], ignore_index=True))
    a, b = file_rows(batched), file_rows(single)
    audio_s = float(a["duration_s"].fillna(0).sum())
    ok = a["error"].isna() & b.loc[a.index, "error"].isna()
    probs = list(target_columns(predictor.classes))
    diff = np.abs(a.loc[ok, probs].to_numpy() - b.loc[a.index[ok], probs].to_numpy())
    differing = [f for f in a.index[ok] if a.at[f, "predicted"] != b.at[f, "predicted"]]
    rows = [Row("batched", DEFAULT_BATCH_SIZE, 1, len(files), audio_s, batched_s, batched_mb),
            Row("one at a time", 1, len(files), len(files), audio_s, single_s, single_mb)]
    return Result(rows, load_s, files, audio_s, int((~ok).sum()), not differing, differing,
                  float(diff.max()) if diff.size else float("nan"))


def console_table(rows: list[Row]) -> str:
    head = f"{'way':<14} {'batch':>5} {'calls':>5} {'files':>5} {'audio s':>8} {'wall s':>8} {'files/s':>8} " \
           f"{'RTF':>7} {'peak MB':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.way:<14} {r.batch_size:>5} {r.calls:>5} {r.files:>5} {r.audio_s:>8.1f} {r.wall_s:>8.2f} "
                     f"{r.files_per_s:>8.2f} {r.rtf:>7.4f} {r.peak_mb:>8.0f}")
    return "\n".join(lines)


def describe_bundle(predictor: Predictor) -> str:
    b = predictor.bundle
    members = ", ".join(f"{m.name} ({' + '.join(m.encoders)})" for m in b.members)
    encoders = ", ".join(f"{k}: {b.encoders[k]['family']} `{b.encoders[k]['model']}`" for k in b.encoder_keys)
    asr = f"; ASR Whisper `{b.asr['model']}`" if b.needs_asr and b.asr else ""
    return f"{len(b.members)} member(s): {members}; encoders {encoders}{asr}; classes {', '.join(b.classes)}"


def report_section(args: argparse.Namespace, argv: list[str], device: torch.device, predictor: Predictor,
                   res: Result, load: str) -> report.Doc:
    """The section as a document (benchmarks/report.py renders it)."""
    cmd = "python benchmarks/predict.py" + "".join(f" {a}" for a in argv)
    memory = ("torch.cuda.max_memory_allocated during the timed call(s)" if device.type == "cuda"
              else cpu_memory_method(CPU_NOT_INCLUDED))
    batched, single = res.rows
    table = report.table(["Way", "Batch size", "Calls", "Files", "Audio s", "Wall s", "Files/s", "RTF", "Peak MB"],
                         "lrrrrrrrr", [[r.way, r.batch_size, r.calls, r.files, f"{r.audio_s:.1f}", f"{r.wall_s:.2f}",
                                        f"{r.files_per_s:.2f}", f"{r.rtf:.4f}", f"{r.peak_mb:.0f}"]
                                       for r in res.rows])
    same = ("the same predicted class for every file" if res.same_classes else
            f"different predicted classes for {len(res.differing)} file(s): {', '.join(res.differing[:5])}")
    errors = f"; {res.errors} file(s) could not be scored and are left out of the comparison" if res.errors else ""
    return report.doc(REPORT_SECTION[3:], [
        report.text(f"Command: `{cmd}`"),
        report.bullets([
            f"Device: {device_name(device)}; torch {torch.__version__}; {torch.get_num_threads()} intra-op "
            "thread(s)" + (f"; load average at start {load} ({busy(load)})" if device.type == "cpu" else ""),
            f"Bundle: `{args.bundle}`: {describe_bundle(predictor)}.",
            f"Loading the bundle (`Predictor.from_bundle`, files verified against the manifest, members built): "
            f"{res.load_s:.2f} s.",
            f"Audio: the first {len(res.files)} files (sorted) of `{args.audio}`, {res.audio_s:.1f} s in all; "
            f"window {args.window:g} s. A warm-up call on {min(WARM_UP_FILES, len(res.files))} file(s) came first; "
            f"each way's time is the fastest of {args.repeats} run(s).",
            f"Batched: one `predict_files` call over every file (batch size {DEFAULT_BATCH_SIZE}); one at a time: "
            f"one call per file (batch size 1). Every batch builds the bundle's encoders (and Whisper ASR, if any) "
            "again, so one at a time pays that once per file.",
            f"RTF: compute seconds per second of audio. Peak memory: {memory}.",
            f"Batch invariance: the two ways give {same}{errors}; largest absolute probability difference "
            f"{res.max_abs_diff:.2e}."]),
        table,
        report.text(f"Batched, the bundle scores {batched.files_per_s:.2f} files/s, "
                    f"{1 / batched.rtf if batched.rtf else 0:.1f} seconds of audio per second of compute (RTF "
                    f"{batched.rtf:.4f}) on this device; scoring files one at a time takes "
                    f"{single.wall_s / batched.wall_s if batched.wall_s else float('nan'):.1f}x as long.")])


def main(argv: list[str] | None = None) -> Result:
    """Run the benchmark, print the table, write the report section; returns what was measured."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = pick_device(args.device)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
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
    print(f"\nsame predicted classes: {res.same_classes}; largest |probability difference| {res.max_abs_diff:.2e}"
          + (f"; {res.errors} file(s) not scored" if res.errors else ""))
    report.publish(report_section(args, argv, device, predictor, res, load), SECTION, args.report)
    print(f"wrote the '{REPORT_SECTION[3:]}' section of {args.report}")
    return res


if __name__ == "__main__":
    main()
