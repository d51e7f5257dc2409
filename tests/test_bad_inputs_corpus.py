"""The bad-input matrix, corpus files and splits (issue 24): a CSV manifest or an MSP-layout label file that is
wrong in a way a user can make is refused with one message naming the file, the line and the value (and how to
fix it); a corpus whose speakers cannot give the derived splits is refused in the user's terms (their settings,
their speakers and classes); what is awkward but right (BOM, CRLF, `.WAV`, a small corpus at the defaults) is read
as meant. `medusa evaluate` reads corpora with the same readers: its own option names appear in its messages."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from bad_inputs import leftovers, refused, user_error

import medusa.cli
from medusa.data.corpora.csv_manifest import LABEL_MAP_OPTION, LABEL_MAP_PARAMS, read_csv_manifest
from medusa.data.corpora.msp_podcast import CONSENSUS_HEADER, CONSENSUS_NAMES, find_label_file, read_consensus
from medusa.data.corpora.splits import _one_fold, classes_without_train, search_splits
from medusa.serving.evaluate import corpus_rows

ROOT = Path(__file__).resolve().parents[1]


def wav(path: Path, seconds: float = 0.2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), 16000, subtype="PCM_16")
    return path


def manifest(root: Path, lines: list[str], name: str = "corpus.csv", newline: str = "\n", bom: bool = False) -> Path:
    """A CSV manifest written line by line as given (so that commas, quotes and line ends are exactly the case's)."""
    path = root / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (newline.join(lines) + newline).encode())
    return path


def clips(root: Path, *names: str) -> None:
    for name in names:
        wav(root / name)


def read(path: Path, label_map=None):
    return read_csv_manifest(path, label_map or {}, label_map_from=LABEL_MAP_PARAMS)


# ------------------------------------------------------------------------------------------------ CSV manifest

def test_csv_path_is_a_folder(tmp_path):
    """A `path` cell naming a folder is said to be a folder, not "audio file not found"."""
    clips(tmp_path, "a.wav", "sub/b.wav")
    path = manifest(tmp_path, ["path,label,speaker", "a.wav,angry,s1", "sub,sad,s2"])
    message = user_error(read, path, names=(f"{path}:3", "'sub'", "is a folder"))
    assert "not found" not in message


def test_csv_trailing_comma_on_every_line(tmp_path):
    clips(tmp_path, "a.wav", "b.wav")
    path = manifest(tmp_path, ["path,label,speaker,", "a.wav,angry,s1,", "b.wav,sad,s2,"])
    message = user_error(read, path, names=(f"{path}:1", "every line ends with a comma", "empty column name",
                                            "`speaker`"))
    assert "unknown or repeated" not in message


def test_csv_trailing_comma_on_the_header_only(tmp_path):
    clips(tmp_path, "a.wav")
    path = manifest(tmp_path, ["path,label,speaker,", "a.wav,angry,s1"])
    user_error(read, path, names=(f"{path}:1", "the header ends with a comma", "empty column name"))


def test_csv_column_without_a_name(tmp_path):
    clips(tmp_path, "a.wav")
    path = manifest(tmp_path, ["path,,label,speaker", "a.wav,x,angry,s1"])
    user_error(read, path, names=(f"{path}:1", "column 2 has no name", "`path`"))


def test_csv_trailing_comma_on_a_data_line(tmp_path):
    clips(tmp_path, "a.wav", "b.wav")
    path = manifest(tmp_path, ["path,label,speaker", "a.wav,angry,s1", "b.wav,sad,s2,"])
    user_error(read, path, names=(f"{path}:3", "expected 3 fields", "ends with a comma"))


def test_csv_votes_written_with_commas(tmp_path):
    """`angry:3,sad:1` (quoted, so one cell) is a votes syntax error naming `;`, not a label word to map."""
    clips(tmp_path, "a.wav")
    path = manifest(tmp_path, ["path,label,speaker,votes", 'a.wav,angry,s1,"angry:3,sad:1"'])
    message = user_error(read, path, names=(f"{path}:2", "'angry:3,sad:1'", "separated by `;`", "'angry:3;sad:1'"))
    assert "label_map" not in message and "label word" not in message


