"""Feature store writes are atomic, resumable and deterministic: a writer, or a close, that dies midway leaves a
work folder the next writer resumes to the bytes of an uninterrupted one; broken folders are refused."""
import os

import numpy as np
import pytest
from tiny_stores import DIM, META, Interrupted, make_utterances, store_bytes, write_store

from medusa.features.store.reader import (
    FRAMES_FILE,
    INDEX_FILE,
    STORE_FILES,
    CorruptStoreError,
    FeatureStore,
    IncompleteStoreError,
    is_store,
    partial_dir,
)
from medusa.features.store.workdir import JOURNAL_FILE
from medusa.features.store.writer import FeatureStoreWriter


def test_exception_in_with_block_leaves_a_partial_store_that_resumes_byte_identical(tmp_path):
    utts = make_utterances(n=40)
    write_store(tmp_path / "ref", utts, commit_every=7)

    root = tmp_path / "run"
    with pytest.raises(Interrupted):
        with FeatureStoreWriter(root, DIM, META, commit_every=7) as w:
            for i, (u, x) in enumerate(utts):
                if i == 17:
                    raise Interrupted
                w.add(u, x)
    assert not root.exists() and partial_dir(root).is_dir()
    with pytest.raises(IncompleteStoreError, match="rerun the extraction to resume"):
        FeatureStore(root)

    with FeatureStoreWriter(root, DIM, META, commit_every=7) as w:
        assert w.done == {u for u, _ in utts[:17]} and w.resumed == 17  # adds before the exception were kept
        for u, x in utts:
            if u not in w.done:
                w.add(u, x)
    assert not partial_dir(root).exists()
    assert store_bytes(root) == store_bytes(tmp_path / "ref")


def test_dropped_writer_with_torn_tail_resumes_byte_identical(tmp_path):
    utts = make_utterances(n=40)
    write_store(tmp_path / "ref", utts)

    root = tmp_path / "run"
    w = FeatureStoreWriter(root, DIM, META, commit_every=1000)
    for u, x in utts[:12]:
        w.add(u, x)
    w.flush()
    for u, x in utts[12:20]:  # added, never committed: lost with the process
        w.add(u, x)
    del w  # no close(): as if the process had died
    with open(partial_dir(root) / FRAMES_FILE, "ab") as f:
        f.write(b"\x7f\x00\x13half a frame")  # a write cut short by the crash
    with open(partial_dir(root) / JOURNAL_FILE, "ab") as f:
        f.write(b'{"utt_id": "utt9')  # a journal line cut short by the crash

    w = FeatureStoreWriter(root, DIM, META, commit_every=1000)
    assert w.done == {u for u, _ in utts[:12]} and w.n_committed == 12
    assert (partial_dir(root) / FRAMES_FILE).stat().st_size == sum(len(x) for _, x in utts[:12]) * DIM * 2
    for u, x in utts:
        if u not in w.done:
            w.add(u, x)
    w.close()
    assert store_bytes(root) == store_bytes(tmp_path / "ref")


def test_abandoned_writer_keeps_only_commits(tmp_path):
    utts = make_utterances(n=10)
    w = FeatureStoreWriter(tmp_path / "s", DIM, META, commit_every=4)
    for u, x in utts[:9]:
        w.add(u, x)  # commits after the 4th and 8th add
    w.abandon()
    with pytest.raises(RuntimeError, match="resume"):
        w.add(*utts[9])
    w2 = FeatureStoreWriter(tmp_path / "s", DIM, META)
    done = w2.done
    assert done == {u for u, _ in utts[:8]}
    w2.add(*utts[9])
    assert utts[9][0] in done and not hasattr(done, "add")  # a live, read-only view


def test_close_interrupted_before_the_rename_is_recovered(tmp_path):
    utts = make_utterances(n=15)
    write_store(tmp_path / "ref", utts)
    # A close() that died after finalising the work folder leaves exactly a store's files in it.
    root = tmp_path / "run"
    write_store(tmp_path / "tmp", utts[:9])
    os.rename(tmp_path / "tmp", partial_dir(root))
    with FeatureStoreWriter(root, DIM, META) as w:
        assert w.done == {u for u, _ in utts[:9]}
        for u, x in utts[9:]:
            w.add(u, x)
    assert store_bytes(root) == store_bytes(tmp_path / "ref")


def test_resume_with_other_settings_is_refused_or_restarted(tmp_path, caplog):
    root = tmp_path / "s"
    with pytest.raises(Interrupted), FeatureStoreWriter(root, DIM, META, inputs="list-1") as w:
        w.add(*make_utterances(n=1)[0])
        raise Interrupted
    # on_mismatch="raise": the folder is kept and the error says what differs
    with pytest.raises(ValueError, match=r"dim 6.*dim 8"):
        FeatureStoreWriter(root, 8, META, inputs="list-1", on_mismatch="raise")
    with pytest.raises(ValueError, match="meta .*keys that differ: layer"):
        FeatureStoreWriter(root, DIM, {**META, "layer": 4}, inputs="list-1", on_mismatch="raise")
    with pytest.raises(ValueError, match="other inputs"):
        FeatureStoreWriter(root, DIM, META, inputs="list-2", on_mismatch="raise")
    # key order is irrelevant: same settings resume
    assert len(FeatureStoreWriter(root, DIM, dict(reversed(META.items())), inputs="list-1").done) == 1
    # the default: another work list discards the folder with a log line, and the work starts afresh
    with caplog.at_level("WARNING", logger="medusa.features.store.journal"):
        w = FeatureStoreWriter(root, DIM, META, inputs="list-2")
    assert len(w.done) == 0 and w.resumed == 0 and "other inputs" in caplog.text
    w.add("fresh", np.ones((2, DIM), np.float32))
    store = w.close()
    assert store.utt_ids == ["fresh"] and "inputs" not in store.meta  # the fingerprint stays out of meta.json


