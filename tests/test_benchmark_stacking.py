"""benchmarks/stacking.py on a small synthetic run: members' posteriors written as train@ would write them."""
import json

import numpy as np
import pandas as pd
import yaml

from medusa.labels import ATTRIBUTES, target_columns

BENCHMARK = "stacking"
CLASSES = ("A", "S", "H", "N")


def _work(tmp_path, rng) -> tuple:
    """A manifest (train/dev/test, 4 classes) and two members whose posteriors lean towards the truth."""
    n = 240
    labels = np.asarray(CLASSES)[rng.integers(0, 4, n)]
    split = np.asarray(["train", "dev", "dev", "test"])[np.arange(n) % 4]
    manifest = pd.DataFrame({"utt_id": [f"u{i:03d}" for i in range(n)], "split": split, "label": labels})
    manifest[list(target_columns(CLASSES))] = np.eye(4)[[CLASSES.index(c) for c in labels]]
    manifest["n_votes"] = 1.0
    manifest[list(ATTRIBUTES)] = np.nan
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    manifest.to_parquet(work / "manifest.parquet")
    for m in ("a", "b"):
        rows = manifest[manifest["split"] != "train"][["utt_id", "split", "label"]].reset_index(drop=True)
        logits = rng.normal(0, 1, (len(rows), 4)) + 1.2 * np.eye(4)[[CLASSES.index(c) for c in rows["label"]]]
        rows[list(target_columns(CLASSES))] = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        rows[list(ATTRIBUTES)] = np.nan
        (work / "models" / m).mkdir()
        rows.to_parquet(work / "models" / m / "posteriors.parquet")
    return work, manifest


def test_subsets_follow_or_skew_the_class_shares(bench):
    labels = np.asarray(list("AAAAAAAASSSSHHHHNNNN") * 5)
    rows = bench.stratified_subset(labels, 20, 0)
    assert len(rows) == 20 and set(labels[rows]) == set("ASHN") and (labels[rows] == "A").sum() == 8
    skewed = bench.skewed_subset(labels, 20, 1, floor=0)
    counts = pd.Series(labels[skewed]).value_counts()
    # shares 1/2, 1/4, 1/8, 1/16 of 20 (normalised, rounded down, the rest to the first): 12, 5, 2, 1
    assert len(skewed) == 20 and counts.tolist() == [12, 5, 2, 1]
    assert (bench.skewed_subset(labels, 20, 1, floor=0) == skewed).all()       # seeded
    # with the default floor of 2 per class: 20 - 4 x 2 = 12 rows shared 6, 3, 1, 0, each lifted to at least 2
    # (6, 3, 2, 2), the rest to the first
    counts = pd.Series(labels[bench.skewed_subset(labels, 20, 1)]).value_counts()
    assert counts.tolist() == [13, 3, 2, 2]


def test_the_benchmark_scores_every_technique_against_soft_voting(bench, repo_root, tmp_path):
    work, _ = _work(tmp_path, np.random.default_rng(0))
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["models"] = {"a": {"encoders": ["egemaps"], "seed": 0}, "b": {"encoders": ["egemaps"], "seed": 0}}
    params["ensemble"].update(members=[], top_k=[], epochs=5, seeds=[0], anchor_l2=[1.0], cv_folds=3)
    params["ablate"]["models"] = ["a"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    report = tmp_path / "benchmarks.md"
    out = bench.main(["--work", str(work), "--params", str(tmp_path / "params.yaml"), "--sizes", "30", "--skewed",
                      "30", "--draws", "2", "--bootstrap", "100", "--report", str(report), "--json",
                      str(tmp_path / "stacking.json"), "--figure", str(tmp_path / "stacking.png")])
    summary = pd.DataFrame(out["summary"])
    assert list(dict.fromkeys(summary["condition"])) == ["stratified 30", "skewed 30", "whole dev (120)"]
    assert set(summary["technique"]) == set(bench.TECHNIQUES)
    assert summary["balanced_macro_f1"].between(0, 1).all()
    reference = summary[summary["technique"] == "soft voting"]
    assert (reference["minus_soft_voting"] == 0).all()
    assert all(low <= high for low, high in summary["minus_soft_voting_ci95"])
    assert json.loads((tmp_path / "stacking.json").read_text())["test_clips"] == 60
    assert (tmp_path / "stacking.png").stat().st_size > 0
    text = report.read_text()
    assert bench.REPORT_SECTION in text and text.count("| stratified 30 | 30 | 2 |") == 1