def test_csv_votes_with_unquoted_commas(tmp_path):
    """Unquoted, the commas split the cell: the field count's message says to quote and that votes take `;`."""
    clips(tmp_path, "a.wav")
    path = manifest(tmp_path, ["path,label,speaker,votes", "a.wav,angry,s1,angry:3,sad:1"])
    user_error(read, path, names=(f"{path}:2", "expected 4 fields", "double quotes", "separated by `;`"))


@pytest.mark.parametrize("first, second", [
    pytest.param("a/y.wav", "a/../a/y.wav", id="dotdot"),
    pytest.param("y.wav", "./y.wav", id="dot_slash"),
    pytest.param("y.wav", "link.wav", id="symlink"),
])
def test_csv_same_recording_under_two_spellings(tmp_path, first, second):
    """Compared resolved, the same recording is one file: it could otherwise land in train and test with two
    labels. Both lines and both spellings are named."""
    clips(tmp_path, "a/y.wav", "y.wav")
    os.symlink("y.wav", tmp_path / "link.wav")
    path = manifest(tmp_path, ["path,label,speaker,utt_id", f"{first},angry,s1,u1", "other.wav,sad,s2,u2",
                               f"{second},sad,s3,u3"])
    clips(tmp_path, "other.wav")
    user_error(read, path, names=(f"{path}:4", repr(first), repr(second), "lines 2, 4", "each recording is one row"))


def test_csv_bom_crlf_and_upper_case_extension_are_read(tmp_path):
    """Awkward but right: a BOM, CRLF line ends and an upper-case extension are read as meant."""
    clips(tmp_path, "A.WAV", "b.wav")
    path = manifest(tmp_path, ["path,label,speaker", "A.WAV,angry,s1", "b.wav,SAD,s2"], newline="\r\n", bom=True)
    rows = read(path)
    assert list(rows["utt_id"]) == ["A", "b"] and list(rows["label"]) == ["A", "S"]
    assert list(rows["listed_at"]) == [f"{path}:2", f"{path}:3"]


def test_csv_bom_crlf_error_names_the_right_line(tmp_path):
    clips(tmp_path, "A.WAV", "b.wav")
    path = manifest(tmp_path, ["path,label,speaker", "A.WAV,angry,s1", "b.wav,sad,s2", "b.wav,angry,s3"],
                    newline="\r\n", bom=True)
    user_error(read, path, names=(f"{path}:4", "'b.wav'", "lines 3, 4"))


def test_csv_empty_path_cell(tmp_path):
    clips(tmp_path, "a.wav")
    path = manifest(tmp_path, ["path,label,speaker", "a.wav,angry,s1", ",sad,s2"])
    user_error(read, path, names=(f"{path}:3", "empty path"))


def test_csv_duplicate_stems(tmp_path):
    clips(tmp_path, "a/x.wav", "b/x.wav")
    path = manifest(tmp_path, ["path,label,speaker", "a/x.wav,angry,s1", "b/x.wav,sad,s2"])
    user_error(read, path, names=(f"{path}:3", "utterance name 'x'", "lines 2, 3", "`utt_id`"))


def test_csv_vote_count_out_of_range(tmp_path):
    clips(tmp_path, "a.wav")
    path = manifest(tmp_path, ["path,label,speaker,votes", "a.wav,angry,s1,angry:0"])
    user_error(read, path, names=(f"{path}:2", "'angry:0'", "count >= 1"))


def test_csv_rating_out_of_range(tmp_path):
    clips(tmp_path, "a.wav")
    path = manifest(tmp_path, ["path,label,speaker,arousal", "a.wav,angry,s1,9"])
    user_error(read, path, names=(f"{path}:2", "arousal '9'", "1..7"))


