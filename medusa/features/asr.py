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
from other inputs or settings is discarded. The batch plan of the whole manifest can be cut into contiguous shards
(the ranks of medusa.features.ranks, or `medusa transcribe --shard I/N`), each journaled on its own;
`merge_transcripts` joins the finished journals into the bytes one process writes."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from medusa.errors import UserError
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
from medusa.features.store.shards import shard_items
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
    header, done = _journal_rows(journal)
    if not journal.exists():
        return {}
    if header.get("inputs") != fingerprint:
        log.warning("discarding the transcription journal %s: it was made from other inputs (manifest rows, audio "
                    "files, model or ASR settings, library versions, shard) than this run's; starting afresh", journal)
        journal.unlink()
        return {}
    with atomic_path(journal) as tmp:  # drop the torn tail before appending to it (a kill here keeps the old one)
        tmp.write_text("".join(json.dumps(row) + "\n" for row in
                               [header, *({"utt_id": u, "text": t} for u, t in done.items())]))
    return done


class ShardError(UserError, ValueError):
    """A shard's journal cannot be merged: missing, unfinished, or made from other inputs or settings."""


def shard_journal(out_path: str | Path, shard: int, n_shards: int) -> Path:
    """The journal of one shard's transcripts beside out_path (one process: `<out>.journal.jsonl`)."""
    out_path = Path(out_path)
    if n_shards == 1:
        return out_path.with_suffix(".journal.jsonl")
    return out_path.with_suffix(f".shard-{shard}-of-{n_shards}.journal.jsonl")


@dataclass(frozen=True)
class TranscriptionPlan:
    """Every shard's batches: the batch plan of the whole manifest (by padded length, then id), cut into
    `n_shards` contiguous blocks of about equal padded audio. A shard's batches are those one process would
    decode, so its transcripts are the one-process run's, bytes included."""
    manifest: pd.DataFrame          # sorted by utt_id, index 0..n-1
    shards: list[list[list[int]]]   # shard -> batches -> row indices of `manifest`
    fingerprints: list[str]         # shard -> its journal's fingerprint (inputs, settings and its clips)
    language: str                   # the decoding settings the fingerprints cover, which transcribe_shard uses
    pad_seconds: float
    beam_size: int

    @classmethod
    def build(cls, model, manifest: pd.DataFrame, language: str, pad_seconds: float, batch_size: int,
              beam_size: int, n_shards: int) -> "TranscriptionPlan":
        rows = manifest.sort_values("utt_id").reset_index(drop=True)
        inputs = inputs_fingerprint(audio_work_rows(rows), asr_spec(model, language, pad_seconds, beam_size))
        batches = asr_batches(list(rows["utt_id"]), list(rows["duration_s"]), batch_size, pad_seconds)
        if n_shards == 1:
            return cls(rows, [batches], [inputs], language, pad_seconds, beam_size)
        # a batch's cost is its padded audio, not its speech: the encoder runs each clip's whole window and the token
        # budget follows it (on the demo, blocks of equal speech seconds took 256 and 200 s; of equal windows, ~230)
        windows = [asr_window(round(d * 16000), pad_seconds)[0] for d in rows["duration_s"]]
        weights = [float(sum(windows[i] for i in b)) for b in batches]
        shards = [shard_items(batches, i, n_shards, weights) for i in range(n_shards)]
        # which clips a shard holds follows the batch plan: a journal begun under another plan holds other clips
        prints = [inputs_fingerprint([{"shard": i, "n_shards": n_shards,
                                       "utt_ids": sorted(rows.at[k, "utt_id"] for b in s for k in b)}],
                                     {"inputs": inputs}) for i, s in enumerate(shards)]
        return cls(rows, shards, prints, language, pad_seconds, beam_size)


def transcribe_manifest(model, manifest: pd.DataFrame, out_path: str | Path, language: str, pad_seconds: float,
                        batch_size: int, num_workers: int, beam_size: int) -> pd.DataFrame:
    """Transcribe every manifest row into out_path (parquet: utt_id, text, in manifest order) in this process;
    resumable (transcribe_shard). attrs["seconds_per_audio_hour"]: the decoding's compute per hour of audio."""
    plan = TranscriptionPlan.build(model, manifest, language, pad_seconds, batch_size, beam_size, 1)
    stats = transcribe_shard(model, plan, out_path, num_workers)
    result = merge_transcripts(plan, manifest, out_path)
    hours = stats["audio_seconds"] / 3600
    result.attrs["seconds_per_audio_hour"] = stats["compute_seconds"] / hours if hours else float("nan")
    return result