def test_closing_never_copies_the_frames(tmp_path):
    """Close writes the index (sorted) and meta beside the frames and renames the folder: the frames file is the
    one the adds went to (the same inode), not a rewritten copy (which would need twice a store's disk)."""
    utts = make_utterances(n=9, seed=4)
    w = FeatureStoreWriter(tmp_path / "s", DIM, META)
    for u, x in utts:
        w.add(u, x)
    inode = os.stat(w.work_dir / FRAMES_FILE).st_ino
    store = w.close()
    assert os.stat(tmp_path / "s" / FRAMES_FILE).st_ino == inode
    assert store.utt_ids == sorted(u for u, _ in utts)
    for u, x in utts:
        np.testing.assert_array_equal(store[u], x.astype(np.float16))


def test_closing_replaces_an_existing_store_but_not_other_folders(tmp_path):
    root = tmp_path / "s"
    write_store(root, make_utterances(n=4, seed=1))
    store = write_store(root, make_utterances(n=6, seed=2))
    assert len(store) == 6 and sorted(os.listdir(tmp_path)) == ["s"]
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a feature store"):
        FeatureStoreWriter(tmp_path / "precious", DIM, META)


def test_unfinished_or_broken_folder_cannot_be_opened(tmp_path):
    with pytest.raises(IncompleteStoreError, match="no feature store"):
        FeatureStore(tmp_path / "nothing")
    write_store(tmp_path / "s", make_utterances(n=3))
    (tmp_path / "s" / INDEX_FILE).unlink()
    with pytest.raises(IncompleteStoreError, match=INDEX_FILE):
        FeatureStore(tmp_path / "s")
    assert not is_store(tmp_path / "s")
    write_store(tmp_path / "t", make_utterances(n=3))
    with open(tmp_path / "t" / FRAMES_FILE, "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(CorruptStoreError, match="bytes"):
        FeatureStore(tmp_path / "t")


def test_a_close_that_dies_before_the_rename_is_resumed_in_add_order(tmp_path, monkeypatch):
    """A close() killed after it finalised the folder (index in utt_id order, writer.json gone) but before the rename:
    the next writer rebuilds its journal in frame order, takes more adds, and gives the bytes of a writer that
    added everything in one go, in the same order."""
    import medusa.features.store.writer as fs
    from medusa.features.store.workdir import WRITER_FILE

    utts = make_utterances(n=9, seed=5)   # shuffled: index order differs from frame order
    write_store(tmp_path / "ref", utts)

    def dying_move(work_dir, root, allowed_children=()):
        raise Interrupted("process killed")

    monkeypatch.setattr(fs, "move_into_place", dying_move)
    with pytest.raises(Interrupted):
        write_store(tmp_path / "s", utts[:6])
    monkeypatch.undo()
    wd = partial_dir(tmp_path / "s")
    assert (wd / INDEX_FILE).exists() and not (wd / WRITER_FILE).exists()
    with FeatureStoreWriter(tmp_path / "s", DIM, META) as w:
        assert w.done == {u for u, _ in utts[:6]}
        for u, x in utts[6:]:
            w.add(u, x)
    assert store_bytes(tmp_path / "s") == store_bytes(tmp_path / "ref")


def test_a_close_that_dies_after_writer_json_keeps_the_store_when_the_inputs_match(tmp_path, monkeypatch):
    """With an input fingerprint (as extraction always has), a close() killed between removing writer.json and the
    rename used to discard the whole finished store (its fingerprint went with writer.json): now it outlives
    writer.json until the rename, so the next writer with the same inputs completes the store and one with other
    inputs discards it."""
    from pathlib import Path

    from medusa.features.store.workdir import JOURNAL_FILE, WRITER_FILE

    utts = make_utterances(n=7, seed=5)
    real_unlink = Path.unlink

    def dying_unlink(path, missing_ok=False):   # killed right after writer.json went, before the journal goes
        if path.name == JOURNAL_FILE:
            raise Interrupted("process killed")
        return real_unlink(path, missing_ok=missing_ok)

    for inputs, kept in (("fingerprint-1", True), ("fingerprint-2", False)):
        root = tmp_path / inputs
        monkeypatch.setattr(Path, "unlink", dying_unlink)
        with pytest.raises(Interrupted):
            with FeatureStoreWriter(root, DIM, META, inputs="fingerprint-1") as w:
                for u, x in utts:
                    w.add(u, x)
        monkeypatch.setattr(Path, "unlink", real_unlink)
        assert not (partial_dir(root) / WRITER_FILE).exists()
        with FeatureStoreWriter(root, DIM, META, inputs=inputs) as w:
            assert (w.done == {u for u, _ in utts}) is kept
            for u, x in utts:
                if u not in w.done:
                    w.add(u, x)
        assert sorted(FeatureStore(root).utt_ids) == sorted(u for u, _ in utts)
        assert sorted(p.name for p in root.iterdir()) == sorted(STORE_FILES)
