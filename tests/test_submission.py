"""The challenge submission file: blind files of an MSP-layout corpus, submissions from posteriors and from a
bundle, validation and the exact bytes written."""
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from meta_config import meta_config
from test_bundle import EGEMAPS, EGEMAPS_STORE, egemaps_bundle, write_member  # noqa: F401  (the eGeMAPS-only bundle fixture)
from test_msp_podcast import BLIND, build, params, write_corpus
from tiny_bundles import score_files

from medusa.ensemble.meta import MetaClassifier
from medusa.labels import CODES, target_columns
from medusa.serving.bundle import save_bundle
from medusa.serving.inference import load_bundle
from medusa.serving.submission import (
    SubmissionError,
    blind_files,
    submission_frame,
    submission_from_bundle,
    submission_from_posteriors,
    validate_submission,
    write_submission,
)

EXTRA_BLIND = ["MSP-PODCAST_test3_0003.wav", "MSP-PODCAST_test3_0002.wav"]
ALL_BLIND = sorted(BLIND + EXTRA_BLIND)


def write_blind_corpus(root, form="csv"):
    """test_msp_podcast's corpus (9 labelled files, one of them Test1, and one blind file) with two more blind
    files: a tone and louder noise, so that a model tells them apart."""
    write_corpus(root, form)
    sr, rng = 16000, np.random.default_rng(5)
    t = np.arange(int(0.6 * sr)) / sr
    sf.write(root / "Audios" / EXTRA_BLIND[0], 0.3 * np.sin(2 * np.pi * 330 * t), sr, subtype="PCM_16")
    sf.write(root / "Audios" / EXTRA_BLIND[1], 0.2 * rng.normal(0, 1, int(0.4 * sr)).clip(-1, 1), sr,
             subtype="PCM_16")
    (root / "Audios" / "README.txt").write_text("not audio\n")
    return root


@pytest.fixture
def corpus(tmp_path):
    return write_blind_corpus(tmp_path / "corpus")


# ------------------------------------------------------------------------------------------ blind files


@pytest.mark.parametrize("form", ["csv", "json"])
def test_blind_files_are_the_unlabelled_wavs(tmp_path, form):
    root = write_blind_corpus(tmp_path / "corpus", form)
    blind = blind_files(root)
    assert blind == ALL_BLIND
    assert "MSP-PODCAST_0006_0001.wav" not in blind   # labelled Test1: left out by prepare, yet not blind
    # the same files the manifest marks blind
    m = build(params(root))
    assert sorted(m.loc[m["split"] == "blind", "utt_id"] + ".wav") == blind


def test_blind_files_refuses_what_is_not_an_msp_layout_folder(corpus, tmp_path):
    with pytest.raises(SubmissionError, match=r"nowhere: not found; .*MSP-Podcast-layout folder"):
        blind_files(tmp_path / "nowhere")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\n")
    with pytest.raises(SubmissionError, match=r"manifest\.csv: not a folder"):
        blind_files(manifest)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(SubmissionError, match=r"bare: no Audios/ folder"):
        blind_files(bare)
    (corpus / "Labels" / "labels_consensus.csv").unlink()
    with pytest.raises(SubmissionError, match=r"corpus: no consensus label file"):
        blind_files(corpus)


def test_blind_files_refuses_a_corpus_without_blind_audio(corpus):
    for name in ALL_BLIND:
        (corpus / "Audios" / name).unlink()
    with pytest.raises(SubmissionError, match=r"corpus: no blind audio \(every file in .*Audios has a row in "
                                              r"labels_consensus\.csv\)"):
        blind_files(corpus)


# ------------------------------------------------------------------------------------------ from posteriors


def posteriors(classes, rows):
    """A posteriors frame: rows of (utt_id, split, index of the winning class); the winner gets 0.6, the rest share
    the remainder, and a labelled row sits among the blind ones."""
    frame = pd.DataFrame({"utt_id": [r[0] for r in rows], "split": [r[1] for r in rows],
                          "label": [None if r[1] == "blind" else classes[0] for r in rows]})
    probs = np.full((len(rows), len(classes)), 0.4 / (len(classes) - 1))
    probs[np.arange(len(rows)), [r[2] for r in rows]] = 0.6
    frame[list(target_columns(classes))] = probs
    frame[["arousal", "valence", "dominance"]] = 4.0
    return frame


