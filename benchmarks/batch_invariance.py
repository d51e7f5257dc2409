"""Batch invariance on a finished run: every clip transcribed and encoded *alone*, against what the pipeline
stored for it when it ran in batches (work/transcripts.parquet, work/features/<encoder>).

    python benchmarks/batch_invariance.py [--limit N] [--encoders whisper ...] [--out reports/benchmarks.md]

The tests prove the property on tiny models; this measures it on the run's real models and corpus (the demo: the
offline Whisper base for ASR and features). Reported: how many transcripts differ, and for each feature store the
number of clips that differ in any stored value and the largest difference as a share of the tests'
tolerance (2e-3 |value| + 1e-4, two float16 steps). Run it after
`dvc repro`, with the params.yaml of that run. Writes the "## Batch invariance" section of the report
(reports/benchmarks/batch_invariance.json, rendered by benchmarks/report.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  benchmarks/report.py: the Markdown
from _common import device_name, load_average  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECTION = "batch_invariance"           # reports/benchmarks/batch_invariance.json
REPORT_SECTION = "## Batch invariance"


#: the tolerance of tests/test_batch_invariance.py: two float16 steps at the value, plus a floor near zero
RTOL, ATOL = 2e-3, 1e-4


def compare(alone: np.ndarray, stored: np.ndarray) -> tuple[float, float]:
    """(largest |alone - stored| as a share of the tests' tolerance ATOL + RTOL |stored|, RMS of the difference
    relative to the RMS of the frames), with `alone` rounded to float16 as a store would hold it."""
    stored = stored.astype(np.float32)
    diff = np.abs(alone.astype(np.float16).astype(np.float32) - stored)
    rms = float(np.sqrt((diff ** 2).mean() / max((stored ** 2).mean(), 1e-30)))
    return float((diff / (ATOL + RTOL * np.abs(stored))).max()), rms


def main(argv: list[str] | None = None) -> int:
    from medusa.config import paths
    from medusa.config.params import load_params
    from medusa.data.audio import load_audio
    from medusa.features.asr import transcribe_clips
    from medusa.features.batches import pick_device
    from medusa.features.encoders import build_encoder
    from medusa.features.encoders.whisper import load_whisper
    from medusa.features.store.reader import FeatureStore

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=0, help="only the first N utterances (by utt_id); 0 = all")
    ap.add_argument("--encoders", nargs="*", default=None, help="audio encoders to check (default: all audio ones)")
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "benchmarks.md")
    args = ap.parse_args(argv)

    params = load_params()
    manifest = pd.read_parquet(paths.MANIFEST).sort_values("utt_id")
    if args.limit:
        manifest = manifest.head(args.limit)
    device = pick_device(params.extract.device)
    load, start = load_average(), time.perf_counter()
    rows = []

    stored = pd.read_parquet(paths.TRANSCRIPTS).set_index("utt_id")["text"]
    t = params.transcribe
    model = load_whisper(t.model, paths.CACHE, device)
    differ = []
    for u, path in tqdm(list(zip(manifest["utt_id"], manifest["path"])), desc="ASR, one clip at a time", unit="clip"):
        (text,) = transcribe_clips(model, [load_audio(path)], t.language, t.pad_seconds, t.beam_size)
        if text != stored[u]:
            differ.append((u, stored[u], text))
    del model
    rows.append([f"ASR ({t.model}, pad_seconds {t.pad_seconds:g})", len(manifest), f"{len(differ)} transcripts differ",
                 ""])

    keys = args.encoders if args.encoders is not None else [
        k for k, e in params.encoders.items() if e.family not in ("roberta", "modernbert", "minilm")]
    for key in keys:
        e = params.encoders[key]
        encoder = build_encoder(key, e.family, e.model, e.layers, device, paths.CACHE, params.extract.whisper_pad_seconds)
        store = FeatureStore(paths.feature_store(key))
        worst, worst_rms, worst_utt, changed = 0.0, 0.0, None, 0
        for u, path in tqdm(list(zip(manifest["utt_id"], manifest["path"])), desc=f"{key}, one clip at a time",
                            unit="clip"):
            (frames,) = encoder.encode([load_audio(path)])
            share, rms = compare(np.asarray(frames, np.float32), np.asarray(store[u]))
            changed += share > 0
            worst_rms = max(worst_rms, rms)
            if share > worst:
                worst, worst_utt = share, u
        rows.append([f"features `{key}` ({e.family} {e.model})", len(manifest),
                     f"{changed} clips differ in any stored value; largest difference {worst:.2f} of the tests' "
                     f"tolerance, largest RMS difference {worst_rms:.1e} of the frames' RMS", worst_utt or "–"])

    section = report.doc(REPORT_SECTION[3:], [
        report.text("Command: `python benchmarks/batch_invariance.py" + (f" --limit {args.limit}" if args.limit else "")
                    + "` (after `dvc repro` of the demo)"),
        report.bullets([
            f"Device: {device_name(device)}; torch {torch.__version__}; load average at start {load}.",
            "Each clip is transcribed and encoded alone (a batch of one) and compared with what the pipeline stored "
            "when it ran in length-bucketed batches (`work/transcripts.parquet`, `work/features/<encoder>`). Frames "
            f"are rounded to float16 as the store holds them; the tests' tolerance is {ATOL:g} + {RTOL:g} |value| "
            "(two float16 steps): under 1 means the clip passes the tests' invariance check; what remains is float "
            "rounding of batched matrix products, where another batch composition flips a float16 rounding.",
            f"Whole run: {time.perf_counter() - start:.0f} s."]),
        report.table(["what", "clips", "result", "worst clip"], "lrll", rows),
        report.text("Differing transcripts (stored → alone):") if differ else None,
        report.bullets(f"{u}: {a!r} → {b!r}" for u, a, b in differ[:20]) if differ else None])
    print(report.render_section(section))
    report.publish(section, SECTION, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