def test_csv_missing_column(tmp_path):
    clips(tmp_path, "a.wav")
    path = manifest(tmp_path, ["path,Label,speaker", "a.wav,angry,s1"])
    user_error(read, path, names=(f"{path}:1", "lacks column(s) label", "lower-case: Label"))


def test_csv_audio_file_not_found(tmp_path):
    clips(tmp_path, "a.wav")
    path = manifest(tmp_path, ["path,label,speaker", "a.wav,angry,s1", "gone.wav,sad,s2"])
    user_error(read, path, names=(f"{path}:3", "audio file not found", "gone.wav"))


def test_csv_unknown_label_word_names_prepare_label_map(tmp_path):
    clips(tmp_path, "a.wav", "b.wav")
    path = manifest(tmp_path, ["path,label,speaker", "a.wav,angry,s1", "b.wav,boredom,s2"])
    message = user_error(read, path, names=(f"{path}:3", "'boredom'", "params.yaml", "prepare.label_map: {boredom: O"))
    assert "--label-map" not in message


def test_csv_unknown_label_word_names_the_label_map_option(tmp_path):
    """Read for `medusa evaluate`, the same word names --label-map, not params.yaml."""
    clips(tmp_path, "a.wav", "b.wav")
    path = manifest(tmp_path, ["path,label,speaker", "a.wav,angry,s1", "b.wav,boredom,s2"])
    message = user_error(read_csv_manifest, path, {}, label_map_from=LABEL_MAP_OPTION,
                         names=(f"{path}:3", "'boredom'", "--label-map boredom=O"))
    assert "params.yaml" not in message and "prepare.label_map" not in message


# ------------------------------------------------------------------------------------------------ MSP layout

def consensus(root: Path, rows: list[str]) -> Path:
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    path = root / "Labels" / "labels_consensus.csv"
    path.write_text("\n".join([",".join(CONSENSUS_HEADER), *rows]) + "\n")
    return path


ROW = "{name},{label},4.0,4.0,4.0,{speaker},Female,{split}"


def test_msp_missing_label_file(tmp_path):
    (tmp_path / "Labels").mkdir()
    user_error(find_label_file, tmp_path / "Labels", CONSENSUS_NAMES,
               names=(str(tmp_path / "Labels"), "labels_consensus.csv"))


def test_msp_malformed_consensus_row(tmp_path):
    path = consensus(tmp_path, [ROW.format(name="a.wav", label="A", speaker="1", split="Train"),
                                "b.wav,S,4.0"])
    user_error(read_consensus, path, names=(f"{path}:3", "expected 8 fields, got 3"))


def test_msp_duplicate_file_name_in_consensus(tmp_path):
    path = consensus(tmp_path, [ROW.format(name="a.wav", label="A", speaker="1", split="Train"),
                                ROW.format(name="b.wav", label="S", speaker="2", split="Train"),
                                ROW.format(name="a.wav", label="H", speaker="1", split="Train")])
    user_error(read_consensus, path, names=(f"{path}:4", "'a.wav'", "first on line 2"))


# ------------------------------------------------------------------------------------------------ splits

def prepare_section(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())["prepare"]


def fractions(p: dict) -> dict[str, float]:
    """The three shares prepare derives for a CSV's rows without a split (manifest._assign_splits)."""
    return {"train": 1 - p["dev_fraction"] - p["test_fraction"], "dev": p["dev_fraction"],
            "test": p["test_fraction"]}


def assert_covering(found, labels, speakers):
    table = pd.crosstab(found.splits, np.asarray(labels))
    assert set(table.index) == {"train", "dev", "test"} and (table > 0).all().all(), table
    assert (pd.Series(found.splits).groupby(np.asarray(speakers)).nunique() == 1).all()  # speaker-disjoint


