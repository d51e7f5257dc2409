"""Audio checks on files the tests write: truncated data (header intact) is an error at prepare and load time;
prepare_audio turns any format, rate and channel count into 16 kHz mono PCM16 files (cached) and names bad files."""
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from medusa.data.audio import (
    MAX_SECONDS,
    MIN_SECONDS,
    AudioError,
    check_complete,
    check_corpus_audio,
    load_audio,
    prepare_audio,
    read_any,
    wav_data_sizes,
)

HEADER = 44  # bytes of the canonical PCM WAV header soundfile writes (RIFF, fmt, data)


def _wav(path, n=8000, channels=1, rate=16000):
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.1, 0.1, (n, channels)) if channels > 1 else rng.uniform(-0.1, 0.1, n)
    sf.write(path, x, rate, subtype="PCM_16")
    return path


def _truncate(path, keep_bytes):
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])


def test_a_truncated_wav_is_refused_at_prepare_and_load_time(tmp_path):
    path = _wav(tmp_path / "cut.wav")                        # 8000 samples = 16000 data bytes
    assert len(load_audio(path)) == 8000 and check_corpus_audio(path).duration_s == 0.5
    _truncate(path, HEADER + 7978)                           # half of the data is gone, the header says 16000
    # what the old code did: libsndfile clamps to the bytes present, and nothing said so
    assert sf.info(str(path)).frames == 3989
    message = (f"{path}: truncated audio: the header declares 8000 samples (0.500 s) but the file holds 3989 "
               "(0.249 s)")
    with pytest.raises(AudioError) as err:
        check_corpus_audio(path)
    assert str(err.value).startswith(message)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert str(err.value).startswith(message)


def test_a_truncated_stereo_wav_counts_sample_frames(tmp_path):
    path = _wav(tmp_path / "stereo.wav", n=1600, channels=2)  # 4 bytes per frame
    _truncate(path, HEADER + 4 * 1000 + 2)                    # 1000 whole frames and half of one
    with pytest.raises(AudioError, match=r"declares 1600 samples \(0.100 s\) but the file holds 1000 \(0.062 s\)"):
        load_audio(path)


def test_complete_wavs_pass_with_extra_chunks_and_unknown_sizes(tmp_path):
    path = _wav(tmp_path / "ok.wav")
    data = path.read_bytes()
    # an odd-sized chunk before the data (padded to even) and a LIST chunk after it: still complete
    extra = b"junk" + struct.pack("<I", 3) + b"abc\0"
    listed = data[:36] + extra + data[36:] + b"LIST" + struct.pack("<I", 4) + b"INFO"
    listed = listed[:4] + struct.pack("<I", len(listed) - 8) + listed[8:]
    (tmp_path / "listed.wav").write_bytes(listed)
    sizes = wav_data_sizes(tmp_path / "listed.wav")
    assert (sizes.declared, sizes.present, sizes.block_align, sizes.sample_rate) == (16000, 16012, 2, 16000)
    np.testing.assert_array_equal(load_audio(tmp_path / "listed.wav"), load_audio(path))
    check_corpus_audio(tmp_path / "listed.wav")
    # a stream written without seeking back leaves the data size unknown (0xFFFFFFFF): nothing to compare
    streamed = data[:40] + struct.pack("<I", 0xFFFFFFFF) + data[44:]
    (tmp_path / "streamed.wav").write_bytes(streamed)
    assert wav_data_sizes(tmp_path / "streamed.wav") is None
    check_complete(tmp_path / "streamed.wav")


