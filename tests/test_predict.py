"""medusa.serving.predict and `medusa predict`: a bundle on audio as people have it (any format, rate, channels, length;
files, folders, @lists; bad files among good ones), with a tiny offline bundle of two eGeMAPS members (no ASR, no
hub) whose meta-classifier also predicts attributes."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from test_bundle import EGEMAPS, EGEMAPS_STORE, make_meta, write_member

from medusa import cli
from medusa.data.audio import read_any
from medusa.labels import ATTRIBUTES, SOFT_TARGET_COLUMNS
from medusa.serving.bundle import BundleError, save_bundle
from medusa.serving.inference import load_bundle
from medusa.serving.predict import (
    SHORT_SECONDS,
    SILENCE_DBFS,
    PredictError,
    Predictor,
    expand_inputs,
    window_starts,
    write_predictions,
)

SR = 16000
PROBS = list(SOFT_TARGET_COLUMNS)
VALUES = PROBS + list(ATTRIBUTES)
#: Two calls on the same clip that differ only in its batch-mates: the members' masked, length-sorted batches
#: may round differently in float32 (medusa.serving.bundle): measured up to 2e-6 on attributes near 1 (float32's spacing
#: there is 1.2e-7; a 150-step sequence's sums); anything that changes what a clip holds moves them by 1e-3 or more.
RTOL, ATOL = 1e-5, 1e-6


def voice(seconds: float, sr: int = SR, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A voiced-like signal: harmonics of a wandering pitch with a syllable-rate envelope, and a little noise,
    so that eGeMAPS finds pitch and loudness that vary (and clips of other seeds are told apart)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    f0 = rng.uniform(110, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 0.7) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in (1, 2, 3)) * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    x = 0.2 * x + 0.01 * rng.normal(0, 1, len(t))
    if channels > 1:  # the channels differ: averaging them is part of the conversion
        x = np.stack([x * (1 - 0.2 * c) for c in range(channels)], 1)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    store = {"egemaps": EGEMAPS_STORE}
    dirs = [write_member(root / "models", "e_deep", {"egemaps": 25}, [20], store, seed=3)[0],
            write_member(root / "models", "e_late", {"egemaps": 25}, [5], store, seed=4, fusion="late")[0]]
    return save_bundle(root / "bundle", make_meta(2, use_attributes=True), dirs, {"egemaps": EGEMAPS}, None)


@pytest.fixture(scope="module")
def predictor(bundle_path) -> Predictor:
    return Predictor.from_bundle(bundle_path, device="cpu")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Short 16 kHz wav files of 1.5-4 s."""
    root = tmp_path_factory.mktemp("clips")
    out = {}
    for i, seconds in enumerate([2.0, 3.1, 1.5, 4.0]):
        out[f"c{i}"] = root / f"c{i}.wav"
        sf.write(out[f"c{i}"], voice(seconds, seed=i), SR, subtype="PCM_16")
    return out


def values(frame: pd.DataFrame, file) -> np.ndarray:
    return frame.loc[frame["file"] == str(file), VALUES].to_numpy(dtype=np.float64)


def test_columns(predictor, clips):
    frame = predictor.predict_files([clips["c0"]], progress=False)
    assert list(frame.columns) == ["file", "utt_id", "level", "start_s", "end_s", "duration_s", *PROBS, "predicted",
                                   *ATTRIBUTES, "warning", "error"]
    row = frame.iloc[0]
    assert (row["file"], row["utt_id"], row["level"], row["start_s"], row["end_s"]) == (str(clips["c0"]), "c0",
                                                                                        "file", 0.0, 2.0)
    assert row["duration_s"] == 2.0 and pd.isna(row["warning"]) and pd.isna(row["error"])
    np.testing.assert_allclose(row[PROBS].sum(), 1, atol=1e-5)
    assert row["predicted"] == PROBS[int(np.argmax(row[PROBS].to_numpy(float)))][2:]


