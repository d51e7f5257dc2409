"""Feature stores: exact round trip, lazy per-utterance reads, atomic + resumable + deterministic writes, shards."""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from medusa.features.store.reader import (
    FRAMES_FILE,
    INDEX_FILE,
    META_FILE,
    STORE_FILES,
    CorruptStoreError,
    FeatureStore,
    IncompleteStoreError,
    is_store,
    pad_batch,
    partial_dir,
)
from medusa.features.store.shards import merge_stores, shard_dir, shard_items
from medusa.features.store.workdir import JOURNAL_FILE
from medusa.features.store.writer import FeatureStoreWriter

DIM = 6
META = {"encoder": "demo-encoder", "layer": 3, "sample_rate": 16000}


def make_utterances(n=23, dim=DIM, seed=0):
    """(utt_id, float32 frames) pairs with varied lengths, in a shuffled (not sorted) order."""
    rng = np.random.default_rng(seed)
    ids = [f"utt{i:03d}" for i in rng.permutation(n)]
    return [(u, rng.normal(scale=3.0, size=(int(rng.integers(1, 12)), dim)).astype(np.float32)) for u in ids]


def write_store(root, utts, meta=META, dim=DIM, **kw):
    with FeatureStoreWriter(root, dim, meta, **kw) as w:
        for u, x in utts:
            w.add(u, x)
    return FeatureStore(root)


def store_bytes(root):
    return {name: (root / name).read_bytes() for name in STORE_FILES}


class Interrupted(Exception):
    pass


# ------------------------------------------------------------------------------------------------ round trip


def test_round_trip_is_exact_in_float16(tmp_path):
    utts = make_utterances()
    store = write_store(tmp_path / "store", utts, commit_every=5)
    assert sorted(os.listdir(tmp_path)) == ["store"]  # no work folder left behind
    assert sorted(os.listdir(tmp_path / "store")) == sorted(STORE_FILES)
    assert len(store) == len(utts) and store.dim == DIM
    assert store.utt_ids == sorted(u for u, _ in utts)  # the index is in utt_id order, whatever the add order
    assert list(store) == store.utt_ids
    for u, x in utts:
        assert u in store
        got = store[u]
        assert got.dtype == np.float16 and got.shape == x.shape
        np.testing.assert_array_equal(got, x.astype(np.float16))
        assert store.lengths[u] == len(x)
    assert "nope" not in store


def test_files_follow_the_documented_layout(tmp_path):
    utts = make_utterances(n=5)
    write_store(tmp_path / "s", utts)
    meta = json.loads((tmp_path / "s" / META_FILE).read_text())
    n_frames = sum(len(x) for _, x in utts)
    assert meta == {**META, "dim": DIM, "dtype": "float16", "n_utterances": 5, "n_frames": n_frames}
    assert (tmp_path / "s" / META_FILE).read_text() == json.dumps(meta, sort_keys=True, indent=2) + "\n"
    index = pq.read_table(tmp_path / "s" / INDEX_FILE)
    assert index.column_names == ["utt_id", "offset", "length"]
    assert [str(t) for t in index.schema.types] == ["string", "int64", "int64"]
    flat = np.fromfile(tmp_path / "s" / FRAMES_FILE, dtype="<f2").reshape(-1, DIM)
    np.testing.assert_array_equal(flat, np.concatenate([x for _, x in utts]).astype(np.float16))
    cols = index.to_pydict()
    assert cols["utt_id"] == sorted(u for u, _ in utts)
    add_order = [u for u, _ in utts]   # frames stay in add order: offsets are those of the adds
    starts = dict(zip(add_order, np.cumsum([0] + [len(x) for _, x in utts[:-1]]).tolist()))
    assert cols["offset"] == [starts[u] for u in cols["utt_id"]]


def test_empty_store_round_trips(tmp_path):
    store = write_store(tmp_path / "s", [])
    assert len(store) == 0 and store.n_frames == 0 and store.get_many([]) == []


def test_missing_utt_id_raises_key_error_naming_it_and_the_store(tmp_path):
    store = write_store(tmp_path / "s", make_utterances(n=3))
    with pytest.raises(KeyError, match=r"ghost.*" + str(tmp_path / "s")):
        store["ghost"]
    with pytest.raises(KeyError, match="ghost"):
        store.get_many([store.utt_ids[0], "ghost"])


# ------------------------------------------------------------------------------------------------ lazy reads


def test_subset_read_equals_full_read(tmp_path):
    utts = make_utterances()
    store = write_store(tmp_path / "s", utts)
    full = store.get_many(store.utt_ids)
    subset = [u for u, _ in utts][3:15:4]
    for u, got in zip(subset, store.get_many(subset)):
        np.testing.assert_array_equal(got, full[store.utt_ids.index(u)])
        assert isinstance(got, np.memmap)  # a view of the file, not a copy of everything


