"""The training epoch's data path in benchmarks/scale.py: loading batches with a model that computes nothing, the
full-dim check (warm, cold and prefetched page cache), and DeepSER's FLOPs that estimate the GPU side.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from scale_corpus import FULL_DIMS, MODEL, frame_pool, plan_store, store_bytes, write_store
from scale_steps import STEP_EPOCH, STEP_EVAL, SizeResult, StepRow

from medusa.config.params import Params
from medusa.features.store.reader import FRAMES_FILE, FeatureStore
from medusa.labels import ATTRIBUTES
from medusa.model.dataset import FeatureDataset
from medusa.model.training import TrainConfig, _epoch_batches

# --------------------------------------------------------------------------------------- the GPU estimate
#: H100 SXM, dense bf16 tensor-core peak (NVIDIA's datasheet: 1,979 TFLOP/s with 2:4 sparsity, half without).
GPU_NAME, GPU_PEAK_TFLOPS, GPU_UTILISATION = "H100 SXM", 989.0, 0.40

# ------------------------------------------------------------------------------------- the loading path


class ZeroModel(torch.nn.Module):
    """Stands in for DeepSER in medusa.model.training.predict: records each batch's shape and returns zeros."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.cfg = SimpleNamespace(n_classes=n_classes, n_attributes=len(ATTRIBUTES))
        self.shapes: list[tuple[int, list[int]]] = []

    def forward(self, xs: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        b = xs[0].shape[0]
        self.shapes.append((b, [x.shape[1] for x in xs]))
        return torch.zeros(b, self.cfg.n_classes), torch.zeros(b, self.cfg.n_attributes)


def load_batches(data: FeatureDataset, batches: list[np.ndarray]) -> list[tuple[int, list[int]]]:
    """FeatureDataset.batch for every batch (arrays, masks, tensors), as the training loop asks for them; the shape
    (batch size, padded frames per modality) of each."""
    shapes = []
    for idx in batches:
        b = data.batch(idx)
        shapes.append((len(idx), [x.shape[1] for x in b.xs]))
    return shapes


def deepser_forward_flops(batch: int, frames: list[int], dims: list[int], hidden: int, layers: int, ff_mult: int,
                          n_outputs: int) -> float:
    """Forward FLOPs (2 per multiply-add) of DeepSER with deep fusion on one padded batch (medusa.model.deepser): per
    modality an ENC (input MLP d_in->h->h, `layers` transformer layers) over its padded frames; fusion 1 over their
    concatenation, fusion 2 over twice that; the fusion and head layers. A transformer layer costs per frame
    (4 + 2 ff_mult) h^2 multiply-adds in its projections and 2 T h in attention over T frames (key padding is
    masked, not skipped, so padded frames count). Layer norms, softmax, dropout: left to the utilisation factor."""
    h = hidden

    def enc(t: int, d_in: int) -> float:
        per_frame = (d_in * h + h * h) + layers * ((4 + 2 * ff_mult) * h * h + 2 * t * h)
        return 2.0 * batch * t * per_frame

    total = sum(enc(t, d) for t, d in zip(frames, dims))
    concat = sum(frames)
    total += enc(concat, h) + enc(2 * concat, h)
    total += 2.0 * batch * ((len(frames) + 1) * h * h + h * n_outputs)
    return total


@dataclass
class FullDim:
    """Loading at the real dims on a subset of train rows (largest N)."""
    utterances: int
    batches: int
    write_s: float
    write_mb: float
    cold_ms: float          # per batch, page cache dropped for the frames files first
    warm_ms: float          # per batch, the same batches again
    prefetch_ms: float      # per batch, cold again, through FeatureDataset.batches (threads loading ahead)
    mb_per_batch: float     # float16 bytes read per batch (real frames)


def evict(path: Path) -> None:
    """Drop a file's clean pages from the page cache (posix_fadvise DONTNEED; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def full_dim_check(work: Path, manifest: pd.DataFrame, params: Params, n_utts: int, cfg: TrainConfig, seed: int
                   ) -> FullDim:
    """Write `n_utts` train rows' stores at the real dims, then load one pass of the loop's bucketed batches over
    them with a cold page cache and once more warm."""
    train = manifest[manifest["split"] == "train"]
    rows = train.sample(n=min(n_utts, len(train)), random_state=seed).sort_values("utt_id")
    rng = np.random.default_rng([seed, 1024])
    start, written = time.perf_counter(), 0
    for key in MODEL:
        dim = FULL_DIMS[key][1]
        plan = plan_store(key, rows, params, rng)
        pool = frame_pool(dim, int(plan.frames.max()), seed)
        write_store(work / key, plan, pool)
        written += store_bytes(plan.frames.sum(), dim)
        del pool
    write_s = time.perf_counter() - start
    for key in MODEL:
        evict(work / key / FRAMES_FILE)
    stores = [FeatureStore(work / key) for key in MODEL]
    data = FeatureDataset(rows, stores, [1] * len(MODEL))
    batches = _epoch_batches(1, data, cfg, np.random.default_rng(seed))
    per_batch = []
    for _ in ("cold", "warm"):
        t0 = time.perf_counter()
        load_batches(data, batches)
        per_batch.append(1000 * (time.perf_counter() - t0) / len(batches))
    for key in MODEL:
        evict(work / key / FRAMES_FILE)
    t0 = time.perf_counter()
    for _ in data.batches(batches):   # what the training loop iterates: batches loaded ahead in threads
        pass
    per_batch.append(1000 * (time.perf_counter() - t0) / len(batches))
    read = sum(store_bytes(s.n_frames, s.dim) for s in stores)
    return FullDim(len(rows), len(batches), write_s, written / 2**20, per_batch[0], per_batch[1], per_batch[2],
                   read / 2**20 / len(rows) * cfg.batch_size)



def epoch_flops(shapes: list[tuple[int, list[int]]], params: Params, n_classes: int, training: bool) -> float:
    t = params.train
    dims = [FULL_DIMS[k][1] for k in MODEL]
    forward = sum(deepser_forward_flops(b, frames, dims, t.hidden, t.layers, t.ff_mult, n_classes + len(ATTRIBUTES))
                  for b, frames in shapes)
    return 3 * forward if training else forward  # backward ~ 2x forward


@dataclass
class Comparison:
    batches: int
    load_ms: float                 # per batch at the reduced dim, measured
    full_cold_ms: float | None     # per batch at full dims, measured on the subset
    full_warm_ms: float | None
    gpu_ms: float                  # per batch, estimated
    gpu_peak_ms: float             # per batch at 100 % of the peak (the fastest the GPU could be)
    tflop_per_batch: float
    eval_batches: int
    eval_load_ms: float
    eval_gpu_ms: float
    mean_frames: list[float]       # padded frames per modality, mean over the epoch's batches


def compare(res: SizeResult, rows: list[StepRow], params: Params, args: argparse.Namespace,
            full: FullDim | None) -> Comparison:
    epoch = next(r for r in rows if r.n == res.n and r.step == STEP_EPOCH)
    evals = next(r for r in rows if r.n == res.n and r.step == STEP_EVAL)
    throughput = args.gpu_tflops * 1e12
    train_flops = epoch_flops(res.epoch_shapes, params, len(res.classes), True)
    eval_flops = epoch_flops(res.eval_shapes, params, len(res.classes), False)
    k = len(res.epoch_shapes)
    return Comparison(
        k, 1000 * epoch.wall_s / k, full.cold_ms if full else None, full.warm_ms if full else None,
        1000 * train_flops / k / (throughput * args.gpu_utilisation), 1000 * train_flops / k / throughput,
        train_flops / k / 1e12, len(res.eval_shapes), 1000 * evals.wall_s / max(1, len(res.eval_shapes)),
        1000 * eval_flops / max(1, len(res.eval_shapes)) / (throughput * args.gpu_utilisation),
        [float(np.mean([f[m] for _, f in res.epoch_shapes])) for m in range(len(MODEL))])