def test_any_format_rate_and_channels_give_their_16k_conversions_probabilities(predictor, tmp_path):
    """FLAC 44.1 kHz stereo, Ogg Vorbis 22.05 kHz, 8 kHz WAV: each scores as its own 16 kHz mono conversion
    (read_any's samples, kept exactly in a float WAV)."""
    sources = {"stereo.flac": (voice(2.5, 44100, seed=7, channels=2), 44100, "PCM_16"),
               "voice.ogg": (voice(2.0, 22050, seed=8), 22050, "VORBIS"),
               "phone.wav": (voice(3.0, 8000, seed=9), 8000, "PCM_16")}
    files, converted = [], []
    for name, (x, sr, subtype) in sources.items():
        files.append(tmp_path / name)
        sf.write(files[-1], x, sr, subtype=subtype)
        samples, info = read_any(files[-1])
        assert info.sample_rate == sr and abs(len(samples) / SR - len(x) / sr) < 1e-3
        converted.append(tmp_path / f"{Path(name).stem}_16k.wav")
        sf.write(converted[-1], samples, SR, subtype="FLOAT")
    frame = predictor.predict_files(files + converted, progress=False)
    assert frame["error"].isna().all() and (frame["level"] == "file").all()
    for original, conversion in zip(files, converted):
        np.testing.assert_allclose(values(frame, original), values(frame, conversion), rtol=RTOL, atol=ATOL)
    probs = frame[PROBS].to_numpy()
    assert np.abs(probs[0] - probs[1]).max() > 1e-3  # the check means something: the clips are told apart


def test_folders_and_list_files(predictor, clips, tmp_path):
    folder = tmp_path / "calls"
    (folder / "b" / "deep").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    shutil.copy(clips["c0"], folder / "z.wav")
    shutil.copy(clips["c1"], folder / "b" / "a.WAV")                  # extensions in any case
    sf.write(folder / "b" / "deep" / "c.flac", voice(1.5, 44100, seed=5), 44100)
    shutil.copy(clips["c2"], folder / ".hidden" / "x.wav")            # hidden: skipped
    shutil.copy(clips["c2"], folder / "._z.wav")                      # an AppleDouble file: skipped
    (folder / "notes.txt").write_text("not audio")                    # not an audio extension: skipped
    (tmp_path / "empty").mkdir()
    expected = [folder / "b" / "a.WAV", folder / "b" / "deep" / "c.flac", folder / "z.wav"]
    assert [s.file for s in expand_inputs([folder])] == [str(p) for p in expected]
    frame = predictor.predict_files([folder], progress=False)
    assert list(frame["file"]) == [str(p) for p in expected] and frame["error"].isna().all()
    alone = predictor.predict_files([clips["c1"]], progress=False)
    np.testing.assert_allclose(values(frame, folder / "b" / "a.WAV"), values(alone, clips["c1"]), rtol=RTOL, atol=ATOL)

    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "todo.txt").write_text(f"# to score\n\n../calls/z.wav\n  ../calls/b  \n{clips['c3']}\n# done\n"
                                    "missing.wav\n../empty\n")
    frame = predictor.predict_files([f"@{lists / 'todo.txt'}"], progress=False)
    listed = [lists / "../calls/z.wav", lists / "../calls/b/a.WAV", lists / "../calls/b/deep/c.flac", clips["c3"],
              lists / "missing.wav", lists / "../empty"]
    assert list(frame["file"]) == [str(p) for p in listed]
    assert frame["error"].isna().tolist() == [True] * 4 + [False] * 2
    assert frame["error"].iloc[4] == (f"{lists / 'missing.wav'}: no such file or folder (listed at "
                                      f"{lists / 'todo.txt'}:7)")
    assert "a folder without audio files (listed at" in frame["error"].iloc[5]
    np.testing.assert_allclose(values(frame, listed[0]), values(predictor.predict_files([clips["c0"]], progress=False),
                                                                clips["c0"]), rtol=RTOL, atol=ATOL)
    missing = predictor.predict_files(["@" + str(lists / "nothing.txt")], progress=False)
    assert missing["error"].tolist() == [f"@{lists / 'nothing.txt'}: no such list file"]


