"""A corpus brought as one CSV file: labels in any spelling (or mapped), any audio, splits given or derived, the
run's classes, and errors that name the file, the line and the value."""
import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from medusa.config.params import ParamsError, PrepareParams, validate_params
from medusa.data.audio import AudioError
from medusa.data.corpora.csv_manifest import label_code
from medusa.data.corpora.manifest import prepare_corpus, stratified_speaker_split, thin_classes
from medusa.data.corpora.msp_podcast import CorpusError
from medusa.labels import classes_of

HEADER = ["path", "label", "speaker"]


def prepare_params(corpus, **kw) -> PrepareParams:
    base = dict(corpus=str(corpus), train_sets=["Train"], dev_sets=["Development"], classes="auto", label_map={},
                dev_fraction=0.2, test_fraction=0.2, min_per_class=3, long_audio="reject", skip_bad_audio=False,
                seed=0, split_draws=50, allow_uncovered_classes=False, probe_max_utterances=100)
    return PrepareParams(**{**base, **kw})


def tone(path: Path, seconds=0.5, rate=16000, channels=1, subtype="PCM_16", freq=220.0):
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([x] * channels, 1) if channels > 1 else x, rate, subtype=subtype)
    return path


def write_csv(root: Path, header: list[str], rows: list[list], name="corpus.csv") -> Path:
    with (root / name).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return root / name


def corpus(root: Path, labels: list[str], speakers: int = 10, extra=None, header_extra=(), **audio) -> Path:
    """Each label word repeated once per speaker; audio files under root/wav/."""
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(speakers):
        for k, word in enumerate(labels):
            name = f"wav/s{s:02d}_{k:02d}.wav"
            tone(root / name, freq=200 + 40 * k, **audio)
            rows.append([name, word, f"spk{s}", *(extra(s, k) if extra else [])])
    return write_csv(root, HEADER + list(header_extra), rows)


def test_label_words_codes_names_and_the_map():
    assert [label_code(w, {}) for w in ("A", "n", "Angry", "SADNESS", "happy", "x", "O")] == ["A", "N", "A", "S",
                                                                                           "H", "X", "O"]
    assert label_code("boredom", {}) is None
    assert label_code("Boredom", {"boredom": "O"}) == "O"
    assert label_code("surprise", {"surprise": "O"}) == "O"  # the map wins over the built-in names


def test_derived_splits_are_speaker_disjoint_stratified_and_seeded(tmp_path):
    m = prepare_corpus(prepare_params(corpus(tmp_path, ["angry", "sad", "happy", "neutral"], speakers=20)),
                       tmp_path / "cache").manifest
    assert classes_of(m) == ("A", "S", "H", "N")
    by_split = m.groupby("split")["speaker"].agg(set)
    assert not by_split["train"] & by_split["dev"] and not by_split["train"] & by_split["test"]
    assert not by_split["dev"] & by_split["test"]
    counts = pd.crosstab(m["split"], m["label"])
    assert (counts.loc["dev"] == 4).all() and (counts.loc["test"] == 4).all()  # 4 speakers each, every class
    again = prepare_corpus(prepare_params(tmp_path / "corpus.csv"), tmp_path / "cache").manifest
    pd.testing.assert_frame_equal(m, again)
    other = prepare_corpus(prepare_params(tmp_path / "corpus.csv", seed=1), tmp_path / "cache").manifest
    test_speakers = lambda frame: set(frame.loc[frame["split"] == "test", "speaker"])  # noqa: E731
    assert test_speakers(other) != test_speakers(m)


def test_stratification_keeps_a_rare_class_in_every_split():
    rng = np.random.default_rng(0)
    speakers = pd.Series([f"s{i // 10}" for i in range(400)])
    labels = np.where(rng.random(400) < 0.06, "S", "N")   # 6 % Sad, as a minority class of a real corpus
    split = stratified_speaker_split(labels, speakers, 0.1, 0.1, 3, 200, "auto")
    for name in ("train", "dev", "test"):
        share = (labels[split == name] == "S").mean()
        assert 0.02 < share < 0.12, (name, share)


