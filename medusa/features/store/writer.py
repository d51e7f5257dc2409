"""Writing a feature store: FeatureStoreWriter appends utterances to a work folder and closes it into a store.

`FeatureStoreWriter` builds a store in a work folder beside it (`<root>.partial`, medusa.features.store.workdir)
and renames that folder to `<root>` only when it is closed without error, so a reader never sees half a store.
While it writes, it commits utterances durably in chunks (medusa.features.store.journal), so an extraction that
dies is resumed by opening a new writer on the same root and skipping `writer.done`. Frames are never reordered or
copied twice: closing a writer writes only the index and meta beside its frames.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import numpy as np

from medusa.features.store.journal import append_journal, open_work_dir
from medusa.features.store.reader import (
    DTYPE,
    DTYPE_NAME,
    FRAMES_FILE,
    INDEX_FILE,
    META_FILE,
    RESERVED_META_KEYS,
    FeatureStore,
    partial_dir,
)
from medusa.features.store.workdir import (
    INPUTS_FILE,
    JOURNAL_FILE,
    WRITER_FILE,
    check_replaceable,
    fsync_path,
    json_text,
    move_into_place,
    remove_stale_tmp_files,
    write_index,
    write_text_durably,
)


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


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    """Write all of `data`'s bytes at `offset` (os.pwrite may write fewer bytes than asked)."""
    view = memoryview(data.reshape(-1).view(np.uint8))
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


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
        check_replaceable(self.root, self._replaceable_children)  # fail now, not after hours of extraction

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

    def _open_work_dir(self) -> None:
        """Create the work folder, or recover what an earlier writer committed to it."""
        for entry in open_work_dir(self.work_dir, self.root, self._writer_record(), self.on_mismatch):
            self._append_entry(*entry)
        self._n_committed = len(self._ids)

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
        append_journal(self.work_dir, [(self._ids[i], self._offsets[i], self._lengths[i]) for i in pending])
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
        write_index(wd / INDEX_FILE, self._ids, self._offsets, self._lengths)
        meta = {**self.meta, "dim": self.dim, "dtype": DTYPE_NAME, "n_utterances": len(self._ids),
                "n_frames": self._n_frames}
        write_text_durably(wd / META_FILE, json_text(meta))
        # The input fingerprint outlives writer.json until the rename, so that a close() that dies in between
        # leaves a store whose inputs can still be checked (and kept) by the next writer.
        write_text_durably(wd / INPUTS_FILE, json_text({"inputs": self.inputs}))
        # writer.json goes before the journal: a folder with index + meta and no writer.json is a finished store.
        (wd / WRITER_FILE).unlink()
        (wd / JOURNAL_FILE).unlink(missing_ok=True)
        (wd / INPUTS_FILE).unlink()   # private to the work folder: the finished store holds its three files only
        remove_stale_tmp_files(wd)
        fsync_path(wd)
        move_into_place(wd, self.root, self._replaceable_children)

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


