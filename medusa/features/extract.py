"""The extraction loop: utterances -> encoder -> FeatureStore, batched by length, resumable, shardable.

A clip's features depend on the clip alone (medusa.features.encoders.base: padding-invariant encoders, or a per-clip padded
length and batches of equal padded length), so batching, order and shard count do not change them. Beyond that,
runs are bit-for-bit reproducible: batches are planned the same way on every run (grouped by padded length, sorted
by length, then id) over the whole work list, and shard i of n takes the i-th of n contiguous blocks of that plan
(about equal audio seconds, or transcript characters, each), so every utterance is encoded with the same batch-mates
whatever the shard count; a batch whose utterances are all in the store is skipped, and a batch that was cut off
mid-way is encoded again whole and only its missing utterances are added. A store's frames are in plan order, so
one extraction and the merge of n shards (their frames concatenated in shard order) give the same bytes.

A `.partial` store is resumed only if it was made from the same work list (utt_id, path, file size and mtime,
duration; the transcript for text encoders) and the same encoder spec (medusa.features.fingerprint); otherwise it is
discarded with a log line and the extraction starts afresh.
"""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from medusa.features.batches import audio_batches, length_batches
from medusa.features.encoders import Encoder
from medusa.features.fingerprint import audio_work_rows, inputs_fingerprint, text_work_rows, weights_sample
from medusa.features.store.reader import FeatureStore
from medusa.features.store.shards import merge_stores, shard_dir, shard_items
from medusa.features.store.writer import FeatureStoreWriter
from medusa.io import remove_stale_temps

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

    @classmethod
    def of_ranks(cls, ranks: Sequence["ExtractionStats"]) -> "ExtractionStats":
        """The figures of ranks that ran side by side: counts summed, wall time and peak memory their maximum."""
        return cls(sum(r.utterances for r in ranks), sum(r.frames for r in ranks),
                   sum(r.audio_seconds for r in ranks), max(r.wall_seconds for r in ranks),
                   max(r.peak_memory_mb for r in ranks))


def plan_batches(encoder: Encoder, items: pd.DataFrame, batch_size: int, batch_seconds: float) -> list[list[int]]:
    """Row indices per batch: audio by duration (at most batch_seconds of padded audio), text by length. An
    encoder whose frames depend on padding gets batches of clips that all pad to the same length."""
    ids = list(items["utt_id"])
    if encoder.kind == "audio":
        durations = [float(d) for d in items["duration_s"]]
        padded = [encoder.padded_samples(round(d * 16000)) for d in durations]
        if all(p is None for p in padded):
            return length_batches(ids, durations, batch_size, batch_seconds)
        seconds = [p / 16000 for p in padded]
        return length_batches(ids, durations, batch_size, batch_seconds, groups=seconds, padded=seconds)
    return length_batches(ids, [len(t) for t in items["text"].fillna("")], batch_size)


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


def work_fingerprint(encoder: Encoder, items: pd.DataFrame) -> str:
    """What a resumable store must have been made from: the work list, the encoder's spec and a sample of its
    weights (medusa.features.fingerprint; the spec names the model only, and a folder may be refilled with others)."""
    rows = audio_work_rows(items) if encoder.kind == "audio" else text_work_rows(items)
    module = next((m for m in (getattr(encoder, "model", None), getattr(encoder, "whisper", None))
                   if isinstance(m, torch.nn.Module)), None)   # openSMILE has no weights
    return inputs_fingerprint(rows, {**encoder.spec(), "weights": weights_sample(module) if module else None})