def test_split_small_corpus_at_the_default_fractions():
    """30 clips, 10 speakers, 4 classes at params.yaml's fractions: scikit-learn's fold count (7 for dev) once
    stopped prepare with its ValueError; the search gives speaker-disjoint splits holding every class."""
    p = prepare_section("params.yaml")
    labels = np.array(["A", "S", "H", "N"] * 8)[:30]
    speakers = pd.Series([f"s{i % 10}" for i in range(30)])
    found = search_splits(labels, speakers, fractions(p), p["seed"], p["split_draws"], p["classes"])
    assert_covering(found, labels, speakers)


def test_split_emodb_shaped_corpus_at_the_small_corpus_preset():
    """EmoDB's shape (10 speakers, 7 classes, ~535 clips, every speaker speaks every class) runs at the
    small-corpus preset's settings."""
    p = prepare_section("configs/small-corpus.yaml")
    rng = np.random.default_rng(0)
    labels, speakers = [], []
    for s in range(10):
        for code in "ASHFDCN":
            n = int(rng.integers(3, 13))
            labels += [code] * n
            speakers += [f"spk{s:02d}"] * n
    assert 450 < len(labels) < 650
    found = search_splits(labels, pd.Series(speakers), fractions(p), p["seed"], p["split_draws"], p["classes"])
    assert_covering(found, labels, speakers)


def overlapping_corpus() -> tuple[list[str], pd.Series]:
    """10 speakers, 5 classes, each spoken by 3 or more speakers, yet no train/dev/test assignment holds them all:
    A, S, H and F are spoken by the four 3-subsets of speakers p1..p4 (three splits leave two of the four
    together, and the class of a triple holding both misses a split); N by six other speakers."""
    labels, speakers = [], []
    for code, who in {"A": "123", "S": "124", "H": "134", "F": "234"}.items():
        for w in who:
            labels += [code] * 3
            speakers += [f"p{w}"] * 3
    for i in range(6):
        labels += ["N"] * 3
        speakers += [f"n{i}"] * 3
    return labels, pd.Series(speakers)


def test_split_impossible_is_proven_and_names_the_settings():
    """Few speakers: every assignment is scored, so "none holds every class" is a proof; the message says no seed,
    draws or fractions can help, names the user's fractions as set, and the ways out that would work."""
    labels, speakers = overlapping_corpus()
    message = user_error(search_splits, labels, speakers, {"train": 0.6, "dev": 0.1, "test": 0.3}, seed=7,
                         draws=50, classes="auto", what="corpus.csv: the rows without a split",
                         names=("corpus.csv: the rows without a split", "10 speakers", "all 59,049",
                                "prepare.dev_fraction 0.1", "prepare.test_fraction 0.3", "prepare.classes",
                                "prepare.allow_uncovered_classes: true", "`split`"))
    assert "0.14" not in message  # the dev share of what test leaves is not the user's setting
    # the classes the message offers are ones an assignment holds in every split
    offered = message.split("restrict prepare.classes to [")[1].split("]")[0].split(", ")
    found = search_splits(labels, speakers, {"train": 0.6, "dev": 0.1, "test": 0.3}, seed=7, draws=50,
                          classes=offered)
    assert found.record["empty_cells"] == 0


def test_split_search_finds_what_the_draws_miss():
    """8 speakers, 4 classes of 3 speakers each, tightly interlocked: none of 200 seeded draws holds every class in
    every split (prepare stopped with "not found after 200 draws"), but an assignment exists: scoring all 3 ** 8
    finds it."""
    plan = {"A": {"g4": 1, "g0": 4, "g2": 4}, "S": {"g2": 2, "g6": 1, "g7": 4}, "H": {"g3": 3, "g5": 1, "g1": 3},
            "N": {"g5": 1, "g7": 2, "g4": 3}}
    labels = [code for code, who in plan.items() for n in who.values() for _ in range(n)]
    speakers = pd.Series([s for who in plan.values() for s, n in who.items() for _ in range(n)])
    found = search_splits(labels, speakers, {"train": 0.6, "dev": 0.1, "test": 0.3}, seed=7, draws=200,
                          classes="auto")
    assert found.record["generator"] == "exhaustive" and found.record["exhaustive"] == 3 ** 8
    assert_covering(found, labels, speakers)