def transcribe_shard(model, plan: TranscriptionPlan, out_path: str | Path, num_workers: int, shard: int = 0) -> dict:
    """Transcribe shard `shard` of `plan` (built with the same model; it holds the decoding settings) into its
    journal beside out_path
    (resumable: kept only if it was made from the same rows, audio files, model, settings and shard);
    `merge_transcripts` turns the finished journals into out_path. Returns the speed figures of this call:
    utterances, audio_seconds and compute_seconds. Temporary files that killed runs left beside out_path are
    deleted first (medusa.io.remove_stale_temps)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_path.parent, recursive=False)  # e.g. half a transcripts file of a killed run
    n_shards = len(plan.shards)
    rows, batches, journal = plan.manifest, plan.shards[shard], shard_journal(out_path, shard, n_shards)
    done = _read_journal(journal, plan.fingerprints[shard])
    mine = sum(len(b) for b in batches)
    if done:
        log.info("resuming: %d of %d utterances already transcribed", len(done), mine)
    else:
        journal.write_text(json.dumps({"inputs": plan.fingerprints[shard]}) + "\n")
    # whole batches, as planned: a batch cut off by a kill is decoded again whole (its batch-mates unchanged)
    todo = [b for b in batches if not all(rows.at[i, "utt_id"] in done for i in b)]
    start, audio_s, decoded = time.perf_counter(), 0.0, 0
    with journal.open("a") as j, tqdm(total=mine, initial=mine - sum(map(len, todo)), unit="utt",
                                      desc="transcribing" + (f" (shard {shard} of {n_shards})" if n_shards > 1 else "")
                                      ) as bar:
        for idx, audios in audio_batches(list(rows["path"]), todo, num_workers):
            for i, text in zip(idx, transcribe_clips(model, audios, plan.language, plan.pad_seconds,
                                                         plan.beam_size)):
                if rows.at[i, "utt_id"] not in done:
                    j.write(json.dumps({"utt_id": rows.at[i, "utt_id"], "text": text}) + "\n")
                    done[rows.at[i, "utt_id"]] = text
            j.flush()
            audio_s += sum(len(a) for a in audios) / 16000
            decoded += len(idx)
            bar.update(len(idx))
    return {"utterances": decoded, "audio_seconds": audio_s, "compute_seconds": time.perf_counter() - start}


def merge_transcripts(plan: TranscriptionPlan, manifest: pd.DataFrame, out_path: str | Path) -> pd.DataFrame:
    """Join the finished journals of `plan`'s shards into out_path (utt_id, text in manifest order) and delete
    them. Each journal must have been made from this plan (its fingerprint) and hold every clip of its shard; the
    error names the shard that does not."""
    out_path, n_shards = Path(out_path), len(plan.shards)
    texts: dict[str, str] = {}
    journals = [shard_journal(out_path, i, n_shards) for i in range(n_shards)]
    for i, journal in enumerate(journals):
        header, rows = _journal_rows(journal)
        wanted = {plan.manifest.at[k, "utt_id"] for b in plan.shards[i] for k in b}
        if header.get("inputs") != plan.fingerprints[i] or not wanted <= rows.keys():
            what = ("is missing" if not journal.exists() else "was made from other inputs or settings"
                    if header.get("inputs") != plan.fingerprints[i] else
                    f"holds {len(wanted & rows.keys())} of its {len(wanted)} clips")
            raise ShardError(f"cannot merge the transcripts: shard {i} of {n_shards} ({journal}) {what}; run that "
                             f"shard again (medusa transcribe --shard {i}/{n_shards}) with the current params")
        texts.update({u: rows[u] for u in wanted})
    result = pd.DataFrame({"utt_id": manifest["utt_id"], "text": manifest["utt_id"].map(texts)})
    write_parquet(result, out_path)
    for journal in journals:
        journal.unlink()
    return result


def _journal_rows(journal: Path) -> tuple[dict, dict[str, str]]:
    """A journal's header and its rows {utt_id: text} (a torn last line is ignored); ({}, {}) if it is missing."""
    if not journal.exists():
        return {}, {}
    lines = journal.read_text().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    rows = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        rows[row["utt_id"]] = row["text"]
    return (header if isinstance(header, dict) else {}), rows


def transcribe_rank(settings, manifest_path: str | Path, out_path: str | Path, cache_dir: str | Path) -> dict:
    """One rank's part of the transcribe stage (medusa.features.ranks): its shard of the batch plan on its device
    with `settings.threads` CPU threads; rank 0 merges once every rank is done. `settings` is the validated
    `transcribe` section. Returns this rank's speed figures."""
    from medusa.features.encoders.whisper import load_whisper
    from medusa.features.ranks import Barrier, Rank, set_threads

    rank = Rank.from_env()
    set_threads(settings.threads)
    with Barrier(rank) as barrier:
        model = load_whisper(settings.model, cache_dir, rank.device(settings.device))
        manifest = pd.read_parquet(manifest_path)
        plan = TranscriptionPlan.build(model, manifest, settings.language, settings.pad_seconds, settings.batch_size,
                                       settings.beam_size, rank.world)  # once: it checks every audio file
        stats = transcribe_shard(model, plan, out_path, settings.num_workers, shard=rank.rank)
        barrier.wait()
        if rank.lead:
            merge_transcripts(plan, manifest, out_path)
        barrier.wait()  # no rank leaves before the merge: a caller reading out_path after any rank ends sees it
    return {"rank": rank.rank, **stats}


def transcribe_ranks(settings, parallel, manifest_path: str | Path, out_path: str | Path,
                     cache_dir: str | Path) -> dict:
    """The transcribe stage over `parallel.ranks` ranks (medusa.features.ranks: this machine's processes, or the
    tasks of a SLURM job). Returns the speed figures summed over ranks: utterances, audio_seconds,
    compute_seconds (each rank's decoding time), and seconds_per_audio_hour of compute."""
    from medusa.features.ranks import check_devices, run_ranks

    check_devices(parallel, settings.device)
    per_rank = run_ranks(transcribe_rank, parallel, settings, str(manifest_path), str(out_path), str(cache_dir))
    total = {k: sum(r[k] for r in per_rank) for k in ("utterances", "audio_seconds", "compute_seconds")}
    hours = total["audio_seconds"] / 3600
    return {**total, "ranks": parallel.ranks,
            "seconds_per_audio_hour": total["compute_seconds"] / hours if hours else float("nan")}


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
