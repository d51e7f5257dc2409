"""Reading a finished feature store: FeatureStore, the store's file names and dtype, its errors.

A store is a folder with three files:

    frames.f16     all frames, one flat little-endian float16 array (n_frames, dim), row-major, utterances in the
                   order they were added; read via np.memmap
    index.parquet  utt_id (string), offset (int64, first frame row), length (int64, number of frames), one row per
                   utterance in sorted utt_id order
    meta.json      the writer's meta dict plus dim, dtype ("float16"), n_utterances, n_frames

Stores are written by medusa.features.store.writer (one pass) or medusa.features.store.shards (a merge of shards).
`pad_batch` stacks the arrays a store gives into a padded batch.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from medusa.errors import UserError

FRAMES_FILE = "frames.f16"
INDEX_FILE = "index.parquet"
META_FILE = "meta.json"
PARTIAL_SUFFIX = ".partial"

DTYPE = np.dtype("<f2")  # explicit little-endian, so the file means the same on any machine
DTYPE_NAME = "float16"
# Keys the store writes into meta.json itself; a writer's meta may not use them.
RESERVED_META_KEYS = ("dim", "dtype", "n_utterances", "n_frames")
STORE_FILES = (FRAMES_FILE, INDEX_FILE, META_FILE)


class IncompleteStoreError(UserError, FileNotFoundError):
    """The folder is not a complete feature store (missing, or an extraction that has not finished)."""


class CorruptStoreError(UserError, RuntimeError):
    """A store or work folder is internally inconsistent (not something a crash alone can produce)."""


# --------------------------------------------------------------------------------------------------- helpers


def partial_dir(root: str | Path) -> Path:
    """The work folder a writer for `root` fills before it becomes `root`."""
    root = Path(root)
    return root.with_name(root.name + PARTIAL_SUFFIX)


def is_store(root: str | Path) -> bool:
    """True if `root` holds a finished store (its three files exist); does not validate their contents."""
    root = Path(root)
    return root.is_dir() and all((root / name).is_file() for name in STORE_FILES)


def user_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A store's meta.json without the keys the store added."""
    return {k: v for k, v in meta.items() if k not in RESERVED_META_KEYS}


