"""The extraction loop on real (tiny) encoders: length buckets, exact resume after an interruption, shards."""
import hashlib

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from medusa.features.batches import length_batches
from medusa.features.encoders import build_encoder
from medusa.features.extract import extract_to_store, merge_shards
from medusa.features.store.reader import FeatureStore

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(14):
        seconds = float(rng.uniform(0.5, 2.0))
        path = root / f"u{i:02d}.wav"
        sf.write(path, rng.uniform(-0.3, 0.3, int(seconds * 16000)), 16000, subtype="PCM_16")
        rows.append({"utt_id": f"u{i:02d}", "path": str(path), "duration_s": seconds, "text": None})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def wavlm(tmp_path_factory):
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wavlm")
    WavLMModel(WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                           feat_extract_norm="layer", do_stable_layer_norm=True)).save_pretrained(path)
    return build_encoder("wavlm", "wavlm", str(path), [-1], CPU)


def digest(root) -> str:
    return hashlib.sha256(b"".join((root / f).read_bytes() for f in ("frames.f16", "index.parquet", "meta.json"))).hexdigest()


class Interrupting:
    """The encoder, failing on its n-th batch, like a process killed mid-run."""
    def __init__(self, encoder, fail_at: int):
        self.encoder, self.fail_at, self.calls = encoder, fail_at, 0
        self.kind, self.dim, self.frame_rate = encoder.kind, encoder.dim, encoder.frame_rate

    def __getattr__(self, name):   # spec(), padded_samples(), the model (its weights are fingerprinted), ...
        return getattr(self.encoder, name)

    def encode(self, batch):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return self.encoder.encode(batch)


def test_length_batches_bucket_by_length_and_cap_padding():
    lengths = [5.0, 1.0, 3.0, 1.1, 4.9, 2.9]
    batches = length_batches([f"u{i}" for i in range(6)], lengths, max_items=2)
    assert batches == [[1, 3], [5, 2], [4, 0]]
    capped = length_batches([f"u{i}" for i in range(6)], lengths, max_items=10, max_total=6.0)
    assert all(len(b) * max(lengths[i] for i in b) <= 6.0 for b in capped)
    assert sorted(i for b in capped for i in b) == list(range(6))


def test_interrupted_then_resumed_extraction_is_byte_identical(tmp_path, items, wavlm):
    kw = dict(batch_size=3, batch_seconds=60.0, num_workers=0, device=CPU)
    extract_to_store(wavlm, items, tmp_path / "straight", **kw)
    with pytest.raises(KeyboardInterrupt):
        extract_to_store(Interrupting(wavlm, fail_at=3), items, tmp_path / "resumed", **kw)
    assert not (tmp_path / "resumed").exists() and (tmp_path / "resumed.partial").exists()
    stats = extract_to_store(wavlm, items, tmp_path / "resumed", **kw)
    assert stats.utterances == len(items) and stats.frames < FeatureStore(tmp_path / "resumed").n_frames
    assert digest(tmp_path / "straight") == digest(tmp_path / "resumed")
    store = FeatureStore(tmp_path / "straight")
    for _, row in items.iterrows():   # frames follow duration (50 per second), no padding frames stored
        assert abs(store.lengths[row.utt_id] - 50 * row.duration_s) <= 1.5  # conv receptive field: ~1 frame less


def test_shards_cover_everything_once_and_merge(tmp_path, items, wavlm):
    kw = dict(batch_size=4, batch_seconds=60.0, num_workers=0, device=CPU)
    for shard in range(3):
        extract_to_store(wavlm, items, tmp_path / "sharded", shard=shard, n_shards=3, **kw)
    merged = merge_shards(tmp_path / "sharded", 3)
    extract_to_store(wavlm, items, tmp_path / "single", **kw)
    single = FeatureStore(tmp_path / "single")
    assert sorted(merged.utt_ids) == sorted(single.utt_ids) == sorted(items["utt_id"])
    assert digest(tmp_path / "sharded") == digest(tmp_path / "single")   # the same bytes, frames in plan order


