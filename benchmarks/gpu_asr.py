"""The ASR part of benchmarks/gpu.py: Whisper large-v3 through our batched greedy decoding against 30 s windows and
the two ways the project could adopt (gpu_whisper decodes), its subsection of the report, and the WER-parity check
of transformers' Whisper on real weights (`python benchmarks/gpu.py --wer-parity N`, CPU).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pandas as pd
import report
import torch
from _common import device_name
from gpu_common import REPO, SR, Clock, Plan, fmt_rate, fmt_x, free, library_version
from gpu_whisper import (
    ASR_LANGUAGE,
    TOKENS_PER_AUDIO_S,
    AsrRow,
    build_openai_whisper,
    cast_matmul_weights,
    decode_hf,
    decode_openai,
    encoder_only_seconds,
    hf_from_openai,
    hf_generate,
)

#: Where --wer-parity writes its result, which the ASR subsection quotes.
PARITY_FILE = REPO / "reports" / "metrics" / "asr_parity.json"


# ------------------------------------------------------------------------------------------------ the part


@dataclass
class AsrResult:
    model: str = ""
    rows: list[AsrRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    batches: int = 0
    seconds: float = 0.0


def asr_part(plan: Plan, items: pd.DataFrame, device: torch.device, clock: Clock, reserve_s: float) -> AsrResult:
    import soundfile as sf
    import whisper.tokenizer

    from medusa.features.asr import asr_batches
    from medusa.pipeline.standins import architectures

    result = AsrResult()
    arch = next(a for a in architectures(plan.standins, whisper_decoder_layers=32 if plan.standins == "full" else 2)
                if a.key == "whisper")
    dims = dict(arch.dims)
    chosen = items.iloc[:plan.asr_clips]
    clips = [sf.read(p, dtype="float32")[0] for p in chosen["path"]]
    durations = [len(c) / SR for c in clips]
    batches = asr_batches([str(u) for u in chosen["utt_id"]], durations, plan.asr_batch, plan.asr_pad_seconds)
    result.batches = len(batches)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_openai_whisper(dims, device)
    n_params = sum(p.numel() for p in model.parameters())
    result.model = (f"{arch.name} ({dims['n_audio_layer']}+{dims['n_text_layer']} layers, {dims['n_audio_state']} d, "
                    f"{dims['n_mels']} mels, vocabulary {dims['n_vocab']}; {n_params / 1e6:.0f} M params)")
    clock.log(f"ASR: {result.model} built in {time.perf_counter() - t0:.1f} s; {len(clips)} clips, "
              f"{sum(durations):.0f} s of audio, {len(batches)} batches of up to {plan.asr_batch}")
    cuda = device.type == "cuda"
    compute = "fp32 weights, fp16 compute (openai-whisper casts each weight at every call)" if cuda else "fp32"

    ours, ours_tokens = decode_openai(model, clips, batches, plan.asr_pad_seconds, device, "ours",
                                      f"openai-whisper, windows of the clip + 1 s in whole seconds (>= "
                                      f"{plan.asr_pad_seconds:g} s); {compute}")
    ours.encoder_s = encoder_only_seconds(model, clips, batches, plan.asr_pad_seconds, device)
    result.rows.append(ours)
    clock.log(f"ASR ours: {ours.audio_s_per_s:.0f} audio s/s, encoder {100 * ours.encoder_share:.0f} % of the time")

    full, _ = decode_openai(model, clips, batches, 30.0, device, "30 s windows",
                            f"openai-whisper, Whisper's own 30 s windows, same batches; {compute}")
    full.encoder_s = encoder_only_seconds(model, clips, batches, 30.0, device)
    result.rows.append(full)
    clock.log(f"ASR 30 s windows: {full.audio_s_per_s:.0f} audio s/s")

    if clock.allows(1.5 * ours.wall_s + 10, reserve_s):
        cast_matmul_weights(model, torch.float16 if cuda else torch.float32)
        once, once_tokens = decode_openai(model, clips, batches, plan.asr_pad_seconds, device, "ours, fp16 weights",
                                          "openai-whisper as ours, Linear/Conv1d weights cast to fp16 once at load"
                                          if cuda else "openai-whisper as ours (on CPU the weights stay fp32)")
        once.clips_as_ours = sum(a == b for a, b in zip(once_tokens, ours_tokens))
        result.rows.append(once)
        clock.log(f"ASR ours with fp16 weights: {once.audio_s_per_s:.0f} audio s/s, same tokens as ours: "
                  f"{once.same_tokens_as_ours}")
    else:
        result.notes.append("openai-whisper with fp16 weights: skipped (deadline)")
    tokenizer = whisper.tokenizer.get_tokenizer(model.is_multilingual, num_languages=model.num_languages,
                                                language=ASR_LANGUAGE, task="transcribe")
    prompt, eot = tokenizer.sot_sequence_including_notimestamps, tokenizer.eot

    if clock.allows(3 * ours.wall_s + 20, reserve_s):
        dtype = torch.float16 if cuda else torch.float32
        t0 = time.perf_counter()
        try:
            hf = hf_from_openai(model, device, dtype)  # the same weights: its tokens can be compared with ours
            del model
            free(device)
            clock.log(f"ASR: transformers' WhisperForConditionalGeneration built in {time.perf_counter() - t0:.1f} s")
            for cache in ("static", None):
                try:
                    row, hf_tokens = decode_hf(hf, clips, batches, plan.asr_pad_seconds, prompt, eot, device, dtype,
                                               cache, "transformers",
                                               f"WhisperForConditionalGeneration, SDPA, {cache or 'dynamic'} cache "
                                               f"(not compiled), our windows; {'fp16' if cuda else 'fp32'} weights")
                    break
                except Exception as e:  # a transformers without a static cache for Whisper: the dynamic one
                    if cache is None:
                        raise
                    result.notes.append(f"transformers with a static cache failed ({type(e).__name__}: "
                                        f"{str(e)[:160]}); timed with its dynamic cache")
            row.clips_as_ours = sum(a == b for a, b in zip(hf_tokens, ours_tokens))
            result.rows.append(row)
            clock.log(f"ASR transformers: {row.audio_s_per_s:.0f} audio s/s, tokens = ours on {row.clips_as_ours}/"
                      f"{row.clips} clips")
            del hf
        except Exception as e:
            result.notes.append(f"transformers' Whisper failed: {type(e).__name__}: {str(e)[:300]}")
            clock.log(f"ASR transformers failed: {type(e).__name__}: {e}")
    else:
        result.notes.append("transformers' WhisperForConditionalGeneration: skipped (deadline)")
    model = None
    free(device)

    reference = full.audio_s_per_s
    for r in result.rows:
        r.speed_up = r.audio_s_per_s / reference
    return result


# ------------------------------------------------------------------------------------------------ report


def asr_table(asr: AsrResult) -> dict:
    rows = []
    for r in asr.rows:
        share = "—" if r.encoder_share is None else f"{100 * r.encoder_share:.0f} %"
        same = "" if r.clips_as_ours is None else f"; tokens = ours: {r.clips_as_ours}/{r.clips} clips"
        rows.append([r.way, r.detail, fmt_rate(r.audio_s_per_s), fmt_x(r.speed_up), share,
                     f"{r.steps / r.seconds:,.0f}", f"{r.tokens / r.seconds:,.0f}",
                     f"{'yes' if r.lengths_held else 'no'}{same}", f"{r.peak_mb:,.0f}"])
    return report.table(["way", "what", "audio s per s (× real time)", "vs 30 s windows", "encoder share",
                         "decoder steps per s", "tokens per s", "forced lengths held", "peak memory (MB)"],
                        "llrrrrrlr", rows)


def asr_verdict(asr: AsrResult) -> str:
    """Whether decoding dominates ours, and which way the numbers favour (lengths held; fp16 weights: same tokens)."""
    ours = next((r for r in asr.rows if r.way == "ours"), None)
    if ours is None:
        return "Ours did not run."
    share = ours.encoder_share
    text = (f"In ours the encoder takes {100 * share:.0f} % of the time: the decoding loop "
            + ("dominates. " if share < 0.5 else "does not dominate. ") if share is not None else "")
    fair = [r for r in asr.rows if r.lengths_held and r.way != "30 s windows" and not (
        r.way == "ours, fp16 weights" and r.same_tokens_as_ours is False)]  # the same arithmetic must give ours' tokens
    best = max(fair, key=lambda r: r.audio_s_per_s, default=ours)
    if best.way == "ours":
        return text + "By the numbers: keep ours (no measured alternative is faster)."
    return (text + f"By the numbers: '{best.way}' ({fmt_rate(best.audio_s_per_s)}× real time, "
            f"{best.audio_s_per_s / ours.audio_s_per_s:.2f} × ours)" + (
                ", with the same tokens as ours: adopt it." if best.same_tokens_as_ours else
                ", if it passes the WER-parity check below."))


def asr_blocks(asr: AsrResult | None, plan: Plan, cpu: bool) -> list[dict]:
    """The "### ASR" subsection: what was decoded and how, the table, the verdict, and WER parity."""
    if asr is None:
        return [report.heading("ASR"), report.text("Not run.")]
    parity = (parity_line(json.loads(PARITY_FILE.read_text(encoding="utf-8"))) if PARITY_FILE.exists() else None)
    return [
        report.heading("ASR"),
        report.text(
            f"{asr.model}; {asr.rows[0].clips} clips, {asr.rows[0].audio_s:,.0f} s of audio, {asr.batches} batches "
            f"of up to {plan.asr_batch} (`medusa.features.asr.asr_batches`: one padded window per batch), greedy, "
            f"English. Every way decodes exactly {TOKENS_PER_AUDIO_S:g} tokens per second of audio per clip (~2.7 "
            "words/s; random weights would decode garbage of any length): a logit filter makes the end token "
            "impossible before a clip's count and the only choice at it; a batch runs as many decoder steps as its "
            "longest clip's count + 1. 'Encoder share': the same batches' log-mel and encoder alone, over the way's "
            "time. The compression-ratio retry of `transcribe_clips` (a looping decode again in a 30 s window) is "
            "not timed."),
        asr_table(asr),
        report.text(asr_verdict(asr) if not cpu else
                    "No verdict from a CPU dry run: a tiny model, and on CPU 'ours, fp16 weights' computes exactly "
                    "what ours computes (no fp16 there)."),
        report.text(
            "WER parity is the condition for adopting an alternative. 'ours, fp16 weights' computes with the very "
            "fp16 weights that openai-whisper casts at every call in ours, so its tokens must equal ours on every "
            "clip (the table counts them). transformers is another implementation, so parity has to be shown on "
            "real weights: `python benchmarks/gpu.py --wer-parity N` decodes the demo corpus's first N clips with "
            "reference transcripts on CPU with `demo:base` (copied into WhisperForConditionalGeneration by renaming "
            "openai-whisper's parameters, `hf_from_openai`), both ways in our windows, and compares the transcripts "
            "and their WER (`medusa.features.asr.word_error_rate`); the table's token counts compare the two on "
            "this run's random weights too."),
        report.text(parity) if parity else None,
        # the notes sit right under the paragraph above, as a list that belongs to it
        report.bullets(asr.notes, gap=0) if asr.notes else None]


# --------------------------------------------------------------------------------------------- WER parity


def wer_parity(n: int, model_name: str, pad_seconds: float, batch_size: int, device: torch.device) -> dict:
    """WER parity of transformers' Whisper with ours on real weights: the first n clips of work/manifest.parquet
    that have a reference transcript, decoded greedily in our windows by medusa.features.asr._decode (openai-whisper) and
    by hf_generate on the same weights, with openai-whisper's token suppression (its non-speech symbols, and a
    blank or the end token as the first token). No forced lengths: each stops at its end token or at the window's
    budget. Returns both WERs (medusa.features.asr.word_error_rate), the clips transcribed identically, and the timings."""
    import whisper
    import whisper.tokenizer

    from medusa.data.audio import load_audio
    from medusa.features.asr import _decode, _normaliser, asr_batches, asr_window, word_error_rate
    from medusa.features.encoders.whisper import load_whisper

    manifest = pd.read_parquet(REPO / "work" / "manifest.parquet").sort_values("utt_id")
    norm = _normaliser()
    rows = manifest[[isinstance(r, str) and bool(norm(r).strip()) for r in manifest["ref_text"]]].head(n)
    if rows.empty:
        raise SystemExit("work/manifest.parquet has no clip with a reference transcript: run `make repro` first")
    audios = [load_audio(path) for path in rows["path"]]
    model = load_whisper(model_name, REPO / "work" / "cache", device).eval()
    language = ASR_LANGUAGE if model.is_multilingual else "en"
    tokenizer = whisper.tokenizer.get_tokenizer(model.is_multilingual, num_languages=model.num_languages,
                                                language=language, task="transcribe")
    task = whisper.decoding.DecodingTask(model, whisper.DecodingOptions(language=language, without_timestamps=True))
    suppress, begin = task._get_suppress_tokens(), tokenizer.encode(" ") + [tokenizer.eot]
    hf = hf_from_openai(model, device, torch.float32)
    batches = asr_batches(list(rows["utt_id"]), [len(a) / SR for a in audios], batch_size, pad_seconds)
    texts: dict[str, list[str]] = {"openai-whisper": [""] * len(audios), "transformers": [""] * len(audios)}
    seconds = {}
    with torch.inference_mode():
        for way in texts:
            start = time.perf_counter()
            for idx in batches:
                clips = [audios[i] for i in idx]
                window = asr_window(len(clips[0]), pad_seconds)
                if way == "openai-whisper":
                    out = [r.text.strip() for r in _decode(model, clips, language, window, 1)]
                else:
                    out = [tokenizer.decode(t).strip() for t in hf_generate(
                        hf, clips, window, tokenizer.sot_sequence_including_notimestamps, tokenizer.eot, device,
                        torch.float32, suppress=suppress, begin_suppress=begin)]
                for i, text in zip(idx, out):
                    texts[way][i] = text
            seconds[way] = time.perf_counter() - start
    refs = list(rows["ref_text"])
    same = [i for i in range(len(audios)) if texts["openai-whisper"][i] == texts["transformers"][i]]
    return {"model": model_name, "clips": len(audios), "audio_s": sum(len(a) for a in audios) / SR,
            "pad_seconds": pad_seconds, "batch_size": batch_size, "device": device_name(device),
            "torch": torch.__version__, "transformers": library_version("transformers"),
            "wer": {way: word_error_rate(refs, hyp) for way, hyp in texts.items()},
            "identical_transcripts": len(same), "seconds": seconds,
            "differences": [{"utt_id": rows["utt_id"].iloc[i], "reference": refs[i],
                             **{way: texts[way][i] for way in texts}}
                            for i in range(len(audios)) if i not in same][:10]}


def parity_line(parity: dict) -> str:
    wer = parity["wer"]
    return (f"Checked on CPU (`python benchmarks/gpu.py --wer-parity {parity['clips']}`, {parity['device']}, "
            f"transformers {parity['transformers']}): `{parity['model']}` (real weights) on the demo corpus's first "
            f"{parity['clips']} clips with references, our windows (>= {parity['pad_seconds']:g} s), greedy, "
            "no 30 s retry of looping decodes (as timed above): WER "
            f"{wer['openai-whisper']:.4f} openai-whisper (ours) vs {wer['transformers']:.4f} transformers, "
            f"{parity['identical_transcripts']}/{parity['clips']} transcripts identical.")
