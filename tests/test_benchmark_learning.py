"""benchmarks/learning.py on tiny stores the test writes: the variant builders, the subsampling, and one tiny run
end to end (a row of the table, the figure, the CSV, and a rerun that trains nothing)."""
import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medusa.features.store.reader import FeatureStore
from medusa.features.store.writer import FeatureStoreWriter
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = "learning"  # the `bench` fixture (conftest) loads benchmarks/learning.py


@pytest.fixture(scope="module")
def variants(bench):
    """benchmarks/learning_variants.py: the data the runs train on (importable once the script has put its folder on
    sys.path)."""
    return importlib.import_module("learning_variants")


@pytest.fixture(scope="module")
def output(bench):
    """benchmarks/learning_report.py: the verdict, the table and the section."""
    return importlib.import_module("learning_report")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A manifest of 160 utterances (8 classes; train rows include X and O) and two stores: `a` carries the class
    in its frame mean at a raw-eGeMAPS-like scale, `b` is noise."""
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 1.5, (8, 5))
    rows = []
    with FeatureStoreWriter(root / "a", 5, {"kind": "audio"}) as wa, FeatureStoreWriter(root / "b", 3, {"kind": "text"}) as wb:
        for i in range(160):
            c = i % 8
            split = "train" if i % 10 < 6 else ("dev", "dev", "test", "test")[i % 10 - 6]
            u = f"u{i:04d}"
            wa.add(u, 50.0 + 20.0 * (centres[c] + rng.normal(0, 1.0, (int(rng.integers(4, 14)), 5))))
            wb.add(u, rng.normal(0, 1.0, (int(rng.integers(1, 5)), 3)))
            soft = np.full(8, 0.05)
            soft[c] = 1 - 0.05 * 7
            label = CODES[c]
            if split == "train" and i % 23 == 0:
                label = "X"
            elif split == "train" and i % 29 == 0:
                label = "O"
            rows.append({"utt_id": u, "split": split, "label": label, **dict(zip(SOFT_TARGET_COLUMNS, soft)),
                         **dict(zip(ATTRIBUTES, [1 + c * 0.8, 4.0, 3.0])), "agreement": 0.65, "n_votes": 5.0})
    return pd.DataFrame(rows), root


def test_subsamples_are_nested_stratified_and_leave_dev_and_test_alone(variants, corpus):
    manifest, _ = corpus
    train = manifest[manifest["split"] == "train"]
    counts = train["label"].value_counts()
    previous = set()
    for size in (16, 40, 70):
        sub = variants.subsample_train(manifest, size, seed=0)
        ids = set(sub.loc[sub["split"] == "train", "utt_id"])
        assert len(ids) == size and previous <= ids  # a smaller training set is part of every larger one
        got = sub.loc[sub["split"] == "train", "label"].value_counts()
        expected = counts * size / len(train)
        assert (got.reindex(counts.index, fill_value=0) - expected).abs().max() <= 1.0 + 1e-9, (size, got)
        pd.testing.assert_frame_equal(sub[sub["split"] != "train"].reset_index(drop=True),
                                      manifest[manifest["split"] != "train"].reset_index(drop=True))
        previous = ids
    assert variants.subsample_train(manifest, 10_000, seed=0) is manifest  # beyond the split: all of it
    # seeded: the same seed the same draw, another seed another one
    pick = lambda seed: list(variants.subsample_train(manifest, 30, seed).query("split == 'train'")["utt_id"])  # noqa: E731
    assert pick(0) == pick(0) and pick(0) != pick(1)


def test_scales_variant_rescales_every_dimension_and_keeps_the_information(variants, corpus, tmp_path):
    manifest, src = corpus
    before = {p.name: p.stat().st_mtime_ns for p in (src / "a").iterdir()}
    data = variants.build_scales(manifest, src, tmp_path, ["a", "b"], {"m": {"encoders": ["a", "b"], "seed": 0}}, 0)
    assert {p.name: p.stat().st_mtime_ns for p in (src / "a").iterdir()} == before  # the source is never written
    for key in ("a", "b"):
        original, scaled = FeatureStore(src / key), FeatureStore(data.features_root / key)
        x = np.concatenate([np.asarray(original[u], np.float64) for u in original.utt_ids])
        y = np.concatenate([np.asarray(scaled[u], np.float64) for u in original.utt_ids])
        assert np.abs(y).max() <= variants.MAX_ABS * 1.001
        for d in range(x.shape[1]):  # an affine map per dimension: factor and offset fitted back, residual tiny
            factor, offset = np.polyfit(x[:, d], y[:, d], 1)
            residual = y[:, d] - (factor * x[:, d] + offset)
            assert np.abs(residual).max() <= 2e-3 * np.abs(y[:, d]).max() + 1e-6
            assert abs(offset) >= 2.9 * abs(factor) * x[:, d].std()  # shifted by at least 3 deviations
    factors = [np.polyfit(np.concatenate([np.asarray(FeatureStore(src / "b")[u], np.float64)[:, d]
                                          for u in manifest["utt_id"]]),
                          np.concatenate([np.asarray(FeatureStore(data.features_root / "b")[u], np.float64)[:, d]
                                          for u in manifest["utt_id"]]), 1)[0] for d in range(3)]
    assert max(factors) / min(factors) > 3  # the dimensions are scaled differently
    # built once: a second call finds the stores and reuses them
    stamp = (data.features_root / "a" / "frames.f16").stat().st_mtime_ns
    again = variants.build_scales(manifest, src, tmp_path, ["a", "b"], {}, 0)
    assert (again.features_root / "a" / "frames.f16").stat().st_mtime_ns == stamp
    assert again.fingerprint == data.fingerprint


def test_one_annotator_and_demo_variants(variants, corpus, tmp_path):
    manifest, src = corpus
    demo = variants.build_demo(manifest, src, tmp_path, ["a", "b"], {}, 0)
    assert (demo.features_root / "a").is_symlink() and FeatureStore(demo.features_root / "a").dim == 5
    data = variants.build_one_annotator(manifest, src, tmp_path, ["a", "b"], {}, 0)
    m = data.manifest
    train = m[m["split"] == "train"]
    assert set(train["label"]) <= set(CODES)  # X and O rows left the training split ...
    assert len(train) == int(((manifest["split"] == "train") & manifest["label"].isin(CODES)).sum())
    soft = train[list(SOFT_TARGET_COLUMNS)].to_numpy()
    assert np.array_equal(soft, (train["label"].to_numpy()[:, None] == np.asarray(CODES)).astype(float))
    assert (m.loc[m["split"] != "train", "utt_id"].tolist()
            == manifest.loc[manifest["split"] != "train", "utt_id"].tolist())  # ... dev and test kept every row
    assert (data.features_root / "b").is_symlink()


def test_one_annotator_and_bursts_follow_the_run_classes(variants, corpus):
    """A 4-class run (the manifest holds p_A, p_S, p_H, p_N): one-hot targets over those 4, train rows of any
    other label dropped; each burst carries one of the 4 classes (an index into them)."""
    manifest, _ = corpus
    four = ["A", "S", "H", "N"]
    run = manifest.drop(columns=[f"p_{c}" for c in CODES if c not in four])
    m = variants.one_annotator_manifest(run)
    train = m[m["split"] == "train"]
    assert [c for c in m.columns if c.startswith("p_")] == [f"p_{c}" for c in four]
    assert set(train["label"]) == set(four)
    assert np.array_equal(train[[f"p_{c}" for c in four]].to_numpy(),
                          (train["label"].to_numpy()[:, None] == np.asarray(four)).astype(float))
    classes = variants.burst_classes(run, np.random.default_rng(0))
    labelled = run["label"].isin(four).to_numpy()
    assert classes.max() < 4 and list(np.asarray(four)[classes[labelled]]) == list(run.loc[labelled, "label"])


def test_few_frames_variant_hides_the_class_in_a_short_burst(variants, corpus, tmp_path):
    manifest, src = corpus
    data = variants.build_few_frames(manifest, src, tmp_path, ["a"], {}, 0)
    store = FeatureStore(data.features_root / variants.BURST_STORE)
    assert set(store.utt_ids) == set(manifest["utt_id"]) and store.dim == variants.BURST_DIM
    lengths = np.asarray([store.lengths[u] for u in store.utt_ids])
    assert lengths.min() >= 2 * variants.BURST_RATE - 1 and lengths.max() <= 4 * variants.BURST_RATE + 1
    assert list(data.members) == [variants.BURST_MEMBER] and data.members[variants.BURST_MEMBER]["encoders"] == ["burst"]
    assert data.overrides == {"pool": {"burst": variants.BURST_POOL}}
    # the burst: the few frames of largest norm are far from the noise, and their mean tells the class apart
    x = np.asarray(store[manifest["utt_id"].iloc[0]], np.float32)
    norms = np.linalg.norm(x, axis=1)
    assert np.sort(norms)[-variants.BURST_FRAMES:].min() > np.median(norms)


def test_verdict_rule(output):
    assert output.verdict(0.40, 0.45, 0.38) == "above"
    assert output.verdict(0.30, 0.36, 0.35) == "within"
    assert output.verdict(0.30, 0.34, 0.35) == "below"


def _params(tmp_path: Path) -> Path:
    """params.yaml with a tiny member `m` over the test's stores a and b: hidden 8, one short epoch."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["encoders"] = {**params["encoders"], "a": params["encoders"]["egemaps"], "b": params["encoders"]["minilm"]}
    params["train"].update(device="cpu", threads=1, hidden=8, heads=2, ff_mult=2, pool={"a": 2}, epoch_steps=3,
                           stage1_epochs=1, stage2_epochs=0, batch_size=8)
    params["models"] = {"m": {"encoders": ["a", "b"], "seed": 0}}
    params["ensemble"].update(members=[], top_k=[1])
    params["ablate"]["models"] = ["m"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_a_tiny_run_end_to_end_and_a_rerun_trains_nothing(bench, output, corpus, tmp_path, monkeypatch):
    manifest, src = corpus
    manifest_path = tmp_path / "manifest.parquet"
    manifest.to_parquet(manifest_path)
    report = tmp_path / "benchmarks.md"
    (tmp_path / "benchmarks").mkdir()  # the report's documents: another benchmark's section is kept
    (tmp_path / "benchmarks" / "extract.json").write_text(
        json.dumps({"title": "Feature extraction", "blocks": [{"text": "keep this"}]}))
    argv = ["--params", str(_params(tmp_path)), "--manifest", str(manifest_path), "--features", str(src),
            "--work", str(tmp_path / "work"), "--out", str(report), "--figure", str(tmp_path / "fig.png"),
            "--csv", str(tmp_path / "learning.csv"), "--variants", "demo", "--members", "m", "--sizes", "40",
            "--changes", "base", "--workers", "1"]
    frame = bench.main(argv)

    assert len(frame) == 1
    row = frame.iloc[0]
    assert (row["variant"], row["member"], row["change"], row["train_utterances"]) == ("demo", "m", "base", 40)
    assert 0 <= row["member_low"] <= row["member_f1"] <= row["member_high"] <= 1
    assert 0 <= row["probe_low"] <= row["probe_f1"] <= row["probe_high"] <= 1
    assert row["verdict"] in ("above", "within", "below") and row["train_s"] > 0
    assert (tmp_path / "fig.png").stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "learning.csv")) == 1
    text = report.read_text(encoding="utf-8")
    assert "## Feature extraction\n\nkeep this\n" in text and text.count(output.REPORT_SECTION) == 1
    assert "| demo | m | base | 0 | 40 |" in text
    results = list((tmp_path / "work" / "results").glob("*.json"))
    assert len(results) == 1 and json.loads(results[0].read_text())["probe_test"]["balanced_macro_f1"] >= 0

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")
    monkeypatch.setattr("medusa.model.members.train_member", no_training)
    again = bench.main(argv)
    assert again["reused"].all() and not frame["reused"].any()
    assert again.drop(columns=["reused"]).equals(frame.drop(columns=["reused"]))  # the same numbers, read back
    assert "1 of the runs reused" in report.read_text(encoding="utf-8")


def test_the_code_fingerprint_reads_every_listed_path(bench):
    """CODE_PATHS names medusa files that exist: a module that moved must not drop out of the results' key."""
    root = Path(bench.__file__).resolve().parents[1] / "medusa"
    assert all((root / p).exists() for p in bench.CODE_PATHS)
    assert len(bench.code_fingerprint()) == 12
