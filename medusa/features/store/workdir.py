"""The work folder `<root>.partial` a store is built in, by a writer or a merge: its file names, the durable writes
both use, and the rename that makes the folder the store.

Layout of the work folder (private to medusa.features.store):

    writer.json          dim, dtype, meta and input fingerprint of the writer that created it: a writer with other
                         settings or inputs discards the folder (with a log line) and starts afresh
    frames.f16           frames appended in add order; bytes past the last committed utterance are a torn tail
    journal.jsonl        one JSON line {"utt_id", "offset", "length"} per committed utterance, append-only
    inputs.json          the input fingerprint while a close() is between writer.json and the rename
    merge.json           a merge's plan and progress (medusa.features.store.shards.merge_stores)
    merge-index.parquet  the merged index, written before any frames are moved

The input fingerprint (`inputs`, medusa.features.fingerprint: the work list with file identities, the encoder spec)
stays in writer.json: a finished store's meta.json holds only what makes the features, so that it is the same on
every machine and clone for the same corpus.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medusa.features.store.reader import is_store
from medusa.io import atomic_path

JOURNAL_FILE = "journal.jsonl"
MERGE_FILE = "merge.json"                  # a merge's plan and progress (merge_stores)
MERGE_INDEX_FILE = "merge-index.parquet"   # the merged index, written before any frames are moved
WRITER_FILE = "writer.json"
INPUTS_FILE = "inputs.json"   # the input fingerprint while a close() is between writer.json and the rename


def json_text(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, allow_nan=False) + "\n"


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder, so that the names created or renamed in it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_durably(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, the data on disk before the name points to it."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    fsync_path(path.parent)


def write_index(path: Path, utt_ids: Sequence[str], offsets: Sequence[int], lengths: Sequence[int]) -> None:
    """index.parquet in sorted utt_id order, with a fixed schema and no pandas metadata, so that equal indexes give
    equal bytes whatever order the utterances were added in."""
    order = sorted(range(len(utt_ids)), key=list(utt_ids).__getitem__)
    table = pa.table({
        "utt_id": pa.array([utt_ids[i] for i in order], type=pa.string()),
        "offset": pa.array([int(offsets[i]) for i in order], type=pa.int64()),
        "length": pa.array([int(lengths[i]) for i in order], type=pa.int64()),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
        fsync_path(tmp)
    fsync_path(path.parent)


def remove_stale_tmp_files(folder: Path) -> None:
    """Drop the temporary files atomic_path leaves behind when a process dies inside it."""
    for p in folder.glob(".*.tmp-*"):
        if p.is_file():
            p.unlink()


def check_replaceable(root: Path, allowed_children: Sequence[Path] = ()) -> None:
    """Only a store, or a folder holding nothing but `allowed_children`, may be replaced (and deleted).

    Anything else at `root` is someone else's data.
    """
    if not root.exists():
        return
    if root.is_dir():
        allowed = {Path(c).resolve() for c in allowed_children}
        if is_store(root) or all(child.resolve() in allowed for child in root.iterdir()):
            return
    raise ValueError(f"{root} exists and is not a feature store; refusing to replace it")


def move_into_place(work_dir: Path, root: Path, allowed_children: Sequence[Path] = ()) -> None:
    """Rename the finished work folder to `root`, replacing a store there (a folder cannot be os.replace'd)."""
    check_replaceable(root, allowed_children)
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.replaced-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(root, old)
    os.rename(work_dir, root)
    fsync_path(root.parent)
    if old is not None:
        shutil.rmtree(old)
