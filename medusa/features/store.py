"""Frame-level feature stores: the frames of one encoder for many utterances, read one utterance at a time.

A store is a folder with three files:

    frames.f16     all frames, one flat little-endian float16 array (n_frames, dim), row-major, utterances in the
                   order they were added; read via np.memmap
    index.parquet  utt_id (string), offset (int64, first frame row), length (int64, number of frames), one row per
                   utterance in sorted utt_id order
    meta.json      the writer's meta dict plus dim, dtype ("float16"), n_utterances, n_frames

`FeatureStoreWriter` builds a store in a work folder beside it (`<root>.partial`) and renames that folder to
`<root>` only when it is closed without error, so a reader never sees half a store. While it writes, it commits
utterances durably in chunks (frames fsynced first, then their entries appended to `journal.jsonl`), so an
extraction that dies is resumed by opening a new writer on the same root and skipping `writer.done`. Added in
the same order, an interrupted-then-resumed extraction gives a store byte-identical to an uninterrupted one.

Layout of the work folder `<root>.partial` (private to this module):

    writer.json    dim, dtype, meta and input fingerprint of the writer that created it: a writer with other
                   settings or inputs discards the folder (with a log line) and starts afresh
    frames.f16     frames appended in add order; bytes past the last committed utterance are a torn tail
    journal.jsonl  one JSON line {"utt_id", "offset", "length"} per committed utterance, append-only

The input fingerprint (`inputs`, medusa.features.fingerprint: the work list with file identities, the encoder spec) stays
in writer.json: a finished store's meta.json holds only what makes the features, so that it is the same on every
machine and clone for the same corpus.

Sharding: `shard_items` cuts a work list (extraction cuts its list of batches) into contiguous blocks, each shard
writes its own store (`shard_dir`), and `merge_stores` joins them by concatenating their frames in shard order --
the order one writer would have added them in -- so one extraction and the merged shards of the same work list give
byte-identical stores. Frames are never reordered or copied twice: closing a writer writes only the index and meta
beside its frames, and a merge moves the first shard's frames and appends the others, deleting each shard once it
is appended, so that it needs at most one shard's size of extra disk (a feature store of MSP-Podcast is ~70-90 GB).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medusa.io import atomic_path

log = logging.getLogger(__name__)

FRAMES_FILE = "frames.f16"
INDEX_FILE = "index.parquet"
META_FILE = "meta.json"
JOURNAL_FILE = "journal.jsonl"
MERGE_FILE = "merge.json"                  # a merge's plan and progress (merge_stores)
MERGE_INDEX_FILE = "merge-index.parquet"   # the merged index, written before any frames are moved
WRITER_FILE = "writer.json"
INPUTS_FILE = "inputs.json"   # the input fingerprint while a close() is between writer.json and the rename
PARTIAL_SUFFIX = ".partial"

DTYPE = np.dtype("<f2")  # explicit little-endian, so the file means the same on any machine
DTYPE_NAME = "float16"
# Keys the store writes into meta.json itself; a writer's meta may not use them.
RESERVED_META_KEYS = ("dim", "dtype", "n_utterances", "n_frames")
STORE_FILES = (FRAMES_FILE, INDEX_FILE, META_FILE)


class IncompleteStoreError(FileNotFoundError):
    """The folder is not a complete feature store (missing, or an extraction that has not finished)."""


class CorruptStoreError(RuntimeError):
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


def _normalise_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The meta as it reads back from JSON (tuples become lists ...), so that comparisons are exact."""
    meta = dict(meta or {})
    reserved = sorted(set(meta) & set(RESERVED_META_KEYS))
    if reserved:
        raise ValueError(f"meta may not contain {reserved}: the store writes these keys itself")
    try:
        return json.loads(json.dumps(meta, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta must be a JSON-serialisable dict with string keys and finite numbers: {e}") from e


def _user_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A store's meta.json without the keys the store added."""
    return {k: v for k, v in meta.items() if k not in RESERVED_META_KEYS}


def _json_text(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, allow_nan=False) + "\n"


def _fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder, so that the names created or renamed in it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_durably(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, the data on disk before the name points to it."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    _fsync_path(path.parent)


def _write_index(path: Path, utt_ids: Sequence[str], offsets: Sequence[int], lengths: Sequence[int]) -> None:
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
        _fsync_path(tmp)
    _fsync_path(path.parent)


def _read_index(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    table = pq.read_table(path)
    missing = {"utt_id", "offset", "length"} - set(table.column_names)
    if missing:
        raise CorruptStoreError(f"{path} lacks the columns {sorted(missing)}")
    cols = table.to_pydict()
    return ([str(u) for u in cols["utt_id"]], np.asarray(cols["offset"], dtype=np.int64),
            np.asarray(cols["length"], dtype=np.int64))


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    """Write all of `data`'s bytes at `offset` (os.pwrite may write fewer bytes than asked)."""
    view = memoryview(data.reshape(-1).view(np.uint8))
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _remove_stale_tmp_files(folder: Path) -> None:
    """Drop the temporary files atomic_path leaves behind when a process dies inside it."""
    for p in folder.glob(".*.tmp-*"):
        if p.is_file():
            p.unlink()


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

        utt_ids, offsets, lengths = _read_index(self.root / INDEX_FILE)
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


# ---------------------------------------------------------------------------------------------------- writer


class _SetView(Set):
    """A read-only live view of a set: `u in writer.done` in a loop must not copy the set on every test."""

    def __init__(self, items: set[str]):
        self._items = items

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> frozenset:
        return frozenset(it)  # results of |, &, - are plain frozensets, not views

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"done({len(self._items)} utt_ids)"


class FeatureStoreWriter:
    """Append utterances to a store that appears at `root` atomically when the writer is closed.

    Use it as a context manager (leaving the block without an exception finalises the store) or call
    `close()`. If a work folder `<root>.partial` exists, the writer resumes it: `done` holds the utt_ids
    already committed, which the caller skips; their frames are kept and any torn tail is cut off.

    Commits happen every `commit_every` adds and on `flush()`. An exception that leaves the `with` block
    commits what was added (every `add` that returned wrote whole frames) and leaves the work folder for a
    resume; a process that dies loses only the adds since the last commit. One writer per root at a time.

    A work folder is resumed only if it was made with the same dim, meta and `inputs` (a fingerprint of the work
    list, e.g. medusa.features.fingerprint.inputs_fingerprint; kept in writer.json, not in meta.json). Otherwise
    `on_mismatch="restart"` (the default) deletes it with a log line and starts afresh; `"raise"` raises
    ValueError instead. The finished store's frames are in add order (closing never rewrites them) and its index
    is in sorted utt_id order.
    """

    def __init__(self, root: str | Path, dim: int, meta: Mapping[str, Any] | None = None, *,
                 commit_every: int = 256, inputs: str | None = None, on_mismatch: str = "restart",
                 _replaceable_children: Sequence[Path] = ()):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if isinstance(commit_every, bool) or not isinstance(commit_every, (int, np.integer)) or commit_every < 1:
            raise ValueError(f"commit_every must be a positive int, got {commit_every!r}")
        self.root = Path(root)
        self.work_dir = partial_dir(self.root)
        self.dim = int(dim)
        self.meta = _normalise_meta(meta)
        self.commit_every = int(commit_every)
        if on_mismatch not in ("restart", "raise"):
            raise ValueError(f"on_mismatch must be 'restart' or 'raise', got {on_mismatch!r}")
        if inputs is not None and not isinstance(inputs, str):
            raise ValueError(f"inputs must be a str fingerprint or None, got {inputs!r}")
        self.inputs, self.on_mismatch = inputs, on_mismatch
        # Folders that may sit in `root` when it is replaced (merge_stores: the shard stores it consumes).
        self._replaceable_children = tuple(_replaceable_children)
        _check_replaceable(self.root, self._replaceable_children)  # fail now, not after hours of extraction

        self._ids: list[str] = []  # committed, then pending, in add order
        self._offsets: list[int] = []
        self._lengths: list[int] = []
        self._done: set[str] = set()
        self._n_committed = 0
        self._n_frames = 0
        self._state = "open"  # -> "closed" (finalised) or "abandoned" (left for a resume)
        self._frames_f: Any = None

        self._open_work_dir()
        self.resumed: int = self._n_committed  # utterances recovered from an earlier, unfinished run
        # Unbuffered: every add is on its way to the file when it returns, and a writer that is dropped without
        # close() has no buffer left to spill into the file later (after a new writer has resumed it).
        self._frames_f = open(self.work_dir / FRAMES_FILE, "r+b", buffering=0)

    # -- setting up / resuming the work folder

    def _writer_record(self) -> dict[str, Any]:
        return {"dim": self.dim, "dtype": DTYPE_NAME, "meta": self.meta, "inputs": self.inputs}

    def _settings_mismatch(self, dim: int, meta: dict[str, Any], inputs: str | None) -> str | None:
        """Why a work folder made with (dim, meta, inputs) cannot be continued by this writer, or None."""
        if dim != self.dim:
            return f"it has dim {dim}, this writer has dim {self.dim}"
        if meta != self.meta:
            changed = sorted(k for k in set(meta) | set(self.meta) if meta.get(k) != self.meta.get(k))
            return (f"it was written with meta {meta}, this writer has meta {self.meta} (keys that differ: "
                    f"{', '.join(changed)})")
        if inputs != self.inputs:
            return (f"it was made from other inputs (fingerprint {str(inputs)[:12]}, this writer's "
                    f"{str(self.inputs)[:12]}: the work list, its audio files or transcripts changed)")
        return None

    def _discard_or_raise(self, reason: str) -> None:
        """A work folder this writer cannot continue: start afresh (logged), or raise (on_mismatch="raise")."""
        wd = self.work_dir
        if self.on_mismatch == "raise":
            raise ValueError(f"the unfinished store {wd} cannot be resumed: {reason}; delete {wd} to start over")
        log.warning("discarding the unfinished store %s and starting afresh: %s", wd, reason)
        shutil.rmtree(wd)
        wd.mkdir()
        _fsync_path(wd.parent)
        _write_text_durably(wd / WRITER_FILE, _json_text(self._writer_record()))
        (wd / FRAMES_FILE).touch()

    def _open_work_dir(self) -> None:
        """Create the work folder, or recover what an earlier writer committed to it."""
        wd = self.work_dir
        if not wd.exists():
            wd.parent.mkdir(parents=True, exist_ok=True)
            wd.mkdir()
            _fsync_path(wd.parent)
        elif not wd.is_dir():
            raise ValueError(f"{wd} exists and is not a folder; it is where the store {self.root} is written")
        _remove_stale_tmp_files(wd)
        writer_file = wd / WRITER_FILE

        if not writer_file.exists():
            if (wd / INDEX_FILE).is_file() and (wd / META_FILE).is_file() and (wd / FRAMES_FILE).is_file():
                # A close() died between finalising the folder and renaming it: it is a whole store.
                self._recover_finalised()
            elif (wd / MERGE_FILE).is_file():
                raise ValueError(f"{wd} is an unfinished merge of shard stores (merge_stores): run the merge "
                                 f"again to finish it")
            elif any(wd.iterdir()):
                # writer.json is written before any frames, so frames without it were not written by us.
                raise CorruptStoreError(f"{wd} has files but no {WRITER_FILE}: it was not made by a "
                                        f"FeatureStoreWriter; delete it to start over")
            else:
                # A new folder (or one whose creation died before writer.json): writer.json comes first, so that
                # a folder with frames but no writer.json is never ours.
                _write_text_durably(writer_file, _json_text(self._writer_record()))
                (wd / FRAMES_FILE).touch()
            return

        record = json.loads(writer_file.read_text(encoding="utf-8"))
        if record.get("dtype") != DTYPE_NAME:
            raise ValueError(f"{wd} holds {record.get('dtype')!r} frames, this writer writes {DTYPE_NAME!r}")
        reason = self._settings_mismatch(int(record["dim"]), record["meta"], record.get("inputs"))
        if reason is not None:
            self._discard_or_raise(reason)
            return
        # index/meta of a close() that died before it got rid of writer.json: stale, rewritten on close.
        for name in (INDEX_FILE, META_FILE):
            (wd / name).unlink(missing_ok=True)
        (wd / FRAMES_FILE).touch()
        self._replay_journal()

    def _recover_finalised(self) -> None:
        """Turn a finalised-but-not-renamed work folder back into a resumable one (journal from its index)."""
        wd = self.work_dir
        meta = json.loads((wd / META_FILE).read_text(encoding="utf-8"))
        inputs_file = wd / INPUTS_FILE
        if inputs_file.is_file():
            recorded = json.loads(inputs_file.read_text(encoding="utf-8")).get("inputs")
            reason = self._settings_mismatch(int(meta["dim"]), _user_meta(meta), recorded)
        else:
            reason = self._settings_mismatch(int(meta["dim"]), _user_meta(meta), self.inputs)
            if reason is None and self.inputs is not None:
                # the close() died after it removed the fingerprint: the inputs cannot be checked
                reason = "its input fingerprint was removed while it was being closed, so its inputs cannot be checked"
        if reason is not None:
            self._discard_or_raise(reason)
            return
        utt_ids, offsets, lengths = _read_index(wd / INDEX_FILE)
        order = np.argsort(offsets, kind="stable")  # the journal lists utterances in add (= frame) order
        lines = "".join(json.dumps({"utt_id": utt_ids[i], "offset": int(offsets[i]), "length": int(lengths[i])})
                        + "\n" for i in order)
        # Journal first, writer.json second: until writer.json exists, this state is recognised again.
        _write_text_durably(wd / JOURNAL_FILE, lines)
        _write_text_durably(wd / WRITER_FILE, _json_text(self._writer_record()))
        for name in (INDEX_FILE, META_FILE):
            (wd / name).unlink()
        inputs_file.unlink(missing_ok=True)
        self._replay_journal()

    def _replay_journal(self) -> None:
        """Load the committed entries; cut a torn last journal line and the frames past the last commit."""
        wd = self.work_dir
        journal = wd / JOURNAL_FILE
        data = journal.read_bytes() if journal.exists() else b""
        # Appends are cut at a crash, so only the last line can be incomplete (it lacks its newline).
        good_len = data.rfind(b"\n") + 1
        for lineno, line in enumerate(data[:good_len].splitlines(), start=1):
            try:
                entry = json.loads(line)
                utt_id, offset, length = entry["utt_id"], int(entry["offset"]), int(entry["length"])
            except (ValueError, KeyError, TypeError) as e:
                raise CorruptStoreError(f"{journal} line {lineno} is unreadable ({e}); delete {wd} to start "
                                        f"over") from None
            if not isinstance(utt_id, str) or offset != self._n_frames or length < 1 or utt_id in self._done:
                raise CorruptStoreError(f"{journal} line {lineno} does not follow the lines before it; "
                                        f"delete {wd} to start over")
            self._append_entry(utt_id, offset, length)
        self._n_committed = len(self._ids)

        frames = wd / FRAMES_FILE
        committed_bytes = self._n_frames * self.dim * DTYPE.itemsize
        size = frames.stat().st_size
        if size < committed_bytes:
            raise CorruptStoreError(f"{journal} commits {self._n_frames} frames but {frames} holds only "
                                    f"{size // (self.dim * DTYPE.itemsize)}; delete {wd} to start over")
        if good_len < len(data):
            with open(journal, "r+b") as f:
                f.truncate(good_len)
                os.fsync(f.fileno())
        if size > committed_bytes:  # frames of adds that were never committed, or half of one
            with open(frames, "r+b") as f:
                f.truncate(committed_bytes)
                os.fsync(f.fileno())

    def _append_entry(self, utt_id: str, offset: int, length: int) -> None:
        self._ids.append(utt_id)
        self._offsets.append(offset)
        self._lengths.append(length)
        self._n_frames = offset + length
        self._done.add(utt_id)

    def _check_open(self) -> None:
        if self._state != "open":
            hint = ("the store is finished" if self._state == "closed"
                    else "open a new FeatureStoreWriter on the same root to resume it")
            raise RuntimeError(f"the writer for {self.root} is {self._state}: {hint}")

    # -- public API

    @property
    def done(self) -> Set[str]:
        """utt_ids in the store so far: those recovered from an earlier run and those added by this writer.

        A read-only, live set-like view (cheap to test membership in; `set(writer.done)` for a snapshot).
        """
        return _SetView(self._done)

    @property
    def n_committed(self) -> int:
        """How many utterances are durably committed (would survive the process dying now)."""
        return self._n_committed

    def add(self, utt_id: str, frames: np.ndarray) -> None:
        """Append the frames (T, dim) of one utterance; they are stored as float16.

        Raises ValueError naming `utt_id` for a duplicate, for anything but a real float array of shape
        (T >= 1, dim), and for values that are not finite in float16 (NaN, inf, or |x| > 65504).
        """
        self._check_open()
        if not isinstance(utt_id, str) or not utt_id:
            raise ValueError(f"utt_id must be a non-empty str, got {utt_id!r}")
        if utt_id in self._done:
            raise ValueError(f"utt_id {utt_id!r} is already in the store {self.root}")
        arr = np.asarray(frames)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"utt_id {utt_id!r}: frames must be a float array, got dtype {arr.dtype}")
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != self.dim:
            raise ValueError(f"utt_id {utt_id!r}: frames have shape {arr.shape}, expected (T >= 1, {self.dim})")
        with np.errstate(over="ignore"):  # overflow becomes inf, which the check below reports with the utt_id
            arr16 = np.ascontiguousarray(arr, dtype=DTYPE)
        if not np.isfinite(arr16).all():
            # An inf from float16 overflow (or a NaN from the encoder) would silently poison every model later.
            raise ValueError(f"utt_id {utt_id!r}: frames of shape {arr.shape} hold values that are not finite in "
                             f"float16 (NaN, inf, or |x| > 65504)")
        offset = self._n_frames
        _pwrite_all(self._frames_f.fileno(), arr16, offset * self.dim * DTYPE.itemsize)
        self._append_entry(utt_id, offset, arr16.shape[0])
        if len(self._ids) - self._n_committed >= self.commit_every:
            self.flush()

    def flush(self) -> None:
        """Commit the utterances added since the last commit durably: frames to disk first, then the journal.

        A crash at any moment leaves the journal listing only utterances whose frames are on disk: the journal
        lines are written only after the frames are fsynced, and a torn last line is dropped on resume.
        """
        self._check_open()
        pending = range(self._n_committed, len(self._ids))
        if not pending:
            return
        os.fsync(self._frames_f.fileno())
        lines = "".join(json.dumps({"utt_id": self._ids[i], "offset": self._offsets[i],
                                    "length": self._lengths[i]}) + "\n" for i in pending)
        journal = self.work_dir / JOURNAL_FILE
        created = not journal.exists()
        with open(journal, "ab") as f:
            f.write(lines.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        if created:
            _fsync_path(self.work_dir)
        self._n_committed = len(self._ids)

    def close(self) -> FeatureStore:
        """Commit, finalise (index.parquet, meta.json) and rename the work folder to `root`; return the store.

        An existing store at `root` is replaced. Closing twice is harmless.
        """
        if self._state == "closed":
            return FeatureStore(self.root)
        self.flush()  # raises if abandoned
        self._frames_f.close()
        try:
            self._finalise()
        except BaseException:
            self._state = "abandoned"  # the work folder stays; a new writer resumes (or finishes) it
            raise
        self._state = "closed"
        return FeatureStore(self.root)

    def _finalise(self) -> None:
        wd = self.work_dir
        _write_index(wd / INDEX_FILE, self._ids, self._offsets, self._lengths)
        meta = {**self.meta, "dim": self.dim, "dtype": DTYPE_NAME, "n_utterances": len(self._ids),
                "n_frames": self._n_frames}
        _write_text_durably(wd / META_FILE, _json_text(meta))
        # The input fingerprint outlives writer.json until the rename, so that a close() that dies in between
        # leaves a store whose inputs can still be checked (and kept) by the next writer.
        _write_text_durably(wd / INPUTS_FILE, _json_text({"inputs": self.inputs}))
        # writer.json goes before the journal: a folder with index + meta and no writer.json is a finished store.
        (wd / WRITER_FILE).unlink()
        (wd / JOURNAL_FILE).unlink(missing_ok=True)
        (wd / INPUTS_FILE).unlink()   # private to the work folder: the finished store holds its three files only
        _remove_stale_tmp_files(wd)
        _fsync_path(wd)
        _move_into_place(wd, self.root, self._replaceable_children)

    def abandon(self) -> None:
        """Release the files without committing pending adds or finalising, as if the process had died."""
        if self._frames_f is not None and not self._frames_f.closed:
            self._frames_f.close()
        if self._state == "open":
            self._state = "abandoned"

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        # Keep what was added for the resume; a failure here must not hide the exception that got us here.
        try:
            if self._state == "open":
                self.flush()
        except Exception:
            pass
        self.abandon()

    def __del__(self) -> None:
        # Never finalise from the garbage collector: a writer dropped without close() is an interrupted run.
        f = getattr(self, "_frames_f", None)
        if f is not None and not f.closed:
            f.close()

    def __repr__(self) -> str:
        return (f"FeatureStoreWriter({str(self.root)!r}, dim={self.dim}, n_utterances={len(self._ids)}, "
                f"committed={self._n_committed}, resumed={self.resumed})")


def _check_replaceable(root: Path, allowed_children: Sequence[Path] = ()) -> None:
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


def _move_into_place(work_dir: Path, root: Path, allowed_children: Sequence[Path] = ()) -> None:
    """Rename the finished work folder to `root`, replacing a store there (a folder cannot be os.replace'd)."""
    _check_replaceable(root, allowed_children)
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.replaced-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(root, old)
    os.rename(work_dir, root)
    _fsync_path(root.parent)
    if old is not None:
        shutil.rmtree(old)


# ---------------------------------------------------------------------------------------------------- shards


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
    """The store folder of one shard: `root/shard-<shard>-of-<n_shards>`."""
    _check_shard(shard, n_shards)
    return Path(root) / f"shard-{shard}-of-{n_shards}"


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

    Disk: when `out_root` is the folder that holds the shard stores (the `shard_dir(root, i, n)` layout) and
    nothing else, the shards are consumed: the first shard's frames are moved, each further shard's appended and
    then deleted, so the merge needs at most one shard's size of extra space; the emptied shards go when the
    merged store replaces the folder. Shards elsewhere are read and kept (the merged store then needs its full
    size besides them).
    """
    if not shard_roots:
        raise ValueError("merge_stores needs at least one store to merge")
    out_root = Path(out_root)
    roots = [Path(r) for r in shard_roots]
    if any(r.resolve() == out_root.resolve() for r in roots):
        raise ValueError(f"the merged store {out_root} cannot also be one of the stores being merged")
    if is_store(out_root) and (out_root / MERGE_FILE).is_file():
        (out_root / MERGE_FILE).unlink()  # a merge that died after moving its store into place
        return FeatureStore(out_root)
    consume = out_root.is_dir() and all(r.resolve().parent == out_root.resolve() for r in roots)
    wd = partial_dir(out_root)
    plan = _resumable_merge_plan(wd, roots)
    if plan is None:
        _check_replaceable(out_root, roots)
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
        _fsync_path(wd)
        plan["done"].append(k)
        _write_text_durably(wd / MERGE_FILE, _json_text(plan))
        if plan["consume"]:
            src.unlink(missing_ok=True)
    if not frames_path.exists():
        frames_path.touch()  # every shard empty
    meta = {**plan["meta"], "dim": plan["dim"], "dtype": DTYPE_NAME, "n_utterances": plan["n_utterances"],
            "n_frames": plan["n_frames"]}
    _write_text_durably(wd / META_FILE, _json_text(meta))
    os.replace(wd / MERGE_INDEX_FILE, wd / INDEX_FILE)
    _fsync_path(wd)
    # merge.json goes last, after the rename: until then a rerun knows what this folder is
    _move_into_place(wd, out_root, roots)
    (out_root / MERGE_FILE).unlink()
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
        if _user_meta(s.meta) != _user_meta(first.meta):
            raise ValueError(f"cannot merge stores with different meta: {first.root} has {_user_meta(first.meta)}, "
                             f"{s.root} has {_user_meta(s.meta)}")
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
    _fsync_path(wd.parent)
    _write_index(wd / MERGE_INDEX_FILE, ids, offsets, lengths)
    plan = {"dim": first.dim, "meta": _user_meta(first.meta), "n_utterances": len(ids), "n_frames": base,
            "consume": consume, "shards": shards, "done": []}
    _write_text_durably(wd / MERGE_FILE, _json_text(plan))
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