def test_submission_from_posteriors_three_classes():
    classes = ("A", "H", "N")
    frame = posteriors(classes, [("MSP-PODCAST_test3_0003", "blind", 0), ("MSP-PODCAST_0001_0001", "test", 1),
                                 ("MSP-PODCAST_test3_0001", "blind", 2), ("MSP-PODCAST_test3_0002", "blind", 1)])
    sub = submission_from_posteriors(frame)
    assert list(sub.columns) == ["FileName", "EmoClass"]
    assert sub.to_dict("list") == {"FileName": ALL_BLIND, "EmoClass": ["N", "H", "A"]}
    validate_submission(sub, ALL_BLIND)   # letters of a 3-class run are letters of the 8


def test_submission_from_posteriors_eight_classes():
    # file i (1..8, given out of order) wins class i - 1, so the sorted file gives the codes in order
    rows = [(f"MSP-PODCAST_test3_{i:04d}", "blind", i - 1) for i in [5, 1, 8, 3, 2, 7, 4, 6]]
    frame = pd.concat([posteriors(CODES, [("MSP-PODCAST_0002_0001", "dev", 3)]), posteriors(CODES, rows)],
                      ignore_index=True)
    sub = submission_from_posteriors(frame)
    assert list(sub["FileName"]) == [f"MSP-PODCAST_test3_{i:04d}.wav" for i in range(1, 9)]
    assert "".join(sub["EmoClass"]) == "ASHUFDCN"


def test_submission_from_posteriors_refuses_no_blind_row_and_nan():
    frame = posteriors(CODES, [("u1", "test", 0), ("u2", "dev", 1)])
    with pytest.raises(SubmissionError, match=r"no blind row.*splits present: dev, test"):
        submission_from_posteriors(frame)
    frame = posteriors(CODES, [("u1", "blind", 0), ("u2", "blind", 1)])
    frame.loc[1, "p_S"] = np.nan
    with pytest.raises(SubmissionError, match=r"1 blind row\(s\) have NaN posteriors: u2"):
        submission_from_posteriors(frame)
    with pytest.raises(SubmissionError, match=r"no split column"):
        submission_from_posteriors(frame.drop(columns="split"))


def test_submission_frame_sorts_and_adds_the_extension():
    sub = submission_frame(["b", "a", "c"], np.array(["N", "A", "S"]))
    assert sub.to_dict("list") == {"FileName": ["a.wav", "b.wav", "c.wav"], "EmoClass": ["A", "N", "S"]}
    with pytest.raises(SubmissionError, match="3 utterance ids but 2 predicted classes"):
        submission_frame(["b", "a", "c"], ["N", "A"])


# ------------------------------------------------------------------------------------------ validation


def good():
    return submission_frame([n.removesuffix(".wav") for n in ALL_BLIND], ["N", "A", "S"])


def test_validate_names_missing_extra_repeated_files():
    validate_submission(good(), ALL_BLIND)
    sub = good().iloc[1:]
    with pytest.raises(SubmissionError, match=r"1 blind file\(s\) missing: MSP-PODCAST_test3_0001\.wav"):
        validate_submission(sub, ALL_BLIND)
    sub = pd.concat([good(), pd.DataFrame({"FileName": ["MSP-PODCAST_0001_0001.wav"], "EmoClass": ["A"]})])
    with pytest.raises(SubmissionError, match=r"1 file\(s\) that are not blind: MSP-PODCAST_0001_0001\.wav"):
        validate_submission(sub, ALL_BLIND)
    sub = pd.concat([good(), good().iloc[[2]]], ignore_index=True)
    with pytest.raises(SubmissionError, match=r"1 file\(s\) listed more than once: MSP-PODCAST_test3_0003\.wav"):
        validate_submission(sub, ALL_BLIND)
    # all at once, in one message; a long list is cut after the first few
    blind = [f"MSP-PODCAST_test3_{i:04d}.wav" for i in range(1, 21)]
    sub = pd.concat([good().iloc[[0, 0]], pd.DataFrame({"FileName": ["x.wav"], "EmoClass": ["N"]})])
    with pytest.raises(SubmissionError) as e:
        validate_submission(sub, blind)
    message = str(e.value)
    assert "19 blind file(s) missing: MSP-PODCAST_test3_0002.wav, MSP-PODCAST_test3_0003.wav" in message
    assert "MSP-PODCAST_test3_0006.wav, ... (19 in all)" in message and "0007" not in message
    assert "1 file(s) that are not blind: x.wav" in message
    assert "1 file(s) listed more than once: MSP-PODCAST_test3_0001.wav" in message


