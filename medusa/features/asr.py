"""Whisper ASR for every utterance (blind ones included: train and test see the same ASR, as in the paper).

Batched greedy decoding. Whisper pads every clip to 30 s; with `pad_seconds` < 30 each clip is padded to a length
that depends on the clip alone (`asr_window`: the clip plus 1 s of trailing silence, rounded up to whole seconds,
at least pad_seconds) and the encoder's positional embedding is sliced to match (medusa.features.encoders.whisper).
Whisper's encoder has no attention mask, so only clips of the same padded length are decoded together
(`transcribe_clips` splits any batch that way; `asr_batches` plans batches so that it rarely has to), and the
token budget comes from the padded length too: a clip's transcript is the same alone or in any batch. The
transcribe notebook measures this against 30 s windows for speed and WER. Clips over 30 s go through
openai-whisper's long-form `transcribe`, one at a time. Progress is journaled per batch; the journal's first line
fingerprints the inputs (medusa.features.fingerprint), so an interrupted run resumes where it stopped, and a journal made
from other inputs or settings is discarded."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from medusa.features.batches import audio_batches, length_batches
from medusa.features.encoders.base import encode_by_padded_length, library_versions
from medusa.features.encoders.whisper import (
    MAX_SAMPLES,
    SAMPLES_PER_ENCODER_FRAME,
    log_mel_batch,
    short_positions,
    whisper_samples,
)
from medusa.features.fingerprint import audio_work_rows, inputs_fingerprint, weights_sample
from medusa.io import atomic_path, remove_stale_temps, write_parquet

log = logging.getLogger(__name__)


#: openai-whisper's own test for a looping (repetitive) transcript: gzip compression ratio of its text.
COMPRESSION_RATIO_LIMIT = 2.4
#: seconds of silence after each clip: without it the decoder often fails to stop and repeats itself
TRAILING_SECONDS = 1.0


def asr_window(n_samples: int, pad_seconds: float) -> tuple[int, int]:
    """(samples the clip is padded to, token budget) for a clip of n_samples; both depend on the clip alone.

    The window: the clip + 1 s, rounded up to whole seconds, at least pad_seconds, at most 30 s (pad_seconds >= 30:
    Whisper's 30 s window). The budget, ~5 tokens per second is fast talk: 16 + 8 per second of the short window
    (which a 30 s window keeps, so that it stays a function of the clip), at most Whisper's 224. Without it a
    looping decode runs to the 224-token limit."""
    short = whisper_samples(n_samples, pad_seconds if pad_seconds < 30 else 0.0, TRAILING_SECONDS)
    window = MAX_SAMPLES if pad_seconds >= 30 else short
    return window, min(224, 16 + 8 * short // 16000)


def asr_batches(ids: list[str], durations: list[float], batch_size: int, pad_seconds: float) -> list[list[int]]:
    """Batches of at most batch_size clips sharing one padding window and token budget (then sorted by length
    and id), so that transcribe_clips never has to split them."""
    keys = [asr_window(round(d * 16000), pad_seconds) for d in durations]
    return length_batches(ids, durations, batch_size, groups=keys)


def asr_spec(model, language: str, pad_seconds: float, beam_size: int) -> dict:
    """What makes a transcript: the model (its dims and a sample of its weights), language, padding, beam,
    and the library versions. Batch size is not in it: transcripts do not depend on it."""
    dims = getattr(model, "dims", None)
    return {"model": {"dims": vars(dims) if dims is not None else None, "weights_sample": weights_sample(model)},
            "language": language, "pad_seconds": float(pad_seconds), "beam_size": int(beam_size),
            "padding": f"clip + {TRAILING_SECONDS:g} s rounded up to whole seconds, at least pad_seconds, at most 30 s",
            "versions": library_versions("openai-whisper")}


def _decode(model, clips: list, language: str, window: tuple[int, int], beam_size: int) -> list:
    """Decode clips that share one (padded samples, token budget) window, in one batch."""
    import whisper

    n, max_tokens = window
    device = next(model.parameters()).device
    mel = log_mel_batch(clips, model.dims.n_mels, n, device)
    options = whisper.DecodingOptions(language=language, without_timestamps=True, fp16=device.type == "cuda",
                                      beam_size=beam_size if beam_size > 1 else None, sample_len=max_tokens)
    with short_positions(model.encoder, n // SAMPLES_PER_ENCODER_FRAME):
        return whisper.decode(model, mel, options)


def _decode_by_window(model, clips: list, language: str, windows: list[tuple[int, int]], beam_size: int) -> list:
    return encode_by_padded_length(clips, windows, lambda sub, w: _decode(model, sub, language, w, beam_size))


def whisper_language(model, language: str) -> str | None:
    """transcribe.language for Whisper: `auto` lets it detect each clip's language (from that clip's own encoding,
    so the transcript still depends on the clip alone); an English-only model is always English."""
    if language != "auto":
        return language
    return None if model.is_multilingual else "en"


@torch.inference_mode()
def transcribe_clips(model, audios: list, language: str, pad_seconds: float, beam_size: int) -> list[str]:
    """Transcripts of float32 16 kHz clips, each decoded only with clips of the same padded length (so its
    transcript does not depend on the others). A clip whose short-padded decode loops (compression ratio over
    openai-whisper's 2.4) is decoded again in a 30 s window, as Whisper was trained, with the same budget."""
    device = next(model.parameters()).device
    language = whisper_language(model, language)
    texts: dict[int, str] = {}
    short = [i for i, a in enumerate(audios) if len(a) <= MAX_SAMPLES]
    for i in sorted(set(range(len(audios))) - set(short)):
        texts[i] = model.transcribe(audios[i], language=language, fp16=device.type == "cuda",
                                    temperature=0.0)["text"].strip()
    if short:
        windows = [asr_window(len(audios[i]), pad_seconds) for i in short]
        results = _decode_by_window(model, [audios[i] for i in short], language, windows, beam_size)
        texts.update({i: r.text.strip() for i, r in zip(short, results)})
        looping = [k for k, r in enumerate(results) if r.compression_ratio > COMPRESSION_RATIO_LIMIT]
        if looping and pad_seconds < 30:
            retry = _decode_by_window(model, [audios[short[k]] for k in looping], language,
                                      [(MAX_SAMPLES, windows[k][1]) for k in looping], beam_size)
            texts.update({short[k]: r.text.strip() for k, r in zip(looping, retry)})
    return [texts[i] for i in range(len(audios))]


def _read_journal(journal: Path, fingerprint: str) -> dict[str, str]:
    """Transcripts of an interrupted run, if its journal was made from the same inputs (its first line holds
    their fingerprint); otherwise the journal is deleted, with a log line, and the run starts afresh."""
    if not journal.exists():
        return {}
    lines = journal.read_text().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if not isinstance(header, dict) or header.get("inputs") != fingerprint:
        log.warning("discarding the transcription journal %s: it was made from other inputs (manifest rows, audio "
                    "files, model or ASR settings, library versions) than this run's; starting afresh", journal)
        journal.unlink()
        return {}
    done: dict[str, str] = {}
    good = [lines[0] + "\n"]
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a half-written last line from an interrupted run
        done[row["utt_id"]] = row["text"]
        good.append(line + "\n")
    with atomic_path(journal) as tmp:  # drop the torn tail before appending to it (a kill here keeps the old one)
        tmp.write_text("".join(good))
    return done


def transcribe_manifest(model, manifest: pd.DataFrame, out_path: str | Path, language: str, pad_seconds: float,
                        batch_size: int, num_workers: int, beam_size: int) -> pd.DataFrame:
    """Transcribe every manifest row into out_path (parquet: utt_id, text); resumable through a journal that is
    kept only if it was made from the same manifest rows, audio files, model and settings. Temporary files that
    killed runs left beside out_path are deleted first (medusa.io.remove_stale_temps)."""
    out_path = Path(out_path)
    journal = out_path.with_suffix(".journal.jsonl")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_path.parent, recursive=False)  # e.g. half a transcripts file of a killed run
    fingerprint = inputs_fingerprint(audio_work_rows(manifest.sort_values("utt_id")),
                                     asr_spec(model, language, pad_seconds, beam_size))
    done = _read_journal(journal, fingerprint)
    if done:
        log.info("resuming: %d of %d utterances already transcribed", len(done), len(manifest))
    else:
        journal.write_text(json.dumps({"inputs": fingerprint}) + "\n")
    todo = manifest[~manifest["utt_id"].isin(done)].reset_index(drop=True)
    batches = asr_batches(list(todo["utt_id"]), list(todo["duration_s"]), batch_size, pad_seconds)
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


