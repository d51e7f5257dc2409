"""Length-bucketed batches and a DataLoader that decodes audio in worker processes.

Sorting utterances by length before batching keeps padding small (short clips are not padded to the length of
long ones), which is what makes batched encoding fast; the order is deterministic (length, then id)."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medusa.audio import load_audio


def length_batches(ids: Sequence[str], lengths: Sequence[float], max_items: int,
                   max_total: float | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length: at most max_items per batch and, if given, at most
    max_total of padded length (items x longest) per batch. Deterministic: sorted by (length, id)."""
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    order = sorted(range(len(ids)), key=lambda i: (lengths[i], ids[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        padded = (len(current) + 1) * lengths[i]  # sorted ascending: this item is the longest so far
        if current and (len(current) >= max_items or (max_total is not None and padded > max_total)):
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


def audio_batches(paths: Sequence[str], batches: list[list[int]], num_workers: int
                  ) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """Yield (indices, float32 16 kHz arrays) per batch, decoding files in `num_workers` processes."""
    loader = DataLoader(_AudioFiles(paths, batches), batch_size=None, shuffle=False, num_workers=num_workers,
                        collate_fn=lambda x: x, persistent_workers=False,
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
