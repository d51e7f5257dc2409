"""MSP-Podcast loader and manifest, on small corpora the tests write in the challenge layout."""
import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from medusa.config.params import PrepareParams
from medusa.data.audio import AudioError
from medusa.data.corpora.manifest import build_manifest, speaker_disjoint_cut
from medusa.data.corpora.msp_podcast import CorpusError, read_consensus, read_detailed
from medusa.labels import classes_of, target_columns

# file, consensus, speaker, split set, votes (primary words)
ROWS = [
    ("MSP-PODCAST_0001_0001.wav", "A", "11", "Train", ["Angry", "Angry", "Disgust"]),
    ("MSP-PODCAST_0001_0002.wav", "X", "11", "Train", ["Sad", "Neutral"]),
    ("MSP-PODCAST_0002_0001.wav", "S", "12", "Train", ["Sad", "Sad", "Other-Tired", "Neutral"]),
    ("MSP-PODCAST_0003_0001.wav", "O", "13", "Train", ["Other-Bored", "Other-Bored", "Happy"]),
    ("MSP-PODCAST_0004_0001.wav", "H", "Unknown", "Train", ["Happy", "Happy"]),
    ("MSP-PODCAST_0005_0001.wav", "N", "14", "Development", ["Neutral", "Neutral", "Contempt"]),
    ("MSP-PODCAST_0006_0001.wav", "C", "15", "Test1", ["Contempt"]),
    ("MSP-PODCAST_0007_0001.wav", "N", "16", "Train", ["Neutral", "Neutral"]),
    ("MSP-PODCAST_0008_0001.wav", "H", "17", "Train", ["Happy", "Happy", "Surprise"]),
]
BLIND = ["MSP-PODCAST_test3_0001.wav"]


def build(p):
    """The manifest of a corpus the test wrote, converted audio cached beside it (not in the repo's work/)."""
    return build_manifest(p, cache_dir=Path(p.corpus).parent / f"{Path(p.corpus).name}.audio")


def _detail(worker: int, word: str) -> str:
    return f"WORKER{worker:05d}; {word}; Frustrated,Annoyed; A:5.0; V:2.0; D:4.0;"