def test_the_csv_form_reads_every_optional_column(tmp_path):
    (tmp_path / "a").mkdir()
    rows = []
    for i in range(8):
        tone(tmp_path / "a" / f"u{i}.wav")
        rows.append([f"a/u{i}.wav", ["angry", "neutral"][i % 2], f"s{i}", ["train", "dev", "test", "train"][i % 4],
                     "F", f"words {i}", "2.5", "", "7", "angry:2;neutral:1;other:1" if i == 0 else ""])
    tone(tmp_path / "a" / "blind.wav")
    rows.append(["a/blind.wav", "", "", "", "", "", "", "", "", ""])
    path = write_csv(tmp_path, ["path", "label", "speaker", "split", "gender", "transcript", "arousal", "valence",
                                "dominance", "votes"], rows)
    m = prepare_corpus(prepare_params(path), tmp_path / "cache").manifest.set_index("utt_id")
    assert m.loc["blind", "split"] == "blind" and m.loc["blind", "label"] is None
    u0 = m.loc["u0"]
    assert (u0["p_A"], u0["p_N"], u0["n_votes"], u0["agreement"]) == (pytest.approx(2 / 3), pytest.approx(1 / 3),
                                                                       4, 0.5)
    u1 = m.loc["u1"]   # no votes: the label's one-hot, and no vote count
    assert (u1["p_A"], u1["p_N"]) == (0.0, 1.0) and np.isnan(u1["n_votes"]) and np.isnan(u1["agreement"])
    assert u1["arousal"] == 2.5 and np.isnan(u1["valence"]) and u1["dominance"] == 7
    assert u1["ref_text"] == "words 1" and u1["gender"] == "F" and u1["split"] == "dev"


def test_a_class_subset_and_labels_outside_it(tmp_path):
    path = corpus(tmp_path, ["angry", "sad", "happy", "neutral", "fear"], speakers=10)
    prepared = prepare_corpus(prepare_params(path, classes=["A", "S", "N"]), tmp_path / "cache")
    m = prepared.manifest
    assert classes_of(m) == ("A", "S", "N") and [c for c in m if c.startswith("p_")] == ["p_A", "p_S", "p_N"]
    outside = m[m["label"].isin(["H", "F"])]
    assert len(outside) == 20 and outside[["p_A", "p_S", "p_N"]].isna().all().all()  # kept, no target
    assert prepared.outside_classes["utterances"].sum() == 20
    with pytest.raises(CorpusError, match="prepare.classes lists U, which label"):
        prepare_corpus(prepare_params(path, classes=["A", "U"]), tmp_path / "cache")


def test_thin_classes_are_listed(tmp_path):
    m = prepare_corpus(prepare_params(corpus(tmp_path, ["angry", "neutral"], speakers=10)), tmp_path / "c").manifest
    thin = thin_classes(m, ("A", "N"), minimum=3)
    assert set(thin["split"]) == {"dev", "test"} and (thin["utterances"] == 2).all()


def test_any_audio_is_converted_and_long_audio_segmented(tmp_path):
    path = corpus(tmp_path, ["angry", "neutral"], speakers=6, rate=48000, channels=2, subtype="PCM_24")
    m = prepare_corpus(prepare_params(path, test_fraction=0.34, dev_fraction=0.34), tmp_path / "cache").manifest
    info = [sf.info(p) for p in m["path"]]
    assert {(i.samplerate, i.channels, i.subtype) for i in info} == {(16000, 1, "PCM_16")}
    assert all(str(tmp_path / "cache") in p for p in m["path"])
    tone(tmp_path / "wav" / "s00_00.wav", seconds=31.0)
    with pytest.raises(AudioError, match=r"s00_00.wav.*31.00 s.*prepare.long_audio: segment"):
        prepare_corpus(prepare_params(path), tmp_path / "cache")
    m = prepare_corpus(prepare_params(path, long_audio="segment"), tmp_path / "cache").manifest
    pieces = m[m["utt_id"].str.startswith("s00_00")]
    assert list(pieces["utt_id"]) == ["s00_00_seg00", "s00_00_seg01"] and (pieces["duration_s"] == 15.5).all()
    assert pieces["split"].nunique() == 1 and (pieces["label"] == "A").all()