def test_reading_one_utterance_reads_only_its_bytes(tmp_path):
    utts = make_utterances()
    write_store(tmp_path / "s", utts)
    store = FeatureStore(tmp_path / "s")
    target, x = utts[7]
    offset, length = store._where[target]
    lo, hi = offset * DIM * 2, (offset + length) * DIM * 2
    del store
    # Overwrite every byte of the other utterances with garbage: the target must read back unchanged.
    path = tmp_path / "s" / FRAMES_FILE
    data = bytearray(path.read_bytes())
    garbage = np.random.default_rng(1).integers(0, 256, size=len(data), dtype=np.uint8).tobytes()
    path.write_bytes(garbage[:lo] + bytes(data[lo:hi]) + garbage[hi:])
    np.testing.assert_array_equal(FeatureStore(tmp_path / "s")[target], x.astype(np.float16))


# ------------------------------------------------------------------------------------------- resume, atomicity


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


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("frames,what", [
    (np.zeros((4, DIM + 1), np.float32), r"\(4, 7\)"),
    (np.zeros((0, DIM), np.float32), r"\(0, 6\)"),
    (np.zeros(DIM, np.float32), r"\(6,\)"),
    (np.zeros((2, 3, DIM), np.float32), r"\(2, 3, 6\)"),
    (np.zeros((4, DIM), np.int64), "float"),
    (np.full((4, DIM), np.nan, np.float32), "finite"),
    (np.full((4, DIM), 1e6, np.float32), "finite"),  # overflows float16
])
def test_bad_frames_raise_value_error_naming_the_utterance(tmp_path, frames, what):
    w = FeatureStoreWriter(tmp_path / "s", DIM, META)
    with pytest.raises(ValueError, match=r"'bad_utt'.*" + what):
        w.add("bad_utt", frames)
    w.add("good_utt", np.ones((2, DIM)))  # the failed add left nothing behind
    assert len(w.close()) == 1


def test_duplicates_are_refused_also_across_a_resume(tmp_path):
    x = np.ones((3, DIM), np.float32)
    with pytest.raises(Interrupted), FeatureStoreWriter(tmp_path / "s", DIM, META) as w:
        w.add("a", x)
        with pytest.raises(ValueError, match="'a'"):
            w.add("a", x)
        raise Interrupted
    w = FeatureStoreWriter(tmp_path / "s", DIM, META)
    with pytest.raises(ValueError, match="'a'"):
        w.add("a", x)


def test_meta_may_not_use_the_store_keys(tmp_path):
    with pytest.raises(ValueError, match="dim"):
        FeatureStoreWriter(tmp_path / "s", DIM, {"dim": 3})


# ---------------------------------------------------------------------------------------------------- shards