def test_a_long_file_is_cut_into_windows(predictor, tmp_path):
    long = tmp_path / "long.wav"
    x = voice(90.0, seed=11)
    sf.write(long, x, SR, subtype="FLOAT")
    frame = predictor.predict_files([long], batch_size=2, segment="window", progress=False)   # windows span two batches
    assert list(frame["level"]) == ["file", "segment", "segment", "segment"]
    segments, whole = frame[frame["level"] == "segment"], frame[frame["level"] == "file"].iloc[0]
    assert segments[["start_s", "end_s"]].to_numpy().tolist() == [[0, 30], [30, 60], [60, 90]]
    assert (frame["duration_s"] == 90).all() and (whole["start_s"], whole["end_s"]) == (0, 90)
    weights = (segments["end_s"] - segments["start_s"]).to_numpy()
    np.testing.assert_allclose(whole[VALUES].to_numpy(float), weights @ segments[VALUES].to_numpy() / weights.sum(),
                               rtol=0, atol=1e-12)
    assert whole["predicted"] == PROBS[int(np.argmax(whole[PROBS].to_numpy(float)))][2:]
    # each window is the clip's own samples: the middle one scored as a file of its own
    middle = tmp_path / "middle.wav"
    sf.write(middle, x[30 * SR:60 * SR], SR, subtype="FLOAT")
    np.testing.assert_allclose(segments.iloc[1][VALUES].to_numpy(float), values(
        predictor.predict_files([middle], progress=False), middle)[0], rtol=RTOL, atol=ATOL)
    assert np.abs(np.diff(segments[PROBS].to_numpy(), axis=0)).max() > 1e-4  # the windows are scored apart

    # a window that does not divide the file: the last one is shifted back to end at the file's end
    frame = predictor.predict_files([long], window=40, segment="window", progress=False)
    assert frame.loc[frame["level"] == "segment", ["start_s", "end_s"]].to_numpy().tolist() == \
        [[0, 40], [40, 80], [50, 90]]
    frame = predictor.predict_files([long], window=40, segment="window", hop=25, progress=False)
    assert frame.loc[frame["level"] == "segment", ["start_s", "end_s"]].to_numpy().tolist() == \
        [[0, 40], [25, 65], [50, 90]]
    assert window_starts(100, 100, 10) == [0] and window_starts(101, 100, 100) == [0, 1]
    assert window_starts(250, 100, 100) == [0, 100, 150] and window_starts(300, 100, 100) == [0, 100, 200]


def test_window_hop_and_batch_size_are_checked(predictor, clips, tmp_path):
    for kwargs, message in [({"window": 0.05}, "window must be at least 0.1 s"),
                            ({"window": float("nan")}, "window must be at least"),
                            ({"window": 10, "hop": 0}, r"hop must be more than 0 and at most the window \(10 s\)"),
                            ({"window": 10, "hop": 12}, "hop must be"),
                            ({"batch_size": 0}, "batch_size must be a whole number of at least 1")]:
        with pytest.raises(PredictError, match=message):
            predictor.predict_files([clips["c0"]], progress=False, **kwargs)
    # Whisper reads at most 30 s: a bundle with a Whisper encoder refuses a longer window
    store = {"w": {"family": "whisper", "model": "/models/whisper", "layers": [-1], "dim": 6, "kind": "audio"}}
    folder, _ = write_member(tmp_path / "models", "w", {"w": 6}, [1], store, seed=6)
    encoders = {"w": {"family": "whisper", "model": "/models/whisper", "layers": [-1], "batch_size": 4,
                      "batch_seconds": 60.0}}
    whisper = save_bundle(tmp_path / "whisper", make_meta(1, use_attributes=False), [folder], encoders, None)
    with pytest.raises(PredictError, match=r"window 45 s: this bundle reads audio with Whisper \(encoder w\), "
                                           r"which takes at most 30 s"):
        Predictor.from_bundle(whisper, device="cpu").predict_files([clips["c0"]], window=45, progress=False)