def _normaliser():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def word_error_rate(references: list[str], hypotheses: list[str]) -> float | None:
    """Corpus WER after Whisper's English text normalisation (case, punctuation, numbers, spellings), over the
    references that have words; None when none has (no references means no WER, not a WER of 0)."""
    import jiwer

    norm = _normaliser()
    refs = [norm(r or "") for r in references]
    hyps = [norm(h or "") for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r.strip()]
    if not keep:
        return None
    return float(jiwer.wer([refs[i] for i in keep], [hyps[i] for i in keep]))


def wer_by_split(manifest: pd.DataFrame, transcripts: pd.DataFrame) -> pd.DataFrame:
    """WER per split and overall ("all"), over the utterances whose reference transcript has words after
    normalisation; splits without such references are left out, and a corpus without any gives an empty frame."""
    rows = manifest[["utt_id", "split", "ref_text"]].merge(transcripts, on="utt_id")
    norm = _normaliser()
    rows = rows[[isinstance(r, str) and bool(norm(r).strip()) for r in rows["ref_text"]]]
    if rows.empty:
        return pd.DataFrame({"utterances": pd.Series(dtype="int64"), "wer": pd.Series(dtype="float64")})
    groups = [(s, g) for s, g in rows.groupby("split", sort=False)] + [("all", rows)]
    return pd.DataFrame({"utterances": [len(g) for _, g in groups],
                         "wer": [word_error_rate(list(g["ref_text"]), list(g["text"])) for _, g in groups]},
                        index=[s for s, _ in groups])


