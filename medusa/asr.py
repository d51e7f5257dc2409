"""Whisper ASR for every utterance (blind ones included: train and test see the same ASR, as in the paper).

Batched greedy decoding. Whisper pads every clip to 30 s; with `pad_seconds` < 30 a batch is padded only to its
longest clip and the encoder's positional embedding is sliced to match (medusa.encoders.whisper), which the
transcribe notebook measures against the 30 s padding for speed and WER. Clips over 30 s go through
openai-whisper's long-form `transcribe`, one at a time. Progress is journaled per batch, so an interrupted run
resumes where it stopped."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from medusa.batches import audio_batches, length_batches
from medusa.encoders.whisper import MAX_SAMPLES, SAMPLES_PER_ENCODER_FRAME, batch_samples, log_mel_batch, short_positions
from medusa.io import write_parquet

log = logging.getLogger(__name__)


#: openai-whisper's own test for a looping (repetitive) transcript: gzip compression ratio of its text.
COMPRESSION_RATIO_LIMIT = 2.4


def _decode(model, clips: list, language: str, pad_seconds: float, beam_size: int) -> list:
    import whisper

    device = next(model.parameters()).device
    n = batch_samples(clips, pad_seconds)
    mel = log_mel_batch(clips, model.dims.n_mels, n, device)
    # Bound the tokens by the audio length: ~5 tokens per second of speech is fast talk; a looping decode
    # otherwise runs to Whisper's 224-token limit.
    max_tokens = min(224, int(16 + 8 * max(len(c) for c in clips) / 16000))
    options = whisper.DecodingOptions(language=language, without_timestamps=True, fp16=device.type == "cuda",
                                      beam_size=beam_size if beam_size > 1 else None, sample_len=max_tokens)
    with short_positions(model.encoder, n // SAMPLES_PER_ENCODER_FRAME):
        return whisper.decode(model, mel, options)


@torch.inference_mode()
def transcribe_clips(model, audios: list, language: str, pad_seconds: float, beam_size: int = 1) -> list[str]:
    """Transcripts of a batch of float32 16 kHz clips. A clip whose short-padded decode loops (compression
    ratio over openai-whisper's 2.4) is decoded again in a 30 s window, as Whisper was trained."""
    device = next(model.parameters()).device
    texts: dict[int, str] = {}
    short = [i for i, a in enumerate(audios) if len(a) <= MAX_SAMPLES]
    for i in set(range(len(audios))) - set(short):
        texts[i] = model.transcribe(audios[i], language=language, fp16=device.type == "cuda",
                                    temperature=0.0)["text"].strip()
    if short:
        results = _decode(model, [audios[i] for i in short], language, pad_seconds, beam_size)
        texts.update({i: r.text.strip() for i, r in zip(short, results)})
        looping = [i for i, r in zip(short, results) if r.compression_ratio > COMPRESSION_RATIO_LIMIT]
        if looping and pad_seconds < 30:
            retry = _decode(model, [audios[i] for i in looping], language, 30.0, beam_size)
            texts.update({i: r.text.strip() for i, r in zip(looping, retry)})
    return [texts[i] for i in range(len(audios))]


def transcribe_manifest(model, manifest: pd.DataFrame, out_path: str | Path, language: str, pad_seconds: float,
                        batch_size: int, num_workers: int, beam_size: int = 1) -> pd.DataFrame:
    """Transcribe every manifest row into out_path (parquet: utt_id, text); resumable through a journal."""
    out_path = Path(out_path)
    journal = out_path.with_suffix(".journal.jsonl")
    done: dict[str, str] = {}
    if journal.exists():
        good = []
        for line in journal.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a half-written last line from an interrupted run
            done[row["utt_id"]] = row["text"]
            good.append(line + "\n")
        journal.write_text("".join(good))  # drop the torn tail before appending to it
        log.info("resuming: %d of %d utterances already transcribed", len(done), len(manifest))
    todo = manifest[~manifest["utt_id"].isin(done)].reset_index(drop=True)
    batches = length_batches(list(todo["utt_id"]), list(todo["duration_s"]), batch_size)
    start, audio_s = time.perf_counter(), 0.0
    with journal.open("a") as j, tqdm(total=len(todo), desc="transcribing", unit="utt") as bar:
        for idx, audios in audio_batches(list(todo["path"]), batches, num_workers):
            for i, text in zip(idx, transcribe_clips(model, audios, language, pad_seconds, beam_size)):
                j.write(json.dumps({"utt_id": todo.at[i, "utt_id"], "text": text}) + "\n")
                done[todo.at[i, "utt_id"]] = text
            j.flush()
            audio_s += sum(len(a) for a in audios) / 16000
            bar.update(len(idx))
    elapsed = time.perf_counter() - start
    result = pd.DataFrame({"utt_id": manifest["utt_id"], "text": manifest["utt_id"].map(done)})
    write_parquet(result, out_path)
    journal.unlink()
    result.attrs["seconds_per_audio_hour"] = elapsed / (audio_s / 3600) if audio_s else float("nan")
    return result


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER after Whisper's English text normalisation (case, punctuation, numbers, spellings)."""
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    refs = [norm(r) for r in references]
    hyps = [norm(h) for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r.strip()]
    return float(jiwer.wer([refs[i] for i in keep], [hyps[i] for i in keep]))


def wer_by_split(manifest: pd.DataFrame, transcripts: pd.DataFrame) -> pd.DataFrame:
    """WER per split and overall, over utterances that have a reference transcript."""
    rows = manifest[["utt_id", "split", "ref_text"]].merge(transcripts, on="utt_id")
    rows = rows[rows["ref_text"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=["utterances", "wer"])
    groups = [(s, g) for s, g in rows.groupby("split", sort=False)] + [("all", rows)]
    return pd.DataFrame({"utterances": [len(g) for _, g in groups],
                         "wer": [word_error_rate(list(g["ref_text"]), list(g["text"])) for _, g in groups]},
                        index=[s for s, _ in groups])


def compare_padding(model, manifest: pd.DataFrame, language: str, pad_seconds: float, n: int,
                    batch_size: int) -> pd.DataFrame:
    """Seconds per clip and WER of 30 s padding vs. `pad_seconds` on the first n utterances with references."""
    from medusa.audio import load_audio

    rows = manifest[manifest["ref_text"].notna()].head(n)
    if rows.empty:
        return pd.DataFrame(columns=["seconds_per_clip", "wer"])
    audios = [load_audio(p) for p in rows["path"]]
    result = {}
    for label, pad in (("30 s windows", 30.0), (f"longest + 1 s, >= {pad_seconds:g} s", pad_seconds)):
        start, hyps = time.perf_counter(), []
        for i in tqdm(range(0, len(audios), batch_size), desc=f"decoding ({label})", unit="batch"):
            hyps += transcribe_clips(model, audios[i:i + batch_size], language, pad)
        result[label] = {"seconds_per_clip": (time.perf_counter() - start) / len(audios),
                         "wer": word_error_rate(list(rows["ref_text"]), hyps)}
    return pd.DataFrame(result).T