def test_cli_extracts_shards_and_merges(tmp_path, items, repo_root, monkeypatch):
    import yaml

    from medusa.cli import main

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "work").mkdir()
    items.assign(split="train")[["utt_id", "path", "duration_s", "split"]].to_parquet(tmp_path / "work" / "manifest.parquet")
    monkeypatch.chdir(tmp_path)
    assert main(["extract", "egemaps", "--shard", "0/2"]) == 0
    assert main(["extract", "egemaps", "--shard", "1/2"]) == 0
    assert main(["extract", "egemaps", "--merge", "2"]) == 0
    store = FeatureStore(tmp_path / "work" / "features" / "egemaps")
    assert sorted(store.utt_ids) == sorted(items["utt_id"]) and store.dim == 25
    assert main(["extract", "egemaps", "--shard", "2/2"]) == 1
    assert main(["extract", "nope", "--shard", "0/1"]) == 1


# ------------------------------------------------------------------------ resumes never mix data (issue 11, 6)


def write_corpus(folder, names, seed, seconds=(0.5, 2.0)):
    """16 kHz wavs named `names` in `folder` (overwriting files of the same name), as a manifest frame."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for name in names:
        path = folder / f"{name}.wav"
        sf.write(path, rng.uniform(-0.3, 0.3, int(rng.uniform(*seconds) * 16000)), 16000, subtype="PCM_16")
        rows.append({"utt_id": name, "path": str(path), "duration_s": sf.info(path).duration, "text": None})
    return pd.DataFrame(rows)


def test_resume_after_the_corpus_changed_under_the_same_names_starts_afresh(tmp_path, wavlm, caplog):
    """The reported bug: a store interrupted on one corpus and resumed after the manifest switched to another
    with the same file names finished with the old corpus's features and utterances not in the manifest."""
    kw = dict(batch_size=3, batch_seconds=60.0, num_workers=0, device=CPU)
    shared = [f"MSP-PODCAST_{i:04d}" for i in range(12)]
    corpus_a = write_corpus(tmp_path / "Audios", shared + [f"MSP-PODCAST_a{i}" for i in range(4)], seed=1)
    with pytest.raises(KeyboardInterrupt):
        extract_to_store(Interrupting(wavlm, fail_at=5), corpus_a, tmp_path / "store", **kw)  # 12 stored
    # the other corpus: the same 12 names with other audio, 4 names of its own
    corpus_b = write_corpus(tmp_path / "Audios", shared + [f"MSP-PODCAST_b{i}" for i in range(4)], seed=2)
    with caplog.at_level("WARNING", logger="medusa.features.store.journal"):
        stats = extract_to_store(wavlm, corpus_b, tmp_path / "store", **kw)
    assert "discarding the unfinished store" in caplog.text and "other inputs" in caplog.text
    assert stats.utterances == 16
    extract_to_store(wavlm, corpus_b, tmp_path / "straight", **kw)
    assert FeatureStore(tmp_path / "store").utt_ids == sorted(corpus_b["utt_id"])
    assert digest(tmp_path / "store") == digest(tmp_path / "straight")


def test_resume_with_another_layer_selection_starts_afresh(tmp_path, items, wavlm):
    kw = dict(batch_size=3, batch_seconds=60.0, num_workers=0, device=CPU)
    with pytest.raises(KeyboardInterrupt):
        extract_to_store(Interrupting(wavlm, fail_at=3), items, tmp_path / "store", **kw)
    other = build_encoder("wavlm", "wavlm", wavlm.model_name, [-2], CPU)
    extract_to_store(other, items, tmp_path / "store", **kw)
    extract_to_store(other, items, tmp_path / "straight", **kw)
    assert digest(tmp_path / "store") == digest(tmp_path / "straight")
    assert FeatureStore(tmp_path / "store").meta["layers"] == [-2]