def test_other_formats_compare_decoded_frames(tmp_path):
    path = tmp_path / "clip.flac"
    sf.write(path, np.random.default_rng(0).uniform(-0.1, 0.1, 16000), 16000, subtype="PCM_16")
    assert wav_data_sizes(path) is None
    check_complete(path)
    assert len(load_audio(path)) == 16000
    _truncate(path, len(path.read_bytes()) // 2)
    with pytest.raises(AudioError, match=r"clip\.flac: cannot read audio|clip\.flac: truncated audio"):
        check_complete(path)
    with pytest.raises(AudioError, match=r"clip\.flac"):
        load_audio(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(AudioError, match=r"nothing\.wav: cannot read audio"):
        load_audio(tmp_path / "nothing.wav")


# ---- prepare_audio: any audio -> 16 kHz mono PCM16, once ----

def _sine(path, freq=1000.0, rate=22050, seconds=1.0, amplitude=0.5, channels=1, subtype="PCM_16", fmt=None):
    t = np.arange(int(round(seconds * rate))) / rate
    x = amplitude * np.sin(2 * np.pi * freq * t)
    if channels > 1:  # channel c at amplitude / (c + 1): the downmix is their mean
        x = np.stack([x / (c + 1) for c in range(channels)], axis=1)
    sf.write(path, x, rate, subtype=subtype, format=fmt)
    return path


def _tone(x, rate=16000):
    """(frequency of the spectrum's peak, its amplitude) of the middle 0.8 s of a clip (the edges left out)."""
    mid = x[len(x) // 2 - int(0.4 * rate): len(x) // 2 + int(0.4 * rate)]
    spectrum = np.abs(np.fft.rfft(mid)) * 2 / len(mid)
    k = int(np.argmax(spectrum))
    return k * rate / len(mid), spectrum[k]


def _one(tmp_path, path, **kw):
    table, skipped = prepare_audio([path], tmp_path / "cache", **{"long_audio": "reject", **kw})
    assert skipped.empty and len(table) == 1
    return table.iloc[0]


def test_resampling_keeps_the_tones_frequency_and_amplitude(tmp_path):
    src = _sine(tmp_path / "a.wav", freq=1000, rate=22050, amplitude=0.5)
    row = _one(tmp_path, src)
    assert row.converted and row.source == str(src) and row.path != str(src)
    assert (row.orig_sample_rate, row.orig_channels, row.segment) == (22050, 1, 0)
    info = sf.info(row.path)
    assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
    assert row.duration_s == pytest.approx(1.0, abs=1e-4)
    freq, amplitude = _tone(load_audio(row.path))
    assert freq == pytest.approx(1000, abs=2) and amplitude == pytest.approx(0.5, rel=0.01)
    samples, orig = read_any(src)  # what was written, before PCM16
    assert samples.dtype == np.float32 and len(samples) == 16000 and orig.sample_rate == 22050


def test_48k_stereo_24bit_becomes_mono_16k(tmp_path):
    src = _sine(tmp_path / "stereo.wav", freq=440, rate=48000, channels=2, subtype="PCM_24", amplitude=0.8)
    row = _one(tmp_path, src)
    assert (row.orig_sample_rate, row.orig_channels) == (48000, 2)
    info = sf.info(row.path)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    freq, amplitude = _tone(load_audio(row.path))
    assert freq == pytest.approx(440, abs=2) and amplitude == pytest.approx((0.8 + 0.4) / 2, rel=0.01)


@pytest.mark.parametrize("name, rate, subtype, fmt, tolerance", [
    ("clip.flac", 44100, "PCM_16", "FLAC", 0.01),
    ("clip.ogg", 16000, "VORBIS", "OGG", 0.05),       # lossy, and not a WAV although 16 kHz mono: converted
    ("clip.mp3", 24000, "MPEG_LAYER_III", "MP3", 0.05),
    ("u8.wav", 8000, "PCM_U8", "WAV", 0.02),          # 8-bit: 1/128 steps
    ("float.wav", 32000, "FLOAT", "WAV", 0.01),
])
def test_other_formats_and_sample_formats_are_converted(tmp_path, name, rate, subtype, fmt, tolerance):
    src = _sine(tmp_path / name, freq=600, rate=rate, subtype=subtype, fmt=fmt)
    row = _one(tmp_path, src)
    assert row.converted and sf.info(row.path).samplerate == 16000 and row.orig_sample_rate == rate
    freq, amplitude = _tone(load_audio(row.path))
    assert freq == pytest.approx(600, abs=2) and amplitude == pytest.approx(0.5, rel=tolerance)


def test_float_samples_beyond_full_scale_are_clipped(tmp_path):
    src = tmp_path / "loud.wav"
    sf.write(src, np.full(16000, 1.5, np.float32) * np.sign(np.sin(np.arange(16000) / 50)), 16000, subtype="FLOAT")
    row = _one(tmp_path, src)
    x = sf.read(row.path, dtype="int16")[0]
    assert x.max() == 32767 and x.min() == -32768


def test_a_16k_mono_pcm16_wav_is_used_where_it_lies(tmp_path):
    src = _wav(tmp_path / "ok.wav")
    row = _one(tmp_path, src)
    assert row.path == str(src) and not row.converted and row.duration_s == 0.5
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_rerun_reuses_the_cache_and_a_changed_source_is_converted_again(tmp_path):
    src = _sine(tmp_path / "a.flac", freq=500, rate=44100, fmt="FLAC")
    first = _one(tmp_path, src)
    written = os.stat(first.path).st_mtime_ns
    os.utime(first.path, ns=(written - 10**9, written - 10**9))  # a rewrite would show as a new mtime
    again = _one(tmp_path, src)
    assert again.path == first.path and os.stat(again.path).st_mtime_ns == written - 10**9
    _sine(src, freq=700, rate=44100, fmt="FLAC")
    changed = _one(tmp_path, src)
    assert changed.path != first.path and _tone(load_audio(changed.path))[0] == pytest.approx(700, abs=2)
    # a cache file that is not sound (a partial copy of the cache folder) is written again, not trusted
    changed_path = Path(changed.path)
    changed_path.write_bytes(changed_path.read_bytes()[:1000])
    assert load_audio(_one(tmp_path, src).path).shape == (16000,)


def test_too_short_and_too_long_files(tmp_path):
    short = _sine(tmp_path / "blip.wav", rate=16000, seconds=0.01)
    with pytest.raises(AudioError, match=rf"blip\.wav: too short: 0\.01 s \(160 samples at 16 kHz\), the minimum is {MIN_SECONDS:g} s"):
        prepare_audio([short], tmp_path / "cache", long_audio="reject")
    long = _sine(tmp_path / "long.wav", rate=16000, seconds=65.0, amplitude=0.3)
    with pytest.raises(AudioError) as err:
        prepare_audio([long], tmp_path / "cache", long_audio="reject")
    expected = ("long.wav", "65.00 s", f"{MAX_SECONDS:g} s", "prepare.long_audio: segment")
    assert all(s in str(err.value) for s in expected)
    table, _ = prepare_audio([long], tmp_path / "cache", long_audio="segment")
    assert table["segment"].tolist() == [0, 1, 2] and (table["source"] == str(long)).all() and table.converted.all()
    assert table.duration_s.tolist() == pytest.approx([65 / 3] * 3, abs=1e-4)
    # the segments, read back and put together, are the source, sample for sample (no resampling at 16 kHz)
    np.testing.assert_array_equal(np.concatenate([load_audio(p) for p in table.path]), load_audio(long))
    with pytest.raises(ValueError, match="long_audio"):
        prepare_audio([long], tmp_path / "cache", long_audio="cut")


def test_bad_files_are_all_named_or_skipped(tmp_path):
    good = _sine(tmp_path / "good.ogg", rate=44100, fmt="OGG", subtype="VORBIS")
    (tmp_path / "noise.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "zero.wav").write_bytes(b"")
    sf.write(tmp_path / "no_frames.wav", np.zeros(0), 22050)
    cut = _sine(tmp_path / "cut.wav", rate=22050)
    _truncate(cut, HEADER + 1000)
    ok = _wav(tmp_path / "ok.wav")
    paths = [good, tmp_path / "noise.wav", tmp_path / "zero.wav", tmp_path / "no_frames.wav", cut, ok]
    with pytest.raises(AudioError) as err:
        prepare_audio(paths, tmp_path / "cache", long_audio="reject")
    message = str(err.value)
    assert message.startswith("4 of 6 audio files cannot be used") and "prepare.skip_bad_audio: true" in message
    assert f"{tmp_path / 'noise.wav'}: cannot read audio header" in message
    assert f"{tmp_path / 'zero.wav'}: cannot read audio header" in message
    assert f"{tmp_path / 'no_frames.wav'}: empty audio" in message
    assert f"{cut}: truncated audio" in message and "good.ogg" not in message
    table, skipped = prepare_audio(paths, tmp_path / "cache", long_audio="reject", skip_bad=True)
    assert table["source"].tolist() == [str(good), str(ok)]  # in the order given
    assert skipped["source"].tolist() == [str(p) for p in paths[1:5]]
    assert list(table.columns) == ["source", "segment", "path", "duration_s", "orig_sample_rate", "orig_channels",
                                   "sha256", "converted"]
    assert table.converted.tolist() == [True, False] and table.segment.dtype == np.int64


def test_a_long_list_of_bad_files_is_cut_short(tmp_path):
    paths = []
    for i in range(23):
        (tmp_path / f"bad{i}.wav").write_bytes(b"not audio")
        paths.append(tmp_path / f"bad{i}.wav")
    with pytest.raises(AudioError) as err:
        prepare_audio(paths, tmp_path / "cache", long_audio="reject")
    assert "bad19.wav" in str(err.value) and "bad20.wav" not in str(err.value)
    assert "... and 3 more" in str(err.value)


def test_resampling_filters_out_what_would_alias(tmp_path):
    """A 12 kHz tone is above 16 kHz's Nyquist frequency (8 kHz): dropping samples would fold it to 4 kHz at full
    amplitude; the resampler's low-pass filter removes it."""
    src = _sine(tmp_path / "high.wav", freq=12000, rate=48000, amplitude=0.5, subtype="FLOAT")
    x = load_audio(_one(tmp_path, src).path)
    naive = sf.read(src, dtype="float32")[0][::3]
    assert _tone(naive)[0] == pytest.approx(4000, abs=2) and _tone(naive)[1] == pytest.approx(0.5, rel=0.01)
    mid = x[4000:-4000]
    at_4k = np.abs(np.fft.rfft(mid))[round(4000 * len(mid) / 16000)] * 2 / len(mid)
    assert 20 * np.log10(max(at_4k, 1e-12) / 0.5) < -60
