"""Audio checks on files the tests write: truncated data (header intact) is an error at prepare and load time."""
import struct

import numpy as np
import pytest
import soundfile as sf

from medusa.audio import AudioError, check_complete, check_corpus_audio, load_audio, wav_data_sizes

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
