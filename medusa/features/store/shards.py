"""Sharded extraction: `shard_items` cuts a work list into contiguous blocks, `merge_stores` joins their stores.

Extraction cuts its list of batches with `shard_items`, each shard writes its own store (`shard_dir`), and
`merge_stores` joins them by concatenating their frames in shard order -- the order one writer would have added
them in -- so one extraction and the merged shards of the same work list give byte-identical stores. Frames are
never reordered or copied twice: a merge moves the first shard's frames and appends the others, deleting each
shard once it is appended, so that it needs at most one shard's size of extra disk (a feature store of
MSP-Podcast is ~70-90 GB). Its plan and progress (merge.json) make an interrupted merge resumable.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medusa.features.store.reader import (
    DTYPE,
    DTYPE_NAME,
    FRAMES_FILE,
    INDEX_FILE,
    META_FILE,
    CorruptStoreError,
    FeatureStore,
    IncompleteStoreError,
    is_store,
    partial_dir,
    user_meta,
)
from medusa.features.store.workdir import (
    MERGE_FILE,
    MERGE_INDEX_FILE,
    check_replaceable,
    fsync_path,
    json_text,
    move_into_place,
    write_index,
    write_text_durably,
)

log = logging.getLogger(__name__)


def _check_shard(shard: int, n_shards: int) -> None:
    for name, value in (("shard", shard), ("n_shards", n_shards)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard must satisfy 0 <= shard < n_shards, got shard={shard}, n_shards={n_shards}")


def shard_items(items: Sequence[Any], shard: int, n_shards: int, weights: Sequence[float] | None = None
                ) -> list[Any]:
    """Shard `shard` of `n_shards`: a contiguous block of `items`; the blocks, in shard order, are `items` again.

    Blocks hold about equal shares of `weights` (one per item, e.g. a batch's audio seconds; default 1 each): an
    item goes to the shard whose share holds the midpoint of its weight in the running total. Contiguous blocks are
    what lets `merge_stores` join the shards' stores by concatenating their frames, in the order one writer would
    have added them. Deterministic given the order of `items` and the weights.
    """
    _check_shard(shard, n_shards)
    items = list(items)
    w = np.ones(len(items)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (len(items),) or (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"weights must be {len(items)} finite numbers >= 0, one per item")
    total = w.sum()
    if total <= 0:
        w, total = np.ones(len(items)), float(len(items))
    midpoints = np.cumsum(w) - w / 2
    owner = np.minimum((midpoints / total * n_shards).astype(int), n_shards - 1)
    return [item for item, o in zip(items, owner) if o == shard]


def shard_dir(root: str | Path, shard: int, n_shards: int) -> Path:
    """The store folder of one shard: `<root>.shard-<shard>-of-<n_shards>` beside the store. Beside it, not in it:
    DVC deletes a stage's output folder before running the stage, and the stage must find shards extracted before
    it (SLURM array jobs, an interrupted run) to merge or resume them."""
    _check_shard(shard, n_shards)
    root = Path(root)
    return root.with_name(f"{root.name}.shard-{shard}-of-{n_shards}")


def is_shard_of(path: str | Path, root: str | Path) -> bool:
    path, root = Path(path).resolve(), Path(root).resolve()
    return path.parent == root.parent and path.name.startswith(root.name + ".shard-")


def _append_file(src: Path, dst: Any, desc: str) -> None:
    """Write the bytes of `src` into the open binary file `dst` at its position (kernel-side copy where the OS
    offers one: os.copy_file_range, which may also share blocks on file systems with reflinks)."""
    from tqdm import tqdm

    size = src.stat().st_size
    with open(src, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=desc, leave=False) as bar:
        done = 0
        while done < size:
            step = min(size - done, 1 << 26)
            if hasattr(os, "copy_file_range"):
                n = os.copy_file_range(f.fileno(), dst.fileno(), step)
            else:  # pragma: no cover - not Linux
                chunk = f.read(step)
                n = dst.write(chunk) or 0
            if n <= 0:
                raise OSError(f"could not append {src} (copied {done} of {size} bytes)")
            done += n
            bar.update(n)


def merge_stores(shard_roots: Sequence[str | Path], out_root: str | Path) -> FeatureStore:
    """One store at `out_root` with all utterances of the stores `shard_roots`: their frames concatenated in the
    order given (never re-encoded or reordered), the index in sorted utt_id order. Merging the shards of a work
    list (`shard_items` blocks) gives the bytes one writer adding that list would have written. Returns the store.

    The shards must agree on dim and meta and share no utt_id. The merged store appears atomically, and an
    interrupted merge resumes when called again with the same shards.

    Disk: when the shards are `out_root`'s own (the `shard_dir(out_root, i, n)` layout), they are consumed: the
    first shard's frames are moved, each further shard's appended and then deleted, so the merge needs at most
    one shard's size of extra space; the emptied shards are deleted once the merged store is in place. Shards
    elsewhere are read and kept (the merged store then needs its full size besides them).
    """
    if not shard_roots:
        raise ValueError("merge_stores needs at least one store to merge")
    out_root = Path(out_root)
    roots = [Path(r) for r in shard_roots]
    if any(r.resolve() == out_root.resolve() for r in roots):
        raise ValueError(f"the merged store {out_root} cannot also be one of the stores being merged")
    if is_store(out_root) and (out_root / MERGE_FILE).is_file():
        (out_root / MERGE_FILE).unlink()  # a merge that died after moving its store into place
        for root in roots:
            if is_shard_of(root, out_root):
                shutil.rmtree(root, ignore_errors=True)
        return FeatureStore(out_root)
    consume = all(is_shard_of(r, out_root) for r in roots)
    wd = partial_dir(out_root)
    plan = _resumable_merge_plan(wd, roots)
    if plan is None:
        check_replaceable(out_root, roots)
        plan = _start_merge(wd, roots, consume)
    row_bytes = plan["dim"] * DTYPE.itemsize
    frames_path = wd / FRAMES_FILE
    for k, shard in enumerate(plan["shards"]):
        if k in plan["done"]:
            continue
        src = Path(shard["root"]) / FRAMES_FILE
        begin, end = shard["begin"] * row_bytes, shard["end"] * row_bytes
        have = frames_path.stat().st_size if frames_path.exists() else 0
        if not src.exists() and have == end:
            pass  # moved (or appended and deleted) before the progress was recorded
        elif plan["consume"] and begin == 0:
            os.replace(src, frames_path)  # the first shard's frames become the merged file: no copy
        else:
            with open(frames_path, "r+b" if frames_path.exists() else "w+b") as dst:
                dst.truncate(begin)  # the torn tail of an append that died
                dst.seek(begin)      # (not mode "a": copy_file_range refuses a file opened for appending)
                _append_file(src, dst, f"merging {Path(shard['root']).name}")
                dst.flush()
                os.fsync(dst.fileno())
        fsync_path(wd)
        plan["done"].append(k)
        write_text_durably(wd / MERGE_FILE, json_text(plan))
        if plan["consume"]:
            src.unlink(missing_ok=True)
    if not frames_path.exists():
        frames_path.touch()  # every shard empty
    meta = {**plan["meta"], "dim": plan["dim"], "dtype": DTYPE_NAME, "n_utterances": plan["n_utterances"],
            "n_frames": plan["n_frames"]}
    write_text_durably(wd / META_FILE, json_text(meta))
    os.replace(wd / MERGE_INDEX_FILE, wd / INDEX_FILE)
    fsync_path(wd)
    # merge.json goes last, after the rename: until then a rerun knows what this folder is
    move_into_place(wd, out_root, roots)
    (out_root / MERGE_FILE).unlink()
    if plan["consume"]:
        for root in roots:  # emptied: only their index and meta are left
            shutil.rmtree(root, ignore_errors=True)
    return FeatureStore(out_root)


def _shard_record(store: FeatureStore) -> dict[str, Any]:
    from medusa.io import sha256_file

    return {"root": str(store.root.resolve()), "index_sha256": sha256_file(store.root / INDEX_FILE),
            "n_frames": store.n_frames}


def _start_merge(wd: Path, roots: list[Path], consume: bool) -> dict[str, Any]:
    """Check the shards, write the merged index and the plan into a fresh work folder; return the plan."""
    stores = [FeatureStore(r) for r in roots]
    first = stores[0]
    for s in stores[1:]:
        if s.dim != first.dim:
            raise ValueError(f"cannot merge stores of different dim: {first.root} has {first.dim}, "
                             f"{s.root} has {s.dim}")
        if user_meta(s.meta) != user_meta(first.meta):
            raise ValueError(f"cannot merge stores with different meta: {first.root} has {user_meta(first.meta)}, "
                             f"{s.root} has {user_meta(s.meta)}")
    owner: dict[str, Path] = {}
    ids: list[str] = []
    offsets: list[int] = []
    lengths: list[int] = []
    shards, base = [], 0
    for s in stores:
        for u in s.utt_ids:
            if u in owner:
                raise ValueError(f"utt_id {u!r} is in both {owner[u]} and {s.root}")
            owner[u] = s.root
            offset, length = s._where[u]
            ids.append(u)
            offsets.append(base + offset)
            lengths.append(length)
        shards.append({**_shard_record(s), "begin": base, "end": base + s.n_frames})
        base += s.n_frames
    if wd.exists():
        shutil.rmtree(wd)
    wd.mkdir(parents=True)
    fsync_path(wd.parent)
    write_index(wd / MERGE_INDEX_FILE, ids, offsets, lengths)
    plan = {"dim": first.dim, "meta": user_meta(first.meta), "n_utterances": len(ids), "n_frames": base,
            "consume": consume, "shards": shards, "done": []}
    write_text_durably(wd / MERGE_FILE, json_text(plan))
    return plan


def _resumable_merge_plan(wd: Path, roots: list[Path]) -> dict[str, Any] | None:
    """The plan of an unfinished merge of exactly these shards (those not yet moved unchanged since), or None when
    there is none or it cannot be continued (then it is discarded, if no shard was consumed by it yet)."""
    plan_file = wd / MERGE_FILE
    if not plan_file.is_file():
        if wd.exists() and any(wd.iterdir()):
            raise ValueError(f"{wd} exists and is not an unfinished merge; it is where the merged store is "
                             f"written: delete it (or finish the extraction it belongs to) and merge again")
        return None
    plan = json.loads(plan_file.read_text(encoding="utf-8"))
    same_list = [s["root"] for s in plan["shards"]] == [str(r.resolve()) for r in roots]
    changed = []
    if same_list:
        for k, (shard, root) in enumerate(zip(plan["shards"], roots)):
            if k in plan["done"] or (plan["consume"] and not (root / FRAMES_FILE).exists()):
                continue
            try:
                if _shard_record(FeatureStore(root)) != {key: shard[key] for key in ("root", "index_sha256",
                                                                                    "n_frames")}:
                    changed.append(str(root))
            except (IncompleteStoreError, CorruptStoreError):
                changed.append(str(root))
    if same_list and not changed:
        log.info("resuming the merge in %s: %d of %d shards already merged", wd, len(plan["done"]),
                 len(plan["shards"]))
        return plan
    if plan["consume"] and plan["done"]:
        raise CorruptStoreError(f"{wd} is an unfinished merge that already consumed shards "
                                f"{plan['done']}, but the shards now given differ ({', '.join(changed) or 'another list'}): "
                                f"its frames are only in {wd}; rerun that merge with its own shards, or delete {wd} "
                                "and extract again")
    log.warning("discarding the unfinished merge %s: it was begun with other shard stores", wd)
    shutil.rmtree(wd)
    return None