def write_corpus(root, form="csv", spelling="consensus", sample_rate=16000):
    (root / "Audios").mkdir(parents=True)
    (root / "Labels").mkdir()
    (root / "Transcripts").mkdir()
    rng = np.random.default_rng(0)
    for name in [r[0] for r in ROWS] + BLIND:
        sf.write(root / "Audios" / name, rng.uniform(-0.1, 0.1, sample_rate // 2), sample_rate, subtype="PCM_16")
    for name, *_ in ROWS:
        (root / "Transcripts" / name.replace(".wav", ".txt")).write_text(f"words of {name}\n")
    stem = f"labels_{spelling}"
    if form == "csv":
        with (root / "Labels" / f"{stem}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
            for name, label, spk, split, _ in ROWS:
                w.writerow([name, label, 4.2, 3.0, 4.0, spk, "Female", split])
        with (root / "Labels" / "labels_detailed.csv").open("w", newline="") as f:
            w = csv.writer(f, quoting=csv.QUOTE_ALL)
            w.writerow(["FileName", "EmoDetail"])
            for name, *_, votes in ROWS:
                for k, v in enumerate(votes):
                    w.writerow([name, _detail(k + 1, v)])
    else:
        consensus = {name: {"EmoClass": label, "EmoAct": 4.2, "EmoVal": 3.0, "EmoDom": 4.0, "SpkrID": spk,
                            "Gender": "Female", "Split_Set": split} for name, label, spk, split, _ in ROWS}
        detailed = {name: {f"WORKER{k + 1:05d}": {"EmoClass_Major": v, "EmoAct": 5.0, "EmoVal": 2.0, "EmoDom": 4.0}
                           for k, v in enumerate(votes)} for name, *_, votes in ROWS}
        (root / "Labels" / f"{stem}.json").write_text(json.dumps(consensus))
        (root / "Labels" / "labels_detailed.json").write_text(json.dumps(detailed))
    return root


def params(root, **kw):
    base = dict(corpus=str(root), train_sets=["Train"], dev_sets=["Development"], classes="auto", label_map={},
                dev_fraction=0.1, test_fraction=0.25, min_per_class=1, long_audio="reject", skip_bad_audio=False,
                seed=1, probe_max_utterances=100,  # seed 1: the test cut leaves A, S, H and N in train
                # one speaker each speaks A, S and N in the training pool: no test cut can hold them too
                split_draws=50, allow_uncovered_classes=True)
    return PrepareParams(**{**base, **kw})


@pytest.mark.parametrize("form", ["csv", "json"])
@pytest.mark.parametrize("spelling", ["consensus", "concensus"])
def test_loader_accepts_csv_and_json_and_both_spellings(tmp_path, form, spelling):
    m = build(params(write_corpus(tmp_path, form, spelling)))
    assert set(m["split"]) == {"train", "test", "dev", "blind"}
    assert len(m) == len(ROWS) - 1 + len(BLIND)          # the Test1 row is left out
    row = m.set_index("utt_id").loc["MSP-PODCAST_0002_0001"]
    # Sad, Sad, Other, Neutral: the Other vote is dropped before normalising
    assert row["p_S"] == pytest.approx(2 / 3) and row["p_N"] == pytest.approx(1 / 3)
    assert row["agreement"] == pytest.approx(2 / 4) and row["n_votes"] == 4
    assert row["ref_text"] == "words of MSP-PODCAST_0002_0001.wav"
    assert row["duration_s"] == pytest.approx(0.5)


def test_csv_and_json_forms_give_the_same_manifest(tmp_path):
    a = build(params(write_corpus(tmp_path / "a", "csv")))
    b = build(params(write_corpus(tmp_path / "b", "json", "concensus")))
    cols = ["utt_id", "split", "label", "speaker", *target_columns(classes_of(a)), "arousal", "agreement"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_blind_and_other_rows(tmp_path):
    m = build(params(write_corpus(tmp_path))).set_index("utt_id")
    blind = m.loc["MSP-PODCAST_test3_0001"]
    assert blind["split"] == "blind" and np.isnan(blind[list(target_columns(classes_of(m)))].astype(float)).all()
    other = m.loc["MSP-PODCAST_0003_0001"]          # 2 Other + 1 Happy: O consensus, soft target all Happy
    assert other["label"] == "O" and other["p_H"] == 1.0
    soft = m.loc[m["split"] != "blind", list(target_columns(classes_of(m)))].astype(float)
    assert np.allclose(soft.sum(axis=1), 1.0)


def test_malformed_consensus_row_names_file_and_line(tmp_path):
    root = write_corpus(tmp_path)
    path = root / "Labels" / "labels_consensus.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(",S,", ",Q,")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"labels_consensus\.csv:4: EmoClass 'Q'"):
        read_consensus(path)
    lines[3] = "MSP-PODCAST_0002_0001.wav,S,4.2"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"labels_consensus\.csv:4: expected 8 fields, got 3"):
        read_consensus(path)


def test_malformed_detailed_row_names_file_and_line(tmp_path):
    root = write_corpus(tmp_path)
    path = root / "Labels" / "labels_detailed.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("A:5.0", "A:loud")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"labels_detailed\.csv:3: rating A is not a number: 'loud'"):
        read_detailed(path)
    lines[2] = '"MSP-PODCAST_0001_0001.wav","WORKER00002; Grumpy; ; A:5.0; V:2.0; D:4.0;"'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=r"labels_detailed\.csv:3: unknown primary emotion 'Grumpy'"):
        read_detailed(path)


def test_malformed_json_entry_is_named(tmp_path):
    root = write_corpus(tmp_path, "json")
    path = root / "Labels" / "labels_consensus.json"
    data = json.loads(path.read_text())
    del data["MSP-PODCAST_0001_0002.wav"]["Split_Set"]
    path.write_text(json.dumps(data))
    with pytest.raises(CorpusError, match=r"entry 'MSP-PODCAST_0001_0002.wav': missing Split_Set"):
        read_consensus(path)


def test_missing_labelled_audio_is_an_error_and_other_formats_are_converted(tmp_path):
    root = write_corpus(tmp_path)
    (root / "Audios" / "MSP-PODCAST_0001_0001.wav").unlink()
    with pytest.raises(CorpusError, match="1 labelled files are missing.*MSP-PODCAST_0001_0001.wav"):
        build(params(root))
    root = write_corpus(tmp_path / "b")
    sf.write(root / "Audios" / "MSP-PODCAST_0001_0002.wav", np.zeros((22050, 2)), 44100, subtype="PCM_24")
    row = build(params(root)).set_index("utt_id").loc["MSP-PODCAST_0001_0002"]
    assert row["duration_s"] == 0.5 and sf.info(row["path"]).samplerate == 16000  # converted, into the cache
    assert sf.info(row["path"]).channels == 1 and "Audios" not in row["path"]
    (root / "Audios" / "MSP-PODCAST_0001_0002.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="MSP-PODCAST_0001_0002.wav"):
        build(params(root))


def test_unknown_split_sets_in_params_are_an_error(tmp_path):
    with pytest.raises(CorpusError, match="no row has a Split_Set in"):
        build(params(write_corpus(tmp_path), train_sets=["Training"], dev_sets=["Dev"]))


def test_speaker_disjoint_cut_is_seeded_and_whole_speakers():
    rng = np.random.default_rng(1)
    speakers = pd.Series(rng.choice([f"s{i}" for i in range(30)] + ["Unknown"], size=2000))
    cut = speaker_disjoint_cut(speakers, 0.1, 3, None, 200, "auto")
    assert np.array_equal(cut, speaker_disjoint_cut(speakers, 0.1, 3, None, 200, "auto"))
    assert not np.array_equal(cut, speaker_disjoint_cut(speakers, 0.1, 4, None, 200, "auto"))
    known = speakers != "Unknown"
    assert set(speakers[cut & known]).isdisjoint(set(speakers[~cut & known]))
    assert 0.05 < cut.mean() < 0.15


def test_a_duplicated_detailed_row_is_refused_naming_file_and_lines(tmp_path):
    """A (file, worker) pair rated twice used to count twice (7 votes became 14 when a file was pasted twice)."""
    root = write_corpus(tmp_path)
    path = root / "Labels" / "labels_detailed.csv"
    lines = path.read_text().splitlines()
    # line 3 (MSP-PODCAST_0001_0001.wav, WORKER00002) repeated at the end, another worker's row twice more
    path.write_text("\n".join(lines + [lines[2], lines[5], lines[5]]) + "\n")
    n = len(lines)
    with pytest.raises(CorpusError) as err:
        read_detailed(path)
    assert str(err.value).startswith(f"{path}:{n + 1}: MSP-PODCAST_0001_0001.wav / WORKER00002 was already rated "
                                     "on line 3;")
    assert f"(3 such rows; lines {n + 1}, {n + 2}, {n + 3})" in str(err.value)
    # a second rating by the same worker with another answer is refused too (which one would be right?)
    other = lines[2].replace("Angry", "Sad")
    path.write_text("\n".join(lines + [other]) + "\n")
    with pytest.raises(CorpusError, match=rf"labels_detailed\.csv:{n + 1}: .* already rated on line 3"):
        build(params(root))


def test_a_duplicated_json_entry_or_worker_is_refused(tmp_path):
    root = write_corpus(tmp_path, "json")
    path = root / "Labels" / "labels_detailed.json"
    text = path.read_text()
    # json.loads would keep the last of two equal keys without a word: write them by hand
    entry = '"WORKER00001": {"EmoClass_Major": "Angry", "EmoAct": 5.0, "EmoVal": 2.0, "EmoDom": 4.0}'
    assert text.count(entry) >= 1
    path.write_text(text.replace(entry, entry + ", " + entry, 1))
    first = next(iter(json.loads(text)))  # the entry whose first worker is WORKER00001 and voted Angry
    with pytest.raises(CorpusError, match=rf"entry '{first}' lists worker 'WORKER00001' more than once"):
        read_detailed(path)
    path.write_text(text.replace("{", '{"MSP-PODCAST_0001_0001.wav": {}, ', 1))
    with pytest.raises(CorpusError, match=r"the file name 'MSP-PODCAST_0001_0001.wav' is an entry more than once"):
        read_detailed(path)
    consensus = root / "Labels" / "labels_consensus.json"
    consensus.write_text(consensus.read_text().replace("{", '{"MSP-PODCAST_0001_0002.wav": {}, ', 1))
    with pytest.raises(CorpusError, match=r"labels_consensus\.json: the file name 'MSP-PODCAST_0001_0002.wav' is an "
                                          "entry more than once"):
        read_consensus(consensus)


def test_a_duplicated_consensus_row_names_its_lines(tmp_path):
    root = write_corpus(tmp_path)
    path = root / "Labels" / "labels_consensus.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[2]]) + "\n")
    with pytest.raises(CorpusError, match=rf"labels_consensus\.csv:{len(lines) + 1}: 1 duplicated FileName entries, "
                                          r"e.g. 'MSP-PODCAST_0001_0002.wav' \(first on line 3\)"):
        read_consensus(path)


def test_a_truncated_wav_stops_prepare_naming_file_and_lengths(tmp_path):
    """A wav cut short by a copy (header intact) used to enter the manifest at half its duration."""
    root = write_corpus(tmp_path)
    path = root / "Audios" / "MSP-PODCAST_0002_0001.wav"   # 8000 samples: 44 header bytes + 16000 data bytes
    path.write_bytes(path.read_bytes()[:44 + 8000])
    with pytest.raises(AudioError, match=r"MSP-PODCAST_0002_0001\.wav: truncated audio: the header declares 8000 "
                                         r"samples \(0\.500 s\) but the file holds 4000 \(0\.250 s\)"):
        build(params(root))