def read_index(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """index.parquet as (utt_ids, offsets, lengths), in its row order; CorruptStoreError if a column is missing."""
    table = pq.read_table(path)
    missing = {"utt_id", "offset", "length"} - set(table.column_names)
    if missing:
        raise CorruptStoreError(f"{path} lacks the columns {sorted(missing)}")
    cols = table.to_pydict()
    return ([str(u) for u in cols["utt_id"]], np.asarray(cols["offset"], dtype=np.int64),
            np.asarray(cols["length"], dtype=np.int64))


# ---------------------------------------------------------------------------------------------------- reader


class FeatureStore:
    """Read-only access to a finished store; `store[utt_id]` is a (T, dim) float16 memmap slice.

    Only the index and meta are loaded when the store is opened; the frames of an utterance are read from disk
    when its array is used, and reading one utterance reads none of the others. Arrays are read-only views of
    the file: copy (or `.astype(np.float32)`) them to modify them or to keep them after the store is gone.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._check_complete()
        meta = json.loads((self.root / META_FILE).read_text(encoding="utf-8"))
        for key in RESERVED_META_KEYS:
            if key not in meta:
                raise CorruptStoreError(f"{self.root / META_FILE} lacks the key {key!r}")
        if meta["dtype"] != DTYPE_NAME:
            raise CorruptStoreError(f"{self.root}: dtype {meta['dtype']!r}, this reader handles {DTYPE_NAME!r}")
        self.meta: dict[str, Any] = meta
        self.dim: int = int(meta["dim"])
        n_frames = int(meta["n_frames"])

        utt_ids, offsets, lengths = read_index(self.root / INDEX_FILE)
        if len(utt_ids) != int(meta["n_utterances"]):
            raise CorruptStoreError(f"{self.root}: index has {len(utt_ids)} rows, meta.json says "
                                    f"{meta['n_utterances']} utterances")
        if len(set(utt_ids)) != len(utt_ids):
            raise CorruptStoreError(f"{self.root}: the index lists some utt_ids more than once")
        if len(utt_ids) and ((lengths < 1).any() or (offsets < 0).any() or (offsets + lengths > n_frames).any()):
            raise CorruptStoreError(f"{self.root}: index rows point outside the {n_frames} frames of {FRAMES_FILE}")
        size = (self.root / FRAMES_FILE).stat().st_size
        if size != n_frames * self.dim * DTYPE.itemsize:
            raise CorruptStoreError(f"{self.root / FRAMES_FILE} has {size} bytes, expected "
                                    f"{n_frames} frames x {self.dim} dims x {DTYPE.itemsize} bytes")

        self.utt_ids: list[str] = utt_ids
        self.lengths: dict[str, int] = {u: int(n) for u, n in zip(utt_ids, lengths)}
        self._where: dict[str, tuple[int, int]] = {
            u: (int(o), int(n)) for u, o, n in zip(utt_ids, offsets, lengths)}
        # np.memmap cannot map an empty file; an empty store gets an empty in-memory array instead.
        if n_frames:
            self._frames: np.ndarray = np.memmap(self.root / FRAMES_FILE, dtype=DTYPE, mode="r",
                                                 shape=(n_frames, self.dim))
        else:
            self._frames = np.zeros((0, self.dim), dtype=DTYPE)

    def _check_complete(self) -> None:
        """Raise IncompleteStoreError, saying what to do, unless root holds all three store files."""
        partial = partial_dir(self.root)
        unfinished = (f"; an unfinished extraction is in {partial}: rerun the extraction to resume it"
                      if partial.is_dir() else "")
        if not self.root.is_dir():
            raise IncompleteStoreError(f"no feature store at {self.root}{unfinished}")
        missing = [name for name in STORE_FILES if not (self.root / name).is_file()]
        if missing:
            raise IncompleteStoreError(f"{self.root} is not a complete feature store (missing {', '.join(missing)})"
                                       f"{unfinished}")

    @property
    def n_frames(self) -> int:
        return int(self.meta["n_frames"])

    @property
    def index(self) -> pd.DataFrame:
        """The index as a DataFrame (utt_id, offset, length), in store order."""
        rows = [(u, *self._where[u]) for u in self.utt_ids]
        return pd.DataFrame(rows, columns=["utt_id", "offset", "length"]).astype({"offset": "int64",
                                                                                  "length": "int64"})

    def __len__(self) -> int:
        return len(self.utt_ids)

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self._where

    def __iter__(self) -> Iterator[str]:
        # Without this, iter() would fall back to __getitem__(0), 1, ... and fail with a KeyError.
        return iter(self.utt_ids)

    def __getitem__(self, utt_id: str) -> np.ndarray:
        try:
            offset, length = self._where[utt_id]
        except (KeyError, TypeError):
            raise KeyError(f"utt_id {utt_id!r} is not in the feature store {self.root}") from None
        return self._frames[offset:offset + length]

    def get_many(self, utt_ids: Sequence[str]) -> list[np.ndarray]:
        """The arrays of `utt_ids`, in that order; a KeyError names every utt_id the store lacks."""
        missing = [u for u in utt_ids if u not in self._where]
        if missing:
            shown = ", ".join(repr(u) for u in missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise KeyError(f"{len(missing)} utt_id(s) not in the feature store {self.root}: {shown}")
        return [self[u] for u in utt_ids]

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r}, n_utterances={len(self)}, n_frames={self.n_frames}, dim={self.dim})"


# ---------------------------------------------------------------------------------------------------- batches


def pad_batch(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack (T_i, D) arrays into a zero-padded float32 (B, T_max, D) batch and a (B, T_max) mask.

    mask[b, t] is True where frame t of item b is real, False where it is padding.
    """
    if len(arrays) == 0:
        raise ValueError("pad_batch needs at least one array (the feature dim comes from the arrays)")
    dims = {a.shape[1] if a.ndim == 2 else None for a in arrays}
    if any(a.ndim != 2 for a in arrays) or len(dims) != 1:
        raise ValueError(f"pad_batch needs 2-D arrays with one feature dim, got shapes {[a.shape for a in arrays]}")
    (dim,) = dims
    lengths = [a.shape[0] for a in arrays]
    t_max = max(lengths)
    batch = np.zeros((len(arrays), t_max, dim), dtype=np.float32)
    mask = np.zeros((len(arrays), t_max), dtype=bool)
    for b, (a, n) in enumerate(zip(arrays, lengths)):
        batch[b, :n] = a
        mask[b, :n] = True
    return batch, mask