def test_bad_audio_stops_prepare_or_is_skipped(tmp_path):
    path = corpus(tmp_path, ["angry", "neutral"], speakers=10)
    (tmp_path / "wav" / "s03_01.wav").write_bytes(b"RIFF....not a wav")
    tone(tmp_path / "wav" / "s04_00.wav", seconds=0.02)
    with pytest.raises(AudioError, match=r"(?s)corpus.csv:9: .*s03_01.wav.*corpus.csv:10: .*s04_00.wav.*0.1 s.*"
                                         r"prepare.skip_bad_audio: true"):
        prepare_corpus(prepare_params(path), tmp_path / "cache")
    prepared = prepare_corpus(prepare_params(path, skip_bad_audio=True), tmp_path / "cache")
    assert len(prepared.manifest) == 18 and len(prepared.skipped_audio) == 2
    assert "s03_01" not in set(prepared.manifest["utt_id"])


@pytest.mark.parametrize("mutate, message", [
    (lambda rows: rows[3].__setitem__(1, "boredom"), r"corpus.csv:5: .*'boredom' \(1 rows, first on line 5\).*label_map"),
    (lambda rows: rows[2].__setitem__(0, "wav/none.wav"), r"corpus.csv:4: audio file not found: .*none.wav"),
    (lambda rows: rows.append(list(rows[1])), r"corpus.csv:\d+: the audio file .*s00_01.wav.* is on lines 3, \d+"),
    (lambda rows: rows[1].__setitem__(3, "8.5"), r"corpus.csv:3: arousal '8.5' is outside 1..7"),
    (lambda rows: rows[1].__setitem__(3, "high"), r"corpus.csv:3: arousal is not a number: 'high'"),
    (lambda rows: rows[0].__setitem__(4, "training"), r"corpus.csv:2: split 'training' is not one of"),
    (lambda rows: rows[0].__setitem__(5, "angry:two"), r"corpus.csv:2: votes entry 'angry:two'"),
])
def test_bad_manifests_name_file_line_and_value(tmp_path, mutate, message):
    corpus(tmp_path, ["angry", "neutral"], speakers=4)
    rows = list(csv.reader((tmp_path / "corpus.csv").open()))[1:]
    rows = [r + ["2.0", "", ""] for r in rows]
    mutate(rows)
    path = write_csv(tmp_path, HEADER + ["arousal", "split", "votes"], rows)
    with pytest.raises(CorpusError, match=message):
        prepare_corpus(prepare_params(path), tmp_path / "cache")


def test_a_missing_or_unknown_column_is_named(tmp_path):
    tone(tmp_path / "a.wav")
    path = write_csv(tmp_path, ["path", "label"], [["a.wav", "angry"]])
    with pytest.raises(CorpusError, match=r"corpus.csv:1: the header lacks column\(s\) speaker"):
        prepare_corpus(prepare_params(path), tmp_path / "cache")
    path = write_csv(tmp_path, ["path", "label", "speaker", "transcipt"], [["a.wav", "angry", "s", "hi"]])
    with pytest.raises(CorpusError, match=r"corpus.csv:1: unknown or repeated column\(s\) transcipt"):
        prepare_corpus(prepare_params(path), tmp_path / "cache")


def test_the_old_corpus_dir_key_says_it_was_renamed(repo_root):
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["prepare"]["corpus_dir"] = raw["prepare"].pop("corpus")
    with pytest.raises(ParamsError, match="prepare: corpus_dir was renamed to `corpus`.*write `corpus: data`"):
        validate_params(raw)
    raw["prepare"]["corpus"] = raw["prepare"].pop("corpus_dir")
    raw["prepare"]["label_map"] = {1: "N"}
    with pytest.raises(ParamsError, match="label_map: 1: 'N': words and codes are text; quote numbers"):
        validate_params(raw)