def test_a_bad_file_gets_its_own_row(predictor, clips, tmp_path, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk and more junk")
    truncated = tmp_path / "truncated.wav"
    sf.write(truncated, voice(1.0), SR, subtype="PCM_16")
    truncated.write_bytes(truncated.read_bytes()[:-4000])
    good = [clips["c0"], clips["c1"]]
    files = [good[0], broken, tmp_path / "missing.flac", truncated, good[1]]
    frame = predictor.predict_files(files, progress=False)
    assert list(frame["file"]) == [str(f) for f in files] and (frame["level"] == "file").all()
    errors = frame["error"].tolist()
    assert pd.isna(errors[0]) and pd.isna(errors[4])
    assert errors[1].startswith(f"{broken}: cannot read audio")
    assert errors[2] == f"{tmp_path / 'missing.flac'}: no such file or folder"
    assert errors[3].startswith(f"{truncated}: truncated audio")
    assert frame.loc[1:3, VALUES].isna().all().all() and frame.loc[1:3, "predicted"].isna().all()
    clean = predictor.predict_files(good, progress=False)
    for f in good:
        np.testing.assert_allclose(values(frame, f), values(clean, f), rtol=RTOL, atol=ATOL)

    out = tmp_path / "out.csv"
    assert cli.main(["predict", str(predictor.bundle.path), *map(str, files), "--out", str(out),
                     "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert f"error: {broken}: cannot read audio" in captured.err and "3 of 5 files could not be scored" in captured.err
    assert "Traceback" not in captured.err and f"wrote 5 predictions to {out}" in captured.out
    written = pd.read_csv(out)
    assert list(written["file"]) == [str(f) for f in files]
    np.testing.assert_allclose(written.loc[[0, 4], VALUES].to_numpy(), frame.loc[[0, 4], VALUES].to_numpy(),
                               rtol=0, atol=1e-12)
    assert cli.main(["predict", str(predictor.bundle.path), *map(str, good), "--device", "cpu"]) == 0
    assert "c0" in capsys.readouterr().out


def test_silence_and_short_clips(predictor, tmp_path, capsys):
    files = {"silence": np.zeros(2 * SR, np.float32),
             "hum": (10 ** (SILENCE_DBFS / 20) * 0.5 * np.sqrt(2) * np.sin(2 * np.pi * 50 * np.arange(2 * SR) / SR)),
             "half": voice(0.5, seed=3), "tick": voice(0.01, seed=4), "ok": voice(SHORT_SECONDS, seed=5)}
    paths = []
    for name, x in files.items():
        paths.append(tmp_path / f"{name}.wav")
        sf.write(paths[-1], x, SR, subtype="FLOAT")
    frame = predictor.predict_files(paths, progress=False).set_index("utt_id")
    assert frame.loc["silence", "warning"].startswith("silence: RMS level -inf dBFS, below -50 dBFS")
    assert frame.loc["hum", "warning"].startswith("silence: RMS level -56.0 dBFS")       # 6 dB under the limit
    assert frame.loc["half", "warning"].startswith("very short: 0.50 s (under 1 s)")
    assert pd.isna(frame.loc["ok", "warning"]) and pd.isna(frame.loc["ok", "error"])
    scored = frame.loc[["silence", "hum", "half", "ok"]]
    assert scored["error"].isna().all() and np.isfinite(scored[VALUES].to_numpy()).all()
    assert frame.loc["tick", "error"] == f"{paths[3]}: too short: 0.01 s (160 samples at 16 kHz), the minimum is " \
                                        "0.1 s (1600 samples: the shortest clip every encoder gives a frame for)"
    assert frame.loc[["tick"], VALUES].isna().all().all() and frame.loc["tick", "duration_s"] == 0.01
    assert cli.main(["predict", str(predictor.bundle.path), *map(str, paths), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "tick.wav: too short" in captured.err
    assert "2 rows with a warning" not in captured.out and "3 rows with a warning" in captured.out


def test_predict_array_equals_predict_files(predictor, tmp_path):
    x = voice(2.2, 22050, seed=12, channels=2)
    sf.write(tmp_path / "stereo.wav", x, 22050, subtype="FLOAT")
    pcm = (voice(1.8, 48000, seed=13) * 32767).astype(np.int16)
    sf.write(tmp_path / "pcm.wav", pcm, 48000, subtype="PCM_16")
    long = voice(40.0, 16000, seed=14)
    sf.write(tmp_path / "long.wav", long, SR, subtype="FLOAT")
    frame = predictor.predict_files([tmp_path / "stereo.wav", tmp_path / "pcm.wav", tmp_path / "long.wav"],
                                    progress=False)
    for array, rate, file in [(x, 22050, "stereo.wav"), (pcm, 48000, "pcm.wav"), (long, SR, "long.wav")]:
        row = predictor.predict_array(array, rate, name=file)
        assert isinstance(row, pd.Series) and row["file"] == file and row["level"] == "file"
        np.testing.assert_allclose(row[VALUES].to_numpy(float), values(frame, tmp_path / file)[0], rtol=RTOL, atol=ATOL)
        assert row["predicted"] == frame.loc[frame["file"] == str(tmp_path / file), "predicted"].iloc[0]
    assert predictor.predict_array(long, SR)["duration_s"] == 40.0
    bad = predictor.predict_array(np.full(4000, np.nan), 8000, name="mic")
    assert bad["error"] == "mic: holds NaN or infinite samples" and np.isnan(bad[PROBS].to_numpy(float)).all()
    assert predictor.predict_array(np.zeros(0), SR)["error"] == "<array>: empty audio (0 samples)"
    with pytest.raises(ValueError, match="channels first"):
        predictor.predict_array(x.T, 22050)
    with pytest.raises(ValueError, match="sample_rate must be a positive"):
        predictor.predict_array(x, 0)


def test_output_formats_round_trip(predictor, clips, tmp_path, capsys):
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, np.zeros(SR // 2, np.float32), SR, subtype="PCM_16")
    frame = predictor.predict_files([clips["c0"], quiet, tmp_path / "gone.wav"], progress=False)
    assert frame["warning"].notna().sum() == 1 and frame["error"].notna().sum() == 1
    for suffix in ("csv", "json", "parquet"):
        out = write_predictions(frame, tmp_path / f"p.{suffix}")
        if suffix == "csv":
            back = pd.read_csv(out)
        elif suffix == "json":
            back = pd.DataFrame(json.loads(out.read_text()))
        else:
            back = pd.read_parquet(out)
        assert list(back.columns) == list(frame.columns), suffix
        pd.testing.assert_frame_equal(back, frame, check_dtype=False, rtol=0, atol=1e-15, obj=suffix)
        assert not list(tmp_path.glob(".p.*"))  # the temporary file is gone
    records = json.loads((tmp_path / "p.json").read_text())
    assert records[2]["p_A"] is None and records[1]["error"] is None  # missing values as null, never NaN
    with pytest.raises(PredictError, match=r"p\.xlsx: cannot write predictions as '\.xlsx'; the output must end in "
                                           r"\.csv, \.json, \.parquet"):
        write_predictions(frame, tmp_path / "p.xlsx")
    assert not (tmp_path / "p.xlsx").exists()
    assert cli.main(["predict", str(predictor.bundle.path), str(clips["c0"]), "--out", str(tmp_path / "p.txt")]) == 1
    assert "error: " in capsys.readouterr().err and not (tmp_path / "p.txt").exists()


def test_a_damaged_bundle_is_an_error_message(bundle_path, clips, tmp_path, capsys):
    copy = Path(shutil.copytree(bundle_path, tmp_path / "bundle"))
    manifest = copy / "manifest.json"
    for damage in ('{"format_version": 1, "files": {"meta.json": ', b"\x89PNG\xff\xfe", "[1, 2]",
                   '{"format_version": 1}'):
        if isinstance(damage, bytes):
            manifest.write_bytes(damage)
        else:
            manifest.write_text(damage)
        with pytest.raises(BundleError, match=str(manifest)):
            load_bundle(copy)
        assert cli.main(["predict", str(copy), str(clips["c0"]), "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {manifest}: ") and "Traceback" not in err
    assert cli.main(["predict", str(tmp_path / "nowhere"), str(clips["c0"]), "--device", "cpu"]) == 1
    assert "not a predict bundle" in capsys.readouterr().err
    assert cli.main(["predict", str(bundle_path), str(clips["c0"]), "--device", "cpu", "--window", "-1"]) == 1
    assert "error: window must be at least 0.1 s" in capsys.readouterr().err


def test_a_files_row_does_not_depend_on_the_others(predictor, clips, tmp_path):
    """Alone, among others (before and after it, a long file cut into windows among them), in batches of 1 and 8
    and the default: the same row; and the long file's rows the same whatever the batches."""
    long = tmp_path / "long.wav"
    sf.write(long, voice(25.0, seed=21), SR, subtype="PCM_16")
    target = clips["c2"]
    reference = values(predictor.predict_files([target], window=10, segment="window", progress=False), target)
    long_rows = []
    for batch_size in (1, 8, None):
        for files in ([target], [clips["c0"], long, target, clips["c3"]], [clips["c3"], target, clips["c1"], long]):
            frame = predictor.predict_files(files, window=10, segment="window", batch_size=batch_size, progress=False)
            np.testing.assert_allclose(values(frame, target), reference, rtol=RTOL, atol=ATOL,
                                       err_msg=f"batch_size {batch_size}, files {files}")
            if long in files:
                rows = frame[frame["file"] == str(long)]
                assert rows[["start_s", "end_s"]].to_numpy().tolist() == [[0, 25], [0, 10], [10, 20], [15, 25]]
                long_rows.append(rows[VALUES].to_numpy())
    for rows in long_rows[1:]:
        np.testing.assert_allclose(rows, long_rows[0], rtol=RTOL, atol=ATOL)


def test_import_medusa_is_light_and_exports_the_predictor():
    code = ("import sys, medusa; assert 'torch' not in sys.modules, 'import medusa imported torch'; "
            "from medusa import Predictor; import medusa.serving.predict; assert Predictor is medusa.serving.predict.Predictor")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_clip_the_encoders_refuse_fails_alone(predictor, clips, tmp_path, monkeypatch, caplog):
    """A batch that fails on one clip's values is scored again clip by clip: only that clip (or window) gets the
    error; a bundle problem still stops the run."""
    from medusa.serving.featurizer import Featurizer

    long = tmp_path / "long.wav"
    sf.write(long, voice(25.0, seed=22), SR, subtype="PCM_16")
    files = [clips["c0"], clips["c1"], long, clips["c2"]]
    clean = predictor.predict_files(files, window=10, segment="window", progress=False)
    original = Featurizer.features

    def refusing(self, audios, names=None, *args, **kwargs):
        bad = [n for n in names if n.endswith("c1.wav") or n.endswith("long.wav [10.00-20.00 s]")]
        if bad:
            raise ValueError(f"{bad[0]}: encoder 'egemaps' gives values float16 cannot hold")
        return original(self, audios, names, *args, **kwargs)

    monkeypatch.setattr(Featurizer, "features", refusing)
    with caplog.at_level("WARNING", logger="medusa.serving.predict"):
        frame = predictor.predict_files(files, window=10, segment="window", progress=False)
    assert "scoring them one at a time" in caplog.text
    assert frame["error"].notna().tolist() == [False, True, True, False, True, False, False]
    assert frame["error"].iloc[1] == f"{clips['c1']}: encoder 'egemaps' gives values float16 cannot hold"
    assert frame["error"].iloc[2] == (f"{long}: 1 of 3 pieces could not be scored (the first: {long} [10.00-20.00 s]: "
                                      "encoder 'egemaps' gives values float16 cannot hold)")
    good = frame["error"].isna().to_numpy()
    np.testing.assert_allclose(frame.loc[good, VALUES].to_numpy(), clean.loc[good, VALUES].to_numpy(), rtol=RTOL,
                               atol=ATOL)
    assert frame.loc[~good, VALUES].isna().all().all()

    def broken(self, *args, **kwargs):
        raise BundleError("encoder 'egemaps': the members were trained on features padded otherwise")

    monkeypatch.setattr(Featurizer, "features", broken)
    with pytest.raises(BundleError, match="padded otherwise"):
        predictor.predict_files(files, progress=False)


def test_cli_submission(bundle_path, tmp_path, capsys):
    pytest.importorskip("medusa.serving.submission")
    from test_submission import ALL_BLIND, write_blind_corpus

    corpus = write_blind_corpus(tmp_path / "corpus")
    out = tmp_path / "submission.csv"
    assert cli.main(["submission", str(bundle_path), str(corpus), "--out", str(out), "--device", "cpu",
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    assert f"wrote {len(ALL_BLIND)} predictions to {out}" in capsys.readouterr().out
    written = pd.read_csv(out, dtype=str)
    assert list(written.columns) == ["FileName", "EmoClass"] and sorted(written["FileName"]) == ALL_BLIND
    # user errors: a message and exit status 1, no traceback, nothing written
    shutil.rmtree(corpus / "Labels")
    for bundle, where in [(bundle_path, corpus), (tmp_path / "nowhere", corpus), (bundle_path, tmp_path / "none")]:
        assert cli.main(["submission", str(bundle), str(where), "--out", str(tmp_path / "s2.csv"),
                         "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and not (tmp_path / "s2.csv").exists()


def test_vad_gives_a_timeline_of_speech_segments(predictor, tmp_path):
    """A recording of three utterances with pauses between them, scored with segment="vad": one segment row per
    utterance, its boundaries within 0.3 s of the speech's, silence not scored, the file row the mean of the
    segments weighted by their seconds; with fixed windows the same file is cut blindly."""
    from test_segments import PAUSES_S, SENTENCES, TOLERANCE_S, with_pauses

    from medusa.data.audio import to_mono_16k
    from medusa.data.corpora.espeak import ESPEAK_RATE_HZ, SynthRequest, synthesize_batch

    audio = synthesize_batch([SynthRequest(t, "en+m3", 160, 100, 50, 50, 0) for t in SENTENCES])
    clips = [to_mono_16k(a.astype(np.float32)[:, None] / 32768, ESPEAK_RATE_HZ) for a in audio]
    x, truth = with_pauses(clips, PAUSES_S)
    recording = tmp_path / "call.wav"
    sf.write(recording, x, SR, subtype="FLOAT")
    frame = predictor.predict_files([recording], window=5.0, segment="vad", progress=False)
    segments, whole = frame[frame["level"] == "segment"], frame[frame["level"] == "file"].iloc[0]
    assert list(frame["level"]) == ["file", "segment", "segment", "segment"]
    for (start, end), (b, e) in zip(segments[["start_s", "end_s"]].to_numpy(), truth):
        assert abs(start - b / SR) <= TOLERANCE_S and abs(end - e / SR) <= TOLERANCE_S, (start, end, b / SR, e / SR)
    seconds = (segments["end_s"] - segments["start_s"]).to_numpy()
    assert seconds.sum() < 0.75 * whole["duration_s"]  # the pauses are not scored
    np.testing.assert_allclose(whole[VALUES].to_numpy(float), seconds @ segments[VALUES].to_numpy() / seconds.sum(),
                               rtol=0, atol=1e-12)
    assert segments["error"].isna().all() and pd.isna(whole["error"])
    windows = predictor.predict_files([recording], window=5.0, segment="window", progress=False)
    assert windows.loc[windows["level"] == "segment", "start_s"].tolist() == [0, 5, 10, x.size / SR - 5]
    # a short file is scored whole either way
    short = tmp_path / "short.wav"
    sf.write(short, clips[0], SR, subtype="FLOAT")
    assert list(predictor.predict_files([short], window=5.0, segment="vad", progress=False)["level"]) == ["file"]
