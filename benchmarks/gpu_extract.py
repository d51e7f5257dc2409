"""The extraction part of benchmarks/gpu.py: benchmarks/extract.py's own `run_ours` (extract_to_store, bf16, length
buckets, the feature-store writes) on every clip and its `run_authors` on the first few, for the five encoders at
the paper's sizes, and its subsection of the report.
"""
from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import extract as bench_extract  # benchmarks/extract.py
import pandas as pd
import report
import torch
from gpu_common import Clock, Plan, fmt_rate, fmt_x, free


@dataclass
class ExtractRow:
    encoder: str
    architecture: str
    method: str
    utterances: int
    audio_s: float
    wall_s: float
    peak_mb: float
    output_mb: float
    speed_up: float = float("nan")   # ours' rate / the authors' rate

    @property
    def audio_s_per_s(self) -> float:
        return self.audio_s / self.wall_s


@dataclass
class ExtractResult:
    rows: list[ExtractRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def rate(self, encoder: str, method: str = "ours") -> float | None:
        return next((r.audio_s_per_s for r in self.rows if r.encoder == encoder and r.method == method), None)


def extract_part(plan: Plan, items: pd.DataFrame, work: Path, device: torch.device, clock: Clock,
                 reserve_s: float) -> ExtractResult:
    """Each encoder: built, saved and loaded through build_encoder, then benchmarks/extract.py's run_ours on
    every clip and its run_authors on the first plan.authors_utterances."""
    from medusa.features.encoders import build_encoder
    from medusa.pipeline.standins import architectures, describe, save_model, tokenizer_corpus

    result = ExtractResult()
    eargs = argparse.Namespace(batch_size=plan.audio_batch, batch_seconds=plan.audio_batch_seconds,
                               text_batch_size=plan.text_batch, num_workers=plan.workers)
    sentences = tokenizer_corpus(0)
    subset = items.iloc[:plan.authors_utterances]
    for arch in architectures(plan.standins):
        t0 = time.perf_counter()
        model_dir = work / "models" / arch.key
        model = save_model(arch, model_dir, sentences, seed=0)
        encoder = build_encoder(arch.key, arch.family, model, arch.layers, device, cache_dir=work / "cache",
                                pad_seconds=0.0)
        name = describe(arch, bench_extract.count_params(encoder))
        built = time.perf_counter() - t0
        m, mb = bench_extract.run_ours(encoder, items, work / "stores" / arch.key, eargs, device)
        ours = ExtractRow(arch.key, name, "ours", len(items), float(items["duration_s"].sum()), m.wall_s, m.peak_mb, mb)
        result.rows.append(ours)
        shutil.rmtree(work / "stores" / arch.key, ignore_errors=True)
        line = f"extract {arch.key}: built and loaded in {built:.0f} s; ours {ours.audio_s_per_s:.0f} audio s/s"
        if arch.key in plan.authors_encoders and clock.allows(15, reserve_s):
            m, mb = bench_extract.run_authors(encoder, subset, work / "authors" / arch.key, device)
            authors = ExtractRow(arch.key, name, "authors'", len(subset), float(subset["duration_s"].sum()),
                                 m.wall_s, m.peak_mb, mb, 1.0)
            ours.speed_up = ours.audio_s_per_s / authors.audio_s_per_s
            result.rows.append(authors)
            shutil.rmtree(work / "authors" / arch.key, ignore_errors=True)
            line += f", authors' {authors.audio_s_per_s:.1f} ({ours.speed_up:.0f}x)"
        elif arch.key in plan.authors_encoders:
            result.notes.append(f"{arch.key}: the authors' way skipped (deadline)")
        del encoder
        shutil.rmtree(model_dir, ignore_errors=True)  # a full-size checkpoint is gigabytes
        free(device)
        clock.log(line + f" ({time.perf_counter() - t0:.0f} s)")
    if "hubert" not in plan.authors_encoders:
        result.notes.append("HuBERT's authors' way is not timed: same architecture and chunking as WavLM's")
    return result


# ------------------------------------------------------------------------------------------------ report


def extract_blocks(ex: ExtractResult | None, plan: Plan) -> list[dict]:
    """The "### Feature extraction" subsection: what ran, the table, and what was skipped."""
    if ex is None:
        return [report.heading("Feature extraction"), report.text("Not run.")]
    rows = [[r.encoder, r.architecture, r.method, r.utterances, fmt_rate(r.audio_s_per_s), fmt_x(r.speed_up),
             f"{r.wall_s:.2f}", f"{r.peak_mb:,.0f}"] for r in ex.rows]
    return [
        report.heading("Feature extraction"),
        report.text(
            "`benchmarks/extract.py`'s `run_ours` (`medusa.features.extract.extract_to_store` into a float16 feature "
            f"store: audio batches of {plan.audio_batch} / {plan.audio_batch_seconds:g} s, text {plan.text_batch}, "
            f"{plan.workers} DataLoader worker(s), bf16 autocast on GPU, Whisper without 30 s padding) on every "
            "clip, and its `run_authors` (one file at a time, fp32, WavLM/HuBERT in 3,000-sample chunks, Whisper "
            "padded to 30 s, text one sentence at a time, one .npy per clip) on the first "
            f"{plan.authors_utterances}; speed-up = ours' rate / the authors' rate. Model loading is not timed; "
            "text encoders are credited with the audio seconds of the clips whose transcripts they encode."),
        report.table(["encoder", "architecture", "method", "clips", "audio s per s (× real time)", "speed-up",
                      "wall s", "peak memory (MB)"], "lllrrrrr", rows),
        report.bullets(ex.notes, gap=0) if ex.notes else None]
