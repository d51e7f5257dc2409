"""The training part of benchmarks/gpu.py: benchmarks/train.py's `bench_mix` on Table 1's models 2 and 14 at the
paper's dims and frame rates (ours bf16, ours fp32, the authors' way) and on its commonest mix, the forward-only
rate that dev scoring and prediction run at, and its subsection of the report.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import report
import torch
import train as bench_train  # benchmarks/train.py
from gpu_common import Clock, Plan, fmt_rate, fmt_x, free, timed
from train_data import Size, make_rows


@dataclass
class TrainRow:
    mix: str
    method: str
    samples_per_s: float
    audio_s_per_s: float             # samples/s x the mean clip duration of the synthetic rows
    speed_up: float                  # against the authors' way (nan when it did not run)
    step_s: float
    padding: float
    peak_mb: float


@dataclass
class EvalRow:
    mix: str
    batch: int
    samples_per_s: float
    audio_s_per_s: float
    peak_mb: float


@dataclass
class TrainResult:
    size: dict = field(default_factory=dict)
    mean_duration_s: float = 0.0
    models: dict[str, str] = field(default_factory=dict)
    rows: list[TrainRow] = field(default_factory=list)
    evals: list[EvalRow] = field(default_factory=list)
    sdpa: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def rate(self, mix: str, method: str = "ours") -> float | None:
        return next((r.audio_s_per_s for r in self.rows if r.mix == mix and r.method == method), None)


def sdpa_backends() -> str:
    b = torch.backends.cuda
    flags = [f"flash {'on' if b.flash_sdp_enabled() else 'off'}",
             f"memory-efficient {'on' if b.mem_efficient_sdp_enabled() else 'off'}",
             f"math {'on' if b.math_sdp_enabled() else 'off'}"]
    if hasattr(b, "cudnn_sdp_enabled"):
        flags.append(f"cuDNN {'on' if b.cudnn_sdp_enabled() else 'off'}")
    return ", ".join(flags) + f"; TF32 matmul {'on' if b.matmul.allow_tf32 else 'off'}"


def forward_rate(features: list, size: Size, device: torch.device, seed: int) -> EvalRow:
    """Samples per second of the forward pass alone (eval mode, no_grad, bf16 autocast on CUDA) at
    medusa.model.training.predict's batch (4 x the training batch), over length-sorted batches of random frames at the
    synthetic rows' lengths, generated before the timed loop (no feature-store reads)."""
    from medusa.model.deepser import DeepSER
    from medusa.model.training import autocast

    torch.manual_seed(seed)
    model = DeepSER(bench_train.model_config(features, size)).to(device).eval()
    _, durations = make_rows(size.utterances, seed)
    durations = np.sort(durations)
    batch = 4 * size.batch_size
    batches = []
    for start in range(0, len(durations), batch):
        chunk = durations[start:start + batch]
        xs, masks = [], []
        for f in features:
            lengths = torch.tensor([f.frames(d, size.audio_fps) for d in chunk])
            xs.append(torch.randn(len(chunk), int(lengths.max()), f.dim, device=device))
            masks.append((torch.arange(int(lengths.max()))[None] < lengths[:, None]).to(device))
        batches.append((xs, masks))
    with torch.no_grad(), autocast(device, True):
        model(*batches[0])
        with timed(device) as t:
            for xs, masks in batches:
                model(xs, masks)
    samples = len(durations)
    label = "+".join(f.key for f in features)
    del model, batches
    free(device)
    return EvalRow(label, batch, samples / t.seconds, float(durations.sum()) / t.seconds, t.peak_mb)


def train_part(plan: Plan, work: Path, device: torch.device, clock: Clock, reserve_s: float, seed: int
               ) -> TrainResult:
    size = plan.train
    _, durations = make_rows(size.utterances, seed)
    result = TrainResult(size=asdict(size), mean_duration_s=float(durations.mean()), sdpa=sdpa_backends())
    jobs = [(mix, plan.train_ways) for mix in bench_train.DEFAULT_MIXES] + [(m, ("ours",)) for m in plan.extra_mixes]
    for k, (mix, ways) in enumerate(jobs):
        if k and not clock.allows(25, reserve_s):
            result.notes.append(f"{mix}: skipped (deadline)")
            continue
        if "ours-fp32" in ways and k and not clock.allows(45, reserve_s):
            ways = tuple(w for w in ways if w != "ours-fp32")
            result.notes.append(f"{mix}: ours fp32 skipped (deadline)")
        t0 = time.perf_counter()
        res = bench_train.bench_mix(mix, size, argparse.Namespace(seed=seed, ways=ways), device, work)
        result.models[res.mix] = res.model
        for r in res.rows:
            result.rows.append(TrainRow(res.mix, r.method, r.samples_per_s, r.samples_per_s * result.mean_duration_s,
                                        r.speed_up, r.step_s, r.padding, r.peak_mb))
        evals = forward_rate(bench_train.parse_mix(mix), size, device, seed)
        result.evals.append(evals)
        free(device)
        clock.log(f"train {res.mix}: " + ", ".join(f"{r.method} {r.samples_per_s:.1f} samples/s" for r in res.rows)
                  + f"; forward only {evals.samples_per_s:.0f} samples/s ({time.perf_counter() - t0:.0f} s)")
    return result


# ------------------------------------------------------------------------------------------------ report


def train_blocks(tr: TrainResult | None) -> list[dict]:
    """The "### DeepSER training" subsection: the setting, the table (training ways, then forward only), the models."""
    if tr is None:
        return [report.heading("DeepSER training"), report.text("Not run.")]
    size = Size(**tr.size)
    rows = [[r.mix, r.method, f"{r.samples_per_s:,.1f}", fmt_rate(r.audio_s_per_s), fmt_x(r.speed_up),
             f"{r.step_s:.3f}", f"{100 * r.padding:.0f} %", f"{r.peak_mb:,.0f}"] for r in tr.rows]
    rows += [[e.mix, f"forward only (eval, batch {e.batch})", f"{e.samples_per_s:,.1f}", fmt_rate(e.audio_s_per_s),
              "—", "—", "—", f"{e.peak_mb:,.0f}"] for e in tr.evals]
    notes = [f"{mix}: {model}" for mix, model in tr.models.items()] + tr.notes
    return [
        report.heading("DeepSER training"),
        report.text(
            f"`benchmarks/train.py`'s `bench_mix`: DeepSER hidden {size.hidden}, {size.heads} heads, FFN "
            f"{size.ff_mult * size.hidden}, {size.layers} layers per ENC, batch {size.batch_size}, audio features at "
            f"{size.audio_fps:g} frames/s, no pooling; {size.utterances} synthetic utterances per mix (mean "
            f"{tr.mean_duration_s:.2f} s), one warm-up step then {size.steps} timed steps per way, batch loading "
            "included. ours = float16 stores, length buckets, masks, bf16 autocast; ours fp32 = the same without "
            "autocast; authors' = one float32 .npy per sample and feature, random batches padded to the longest, "
            "no masks, fp32. Audio s per s = samples per s × the mean duration. Forward only: eval mode, no_grad, "
            "bf16 autocast, length-sorted batches of random frames (no store reads), what dev scoring and "
            f"prediction run at. SDPA: {tr.sdpa} (a key-padding mask rules the flash kernel out: attention with "
            "masks runs on the memory-efficient or cuDNN kernel)."),
        report.table(["features", "method", "samples per s", "audio s per s", "vs the authors'", "s per step",
                      "padding", "peak memory (MB)"], "llrrrrrr", rows),
        report.bullets(notes, gap=0) if notes else None]
