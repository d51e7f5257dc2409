"""Training batches straight from the feature stores: time pooling, per-batch padding, masks, targets.

Frame sequences are averaged in non-overlapping windows of `pool` frames before they reach DeepSER (e.g. 5 for
50 frames/s -> 10 frames/s): the fusion encoders attend over the concatenation of all modalities, so attention
cost grows with the square of the summed lengths, and a CPU cannot afford full frame rates. pool = 1 keeps them.
"""
from __future__ import annotations

import itertools
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from medusa.features.store.reader import FeatureStore
from medusa.labels import ATTRIBUTES, classes_of, target_columns

ATTRIBUTE_RANGE = (1.0, 7.0)  # MSP-Podcast ratings; scaled to [0, 1] for the MSE term
#: FeatureDataset.batches: batches loaded in advance, and the threads loading them
PREFETCH_BATCHES = 4
PREFETCH_THREADS = 2


def pooled_length(frames: int, pool: int) -> int:
    """How many time steps `frames` frames become after pool_frames (the last window may be shorter):
    ceil(frames / pool). The one place that says so: batching, length sorting and prediction must agree."""
    return -(-frames // pool)


def pool_frames(x: np.ndarray, pool: int) -> np.ndarray:
    """Mean of non-overlapping windows of `pool` frames: (T, D) -> (pooled_length(T, pool), D)."""
    if pool <= 1:
        return x
    t = len(x)
    n = pooled_length(t, pool)
    padded = np.zeros((n * pool, x.shape[1]), dtype=np.float32)
    padded[:t] = x
    counts = np.minimum(pool, t - np.arange(n) * pool).astype(np.float32)
    return padded.reshape(n, pool, -1).sum(1) / counts[:, None]


def scale_attributes(values: np.ndarray) -> np.ndarray:
    lo, hi = ATTRIBUTE_RANGE
    return (np.asarray(values, dtype=np.float32) - lo) / (hi - lo)


def unscale_attributes(values: np.ndarray) -> np.ndarray:
    lo, hi = ATTRIBUTE_RANGE
    return np.asarray(values, dtype=np.float32) * (hi - lo) + lo


def batch_from_arrays(sequences_per_modality: list[list[np.ndarray]], pools: list[int],
                      dims: list[int] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """DeepSER's inputs from frame sequences: per modality, each (T_i, D) sequence is pooled (pool_frames) and
    the batch is zero-padded to its longest; masks (B, T) are True on real frames.

    The one padding code path, shared by training (FeatureDataset.batch) and prediction from audio
    (medusa.serving.bundle), so both feed the model identically. `dims` (per modality) gives the feature width when a
    batch may hold only empty sequences; by default it is read from the first sequence."""
    if len(sequences_per_modality) != len(pools):
        raise ValueError(f"{len(sequences_per_modality)} modalities but {len(pools)} pooling factors")
    xs, masks = [], []
    for m, (seqs, pool) in enumerate(zip(sequences_per_modality, pools)):
        if not len(seqs):
            raise ValueError(f"modality {m}: an empty batch")
        # float32 before pooling: the stores hold float16, and averaging must not happen at that precision.
        # Unpooled float16/float32 frames go into the batch as they are: torch widens float16 to float32 while it
        # copies them (exactly, as numpy would, but several times faster: 45 -> 10 ms for a batch of 16 six-second
        # clips of three 1024-d stores on one core).
        seqs = [pool_frames(np.asarray(s, dtype=np.float32), pool) if pool > 1 else _unpooled(s) for s in seqs]
        dim = dims[m] if dims is not None else seqs[0].shape[1]
        t = max(len(s) for s in seqs)
        x = torch.zeros((len(seqs), t, dim), dtype=torch.float32)
        with warnings.catch_warnings():  # memmap slices are read-only: torch warns, though it only reads them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
            for j, s in enumerate(seqs):
                if s.ndim != 2 or s.shape[1] != dim:
                    raise ValueError(f"modality {m}, sequence {j}: expected (T, {dim}) frames, got {s.shape}")
                x[j, : len(s)] = torch.from_numpy(s)
        xs.append(x)
        masks.append(torch.from_numpy(np.arange(t)[None, :] < np.array([len(s) for s in seqs])[:, None]))
    return xs, masks


def _unpooled(s) -> np.ndarray:
    """An unpooled sequence as an array torch can wrap: float16 and float32 arrays as they are (no copy when
    contiguous, as store slices are), anything else as float32."""
    a = np.asarray(s)
    return np.ascontiguousarray(a if a.dtype in (np.float16, np.float32) else a.astype(np.float32))


@dataclass
class Batch:
    xs: list[torch.Tensor]        # per modality (B, T_m, D_m) float32
    masks: list[torch.Tensor]     # per modality (B, T_m) bool, True on real frames
    targets: torch.Tensor         # (B, C) soft targets (or one-hot) over the run's C classes
    attributes: torch.Tensor      # (B, 3) scaled to [0, 1]; NaN where unknown
    utt_ids: list[str]


class FeatureDataset:
    """Utterances of the manifest rows given, with features of several stores (one per modality).

    The run's classes (`classes`) are those whose p_<code> column the rows hold (medusa.labels.classes_of: the
    manifest holds exactly the run's); targets have one column per class, in that order.

    Training targets (`targets`, one row per utterance; `has_target` says which rows have one):
    - soft (default): the vote distribution over the run's classes (the manifest's p_ columns). Rows whose votes
      are all `Other-...` (or that have no annotator rows) have none (NaN). X and O rows with class votes keep
      theirs: the paper's point (section 3.2) is that they carry information a consensus label throws away.
    - one_hot (Table 2's ablation, the standard training of the field): the consensus class. X and O rows, and a
      consensus that is not one of the run's classes, name no class; rows without class votes are left out too,
      so that the one-hot run trains on exactly the rows a conventional recipe would. Rows without a target
      hold NaN, never an all-zero row: an all-zero target would still train the attribute head and dilute the
      batch's cross-entropy, and a NaN that slipped into a batch shows up as a non-finite loss instead of a
      silently different training.
    """

    def __init__(self, rows: pd.DataFrame, stores: list[FeatureStore], pools: list[int], one_hot: bool = False):
        if len(stores) != len(pools):
            raise ValueError(f"{len(stores)} stores but {len(pools)} pooling factors")
        for store in stores:
            missing = [u for u in rows["utt_id"] if u not in store]
            if missing:
                raise KeyError(f"{len(missing)} utterances are not in the feature store {store.root} "
                               f"(e.g. {missing[0]}); rerun its extract stage")
        self.rows = rows.reset_index(drop=True)
        self.stores, self.pools = stores, pools
        self.one_hot = one_hot
        self.labels = self.rows["label"].to_numpy()
        self.classes = classes_of(self.rows)
        soft = self.rows[list(target_columns(self.classes))].to_numpy(dtype=np.float32)
        has_votes = ~np.isnan(soft).any(1)
        if one_hot:  # the ablation: the consensus class as a one-hot target
            in_class = np.isin(self.labels, self.classes)
            self.has_target = in_class & has_votes
            self.targets = (self.labels[:, None] == np.asarray(self.classes)[None, :]).astype(np.float32)
            self.targets[~self.has_target] = np.nan
        else:
            self.has_target = has_votes
            self.targets = soft
        self.attributes = scale_attributes(self.rows[list(ATTRIBUTES)].to_numpy(dtype=np.float32))
        self.lengths = np.asarray([sum(pooled_length(s.lengths[u], p) for s, p in zip(stores, pools))
                                   for u in self.rows["utt_id"]])

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: np.ndarray | list[int]) -> Batch:
        ids = [self.rows.at[i, "utt_id"] for i in idx]
        xs, masks = batch_from_arrays([[store[u] for u in ids] for store in self.stores], self.pools,
                                      [store.dim for store in self.stores])
        return Batch(xs, masks, torch.from_numpy(self.targets[idx]), torch.from_numpy(self.attributes[idx]), ids)

    def batches(self, index_lists: Sequence[np.ndarray | list[int]], ahead: int | None = None
                ) -> Iterator[Batch]:
        """`batch(idx)` for each of `index_lists`, in order, loaded up to `ahead` (PREFETCH_BATCHES) in advance by
        PREFETCH_THREADS background threads while the caller computes on the current one.

        Why: at the paper's sizes a training batch reads ~19 MB of float16 frames from stores that do not fit in
        RAM (reports/benchmarks.md, "Scale simulation": 41 ms a batch from a cold page cache against ~19 ms of
        estimated GPU compute; prefetched, one arrives every 16.5 ms), so loading in line would leave the GPU waiting. Threads rather than DataLoader worker processes:
        the time goes to page faults and copies, which release the GIL, and a thread shares the stores' memory
        maps instead of pickling batches between processes. Loading draws no random numbers, so the batches, and
        everything trained on them, are the same with or without prefetching."""
        ahead = PREFETCH_BATCHES if ahead is None else ahead
        if ahead < 1:
            yield from (self.batch(idx) for idx in index_lists)
            return
        with ThreadPoolExecutor(max_workers=PREFETCH_THREADS, thread_name_prefix="batches") as pool:
            pending: deque[Future] = deque()
            todo = iter(index_lists)
            try:
                for idx in itertools.islice(todo, ahead):
                    pending.append(pool.submit(self.batch, idx))
                while pending:
                    batch = pending.popleft().result()
                    nxt = next(todo, None)
                    if nxt is not None:
                        pending.append(pool.submit(self.batch, nxt))
                    yield batch
            finally:  # the caller stopped early (an error, a break): drop what was loaded ahead
                for future in pending:
                    future.cancel()


def input_statistics(data: FeatureDataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per modality, the mean and standard deviation of every input dimension over the frames DeepSER sees
    (pooled as in `data.pools`) of every utterance of `data` (the training split): train.standardise.

    Pooled rather than raw frames, because the model reads pooled ones and pooling shrinks frame-to-frame
    variance. scikit-learn's StandardScaler.partial_fit does the streaming (one utterance at a time, float64,
    Chan's merge) and leaves a scale of 1 for a dimension that never varies (a constant would divide by zero)."""
    statistics = []
    for store, pool in zip(data.stores, data.pools):
        scaler = StandardScaler()
        for u in tqdm(data.rows["utt_id"], desc=f"input statistics of {store.root.name}", unit="utt", leave=False):
            frames = pool_frames(np.asarray(store[u], dtype=np.float32), pool)
            if len(frames):  # an utterance without frames adds nothing (partial_fit refuses 0 rows)
                scaler.partial_fit(frames.astype(np.float64))
        if not hasattr(scaler, "mean_"):
            raise ValueError(f"{store.root}: no frames at all for the {len(data)} training utterances")
        statistics.append((scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32)))
    return statistics


def bucketed(order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar length from the utterances in `order` (shuffled chunks of a length sort), in random
    batch order: little padding, yet a different mix every epoch."""
    # Sort a random permutation by length, so equal lengths are tie-broken randomly; then chunk and shuffle.
    shuffled = rng.permutation(order)
    by_length = shuffled[np.argsort(lengths[shuffled], kind="stable")]
    batches = [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