def extract_to_store(encoder: Encoder, items: pd.DataFrame, root: str | Path, *, batch_size: int,
                     batch_seconds: float, num_workers: int, device: torch.device,
                     shard: int = 0, n_shards: int = 1) -> ExtractionStats:
    """Encode `items` (columns utt_id, duration_s, and path or text) into the store at `root`.

    With n_shards > 1 this call writes shard `shard` to `<root>.shard-<i>-of-<n>`, beside the store
    (shards.shard_dir); `merge_shards` joins them.
    Temporary files that killed runs left in the stores' folder (root's parent) are deleted first
    (medusa.io.remove_stale_temps)."""
    remove_stale_temps(Path(root).parent)
    items = items.sort_values("utt_id").reset_index(drop=True)
    batches = plan_batches(encoder, items, batch_size, batch_seconds)  # over the whole list, for every shard
    fingerprint = work_fingerprint(encoder, items)
    ids = items["utt_id"].tolist()
    if n_shards > 1:
        root = shard_dir(root, shard, n_shards)
        weights = [sum(len(t) for t in items["text"].iloc[b].fillna("")) if encoder.kind == "text"
                   else float(items["duration_s"].iloc[b].sum()) for b in batches]
        # batches, not clips: the same batch-mates for any n
        batches = shard_items(batches, shard, n_shards, weights)
        # Which clips a shard holds follows the batch plan (batch_size, batch_seconds, padding groups): a shard
        # begun under another plan holds other clips, so the shard's own clip list is part of its fingerprint.
        fingerprint = inputs_fingerprint([{"shard": shard, "n_shards": n_shards,
                                           "utt_ids": sorted(ids[i] for b in batches for i in b)}],
                                         {"inputs": fingerprint})
    mine = {i for b in batches for i in b}
    duration = items["duration_s"].to_numpy(dtype=float)
    start, frames, audio_s = time.perf_counter(), 0, 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with FeatureStoreWriter(root, encoder.dim, encoder.spec(), inputs=fingerprint) as writer:
        done = set(writer.done)
        stray = done - {ids[i] for i in mine}
        if stray:  # cannot happen with equal fingerprints; a store must never hold utterances not asked for
            raise RuntimeError(f"{writer.work_dir} holds {len(stray)} utterances that are not in this work list "
                               f"(e.g. {sorted(stray)[0]!r}); delete it and rerun")
        if done:
            log.info("resuming %s: %d of %d utterances already stored", root, len(done), len(mine))
        todo = [b for b in batches if not all(ids[i] in done for i in b)]
        with tqdm(total=len(mine), initial=len(done), desc=f"extracting {Path(root).name}", unit="utt") as bar:
            for idx, inputs in _inputs(encoder, items, todo, num_workers):
                for i, feats in zip(idx, encoder.encode(inputs)):
                    u = ids[i]
                    if u in done:
                        continue
                    writer.add(u, np.asarray(feats, dtype=np.float32))
                    frames += len(feats)
                    audio_s += duration[i]
                bar.update(sum(ids[i] not in done for i in idx))
                writer.flush()
    return ExtractionStats(len(mine), frames, audio_s, time.perf_counter() - start, peak_memory_mb(device))


def merge_shards(root: str | Path, n_shards: int, expected: Sequence[str] | None = None) -> FeatureStore:
    """Join the shard stores of `root` into one store at `root` (all shards must be complete). With `expected`
    (the work list's utt_ids), the shards must hold exactly those utterances: shards extracted under different
    batch settings split the list differently, and their union can miss clips (or hold clips of another list)."""
    shards = [shard_dir(root, i, n_shards) for i in range(n_shards)]
    if expected is not None:
        held = {u for s in shards for u in FeatureStore(s).utt_ids}
        missing, extra = sorted(set(expected) - held), sorted(held - set(expected))
        if missing or extra:
            raise ValueError(f"the {n_shards} shards of {root} do not hold the work list: "
                             + "; ".join(f"{len(v)} utterance(s) {what} (e.g. {v[0]!r})" for v, what in
                                         ((missing, "in no shard"), (extra, "not in the work list")) if v)
                             + ". Were the shards extracted with other batch settings or another manifest? "
                             "Rerun the shards named by the missing utterances with the current params.")
    merge_stores(shards, root)
    return FeatureStore(root)


def extract_rank(name: str, spec, settings, manifest_path: str | Path, transcripts_path: str | Path,
                 root: str | Path, cache_dir: str | Path) -> ExtractionStats:
    """One rank's part of an extract@ENCODER stage (medusa.features.ranks): shard RANK of WORLD_SIZE of the batch
    plan on its device with `settings.threads` CPU threads; rank 0 merges the shards once every rank is done.
    `spec` is the `encoders` entry, `settings` the `extract` section. One rank writes the store directly."""
    from medusa.features.encoders import build_encoder
    from medusa.features.ranks import Barrier, Rank, set_threads

    rank = Rank.from_env()
    set_threads(settings.threads)
    with Barrier(rank) as barrier:
        device = rank.device(settings.device)
        encoder = build_encoder(name, spec.family, spec.model, spec.layers, device, cache_dir,
                                settings.whisper_pad_seconds)
        transcripts = (pd.read_parquet(transcripts_path) if Path(transcripts_path).exists()
                       else pd.DataFrame(columns=["utt_id", "text"]))
        items = extraction_items(pd.read_parquet(manifest_path), transcripts, encoder.kind)
        stats = extract_to_store(encoder, items, root, batch_size=spec.batch_size, batch_seconds=spec.batch_seconds,
                                 num_workers=settings.num_workers, device=device, shard=rank.rank,
                                 n_shards=rank.world)
        barrier.wait()
        if rank.lead and rank.world > 1:
            merge_shards(root, rank.world, list(items["utt_id"]))
        barrier.wait()  # no rank leaves before the merge: whoever reads the store after any rank ends sees it whole
    return stats


def extract_ranks(name: str, spec, settings, parallel, manifest_path: str | Path, transcripts_path: str | Path,
                  root: str | Path, cache_dir: str | Path) -> ExtractionStats:
    """An extract@ENCODER stage over `parallel.ranks` ranks (medusa.features.ranks: this machine's processes, or
    the tasks of a SLURM job)."""
    from medusa.features.ranks import check_devices, run_ranks

    check_devices(parallel, settings.device)
    return ExtractionStats.of_ranks(run_ranks(extract_rank, parallel, name, spec, settings, str(manifest_path),
                                              str(transcripts_path), str(root), str(cache_dir)))


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