@pytest.mark.parametrize("letter, shown", [("X", "'X'"), ("O", "'O'"), ("n", "'n'"), ("Neutral", "'Neutral'"),
                                           ("", "''"), (None, "nan")])   # pandas keeps a missing string as NaN
def test_validate_names_a_row_with_a_bad_letter(letter, shown):
    sub = good()
    sub.loc[1, "EmoClass"] = letter
    with pytest.raises(SubmissionError, match=rf"1 row\(s\) with an EmoClass not one of A S H U F D C N: "
                                              rf"line 3 \(MSP-PODCAST_test3_0002\.wav\): {shown}$"):
        validate_submission(sub, ALL_BLIND)


def test_validate_wants_exactly_the_header():
    with pytest.raises(SubmissionError, match=r"exactly FileName,EmoClass, got FileName,EmoClass,p_A"):
        validate_submission(good().assign(p_A=0.5), ALL_BLIND)
    with pytest.raises(SubmissionError, match=r"got file,class"):
        validate_submission(good().set_axis(["file", "class"], axis=1), ALL_BLIND)
    with pytest.raises(SubmissionError, match="no blind file"):
        validate_submission(good(), [])


# ------------------------------------------------------------------------------------------ writing


def test_write_submission_bytes(tmp_path):
    out = tmp_path / "work" / "submission.csv"
    shuffled = good().iloc[[2, 0, 1]]
    assert write_submission(shuffled, out, ALL_BLIND) == out
    assert out.read_bytes() == (b"FileName,EmoClass\n"
                                b"MSP-PODCAST_test3_0001.wav,N\n"
                                b"MSP-PODCAST_test3_0002.wav,A\n"
                                b"MSP-PODCAST_test3_0003.wav,S\n")
    assert sorted(p.name for p in out.parent.iterdir()) == ["submission.csv"]   # no temporary left behind
    before = out.read_bytes()
    with pytest.raises(SubmissionError, match="missing"):
        write_submission(good().iloc[:2], out, ALL_BLIND)
    assert out.read_bytes() == before                                             # a refused frame writes nothing


# ------------------------------------------------------------------------------------------ from a bundle


def check_bundle_submission(bundle, corpus, cache):
    sub = submission_from_bundle(bundle, corpus, cache_dir=cache)
    assert list(sub["FileName"]) == ALL_BLIND                        # every blind file, once, sorted
    validate_submission(sub, blind_files(corpus))
    frame = score_files(bundle, [corpus / "Audios" / n for n in ALL_BLIND], cache)
    pd.testing.assert_frame_equal(sub, submission_from_posteriors(frame.assign(split="blind")))
    assert set(sub["EmoClass"]) <= set(bundle.classes)
    return sub


def test_submission_from_an_eight_class_bundle(egemaps_bundle, corpus, tmp_path):  # noqa: F811
    bundle = load_bundle(egemaps_bundle[0])
    sub = check_bundle_submission(bundle, corpus, tmp_path / "cache")
    out = write_submission(sub, tmp_path / "submission.csv", blind_files(corpus))
    assert pd.read_csv(out, dtype=str).equals(sub)


def test_submission_from_a_three_class_bundle(corpus, tmp_path):
    classes = ("A", "H", "N")
    folder = write_member(tmp_path / "models", "e3", {"egemaps": 25}, [1], {"egemaps": EGEMAPS_STORE}, seed=3,
                          classes=classes)[0]
    meta = MetaClassifier(meta_config(1, classes=classes)).eval()
    with torch.no_grad():   # the member's argmax passes through: this member tells the blind files apart
        meta.net.weight.zero_()
        meta.net.weight[:3].copy_(10 * torch.eye(3))
        meta.net.bias.zero_()
    bundle = load_bundle(save_bundle(tmp_path / "bundle", meta, [folder], {"egemaps": EGEMAPS}, None))
    assert bundle.classes == classes
    sub = check_bundle_submission(bundle, corpus, tmp_path / "cache")
    assert sub["EmoClass"].nunique() > 1   # a letter given to the wrong file would show


def test_submission_from_a_bundle_needs_blind_audio(egemaps_bundle, corpus, tmp_path):  # noqa: F811
    shutil.rmtree(corpus / "Labels")
    with pytest.raises(SubmissionError, match="no consensus label file"):
        submission_from_bundle(load_bundle(egemaps_bundle[0]), corpus, cache_dir=tmp_path / "cache")
