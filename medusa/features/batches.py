"""Length-bucketed batches and a DataLoader that decodes audio in worker processes.

Sorting utterances by length before batching keeps padding small (short clips are not padded to the length of
long ones), which is what makes batched encoding fast; the order is deterministic (length, then id). Encoders
whose frames depend on padding pad each clip to a length of its own (medusa.features.encoders.base) and get batches
grouped by that padded length (`groups`), so that no clip shares a forward pass with a differently padded one."""
from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medusa.data.audio import load_audio
from medusa.io import pid_alive


def length_batches(ids: Sequence[str], lengths: Sequence[float], max_items: int,
                   max_total: float | None = None, *, groups: Sequence[Any] | None = None,
                   padded: Sequence[float] | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length: at most max_items per batch and, if given, at most
    max_total of padded length (items x padded length) per batch. Deterministic: sorted by (length, id).

    `groups` (one sortable key per item, e.g. the length a clip is padded to): a batch never mixes keys; groups
    come in key order, each sorted by (length, id) within. `padded`: each item's padded length for max_total
    (default: a batch is padded to its longest item, i.e. the item's own length in this order)."""
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    key = (lambda i: (groups[i], lengths[i], ids[i])) if groups is not None else (lambda i: (lengths[i], ids[i]))
    order = sorted(range(len(ids)), key=key)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        size = padded[i] if padded is not None else lengths[i]  # sorted ascending: the longest so far
        new_group = groups is not None and bool(current) and groups[current[-1]] != groups[i]
        if current and (new_group or len(current) >= max_items
                        or (max_total is not None and (len(current) + 1) * size > max_total)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class _AudioFiles(Dataset):
    def __init__(self, paths: Sequence[str], batches: list[list[int]]) -> None:
        self.paths, self.batches = list(paths), batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[list[int], list[np.ndarray]]:
        idx = self.batches[b]
        return idx, [load_audio(self.paths[i]) for i in idx]


def _die_with_parent(parent: int, worker_id: int) -> None:
    """A DataLoader worker's init: the kernel kills it when the process that started it dies (Linux's
    PR_SET_PDEATHSIG). Without it, a worker whose parent is killed (kill -9, out of memory) hangs for good: exiting,
    it waits to flush batches into a pipe whose reading end it holds itself, so the write never fails."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if not pid_alive(parent):  # the parent died before the line above took effect: end now
        os._exit(1)


def _as_is(batch):
    """The DataLoader's collate_fn: a batch stays (indices, arrays). A module-level function, not a lambda: the
    ranks of medusa.features.ranks are spawned, and spawned DataLoader workers get their collate_fn by pickle."""
    return batch


def audio_batches(paths: Sequence[str], batches: list[list[int]], num_workers: int
                  ) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """Yield (indices, float32 16 kHz arrays) per batch, decoding files in `num_workers` processes."""
    loader = DataLoader(_AudioFiles(paths, batches), batch_size=None, shuffle=False, num_workers=num_workers,
                        collate_fn=_as_is, persistent_workers=False,
                        worker_init_fn=functools.partial(_die_with_parent, os.getpid()) if num_workers else None,
                        prefetch_factor=4 if num_workers > 0 else None)
    yield from loader


def pick_device(name: str) -> torch.device:
    """`auto` -> cuda if available, else cpu; otherwise the named device (an error if it is not there)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for in params.yaml, but no CUDA device is available")
    return device