def test_shards_are_contiguous_blocks_of_about_equal_weight():
    items = [f"u{i}" for i in range(17)]
    shards = [shard_items(items, i, 4) for i in range(4)]
    assert sum(shards, []) == items   # in shard order, the blocks are the items again
    assert [len(s) for s in shards] == [4, 4, 5, 4]
    assert shard_items(items, 0, 1) == items
    # By weight (e.g. a batch's audio seconds): the heavy items get a shard of their own.
    weights = [10, 10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert [shard_items(list(range(12)), i, 3, weights) for i in range(3)] == [[0], [1], list(range(2, 12))]
    assert sum((shard_items(items, i, 3, [0.0] * 17) for i in range(3)), []) == items   # all weights 0: by count
    with pytest.raises(ValueError, match="weights"):
        shard_items(items, 0, 2, [1.0] * 16)
    for shard, n in [(4, 4), (-1, 4), (0, 0)]:
        with pytest.raises(ValueError, match="shard"):
            shard_items(items, shard, n)
    assert shard_dir("feat", 2, 4).as_posix() == "feat/shard-2-of-4"
    with pytest.raises(ValueError):
        shard_dir("feat", 4, 4)


def test_merged_shards_equal_a_single_pass_store(tmp_path):
    utts = make_utterances(n=31)
    by_id = dict(utts)
    ids = sorted(by_id)
    n = 3
    for i in range(n):
        write_store(shard_dir(tmp_path / "feat", i, n), [(u, by_id[u]) for u in shard_items(ids, i, n)])
    merged = merge_stores([shard_dir(tmp_path / "feat", i, n) for i in range(n)], tmp_path / "merged")
    assert merged.utt_ids == ids
    assert merged.meta == FeatureStore(shard_dir(tmp_path / "feat", 0, n)).meta | {
        "n_utterances": 31, "n_frames": sum(len(x) for x in by_id.values())}

    # A single pass adding in the same order gives the same bytes; one in any order the same arrays.
    write_store(tmp_path / "single_sorted", [(u, by_id[u]) for u in ids])
    assert store_bytes(tmp_path / "merged") == store_bytes(tmp_path / "single_sorted")
    single = write_store(tmp_path / "single", utts)
    for u in ids:
        np.testing.assert_array_equal(merged[u], single[u])


def test_merge_into_the_folder_of_the_shards_replaces_them(tmp_path):
    utts = make_utterances(n=12)
    ids = sorted(u for u, _ in utts)
    by_id = dict(utts)
    root = tmp_path / "feat"
    for i in range(2):
        write_store(shard_dir(root, i, 2), [(u, by_id[u]) for u in shard_items(ids, i, 2)])
    first_frames = os.stat(shard_dir(root, 0, 2) / FRAMES_FILE).st_ino
    merged = merge_stores([shard_dir(root, i, 2) for i in range(2)], root)
    assert merged.utt_ids == ids and sorted(os.listdir(root)) == sorted(STORE_FILES)
    assert sorted(os.listdir(tmp_path)) == ["feat"]
    assert os.stat(root / FRAMES_FILE).st_ino == first_frames   # the first shard's frames were moved, not copied
    # A folder holding anything besides the shards being merged is not replaced.
    for i in range(2):
        write_store(shard_dir(tmp_path / "other", i, 2), [(u, by_id[u]) for u in shard_items(ids, i, 2)])
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a feature store"):
        merge_stores([shard_dir(tmp_path / "other", 0, 2)], tmp_path / "other")


def test_an_interrupted_merge_resumes_from_the_shards_it_has_not_consumed(tmp_path, monkeypatch):
    """In the shards' own folder the merge deletes each shard's frames once appended (at most one shard's size of
    extra disk); a merge that dies midway resumes with what is left and gives the bytes of an uninterrupted one."""
    import medusa.features.store.shards as fs

    utts = make_utterances(n=40)
    by_id = dict(utts)
    ids = sorted(by_id)
    n = 4
    for name in ("straight", "resumed"):
        for i in range(n):
            write_store(shard_dir(tmp_path / name, i, n), [(u, by_id[u]) for u in shard_items(ids, i, n)])
    merge_stores([shard_dir(tmp_path / "straight", i, n) for i in range(n)], tmp_path / "straight")

    real_append, calls = fs._append_file, []

    def dying_append(src, dst, desc):
        calls.append(src)
        if len(calls) == 2:   # shard 0 is moved, shard 1 appended; die half-way through shard 2
            dst.write(src.read_bytes()[: src.stat().st_size // 2])
            raise Interrupted
        real_append(src, dst, desc)

    monkeypatch.setattr(fs, "_append_file", dying_append)
    roots = [shard_dir(tmp_path / "resumed", i, n) for i in range(n)]
    with pytest.raises(Interrupted):
        merge_stores(roots, tmp_path / "resumed")
    assert [(r / FRAMES_FILE).exists() for r in roots] == [False, False, True, True]   # 0 and 1 consumed
    monkeypatch.setattr(fs, "_append_file", real_append)
    merged = merge_stores(roots, tmp_path / "resumed")
    assert store_bytes(tmp_path / "resumed") == store_bytes(tmp_path / "straight")
    assert merged.utt_ids == ids and sorted(os.listdir(tmp_path / "resumed")) == sorted(STORE_FILES)
    assert not partial_dir(tmp_path / "resumed").exists()


def test_merge_refuses_duplicates_and_mismatched_stores(tmp_path):
    utts = make_utterances(n=6)
    write_store(tmp_path / "a", utts[:4])
    write_store(tmp_path / "b", utts[3:])
    with pytest.raises(ValueError, match=repr(utts[3][0])):
        merge_stores([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    write_store(tmp_path / "c", [(u, x[:, :4]) for u, x in utts[4:]], dim=4)
    with pytest.raises(ValueError, match="dim"):
        merge_stores([tmp_path / "a", tmp_path / "c"], tmp_path / "m")
    write_store(tmp_path / "d", utts[4:], meta={**META, "layer": 9})
    with pytest.raises(ValueError, match="meta"):
        merge_stores([tmp_path / "a", tmp_path / "d"], tmp_path / "m")
    assert not (tmp_path / "m").exists() and not partial_dir(tmp_path / "m").exists()


# --------------------------------------------------------------------------------------------------- batches


def test_pad_batch_shapes_and_mask():
    rng = np.random.default_rng(3)
    arrays = [rng.normal(size=(t, DIM)).astype(np.float16) for t in (3, 7, 1)]
    batch, mask = pad_batch(arrays)
    assert batch.shape == (3, 7, DIM) and batch.dtype == np.float32
    assert mask.shape == (3, 7) and mask.dtype == bool
    assert mask.sum(axis=1).tolist() == [3, 7, 1]
    for b, a in enumerate(arrays):
        np.testing.assert_array_equal(batch[b, : len(a)], a.astype(np.float32))
        assert mask[b, : len(a)].all() and not mask[b, len(a):].any()
        assert not batch[b, len(a):].any()
    with pytest.raises(ValueError):
        pad_batch([])
    with pytest.raises(ValueError):
        pad_batch([np.zeros((2, 3)), np.zeros((2, 4))])


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
