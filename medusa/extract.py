"""The extraction loop: utterances -> encoder -> FeatureStore, batched by length, resumable, shardable.

Resume is exact: batches are formed the same way on every run (sorted by length, then id); a batch whose
utterances are all in the store is skipped, and a batch that was cut off mid-way is encoded again whole (so every
utterance is encoded with the same batch-mates, hence the same padding, as in an uninterrupted run) and only its
missing utterances are added.
"""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medusa.batches import audio_batches, length_batches
from medusa.encoders import Encoder
from medusa.feature_store import FeatureStore, FeatureStoreWriter, merge_stores, shard_dir, shard_items

log = logging.getLogger(__name__)


@dataclass
class ExtractionStats:
    utterances: int
    frames: int
    audio_seconds: float
    wall_seconds: float
    peak_memory_mb: float

    @property
    def audio_seconds_per_second(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "audio_seconds_per_second": self.audio_seconds_per_second}


def plan_batches(encoder: Encoder, items: pd.DataFrame, batch_size: int, batch_seconds: float) -> list[list[int]]:
    """Row indices per batch: audio by duration (at most batch_seconds of padded audio), text by length."""
    if encoder.kind == "audio":
        return length_batches(list(items["utt_id"]), list(items["duration_s"]), batch_size, batch_seconds)
    return length_batches(list(items["utt_id"]), [len(t) for t in items["text"].fillna("")], batch_size)


def _inputs(encoder: Encoder, items: pd.DataFrame, batches: list[list[int]], num_workers: int
            ) -> Iterator[tuple[list[int], list]]:
    """(row indices, inputs) per batch: audio decoded in worker processes, or transcripts."""
    if encoder.kind == "audio":
        yield from audio_batches(list(items["path"]), batches, num_workers)
    else:
        texts = items["text"].fillna("").tolist()
        for idx in batches:
            yield idx, [texts[i] for i in idx]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def extract_to_store(encoder: Encoder, items: pd.DataFrame, root: str | Path, *, batch_size: int,
                     batch_seconds: float, num_workers: int, device: torch.device,
                     shard: int = 0, n_shards: int = 1) -> ExtractionStats:
    """Encode `items` (columns utt_id, duration_s, and path or text) into the store at `root`.

    With n_shards > 1 this call writes shard `shard` to `root/shard-<i>-of-<n>`; `merge_shards` joins them."""
    items = items.sort_values("utt_id").reset_index(drop=True)
    if n_shards > 1:
        items = pd.DataFrame(shard_items(items.to_dict("records"), shard, n_shards))
        root = shard_dir(root, shard, n_shards)
    duration = items["duration_s"].to_numpy(dtype=float)
    start, frames, audio_s = time.perf_counter(), 0, 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with FeatureStoreWriter(root, encoder.dim, encoder.spec()) as writer:
        done = set(writer.done)
        if done:
            log.info("resuming %s: %d of %d utterances already stored", root, len(done), len(items))
        ids = items["utt_id"].tolist()
        batches = [b for b in plan_batches(encoder, items, batch_size, batch_seconds)
                   if not all(ids[i] in done for i in b)]
        with tqdm(total=len(items), initial=len(done), desc=f"extracting {Path(root).name}", unit="utt") as bar:
            for idx, inputs in _inputs(encoder, items, batches, num_workers):
                for i, feats in zip(idx, encoder.encode(inputs)):
                    u = ids[i]
                    if u in done:
                        continue
                    writer.add(u, np.asarray(feats, dtype=np.float32))
                    frames += len(feats)
                    audio_s += duration[i]
                bar.update(sum(ids[i] not in done for i in idx))
                writer.flush()
    return ExtractionStats(len(items), frames, audio_s, time.perf_counter() - start, peak_memory_mb(device))


def merge_shards(root: str | Path, n_shards: int) -> FeatureStore:
    """Join the shard stores of `root` into one store at `root` (all shards must be complete)."""
    merge_stores([shard_dir(root, i, n_shards) for i in range(n_shards)], root)
    return FeatureStore(root)


def extraction_items(manifest: pd.DataFrame, transcripts: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Rows to encode: utt_id, duration_s, path (audio) and text (the ASR transcript, for text encoders)."""
    items = manifest[["utt_id", "path", "duration_s"]].merge(transcripts[["utt_id", "text"]], on="utt_id", how="left")
    if kind == "text" and items["text"].isna().any():
        missing = items.loc[items["text"].isna(), "utt_id"]
        raise ValueError(f"{len(missing)} utterances have no transcript (e.g. {missing.iloc[0]}); "
                         "rerun the transcribe stage")
    return items


def store_summary(name: str, store: FeatureStore, items: pd.DataFrame, stats: ExtractionStats) -> dict:
    """One row of the per-encoder table: dim, frames per second of audio, frames, disk size, throughput."""
    audio_hours = items["duration_s"].sum() / 3600
    disk = sum(f.stat().st_size for f in Path(store.root).iterdir() if f.is_file())
    return {
        "encoder": name, "family": store.meta.get("family"), "dim": store.dim, "utterances": len(store),
        "frames": store.n_frames, "frames_per_second": round(store.n_frames / (audio_hours * 3600), 2),
        "disk_mb": round(disk / 2**20, 1),
        "audio_seconds_per_second": round(stats.audio_seconds_per_second, 1) if stats.utterances else None,
        "wall_seconds": round(stats.wall_seconds, 1), "peak_memory_mb": round(stats.peak_memory_mb),
    }
