"""The bad-input matrix of `medusa predict` and `medusa submission` (issue 24): each awkward input is either scored
like any other (an upper-case extension, an mp3 named .wav, 8/24/32-bit or 6-channel WAV, a BOM in an @list) or
named in its own error row while every other file is still scored (a broken symbolic link, a missing or corrupt
file, a lying WAV header, NaN samples, a clip too short), and a request that cannot be done is refused before any
model loads. Submission: the blind files are read as predict reads them, and one that cannot be scored is named
and stops the submission (no CSV) once all the others were scored.

One tiny offline bundle (one eGeMAPS member, no ASR, no hub) is built for the module."""
import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from bad_inputs import leftovers, refused
from tiny_bundles import EGEMAPS, EGEMAPS_STORE, make_meta, write_member

from medusa import cli
from medusa.serving.bundle import save_bundle
from medusa.serving.predict import Predictor

SR = 16000


def speech(seconds: float, sr: int = SR, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A voiced-like clip (harmonics of a wandering pitch, a syllable-rate envelope, a little noise): eGeMAPS finds
    pitch and loudness in it, so clips of different seeds get different probabilities."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    f0 = rng.uniform(110, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 0.7) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in (1, 2, 3)) * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    x = 0.2 * x + 0.01 * rng.normal(0, 1, len(t))
    if channels > 1:
        x = np.stack([x * (1 - 0.1 * c) for c in range(channels)], 1)
    return x.astype(np.float32)


def wav(path: Path, seconds: float = 1.2, sr: int = SR, seed: int = 0, subtype: str = "PCM_16", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, speech(seconds, sr, seed, kw.pop("channels", 1)), sr, subtype=subtype, **kw)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("bad_predict")
    member = write_member(root / "models", "e", {"egemaps": 25}, [5], {"egemaps": EGEMAPS_STORE}, seed=3)[0]
    return str(save_bundle(root / "bundle", make_meta(1, use_attributes=False), [member], {"egemaps": EGEMAPS},
                           None))


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """One clip every case scores beside its bad input: the others are still scored."""
    return wav(tmp_path_factory.mktemp("good") / "good.wav", seed=1)


def predict(bundle, inputs, tmp_path, capsys, *extra) -> tuple[int, pd.DataFrame, str]:
    """`medusa predict` through the CLI, its rows read back from --out: (exit status, file rows, stderr)."""
    out = tmp_path / "out" / "predictions.csv"
    capsys.readouterr()
    code = cli.main(["predict", bundle, *map(str, inputs), "--out", str(out), "--device", "cpu",
                     "--cache-dir", str(tmp_path / "cache"), *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    frame = pd.read_csv(out, dtype={"error": str, "warning": str})
    assert leftovers(out.parent) == []
    return code, frame[frame["level"] == "file"].reset_index(drop=True), err


def scored(frame: pd.DataFrame, file) -> bool:
    """The file's row holds probabilities and a class, and no error."""
    row = frame[frame["file"] == str(file)]
    assert len(row) == 1, (file, list(frame["file"]))
    probs = row.filter(like="p_").to_numpy(float)
    return bool(row["error"].isna().all() and np.isfinite(probs).all() and row["predicted"].notna().all())


def error_row(code: int, frame: pd.DataFrame, err: str, file, *words: str) -> str:
    """A bad file among good ones: exit 1, its row's error names it (and `words`), its stderr line too, and every
    other file is scored."""
    assert code == 1, err
    bad = frame[frame["file"] == str(file)]
    assert len(bad) == 1, (file, list(frame["file"]))
    message = bad["error"].iloc[0]
    assert isinstance(message, str) and str(file) in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert f"error: {message}" in err and "1 of" in err
    assert bad.filter(like="p_").isna().all().all() and bad["predicted"].isna().all()
    assert all(scored(frame, f) for f in frame["file"] if f != str(file))
    return message


# ------------------------------------------------------------------------------------------ broken symbolic links


def test_predict_folder_with_broken_symlink(bundle, good, tmp_path, capsys):
    folder = tmp_path / "calls"
    wav(folder / "a.wav", seed=2)
    os.symlink(tmp_path / "gone.wav", folder / "b.wav")          # the recording was moved away
    code, frame, err = predict(bundle, [folder, good], tmp_path, capsys)
    assert list(frame["file"]) == [str(folder / "a.wav"), str(folder / "b.wav"), str(good)]
    error_row(code, frame, err, folder / "b.wav", f"broken symbolic link -> {tmp_path / 'gone.wav'}")


def test_predict_broken_symlink_given(bundle, good, tmp_path, capsys):
    link = tmp_path / "link.wav"
    os.symlink("nowhere/x.flac", link)
    code, frame, err = predict(bundle, [link, good], tmp_path, capsys)
    error_row(code, frame, err, link, "broken symbolic link -> nowhere/x.flac")


def test_predict_broken_symlink_in_list(bundle, good, tmp_path, capsys):
    os.symlink(tmp_path / "gone.wav", tmp_path / "link.wav")
    todo = tmp_path / "todo.txt"
    todo.write_text(f"link.wav\n{good}\n")
    code, frame, err = predict(bundle, [f"@{todo}"], tmp_path, capsys)
    error_row(code, frame, err, tmp_path / "link.wav", "broken symbolic link", f"listed at {todo}:1")


# ------------------------------------------------------------------------------------------ inputs that are scored


def test_predict_upper_case_extension_in_folder(bundle, tmp_path, capsys):
    folder = tmp_path / "calls"
    wav(folder / "LOUD.WAV", seed=2)
    wav(folder / "sub" / "Mixed.Wav", seed=3)
    code, frame, err = predict(bundle, [folder], tmp_path, capsys)
    assert code == 0, err
    assert list(frame["file"]) == [str(folder / "LOUD.WAV"), str(folder / "sub" / "Mixed.Wav")]
    assert list(frame["utt_id"]) == ["LOUD", "Mixed"] and all(scored(frame, f) for f in frame["file"])


def test_predict_upper_case_extension_in_list(bundle, tmp_path, capsys):
    clip = wav(tmp_path / "clips" / "X.WAV", seed=2)
    todo = tmp_path / "todo.txt"
    todo.write_text("clips/X.WAV\n")
    code, frame, err = predict(bundle, [f"@{todo}"], tmp_path, capsys)
    assert code == 0, err
    assert list(frame["file"]) == [str(clip)] and scored(frame, clip)


def test_predict_list_with_bom_and_comments(bundle, good, tmp_path, capsys):
    other = wav(tmp_path / "b.wav", seed=2)
    todo = tmp_path / "todo.txt"
    # a BOM (Windows Notepad), CRLF line ends, comments, blank and indented lines: only the two paths count
    todo.write_bytes(f"\ufeff# to score\r\n{good}\r\n\r\n   # {tmp_path / 'skipped.wav'}\r\n  b.wav  \r\n"
                     .encode("utf-8"))
    code, frame, err = predict(bundle, [f"@{todo}"], tmp_path, capsys)
    assert code == 0, err
    assert list(frame["file"]) == [str(good), str(other)] and all(scored(frame, f) for f in frame["file"])


def test_predict_mp3_named_wav(bundle, good, tmp_path, capsys):
    fake = tmp_path / "phone.wav"
    sf.write(fake, speech(1.5, 22050, seed=4), 22050, format="MP3", subtype="MPEG_LAYER_III")
    assert fake.read_bytes()[:4] != b"RIFF"  # really an MPEG stream: read by its content, not its name
    code, frame, err = predict(bundle, [fake, good], tmp_path, capsys)
    assert code == 0, err
    assert scored(frame, fake) and abs(frame["duration_s"].iloc[0] - 1.5) < 0.1


@pytest.mark.parametrize("subtype, channels", [pytest.param("PCM_U8", 1, id="8bit"),
                                               pytest.param("PCM_24", 1, id="24bit"),
                                               pytest.param("PCM_32", 1, id="32bit"),
                                               pytest.param("PCM_16", 6, id="6ch")])
def test_predict_wav_formats(bundle, tmp_path, capsys, subtype, channels):
    clip = wav(tmp_path / f"{subtype}_{channels}.wav", 1.5, seed=5, subtype=subtype, channels=channels)
    reference = wav(tmp_path / "float.wav", 1.5, seed=5, subtype="FLOAT", channels=channels)
    code, frame, err = predict(bundle, [clip, reference], tmp_path, capsys)
    assert code == 0, err
    assert scored(frame, clip) and frame["duration_s"].iloc[0] == 1.5
    if subtype != "PCM_U8":  # 24 and 32 bits keep the float clip's samples to 1e-5: the same probabilities
        np.testing.assert_allclose(frame.filter(like="p_").iloc[0], frame.filter(like="p_").iloc[1], atol=1e-3)


def test_predict_silence(bundle, good, tmp_path, capsys):
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, np.zeros(2 * SR, np.float32), SR, subtype="PCM_16")
    code, frame, err = predict(bundle, [quiet, good], tmp_path, capsys)
    assert code == 0, err   # scored, with a warning: silence is a recording, not an error
    assert scored(frame, quiet) and frame["warning"].iloc[0].startswith("silence: RMS level -inf dBFS")


# ------------------------------------------------------------------------------------------ error rows


def test_predict_missing_file(bundle, good, tmp_path, capsys):
    code, frame, err = predict(bundle, [tmp_path / "missing.wav", good], tmp_path, capsys)
    error_row(code, frame, err, tmp_path / "missing.wav", "no such file or folder")


def test_predict_folder_without_audio(bundle, good, tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("not audio\n")
    code, frame, err = predict(bundle, [folder, good], tmp_path, capsys)
    error_row(code, frame, err, folder, "a folder without audio files")


def test_predict_empty_list(bundle, good, tmp_path, capsys):
    todo = tmp_path / "todo.txt"
    todo.write_text("\ufeff# nothing yet\n\n")
    code, frame, err = predict(bundle, [f"@{todo}", good], tmp_path, capsys)
    error_row(code, frame, err, f"@{todo}", "lists no files")


def test_predict_corrupt_file(bundle, good, tmp_path, capsys):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk and more junk")
    code, frame, err = predict(bundle, [junk, good], tmp_path, capsys)
    error_row(code, frame, err, junk, "cannot read audio")


def test_predict_empty_file(bundle, good, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    code, frame, err = predict(bundle, [empty, good], tmp_path, capsys)
    error_row(code, frame, err, empty, "cannot read audio")


def test_predict_wav_header_lies_about_length(bundle, good, tmp_path, capsys):
    cut = wav(tmp_path / "cut.wav", 1.5, seed=6)
    cut.write_bytes(cut.read_bytes()[:-8000])   # the copy stopped early: the header still counts 1.5 s
    code, frame, err = predict(bundle, [cut, good], tmp_path, capsys)
    error_row(code, frame, err, cut, "truncated audio")


def test_predict_nan_samples(bundle, good, tmp_path, capsys):
    x = speech(1.2, seed=7)
    x[5000:5010] = np.nan
    bad = tmp_path / "nan.wav"
    sf.write(bad, x, SR, subtype="FLOAT")
    code, frame, err = predict(bundle, [bad, good], tmp_path, capsys)
    error_row(code, frame, err, bad, "NaN")


def test_predict_too_short(bundle, good, tmp_path, capsys):
    tick = wav(tmp_path / "tick.wav", 0.05, seed=8)
    code, frame, err = predict(bundle, [tick, good], tmp_path, capsys)
    error_row(code, frame, err, tick, "too short")


# ------------------------------------------------------------------------------------------ --out


def test_predict_out_unknown_suffix(good, tmp_path, capsys):
    # the bundle does not exist: the suffix is refused first, so no model would have loaded before the error
    out = tmp_path / "p.xlsx"
    err = refused(cli.main, ["predict", str(tmp_path / "no_bundle"), str(good), "--out", str(out)], capsys,
                  str(out), "'.xlsx'", ".csv, .json, .parquet")
    assert "no_bundle" not in err and not out.exists()


def test_predict_out_is_a_folder(good, tmp_path, capsys):
    out = tmp_path / "results.csv"
    out.mkdir()
    err = refused(cli.main, ["predict", str(tmp_path / "no_bundle"), str(good), "--out", str(out)], capsys,
                  str(out), "is a folder")
    assert "no_bundle" not in err and list(out.iterdir()) == []


def test_predict_out_below_a_file(good, tmp_path, capsys):
    (tmp_path / "report").write_text("a file\n")
    out = tmp_path / "report" / "p.csv"
    err = refused(cli.main, ["predict", str(tmp_path / "no_bundle"), str(good), "--out", str(out)], capsys,
                  str(out), f"{tmp_path / 'report'} is a file")
    assert "no_bundle" not in err and (tmp_path / "report").read_text() == "a file\n"


def test_predict_out_in_missing_folder(bundle, good, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "p.json"
    assert cli.main(["predict", bundle, str(good), "--out", str(out), "--device", "cpu"]) == 0
    assert f"wrote 1 predictions to {out}" in capsys.readouterr().out
    assert pd.read_json(out)["file"].tolist() == [str(good)] and leftovers(tmp_path / "new") == []


# ------------------------------------------------------------------------------------------ submission

LABELLED = ["MSP-PODCAST_0001_0001.wav", "MSP-PODCAST_0002_0001.wav"]


def msp_corpus(root: Path) -> Path:
    """A tiny MSP-layout corpus: two labelled files (consensus rows) and three blind ones as people get them: a
    16 kHz wav, a 44.1 kHz stereo one, one named `.WAV`."""
    audios = root / "Audios"
    for i, name in enumerate(LABELLED):
        wav(audios / name, seed=10 + i)
    wav(audios / "MSP-PODCAST_test3_0001.wav", 1.5, seed=20)
    wav(audios / "MSP-PODCAST_test3_0002.wav", 1.3, 44100, seed=21, channels=2)
    wav(audios / "MSP-PODCAST_test3_0003.WAV", 1.1, seed=22)
    (root / "Labels").mkdir()
    with (root / "Labels" / "labels_consensus.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        for i, name in enumerate(LABELLED):
            w.writerow([name, "N", 4.0, 4.0, 4.0, i + 1, "Female", "Train"])
    return root


BLIND = ["MSP-PODCAST_test3_0001.wav", "MSP-PODCAST_test3_0002.wav", "MSP-PODCAST_test3_0003.wav"]


def submit(bundle, corpus, out, tmp_path) -> list[str]:
    return ["submission", bundle, str(corpus), "--out", str(out), "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache")]


def test_submission_reads_blind_audio_as_predict(bundle, tmp_path, capsys):
    corpus = msp_corpus(tmp_path / "corpus")
    out = tmp_path / "sub" / "submission.csv"
    assert cli.main(submit(bundle, corpus, out, tmp_path)) == 0, capsys.readouterr().err
    assert f"wrote 3 predictions to {out}" in capsys.readouterr().out
    written = pd.read_csv(out, dtype=str)
    assert list(written["FileName"]) == BLIND   # the 44.1 kHz file converted, `X.WAV` named as the labels name it
    # the letters are `medusa predict`'s for the same files
    audios = corpus / "Audios"
    files = [audios / BLIND[0], audios / BLIND[1], audios / "MSP-PODCAST_test3_0003.WAV"]
    frame = Predictor.from_bundle(bundle, device="cpu", cache_dir=tmp_path / "cache").predict_files(files,
                                                                                                    progress=False)
    assert list(written["EmoClass"]) == list(frame["predicted"]) and leftovers(out.parent) == []


@pytest.mark.parametrize("content", [pytest.param(b"RIFF\x10\x00\x00\x00WAVEjunk", id="corrupt"),
                                     pytest.param(b"", id="empty"),
                                     pytest.param(None, id="too_short")])
def test_submission_blind_file_unscorable(bundle, tmp_path, capsys, content):
    corpus = msp_corpus(tmp_path / "corpus")
    bad = corpus / "Audios" / "MSP-PODCAST_test3_0004.wav"
    if content is None:
        wav(bad, 0.05, seed=23)
    else:
        bad.write_bytes(content)
    out = tmp_path / "sub" / "submission.csv"
    err = refused(cli.main, submit(bundle, corpus, out, tmp_path), capsys, str(bad), "1 of 4 blind file(s)",
                  "no submission was made")
    # only the bad file is named: the 44.1 kHz and `.WAV` files were scored
    assert "test3_0002" not in err and "test3_0003" not in err
    assert not out.exists() and not out.parent.exists()


def test_submission_missing_blind_file_named(bundle, tmp_path):
    """A caller's list of blind files that the folder no longer holds: the missing one is named (a UserError, so
    one `error:` line in the CLI and the stage runner), the others were scored."""
    from medusa.errors import UserError
    from medusa.serving.submission import submission_from_bundle

    corpus = msp_corpus(tmp_path / "corpus")
    predictor = Predictor.from_bundle(bundle, device="cpu", cache_dir=tmp_path / "cache")
    with pytest.raises(UserError) as info:   # user_error's `names` would clash with submission_from_bundle's
        submission_from_bundle(predictor, corpus, names=[*BLIND, "MSP-PODCAST_test3_0009.wav"])
    message = str(info.value)
    assert f"{corpus / 'Audios' / 'MSP-PODCAST_test3_0009.wav'}: no such file" in message
    assert "1 of 4 blind file(s)" in message and "test3_0001" not in message


def test_submission_out_is_a_folder(tmp_path, capsys):
    corpus = msp_corpus(tmp_path / "corpus")
    out = tmp_path / "submission.csv"
    out.mkdir()
    # the bundle does not exist: the output is refused before any model loads (not after scoring every file)
    err = refused(cli.main, submit(str(tmp_path / "no_bundle"), corpus, out, tmp_path), capsys, str(out),
                  "is a folder")
    assert "no_bundle" not in err and list(out.iterdir()) == []
