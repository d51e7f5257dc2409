"""Audio read the same way everywhere and tied to its content: the manifest's content hash (a recording replaced by
another of the same length changes the manifest), one case-insensitive listing of an MSP-layout folder, one
conversion for prepare and predict (out-of-range float audio scaled, the same in both), a streamed file's real
length, and the short-clip message's digits."""
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from bad_inputs import user_error
from test_msp_podcast import BLIND, build, params, write_corpus

from medusa.data.audio import audio_info, load_audio, prepare_audio, read_any
from medusa.data.corpora.msp_podcast import CorpusError, audio_files


def _replace_same_length(path):
    """Another recording of the same length in place of `path` (same size, same duration, other samples)."""
    x, sr = sf.read(path, dtype="int16")
    sf.write(path, -x[::-1], sr, subtype="PCM_16")


def test_a_replaced_recording_changes_only_its_manifest_row_and_hashes_are_reused(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus")
    before = build(params(corpus)).set_index("utt_id")
    assert before["audio_sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    target = corpus / "Audios" / "MSP-PODCAST_0002_0001.wav"
    size = target.stat().st_size
    _replace_same_length(target)
    assert target.stat().st_size == size

    import medusa.io
    hashed = []
    real = medusa.io.sha256_file
    monkeypatch.setattr(medusa.io, "sha256_file", lambda p: hashed.append(str(p)) or real(p))
    after = build(params(corpus)).set_index("utt_id")
    assert hashed == [str(target)]  # the other files' hashes were reused (size and mtime unchanged)
    changed = before.index[before["audio_sha256"] != after["audio_sha256"]].tolist()
    assert changed == ["MSP-PODCAST_0002_0001"]
    assert before.drop(columns="audio_sha256").equals(after.drop(columns="audio_sha256"))


def test_msp_audio_is_listed_whatever_the_extension_case(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    blind = corpus / "Audios" / BLIND[0]
    os.rename(blind, blind.with_suffix(".WAV"))
    (corpus / "Audios" / ".MSP-PODCAST_x.wav.tmp-1").write_bytes(b"")  # an interrupted copy: not audio
    listed = audio_files(corpus / "Audios")
    assert listed[BLIND[0]] == blind.with_suffix(".WAV") and len(listed) == 10
    manifest = build(params(corpus))
    assert manifest.loc[manifest["split"] == "blind", "utt_id"].tolist() == [blind.stem]
    shutil.copy(blind.with_suffix(".WAV"), blind)  # the same utterance twice, by the extension's case
    message = user_error(audio_files, corpus / "Audios", names=(blind.name, blind.with_suffix(".WAV").name))
    assert "same utterance" in message
    with pytest.raises(CorpusError):
        build(params(corpus))


def _loud_float_wav(path, rate=44100, seconds=0.5):
    t = np.arange(int(rate * seconds)) / rate
    x = (1.8 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # float WAV above full scale
    sf.write(path, np.stack([x, 0.5 * x], axis=1), rate, subtype="FLOAT")
    return path


def test_prepare_and_predict_convert_a_file_to_the_same_samples(tmp_path, caplog):
    source = _loud_float_wav(tmp_path / "loud.wav")
    with caplog.at_level(logging.WARNING, logger="medusa.data.audio"):
        table, _ = prepare_audio([source], tmp_path / "cache", long_audio="reject")
    assert any("loud.wav: float samples reach 1.800" in r.getMessage() for r in caplog.records)
    prepared = load_audio(table["path"][0])  # what every stage reads
    predicted = read_any(source)[0]           # what medusa predict computes
    np.testing.assert_array_equal(prepared, predicted)
    # scaled down by 1.8 before the channels (1.8 and 0.9 peak) are averaged: a peak of 0.75, not hard-clipped
    assert np.abs(predicted).max() == pytest.approx(0.75, abs=0.01)


def test_nan_samples_are_refused_by_the_one_conversion(tmp_path):
    x = np.zeros(8000, dtype=np.float32)
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    user_error(read_any, tmp_path / "nan.wav", names=("nan.wav", "NaN"))


def _streamed_flac(path, seconds):
    """A FLAC whose STREAMINFO gives no length (total samples 0), as an encoder writing to a pipe leaves it."""
    x = (0.1 * np.sin(np.arange(int(16000 * seconds)) / 9)).astype(np.float32)
    sf.write(path, x, 16000, subtype="PCM_16", format="FLAC")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC"
    # STREAMINFO starts at byte 8; its total-samples field is the low 4 bits of byte 8+13 and bytes 8+14..8+17
    data[21] &= 0xF0
    data[22:26] = b"\0\0\0\0"
    path.write_bytes(bytes(data))
    return path


def test_a_streamed_file_gets_its_real_length(tmp_path):
    short = _streamed_flac(tmp_path / "stream.flac", 2.0)
    assert audio_info(short).duration_s == pytest.approx(2.0)
    long = _streamed_flac(tmp_path / "long.flac", 65.0)
    message = user_error(prepare_audio, [long], tmp_path / "cache", long_audio="reject", names=("long.flac",))
    assert "too long: 65.00 s" in message
    table, _ = prepare_audio([long], tmp_path / "cache", long_audio="segment")
    assert len(table) == 3 and table["duration_s"].sum() == pytest.approx(65.0)


def test_a_clip_just_under_the_minimum_says_so_in_enough_digits(tmp_path):
    sf.write(tmp_path / "blip.wav", np.full(1599, 0.1), 16000, subtype="PCM_16")
    message = user_error(prepare_audio, [tmp_path / "blip.wav"], tmp_path / "cache", long_audio="reject",
                         names=("blip.wav", "0.0999375 s", "1599 samples", "1600 samples"))
    assert "0.100 s" not in message


def test_a_killed_conversion_leaves_no_temporary_file_for_good(tmp_path):
    """`.NAME.tmp-PID` of a conversion killed mid-write (a dead pid) is removed by the next prepare; the files of a
    live writer are kept."""
    source = _loud_float_wav(tmp_path / "loud.wav")
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = cache / f".abc.wav.tmp-{dead.pid}"
    live = cache / f".def.wav.tmp-{os.getpid()}"
    stale.write_bytes(b"RIFF half a file")
    live.write_bytes(b"RIFF being written")
    prepare_audio([source], cache, long_audio="reject")
    assert not stale.exists() and live.exists()


def test_a_streamed_wav_gets_its_real_length(tmp_path):
    """A WAV written to a pipe leaves its RIFF and data sizes unknown (0xFFFFFFFF): its length is the data present."""
    path = tmp_path / "stream.wav"
    sf.write(path, (0.1 * np.sin(np.arange(24000) / 7)).astype(np.float32), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data")
    data[4:8] = data[at + 4:at + 8] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    assert audio_info(path).duration_s == pytest.approx(1.5)
    table, _ = prepare_audio([path], tmp_path / "cache", long_audio="reject")
    assert table["duration_s"].tolist() == [pytest.approx(1.5)] and len(load_audio(table["path"][0])) == 24000