def test_split_class_with_fewer_speakers_than_splits():
    labels = ["A"] * 20 + ["S"] * 20 + ["F"] * 6
    speakers = pd.Series([f"a{i % 5}" for i in range(20)] + [f"s{i % 5}" for i in range(20)] + ["f1"] * 3 + ["f2"] * 3)
    user_error(search_splits, labels, speakers, {"train": 0.6, "dev": 0.1, "test": 0.3}, seed=7, draws=20,
               classes="auto", what="corpus.csv: the rows without a split",
               names=("class F (Fear)", "2 speaker(s)", "f1: 3", "prepare.classes", "[A, S]",
                      "prepare.allow_uncovered_classes: true", "`split`"))


def test_split_fewer_speakers_than_splits():
    user_error(search_splits, ["A", "S", "A", "S"], pd.Series(["s1", "s1", "s2", "s2"]),
               {"train": 0.6, "dev": 0.1, "test": 0.3}, seed=7, draws=5, classes="auto", what="c.csv",
               names=("c.csv", "2 speaker(s)", "3 speaker-disjoint splits", "prepare.dev_fraction 0.1",
                      "`split` column"))


def test_split_stratified_fold_names_the_setting():
    """What StratifiedGroupKFold needs is checked before it is called: the user's setting, not its ValueError."""
    labels = np.array(["A", "S", "H", "N"] * 5)
    groups = np.array([f"s{i % 4}" for i in range(20)])
    user_error(_one_fold, labels, groups, 0.1, 0, "dev_fraction",
               names=("prepare.dev_fraction 0.1", "10 folds", "only 4 speakers", "`split` column"))


def test_class_without_train_rows_given_splits():
    """Given splits that put both speakers of F in dev and test: named with its speakers, no seed can help,
    and the ways out."""
    labels = ["A", "S", "A", "S", "F", "F", "A", "F"]
    speakers = ["t1", "t1", "t2", "t2", "d1", "d1", "e1", "e1"]
    splits = ["train", "train", "train", "train", "dev", "dev", "test", "test"]
    message = classes_without_train(labels, speakers, splits, "corpus.csv", "auto")
    for name in ("corpus.csv", "class F (Fear", "no train row", "d1 in dev (2 rows)", "e1 in test (1 rows)",
                 "no prepare.seed", "prepare.classes: [A, S]", "`split` column"):
        assert name in message, (name, message)
    assert classes_without_train(labels, speakers, ["train"] * 4 + ["train", "train", "test", "test"],
                                 "corpus.csv", "auto") == ""


def test_class_without_train_rows_single_speaker():
    message = classes_without_train(["A", "A", "S", "C"], ["t1", "t2", "t1", "x9"], ["train", "train", "train",
                                                                                  "test"], "data", "auto")
    for name in ("class C (Contempt", "only speaker, x9 in test (1 rows)", "a speaker's rows stay in one split",
                 "prepare.classes: [A, S]"):
        assert name in message, (name, message)


# ------------------------------------------------------------------------------------------------ evaluate

def split_csv(root: Path) -> Path:
    clips(root, "a.wav", "b.wav", "c.wav", "d.wav")
    return manifest(root, ["path,label,speaker,split", "a.wav,angry,s1,Train", "b.wav,sad,s2,Train",
                           "c.wav,angry,s3,Test", "d.wav,sad,s4,TEST"])


def test_evaluate_splits_match_the_csv_ignoring_case(tmp_path):
    rows = corpus_rows(split_csv(tmp_path), {}, ["Test"])
    assert sorted(rows["utt_id"]) == ["c", "d"]


