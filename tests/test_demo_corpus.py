"""The synthetic demo corpus: deterministic, in the documented format, consistent, with every class."""
import csv
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medusa.config.params import load_params
from medusa.data.corpora.demo import MAX_DURATION_S, MIN_DURATION_S, build_demo_corpus, tree_digest
from medusa.data.corpora.manifest import build_manifest, speaker_overlap
from medusa.data.corpora.msp_podcast import parse_emo_detail
from medusa.labels import CODES, plurality

SMALL = dict(seed=11, n_speakers=12, n_train=60, n_development=20, n_blind=8, annotators_min=5, annotators_max=7)


def build(p):
    """The manifest of a corpus the test wrote, converted audio cached beside it (not in the repo's work/)."""
    return build_manifest(p, cache_dir=Path(p.corpus).parent / f"{Path(p.corpus).name}.audio")


@pytest.fixture(scope="session")
def demo_params(repo_root):
    return load_params(repo_root / "params.yaml")


@pytest.fixture(scope="session")
def full_corpus(tmp_path_factory, demo_params):
    """The demo corpus exactly as params.yaml asks for it (what `make repro` builds)."""
    out = tmp_path_factory.mktemp("demo") / "data"
    build_demo_corpus(out, demo_params.demo_corpus)
    return out


def test_two_builds_are_byte_identical(tmp_path, demo_params):
    p = demo_params.demo_corpus.model_copy(update=SMALL)
    build_demo_corpus(tmp_path / "a", p)
    build_demo_corpus(tmp_path / "b", p)  # same process: espeak-ng state must not leak between builds
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    build_demo_corpus(tmp_path / "c", p.model_copy(update={"seed": 12}))
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_label_files_parse_with_csv_into_documented_columns(full_corpus):
    with (full_corpus / "Labels" / "labels_consensus.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]
    assert {r["Split_Set"] for r in rows} == {"Train", "Development"}
    assert {r["Gender"] for r in rows} == {"Male", "Female"}
    assert all(r["FileName"].endswith(".wav") and 1 <= float(r["EmoAct"]) <= 7 for r in rows)
    with (full_corpus / "Labels" / "labels_detailed.csv").open(newline="") as f:
        detailed = list(csv.reader(f))
    assert detailed[0] == ["FileName", "EmoDetail"]
    worker, code, secondary, a, v, d = parse_emo_detail(detailed[1][1], "row 2")
    assert worker.startswith("WORKER") and all(1 <= x <= 7 for x in (a, v, d))
    assert any(";" in r[1] and "," in r[1].split(";")[2] for r in detailed[1:])  # secondary lists exist
    assert any("Other-" in r[1] for r in detailed[1:])


def test_consensus_is_the_plurality_of_detailed_votes(full_corpus):
    votes = defaultdict(list)
    with (full_corpus / "Labels" / "labels_detailed.csv").open(newline="") as f:
        for i, (name, detail) in enumerate(list(csv.reader(f))[1:], start=2):
            votes[name].append(parse_emo_detail(detail, f"line {i}")[1])
    with (full_corpus / "Labels" / "labels_consensus.csv").open(newline="") as f:
        consensus = {r["FileName"]: r["EmoClass"] for r in csv.DictReader(f)}
    assert set(votes) == set(consensus)
    assert all(plurality(votes[name]) == label for name, label in consensus.items())
    assert all(5 <= len(v) <= 7 for v in votes.values())
    shares = Counter(consensus.values())
    assert 0.05 < shares["X"] / len(consensus) < 0.25 and shares["O"] > 0


def test_every_class_has_30_training_utterances_and_splits_are_speaker_disjoint(full_corpus, demo_params):
    m = build(demo_params.prepare.model_copy(update={"corpus": str(full_corpus)}))
    train_counts = m.loc[m["split"] == "train", "label"].value_counts()
    assert all(train_counts.get(c, 0) >= 30 for c in CODES), train_counts.to_dict()
    # MSP-like imbalance: Neutral and Happy are the most common classes.
    assert set(train_counts[list(CODES)].nlargest(2).index) == {"N", "H"}
    overlap = speaker_overlap(m)
    assert overlap.loc["train", "test"] == 0 and overlap.loc["train", "dev"] == 0
    test_share = (m["split"] == "test").sum() / m["split"].isin(["train", "test"]).sum()
    assert abs(test_share - demo_params.prepare.test_fraction) < 0.04  # speaker-disjoint, so only near the fraction
    # ~300 scored test utterances bound the demo's 95 % intervals of balanced macro-F1 to about +-0.06
    assert m.loc[m["split"] == "test", "label"].isin(CODES).sum() >= 300
    assert m["duration_s"].between(MIN_DURATION_S, MAX_DURATION_S).all()
    assert (m["split"] == "blind").sum() == demo_params.demo_corpus.n_blind
    assert m.loc[m["split"] != "blind", "ref_text"].notna().all()


def test_the_demo_corpus_as_a_csv_manifest_gives_the_same_manifest(tmp_path, demo_params):
    """`medusa demo-corpus DIR --manifest`: the same corpus in the form a researcher writes for theirs; prepare
    reads it into the same work/manifest.parquet (same bytes) as the MSP-Podcast layout."""
    from medusa import cli
    from medusa.io import write_parquet

    params = tmp_path / "params.yaml"
    raw = demo_params.model_dump()
    raw["demo_corpus"].update(SMALL)
    params.write_text(yaml.safe_dump(raw))
    assert cli.main(["demo-corpus", str(tmp_path / "demo"), "--params", str(params), "--manifest"]) == 0
    manifests = {}
    for corpus in ("demo", "demo/manifest.csv"):
        p = demo_params.prepare.model_copy(update={"corpus": str(tmp_path / corpus)})
        write_parquet(build_manifest(p, cache_dir=tmp_path / "audio"), tmp_path / "m.parquet")
        manifests[corpus] = (tmp_path / "m.parquet").read_bytes()
    assert manifests["demo"] == manifests["demo/manifest.csv"]
    m = pd.read_parquet(tmp_path / "m.parquet")
    assert set(m["split"]) == {"train", "test", "dev", "blind"} and len(m) == 60 + 20 + 8
