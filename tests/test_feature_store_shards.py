"""Sharded extraction: shards are contiguous blocks of about equal weight, and merging their stores gives a single
pass's store, in place and resumable."""
import os

import numpy as np
import pytest
from tiny_stores import META, Interrupted, make_utterances, store_bytes, write_store

from medusa.features.store.reader import FRAMES_FILE, STORE_FILES, FeatureStore, partial_dir
from medusa.features.store.shards import merge_stores, shard_dir, shard_items


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
    assert shard_dir("work/feat", 2, 4).as_posix() == "work/feat.shard-2-of-4"   # beside the store: DVC empties it
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


def test_merge_of_a_stores_own_shards_consumes_them(tmp_path):
    utts = make_utterances(n=12)
    ids = sorted(u for u, _ in utts)
    by_id = dict(utts)
    root = tmp_path / "feat"
    for i in range(2):
        write_store(shard_dir(root, i, 2), [(u, by_id[u]) for u in shard_items(ids, i, 2)])
    first_frames = os.stat(shard_dir(root, 0, 2) / FRAMES_FILE).st_ino
    merged = merge_stores([shard_dir(root, i, 2) for i in range(2)], root)
    assert merged.utt_ids == ids and sorted(os.listdir(root)) == sorted(STORE_FILES)
    assert sorted(os.listdir(tmp_path)) == ["feat"]                # the emptied shards are gone
    assert os.stat(root / FRAMES_FILE).st_ino == first_frames   # the first shard's frames were moved, not copied
    # A folder holding anything but a store is not replaced.
    for i in range(2):
        write_store(shard_dir(tmp_path / "other", i, 2), [(u, by_id[u]) for u in shard_items(ids, i, 2)])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a feature store"):
        merge_stores([shard_dir(tmp_path / "other", 0, 2)], tmp_path / "other")


def test_an_interrupted_merge_resumes_from_the_shards_it_has_not_consumed(tmp_path, monkeypatch):
    """Merging a store's own shards deletes each shard's frames once appended (at most one shard's size of
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
    assert not partial_dir(tmp_path / "resumed").exists() and not any(r.exists() for r in roots)


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
