"""Feature stores: exact round trip, lazy per-utterance reads, validation of what is added, padded batches."""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from tiny_stores import DIM, META, Interrupted, make_utterances, write_store

from medusa.features.store.reader import FRAMES_FILE, INDEX_FILE, META_FILE, STORE_FILES, FeatureStore, pad_batch
from medusa.features.store.writer import FeatureStoreWriter

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
