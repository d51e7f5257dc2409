"""What the parts of benchmarks/gpu.py share: the plan of a size, the deadline clock, CUDA-event timing, the
synthetic corpus, and the number formats of the section.

Imported by gpu.py and its parts (gpu_asr, gpu_extract, gpu_train, gpu_budget); the benchmarks folder is on
sys.path when gpu.py runs or is imported.
"""
from __future__ import annotations

import gc
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import extract as bench_extract  # benchmarks/extract.py: its corpus is the one every part reads
import pandas as pd
import torch
from _common import measure
from train_data import SIZES, Size

from medusa.config.params import load_params

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "paper.yaml"
SR = 16000


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Plan:
    """What one size runs. Batch sizes, ASR padding and DataLoader workers of `full` come from configs/paper.yaml."""
    standins: str                    # medusa.pipeline.standins size of the five encoders and the ASR model
    asr_clips: int
    asr_batch: int
    asr_pad_seconds: float
    extract_utterances: int
    authors_utterances: int          # the authors' way runs on the first N clips only
    authors_encoders: tuple[str, ...]
    audio_batch: int
    audio_batch_seconds: float
    text_batch: int
    workers: int
    train: Size
    train_ways: tuple[str, ...]      # for Table 1's models 2 and 14
    extra_mixes: tuple[str, ...]     # ours only
    deadline_s: float | None         # optional pieces are skipped when they would end past it
    corpus_workers: int


def make_plan(size: str) -> Plan:
    if size == "full":
        p = load_params(PRESET)
        audio = p.encoders["wavlm"]
        return Plan(standins="full", asr_clips=256, asr_batch=p.transcribe.batch_size,
                    asr_pad_seconds=p.transcribe.pad_seconds, extract_utterances=1500, authors_utterances=24,
                    authors_encoders=("wavlm", "whisper", "roberta", "modernbert"),  # HuBERT = WavLM's cost
                    audio_batch=audio.batch_size, audio_batch_seconds=audio.batch_seconds,
                    text_batch=p.encoders["roberta"].batch_size, workers=p.extract.num_workers,
                    train=SIZES["full"], train_ways=("ours", "ours-fp32", "authors"),
                    extra_mixes=("wavlm,roberta",), deadline_s=400.0, corpus_workers=min(16, os.cpu_count() or 1))
    # A CPU dry run of the same code: tiny stand-ins, a handful of clips, a DeepSER 64 wide at 5 frames/s.
    return Plan(standins="tiny", asr_clips=6, asr_batch=3, asr_pad_seconds=5.0, extract_utterances=6,
                authors_utterances=2, authors_encoders=("wavlm", "whisper", "roberta", "modernbert"),
                audio_batch=4, audio_batch_seconds=60.0, text_batch=8, workers=1,
                train=replace(SIZES["small"], hidden=64, heads=4, batch_size=4, utterances=12, steps=2, audio_fps=5),
                train_ways=("ours", "ours-fp32", "authors"), extra_mixes=("wavlm,roberta",), deadline_s=None,
                corpus_workers=1)


class Clock:
    """Seconds since the start, progress lines, and whether an optional piece still fits before the deadline."""

    def __init__(self, deadline_s: float | None) -> None:
        self.start, self.deadline_s = time.perf_counter(), deadline_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, need_s: float, reserve_s: float = 0.0) -> bool:
        return self.deadline_s is None or self.elapsed() + need_s + reserve_s <= self.deadline_s

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {message}", flush=True)


# ------------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    wall_s: float = 0.0
    gpu_s: float | None = None       # CUDA events on the current stream (None on CPU)
    peak_mb: float = 0.0

    @property
    def seconds(self) -> float:
        return self.gpu_s if self.gpu_s is not None else self.wall_s


@contextmanager
def timed(device: torch.device) -> Iterator[Timing]:
    """_common.measure (wall time with CUDA synchronised on both ends, peak memory) plus CUDA-event time."""
    t = Timing()
    with measure(device) as m:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        yield t
        if device.type == "cuda":
            end.record()
    t.wall_s, t.peak_mb = m.wall_s, m.peak_mb
    if device.type == "cuda":
        t.gpu_s = start.elapsed_time(end) / 1000.0


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def library_version(name: str) -> str:
    import importlib.metadata
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ---------------------------------------------------------------------------------------- synthetic corpus


def _corpus_part(job: tuple[Path, int, int]) -> pd.DataFrame:
    folder, n, seed = job
    return bench_extract.make_corpus(folder, n, seed)


def make_corpus(folder: Path, n: int, seed: int, workers: int) -> pd.DataFrame:
    """benchmarks/extract.py's corpus (16 kHz PCM16 wav of 2.75-11 s, a transcript each), written by `workers`
    processes (before CUDA is initialised), with utterance ids unique over the parts."""
    if workers <= 1 or n < 4 * workers:
        return bench_extract.make_corpus(folder, n, seed)
    sizes = [n // workers + (k < n % workers) for k in range(workers)]
    jobs = [(folder / f"part{k:02d}", size, seed * 1000 + k) for k, size in enumerate(sizes)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        parts = list(pool.map(_corpus_part, jobs))
    for k, part in enumerate(parts):
        part["utt_id"] = [f"p{k:02d}{u}" for u in part["utt_id"]]
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------------------------------ number formats


def fmt_rate(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else (f"{x:,.0f}" if x >= 100 else f"{x:,.1f}")


def fmt_x(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else (f"{x:,.0f}×" if x >= 100 else f"{x:,.1f}×")
