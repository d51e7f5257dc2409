"""A clip's features and transcript depend on that clip alone (issue 11, point 1): not on its batch-mates, their
order, or the shard count. Every encoder family on tiny random models built here.

Tolerance: features are stored as float16, whose spacing is 2**-10 relative (values in [1, 2)); two encodings of
a clip count as the same if their float16 values agree to 2 float16 steps (rtol 2e-3, atol 1e-4 near zero). Batched
matrix products may round differently in float32 by ~1e-6; anything that changes what a clip attends to moves
frames by percents (measured on Whisper: 0.5 % next to a clip 20 ms longer, 27 % next to a 6 s clip)."""
import hashlib

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import tiny_models
import torch

from medusa.features.encoders import build_encoder
from medusa.features.extract import extract_to_store, merge_shards
from medusa.features.store.reader import FeatureStore

CPU = torch.device("cpu")
AUDIO = ["whisper", "wavlm", "hubert", "hubert-group", "wav2vec2-group", "egemaps"]
TEXT = ["roberta", "modernbert", "minilm"]
#: encoders whose frames depend on padding: they pad each clip to whole seconds
GRID = ["whisper", "hubert-group", "wav2vec2-group"]
RTOL, ATOL = 2e-3, 1e-4


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    out = {"whisper": tiny_models.whisper_checkpoint(root), "egemaps": "eGeMAPSv02", "cache": str(root / "cache")}
    for family in ("wavlm", "hubert"):
        out[family] = tiny_models.hf_audio(root, family, "layer")
    for family in ("hubert", "wav2vec2"):
        out[f"{family}-group"] = tiny_models.hf_audio(root, family, "group")
    for family in TEXT:
        out[family] = tiny_models.hf_text(root, family)
    return out


_cache: dict = {}


def encoder(paths, name):
    """One encoder per family and module (mean of the last two hidden states), built on first use."""
    if name not in _cache:
        family = name.split("-")[0]
        _cache[name] = build_encoder(name, family, paths[name], [-2, -1] if family != "egemaps" else [], CPU,
                                     cache_dir=paths["cache"])
    return _cache[name]


def same_in_float16(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.shape == b.shape, (what, a.shape, b.shape)
    np.testing.assert_allclose(a.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32),
                               rtol=RTOL, atol=ATOL, err_msg=what)


def inputs_for(name):
    """A target utterance, a much longer and a much shorter one."""
    if name in TEXT:
        return ("what a wonderful day",
                "the weather is nice today and I am so angry about this please open the window and close the door "
                "we will meet at the station tomorrow",
                "day")
    return tiny_models.clip(2.3, 1), tiny_models.clip(6.7, 2), tiny_models.clip(0.45, 3)


@pytest.mark.parametrize("name", AUDIO + TEXT)
def test_alone_equals_batched_in_any_order(paths, name):
    enc = encoder(paths, name)
    target, long, short = inputs_for(name)
    alone = {k: enc.encode([x])[0] for k, x in (("target", target), ("long", long), ("short", short))}
    for batch in ([long, target, short], [short, long, target], [target, target, short]):
        out = enc.encode(batch)
        for x, frames in zip(batch, out):
            k = "target" if x is target else "long" if x is long else "short"
            same_in_float16(frames, alone[k], f"{name}: {k} in a batch of {[len(b) for b in batch]}")
    assert enc.spec()["padding"] and enc.spec()["versions"]["torch"] == torch.__version__


@pytest.mark.parametrize("name", GRID)
def test_grid_encoders_would_change_with_other_padding(paths, name):
    """Why the grid is needed: padded further (as a batch with a longer clip used to pad it), the same clip gets
    other frames; so the test above would fail for these families if padding followed the batch."""
    enc = encoder(paths, name)
    target, _, _ = inputs_for(name)
    n = enc.padded_samples(len(target))
    assert n == 3 * 16000  # 2.3 s -> whole seconds
    prepared = target if name == "whisper" else enc._prepare(target)
    own = enc._encode_padded([prepared], n)[0]
    further = enc._encode_padded([prepared], n + 4 * 16000)[0]
    assert np.abs(further - own).mean() / np.abs(own).mean() > 0.01


@pytest.mark.parametrize("name", ["wavlm", "hubert", "egemaps"] + TEXT)
def test_padding_invariant_encoders_batch_freely(paths, name):
    assert encoder(paths, name).padded_samples(12345) is None


# ------------------------------------------------------------------------------------- through the store


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """Nine utterances from 0.4 s to 6.5 s (several padded lengths), with transcripts of varied lengths."""
    root = tmp_path_factory.mktemp("wavs")
    seconds = [0.4, 6.5, 1.2, 2.3, 2.9, 0.8, 4.1, 3.0, 1.7]
    texts = ["day", "the weather is nice today and I am so angry", "what a wonderful day", "please open the window",
             "", "we will meet", "I am so angry about this", "the station tomorrow", "close the door"]
    rows = []
    for i, (s, t) in enumerate(zip(seconds, texts)):
        path = root / f"u{i:02d}.wav"
        sf.write(path, tiny_models.clip(s, 10 + i), 16000, subtype="PCM_16")
        rows.append({"utt_id": f"u{i:02d}", "path": str(path), "duration_s": sf.info(path).duration, "text": t})
    return pd.DataFrame(rows)


def digest(root) -> str:
    return hashlib.sha256(b"".join((root / f).read_bytes() for f in ("frames.f16", "index.parquet", "meta.json"))
                          ).hexdigest()


@pytest.mark.parametrize("name", AUDIO + TEXT)
def test_one_or_three_shards_give_the_same_store_and_the_frames_of_each_clip_alone(paths, items, name, tmp_path):
    from medusa.data.audio import load_audio

    enc = encoder(paths, name)
    kw = dict(batch_size=3, batch_seconds=20.0, num_workers=0, device=CPU)
    extract_to_store(enc, items, tmp_path / "single", **kw)
    for shard in (2, 0, 1):
        extract_to_store(enc, items, tmp_path / "sharded", shard=shard, n_shards=3, **kw)
    merged = merge_shards(tmp_path / "sharded", 3)
    assert digest(tmp_path / "single") == digest(tmp_path / "sharded")  # the same bytes
    store = FeatureStore(tmp_path / "single")
    assert store.utt_ids == sorted(items["utt_id"]) == merged.utt_ids
    for _, row in items.iterrows():
        x = row.text if name in TEXT else load_audio(row.path)
        same_in_float16(np.asarray(store[row.utt_id], np.float32), enc.encode([x])[0], f"{name} {row.utt_id}")
    meta = store.meta
    assert meta["padding"] == enc.spec()["padding"] and meta["versions"]["torch"] == torch.__version__
    lib = {"whisper": "openai-whisper", "egemaps": "opensmile"}.get(name, "transformers")
    assert meta["versions"][lib]