def compare_padding(model, manifest: pd.DataFrame, language: str, pad_seconds: float, n: int,
                    batch_size: int, beam_size: int) -> pd.DataFrame:
    """Seconds per clip and WER of 30 s windows vs. this stage's padding (whole seconds >= clip + 1 s and >=
    pad_seconds) on the first n utterances with a reference; empty when no utterance has one."""
    from medusa.data.audio import load_audio

    norm = _normaliser()
    rows = manifest[[isinstance(r, str) and bool(norm(r).strip()) for r in manifest["ref_text"]]].head(n)
    if rows.empty:
        return pd.DataFrame({"seconds_per_clip": pd.Series(dtype="float64"), "wer": pd.Series(dtype="float64")})
    audios = [load_audio(p) for p in rows["path"]]
    ids = list(rows["utt_id"])
    result = {}
    for label, pad in (("30 s windows", 30.0), (f"whole seconds >= clip + 1 s, >= {pad_seconds:g} s", pad_seconds)):
        start, hyps = time.perf_counter(), [""] * len(audios)
        for idx in tqdm(asr_batches(ids, [len(a) / 16000 for a in audios], batch_size, pad),
                        desc=f"decoding ({label})", unit="batch"):
            for i, text in zip(idx, transcribe_clips(model, [audios[i] for i in idx], language, pad, beam_size)):
                hyps[i] = text
        result[label] = {"seconds_per_clip": (time.perf_counter() - start) / len(audios),
                         "wer": word_error_rate(list(rows["ref_text"]), hyps)}
    return pd.DataFrame(result).T


def transcribe_metrics(wer: pd.DataFrame, seconds_per_audio_hour: float, padding: pd.DataFrame) -> dict:
    """reports/metrics/transcribe.json: WER per split (null when the corpus has no reference transcripts: no
    WER, never 0), the decoding speed, and the padding comparison (null without references)."""
    return {"wer": None if wer.empty else {k: round(float(v), 4) for k, v in wer["wer"].items()},
            "seconds_per_audio_hour": round(float(seconds_per_audio_hour), 1),
            "padding_comparison": None if padding.empty else padding.astype(float).round(4).to_dict(orient="index")}
