"""Small feature stores the store tests write (test_feature_store, test_feature_store_resume,
test_feature_store_shards): random utterances, a store of them, its bytes, and an exception that stands for a
process killed midway."""
import numpy as np

from medusa.features.store.reader import STORE_FILES, FeatureStore
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