def test_the_input_fingerprint_stays_out_of_meta_json(tmp_path, items, wavlm):
    """meta.json is the same on every machine and clone (no paths, no mtimes): moving the corpus elsewhere and
    extracting again gives the same store bytes."""
    import shutil

    kw = dict(batch_size=3, batch_seconds=60.0, num_workers=0, device=CPU)
    extract_to_store(wavlm, items, tmp_path / "here", **kw)
    moved = items.copy()
    (tmp_path / "elsewhere").mkdir()
    moved["path"] = [shutil.copy(p, tmp_path / "elsewhere") for p in items["path"]]
    extract_to_store(wavlm, moved, tmp_path / "there", **kw)
    assert digest(tmp_path / "here") == digest(tmp_path / "there")
    meta = (tmp_path / "here" / "meta.json").read_text()
    assert "elsewhere" not in meta and "wavs" not in meta and "inputs" not in meta


def test_shards_under_other_batch_settings_are_restarted_or_refused_at_merge(tmp_path, items, wavlm, caplog):
    """Shard i takes the i-th block of batches of the plan, so which clips it holds follows batch_size: a shard resumed
    after batch_size changed starts afresh (it used to stop on clips "not in this work list"), and shards made
    under two plans, which may miss clips, are refused by the merge instead of giving an incomplete store."""
    kw = dict(batch_seconds=60.0, num_workers=0, device=CPU)
    extract_to_store(wavlm, items, tmp_path / "s", shard=0, n_shards=2, batch_size=1, **kw)
    extract_to_store(wavlm, items, tmp_path / "s", shard=1, n_shards=2, batch_size=3, **kw)
    with pytest.raises(ValueError, match=r"do not hold the work list: \d+ utterance\(s\) in no shard"):
        merge_shards(tmp_path / "s", 2, list(items["utt_id"]))
    with pytest.raises(KeyboardInterrupt):   # shard 0 begun anew under batch_size 3, interrupted ...
        extract_to_store(Interrupting(wavlm, fail_at=2), items, tmp_path / "s", shard=0, n_shards=2,
                         batch_size=3, **kw)
    with caplog.at_level("WARNING", logger="medusa.features.store.journal"):   # ... and resumed under batch_size 1
        extract_to_store(wavlm, items, tmp_path / "s", shard=0, n_shards=2, batch_size=1, **kw)
    assert "discarding the unfinished store" in caplog.text
    extract_to_store(wavlm, items, tmp_path / "s", shard=0, n_shards=2, batch_size=3, **kw)
    merged = merge_shards(tmp_path / "s", 2, list(items["utt_id"]))
    assert sorted(merged.utt_ids) == sorted(items["utt_id"])


def test_resume_after_the_weights_changed_under_the_same_path_starts_afresh(tmp_path, items, caplog):
    """The spec names a model by its folder: refilling the folder with other weights must not resume a store
    begun with the old ones (the store would mix two models' frames)."""
    from transformers import WavLMConfig, WavLMModel

    def save(seed):
        torch.manual_seed(seed)
        WavLMModel(WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                               feat_extract_norm="layer", do_stable_layer_norm=True)).save_pretrained(tmp_path / "m")
        return build_encoder("wavlm", "wavlm", str(tmp_path / "m"), [-1], CPU)

    kw = dict(batch_size=3, batch_seconds=60.0, num_workers=0, device=CPU)
    with pytest.raises(KeyboardInterrupt):
        extract_to_store(Interrupting(save(0), fail_at=3), items, tmp_path / "store", **kw)
    retrained = save(1)
    with caplog.at_level("WARNING", logger="medusa.features.store.journal"):
        extract_to_store(retrained, items, tmp_path / "store", **kw)
    assert "discarding the unfinished store" in caplog.text
    extract_to_store(retrained, items, tmp_path / "straight", **kw)
    assert digest(tmp_path / "store") == digest(tmp_path / "straight")
