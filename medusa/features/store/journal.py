"""A writer's journal: how FeatureStoreWriter commits utterances to its work folder durably, and how a later writer
recovers what an earlier one committed (medusa.features.store.workdir describes the folder's files).

A writer commits utterances in chunks: their frames are fsynced first, then their entries are appended to
journal.jsonl, so the journal lists only utterances whose frames are on disk. A writer opened on a root whose work
folder exists replays the journal: it keeps the committed utterances and cuts a torn last journal line and the
frames past the last commit. Added in the same order, an interrupted-then-resumed extraction gives a store
byte-identical to an uninterrupted one.

A work folder is continued only by a writer of the same dim, meta and input fingerprint (writer.json); another
writer discards it (with a log line) and starts afresh, or raises (on_mismatch="raise").
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
    read_index,
    user_meta,
)
from medusa.features.store.workdir import (
    INPUTS_FILE,
    JOURNAL_FILE,
    MERGE_FILE,
    WRITER_FILE,
    fsync_path,
    json_text,
    remove_stale_tmp_files,
    write_text_durably,
)

log = logging.getLogger(__name__)

#: One committed utterance: (utt_id, offset = its first frame row, length = its number of frames).
Entry = tuple[str, int, int]


def _journal_lines(entries: Sequence[Entry]) -> str:
    return "".join(json.dumps({"utt_id": utt_id, "offset": offset, "length": length}) + "\n"
                   for utt_id, offset, length in entries)


def append_journal(work_dir: Path, entries: Sequence[Entry]) -> None:
    """Append the entries of utterances whose frames are already fsynced to the journal, durably."""
    journal = work_dir / JOURNAL_FILE
    created = not journal.exists()
    with open(journal, "ab") as f:
        f.write(_journal_lines(entries).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    if created:
        fsync_path(work_dir)


def _settings_mismatch(record: dict[str, Any], dim: int, meta: dict[str, Any], inputs: str | None) -> str | None:
    """Why a work folder made with (dim, meta, inputs) cannot be continued by the writer whose writer.json is
    `record`, or None."""
    if dim != record["dim"]:
        return f"it has dim {dim}, this writer has dim {record['dim']}"
    if meta != record["meta"]:
        changed = sorted(k for k in set(meta) | set(record["meta"]) if meta.get(k) != record["meta"].get(k))
        return (f"it was written with meta {meta}, this writer has meta {record['meta']} (keys that differ: "
                f"{', '.join(changed)})")
    if inputs != record["inputs"]:
        return (f"it was made from other inputs (fingerprint {str(inputs)[:12]}, this writer's "
                f"{str(record['inputs'])[:12]}: the work list, its audio files or transcripts changed)")
    return None


def _discard_or_raise(wd: Path, record: dict[str, Any], on_mismatch: str, reason: str) -> None:
    """A work folder the writer cannot continue: start afresh (logged), or raise (on_mismatch="raise")."""
    if on_mismatch == "raise":
        raise ValueError(f"the unfinished store {wd} cannot be resumed: {reason}; delete {wd} to start over")
    log.warning("discarding the unfinished store %s and starting afresh: %s", wd, reason)
    shutil.rmtree(wd)
    wd.mkdir()
    fsync_path(wd.parent)
    write_text_durably(wd / WRITER_FILE, json_text(record))
    (wd / FRAMES_FILE).touch()


def open_work_dir(wd: Path, root: Path, record: dict[str, Any], on_mismatch: str) -> list[Entry]:
    """Create the work folder `wd` of the store `root`, or recover what an earlier writer committed to it: the
    committed entries, in add order. `record` is this writer's writer.json (dim, dtype, meta, inputs)."""
    if not wd.exists():
        wd.parent.mkdir(parents=True, exist_ok=True)
        wd.mkdir()
        fsync_path(wd.parent)
    elif not wd.is_dir():
        raise ValueError(f"{wd} exists and is not a folder; it is where the store {root} is written")
    remove_stale_tmp_files(wd)
    writer_file = wd / WRITER_FILE

    if not writer_file.exists():
        if (wd / INDEX_FILE).is_file() and (wd / META_FILE).is_file() and (wd / FRAMES_FILE).is_file():
            # A close() died between finalising the folder and renaming it: it is a whole store.
            return _recover_finalised(wd, record, on_mismatch)
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
            write_text_durably(writer_file, json_text(record))
            (wd / FRAMES_FILE).touch()
        return []

    found = json.loads(writer_file.read_text(encoding="utf-8"))
    if found.get("dtype") != DTYPE_NAME:
        raise ValueError(f"{wd} holds {found.get('dtype')!r} frames, this writer writes {DTYPE_NAME!r}")
    reason = _settings_mismatch(record, int(found["dim"]), found["meta"], found.get("inputs"))
    if reason is not None:
        _discard_or_raise(wd, record, on_mismatch, reason)
        return []
    # index/meta of a close() that died before it got rid of writer.json: stale, rewritten on close.
    for name in (INDEX_FILE, META_FILE):
        (wd / name).unlink(missing_ok=True)
    (wd / FRAMES_FILE).touch()
    return _replay_journal(wd, record["dim"])