def test_an_unknown_speakers_long_file_keeps_its_pieces_together_without_its_transcript(tmp_path):
    (tmp_path / "wav").mkdir()
    rows = []
    for i in range(20):
        tone(tmp_path / "wav" / f"u{i}.wav", seconds=40.0 if i == 0 else 0.5)
        rows.append([f"wav/u{i}.wav", ["angry", "neutral"][i % 2], "" if i == 0 else f"s{i % 10}", f"words {i}"])
    path = write_csv(tmp_path, HEADER + ["transcript"], rows)
    m = prepare_corpus(prepare_params(path, long_audio="segment"), tmp_path / "cache").manifest
    pieces = m[m["utt_id"].str.startswith("u0_seg")]
    assert len(pieces) == 2 and pieces["split"].nunique() == 1 and pieces["ref_text"].isna().all()
    tone(tmp_path / "wav" / "u0_seg00.wav")
    path = write_csv(tmp_path, HEADER + ["transcript"], rows + [["wav/u0_seg00.wav", "angry", "s1", "x"]])
    with pytest.raises(CorpusError, match="'u0_seg00' is given twice after cutting long files"):
        prepare_corpus(prepare_params(path, long_audio="segment"), tmp_path / "cache")


def test_a_speakers_rows_without_a_split_follow_its_given_split(tmp_path):
    (tmp_path / "wav").mkdir()
    rows = []
    for i in range(60):
        tone(tmp_path / "wav" / f"u{i}.wav")
        given = {0: "train", 1: "test"}.get(i // 30 if i % 3 == 0 else -1, "")  # some rows of s0..s9 named
        rows.append([f"wav/u{i}.wav", ["angry", "neutral"][i % 2], f"s{i % 10}", given if i < 10 else ""])
    path = write_csv(tmp_path, HEADER + ["split"], rows)
    m = prepare_corpus(prepare_params(path), tmp_path / "cache").manifest
    splits = m.groupby("speaker")["split"].agg(set)
    assert all(len(s) == 1 for s in splits) and splits["s0"] == {"train"} and splits["s3"] == {"train"}
    rows[1][3], rows[11][3] = "train", "test"  # s1 given in two splits, with more rows left empty
    path = write_csv(tmp_path, HEADER + ["split"], rows)
    with pytest.raises(CorpusError, match="speaker 's1' has rows in test and train and rows without a split"):
        prepare_corpus(prepare_params(path), tmp_path / "cache")


def test_votes_must_agree_with_a_class_label_and_text_must_be_utf8(tmp_path):
    tone(tmp_path / "a.wav")
    path = write_csv(tmp_path, HEADER + ["transcript", "votes"],
                     [["a.wav", "angry", "s", "two\nlines", "angry:1;neutral:1"],
                      ["a.wav", "angry", "s", "", "neutral:3;angry:1"]])
    with pytest.raises(CorpusError, match=r"corpus.csv:4: label 'angry' \(A\) is not the most common vote"):
        prepare_corpus(prepare_params(path), tmp_path / "cache")   # line 4: the first record spans lines 2-3
    (tmp_path / "latin.csv").write_bytes("path,label,speaker\na.wav,col\xe8re,s\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin.csv: not UTF-8 text .*save it as UTF-8"):
        prepare_corpus(prepare_params(tmp_path / "latin.csv"), tmp_path / "cache")


def test_evaluate_refuses_a_label_map_value_that_is_no_code(tmp_path, capsys):
    from medusa import cli

    assert cli.main(["evaluate", str(tmp_path / "no-bundle"), str(tmp_path / "c.csv"), "--label-map",
                     "calm=neutral"]) == 1
    err = capsys.readouterr().err
    assert "--label-map takes WORD=CODE" in err and "'calm=neutral'" in err