def test_evaluate_splits_that_match_nothing_in_a_csv(tmp_path):
    path = split_csv(tmp_path)
    user_error(corpus_rows, path, {}, ["test", "Tset"],
               names=(str(path), "--splits Tset", "test (2 rows)", "train (2 rows)"))


def msp_corpus(root: Path) -> Path:
    consensus(root, [ROW.format(name="a.wav", label="A", speaker="1", split="Train"),
                     ROW.format(name="b.wav", label="S", speaker="2", split="Test1"),
                     ROW.format(name="c.wav", label="N", speaker="3", split="Test1")])
    clips(root, "Audios/a.wav", "Audios/b.WAV", "Audios/c.wav")
    return root


def test_evaluate_msp_split_sets_ignoring_case(tmp_path):
    """Split_Set values are matched ignoring case, and `b.WAV` is the labels' `b.wav` (the one audio listing)."""
    rows = corpus_rows(msp_corpus(tmp_path), {}, ["test1"])
    assert list(rows["utt_id"]) == ["b", "c"] and rows["source"].iloc[0].endswith("b.WAV")


def test_evaluate_msp_split_sets_that_match_nothing(tmp_path):
    user_error(corpus_rows, msp_corpus(tmp_path), {}, ["Development"],
               names=(str(tmp_path), "--splits Development", "Split_Set", "Test1 (2 rows)", "Train (1 rows)"))


def test_evaluate_msp_labelled_file_missing(tmp_path):
    msp_corpus(tmp_path)
    (tmp_path / "Audios" / "c.wav").unlink()
    user_error(corpus_rows, tmp_path, {}, None, names=(str(tmp_path / "Audios"), "c.wav", "missing"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A one-member eGeMAPS bundle (no ASR, no hub): `medusa evaluate` loads the bundle before it reads the
    corpus, so its corpus errors are reached through a real (tiny) one."""
    from tiny_bundles import EGEMAPS, EGEMAPS_STORE, make_meta, write_member

    from medusa.serving.bundle import save_bundle

    root = tmp_path_factory.mktemp("bundle")
    folder = write_member(root / "models", "e", {"egemaps": 25}, [20], {"egemaps": EGEMAPS_STORE}, seed=3)[0]
    return save_bundle(root / "bundle", make_meta(1, use_attributes=False), [folder], {"egemaps": EGEMAPS}, None)


def evaluate_args(bundle, corpus, tmp_path, *extra) -> list[str]:
    return ["evaluate", str(bundle), str(corpus), "--out", str(tmp_path / "out" / "metrics.json"), "--cache-dir",
            str(tmp_path / "cache"), "--device", "cpu", *extra]


def test_cli_evaluate_unmapped_label_names_the_option(bundle, tmp_path, capsys):
    clips(tmp_path, "a.wav", "b.wav")
    path = manifest(tmp_path, ["path,label,speaker", "a.wav,angry,s1", "b.wav,boredom,s2"])
    err = refused(medusa.cli.main, evaluate_args(bundle, path, tmp_path), capsys,
                  f"{path}:3", "'boredom'", "--label-map boredom=O")
    assert "params.yaml" not in err and "prepare.label_map" not in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_cli_evaluate_splits_that_match_nothing(bundle, tmp_path, capsys):
    path = split_csv(tmp_path)
    refused(medusa.cli.main, evaluate_args(bundle, path, tmp_path, "--splits", "dev"), capsys,
            str(path), "--splits dev", "test (2 rows)")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_cli_evaluate_splits_in_another_case(bundle, tmp_path, capsys):
    """`--splits Test` scores the CSV's `Test` rows (it found none before)."""
    path = split_csv(tmp_path)
    assert medusa.cli.main(evaluate_args(bundle, path, tmp_path, "--splits", "Test", "--bootstrap", "20")) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] + sum(v["utterances"] for v in metrics["not_scored"].values()) == 2


def test_cli_evaluate_names_every_file_it_cannot_score_unless_skipped(bundle, tmp_path, capsys):
    """A corrupt file and one too short to score: every file is scored first, then the run stops with one line
    per bad file (naming it and its CSV line) and writes nothing; --skip-bad-audio scores the others and lists
    the bad ones in skipped_audio, each with its error in its prediction row."""
    clips(tmp_path, "a.wav", "b.wav", "c.wav")
    wav(tmp_path / "short.wav", seconds=0.05)
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(range(64)))
    path = manifest(tmp_path, ["path,label,speaker", "a.wav,angry,s1", "bad.wav,sad,s2", "b.wav,sad,s3",
                               "short.wav,angry,s4", "c.wav,neutral,s5"])
    err = refused(medusa.cli.main, evaluate_args(bundle, path, tmp_path), capsys, "2 of 5 audio files",
                  "--skip-bad-audio")
    listed = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(listed) == 2, err
    assert str(tmp_path / "bad.wav") in listed[0] and f"{path}:3" in listed[0]
    assert str(tmp_path / "short.wav") in listed[1] and "too short" in listed[1] and f"{path}:5" in listed[1]
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []

    out = tmp_path / "out"
    assert medusa.cli.main(evaluate_args(bundle, path, tmp_path, "--skip-bad-audio", "--bootstrap", "20",
                                         "--predictions", str(out / "predictions.csv"))) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3 and not metrics["not_scored"]
    skipped = metrics["skipped_audio"]
    assert [(s["source"], s["listed_at"]) for s in skipped] == [(str(tmp_path / "bad.wav"), f"{path}:3"),
                                                               (str(tmp_path / "short.wav"), f"{path}:5")]
    assert "too short" in skipped[1]["error"]
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns[:4]) == ["utt_id", "path", "label", "predicted"]
    assert predictions.columns[-1] == "error"
    bad = predictions["error"].notna()
    assert list(predictions.loc[bad, "utt_id"]) == ["bad", "short"] and predictions.loc[bad, "predicted"].isna().all()
    probabilities = predictions.filter(like="p_")
    assert probabilities[~bad].notna().all().all() and probabilities[bad].isna().all().all()