def _recover_finalised(wd: Path, record: dict[str, Any], on_mismatch: str) -> list[Entry]:
    """Turn a finalised-but-not-renamed work folder back into a resumable one (journal from its index)."""
    meta = json.loads((wd / META_FILE).read_text(encoding="utf-8"))
    inputs_file = wd / INPUTS_FILE
    if inputs_file.is_file():
        recorded = json.loads(inputs_file.read_text(encoding="utf-8")).get("inputs")
        reason = _settings_mismatch(record, int(meta["dim"]), user_meta(meta), recorded)
    else:
        reason = _settings_mismatch(record, int(meta["dim"]), user_meta(meta), record["inputs"])
        if reason is None and record["inputs"] is not None:
            # the close() died after it removed the fingerprint: the inputs cannot be checked
            reason = "its input fingerprint was removed while it was being closed, so its inputs cannot be checked"
    if reason is not None:
        _discard_or_raise(wd, record, on_mismatch, reason)
        return []
    utt_ids, offsets, lengths = read_index(wd / INDEX_FILE)
    order = np.argsort(offsets, kind="stable")  # the journal lists utterances in add (= frame) order
    lines = _journal_lines([(utt_ids[i], int(offsets[i]), int(lengths[i])) for i in order])
    # Journal first, writer.json second: until writer.json exists, this state is recognised again.
    write_text_durably(wd / JOURNAL_FILE, lines)
    write_text_durably(wd / WRITER_FILE, json_text(record))
    for name in (INDEX_FILE, META_FILE):
        (wd / name).unlink()
    inputs_file.unlink(missing_ok=True)
    return _replay_journal(wd, record["dim"])


def _replay_journal(wd: Path, dim: int) -> list[Entry]:
    """The committed entries; cut a torn last journal line and the frames past the last commit."""
    journal = wd / JOURNAL_FILE
    data = journal.read_bytes() if journal.exists() else b""
    # Appends are cut at a crash, so only the last line can be incomplete (it lacks its newline).
    good_len = data.rfind(b"\n") + 1
    entries: list[Entry] = []
    seen: set[str] = set()
    n_frames = 0
    for lineno, line in enumerate(data[:good_len].splitlines(), start=1):
        try:
            entry = json.loads(line)
            utt_id, offset, length = entry["utt_id"], int(entry["offset"]), int(entry["length"])
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptStoreError(f"{journal} line {lineno} is unreadable ({e}); delete {wd} to start "
                                    f"over") from None
        if not isinstance(utt_id, str) or offset != n_frames or length < 1 or utt_id in seen:
            raise CorruptStoreError(f"{journal} line {lineno} does not follow the lines before it; "
                                    f"delete {wd} to start over")
        entries.append((utt_id, offset, length))
        seen.add(utt_id)
        n_frames = offset + length

    frames = wd / FRAMES_FILE
    committed_bytes = n_frames * dim * DTYPE.itemsize
    size = frames.stat().st_size
    if size < committed_bytes:
        raise CorruptStoreError(f"{journal} commits {n_frames} frames but {frames} holds only "
                                f"{size // (dim * DTYPE.itemsize)}; delete {wd} to start over")
    if good_len < len(data):
        with open(journal, "r+b") as f:
            f.truncate(good_len)
            os.fsync(f.fileno())
    if size > committed_bytes:  # frames of adds that were never committed, or half of one
        with open(frames, "r+b") as f:
            f.truncate(committed_bytes)
            os.fsync(f.fileno())
    return entries