def test_evaluate_bad_audio_message_lists_twenty_then_counts():
    from medusa.serving.evaluate import SHOWN_BAD, bad_audio_message

    skipped = [{"source": f"/c/f{i}.wav", "listed_at": f"/c/x.csv:{i + 2}", "error": f"/c/f{i}.wav: too short:\n0 s"}
               for i in range(25)]
    lines = bad_audio_message("/c/x.csv", skipped, 30).splitlines()
    assert lines[0] == "/c/x.csv: 25 of 30 audio files could not be scored:" and "--skip-bad-audio" in lines[-1]
    assert lines[1] == "  /c/f0.wav: too short: 0 s (listed at /c/x.csv:2)"
    assert len(lines) == 1 + SHOWN_BAD + 2 and lines[-2] == "  ... (25 in all)"

def test_evaluate_reads_any_rate_and_channels_as_predict_does(bundle, tmp_path):
    """A 44.1 kHz stereo file and its own 16 kHz mono conversion (to_mono_16k, written as PCM16) get the same
    probabilities; nothing is written beside the corpus (no audio cache)."""
    from medusa.data.audio import to_mono_16k
    from medusa.serving.evaluate import evaluate
    from medusa.serving.predict import Predictor

    rate, t = 44100, np.arange(int(2.5 * 44100)) / 44100
    left = 0.3 * np.sin(2 * np.pi * 190 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    right = 0.2 * np.sin(2 * np.pi * 310 * t) + 0.05 * np.sin(2 * np.pi * 5000 * t)
    (tmp_path / "wav").mkdir()
    sf.write(tmp_path / "wav" / "hi.wav", np.stack([left, right], 1), rate, subtype="PCM_16")
    frames, _ = sf.read(tmp_path / "wav" / "hi.wav", dtype="float32", always_2d=True)
    sf.write(tmp_path / "wav" / "lo.wav", to_mono_16k(frames, rate), 16000, subtype="PCM_16")
    path = manifest(tmp_path, ["path,label,speaker", "wav/hi.wav,angry,s1", "wav/lo.wav,angry,s2"])
    before = sorted(tmp_path.rglob("*"))
    predictor = Predictor.from_bundle(bundle, "cpu", tmp_path / "cache")
    result = evaluate(predictor, path, skip_bad_audio=False, seed=0, bootstrap=20, batch_size=1)
    p = result.predictions.filter(like="p_").to_numpy()
    assert np.isfinite(p).all() and np.abs(p[0] - p[1]).max() < 1e-5
    assert result.predictions["error"].isna().all() and result.metrics["skipped_audio"] == []
    assert sorted(tmp_path.rglob("*")) == before


def test_evaluate_scores_a_file_longer_than_30_s_as_its_windows(bundle, tmp_path):
    """A 35 s file is scored (cut into windows, its row their mean, as medusa predict gives it) instead of
    refused."""
    from medusa.serving.evaluate import evaluate
    from medusa.serving.predict import Predictor

    wav(tmp_path / "long.wav", seconds=35.0)
    clips(tmp_path, "a.wav")
    path = manifest(tmp_path, ["path,label,speaker", "long.wav,angry,s1", "a.wav,sad,s2"])
    predictor = Predictor.from_bundle(bundle, "cpu", tmp_path / "cache")
    result = evaluate(predictor, path, skip_bad_audio=False, seed=0, bootstrap=20)
    assert result.metrics["n"] == 2 and result.metrics["skipped_audio"] == []
    assert list(result.predictions["utt_id"]) == ["long", "a"]
    rows = predictor.predict_files([tmp_path / "long.wav"], progress=False)
    assert rows["level"].iloc[0] == "file" and (rows["level"] == "segment").sum() >= 2
    columns = list(result.predictions.filter(like="p_").columns)
    np.testing.assert_allclose(result.predictions[columns].iloc[0].to_numpy(float),
                               rows[columns].iloc[0].to_numpy(float), atol=1e-6)


def test_prepare_stops_on_a_class_without_train_rows_unless_allowed(tmp_path, caplog):
    """Prepare itself (not only the helper): F spoken only by dev and test speakers stops the run naming it; with
    prepare.allow_uncovered_classes it is a warning and F is not one of the run's classes."""
    from medusa.config.params import PrepareParams
    from medusa.data.corpora.manifest import prepare_corpus
    from medusa.data.corpora.msp_podcast import CorpusError

    lines = ["path,label,speaker,split"]
    for k, (label, speaker, split) in enumerate([("A", "t1", "train"), ("S", "t1", "train"), ("A", "t2", "train"),
                                                 ("S", "t2", "train"), ("F", "d1", "dev"), ("A", "d1", "dev"),
                                                 ("F", "e1", "test"), ("S", "e1", "test")]):
        lines.append(f"c{k}.wav,{label},{speaker},{split}")
        wav(tmp_path / f"c{k}.wav")
    path = manifest(tmp_path, lines)
    base = dict(corpus=str(path), train_sets=["Train"], dev_sets=["Development"], classes="auto", label_map={},
                dev_fraction=0.1, test_fraction=0.3, min_per_class=1, long_audio="reject", skip_bad_audio=False,
                seed=1, probe_max_utterances=100, split_draws=10, allow_uncovered_classes=False)
    with pytest.raises(CorpusError) as info:
        prepare_corpus(PrepareParams(**base), tmp_path / "audio", check_audio=False)
    for name in (str(path), "class F (Fear", "d1 in dev", "e1 in test", "prepare.classes: [A, S]"):
        assert name in str(info.value), (name, str(info.value))
    prepared = prepare_corpus(PrepareParams(**{**base, "allow_uncovered_classes": True}), tmp_path / "audio",
                              check_audio=False)
    assert prepared.classes == ("A", "S") and "class F (Fear" in caplog.text
