"""Feature-extraction throughput and peak memory: our extraction vs the authors' way, in one run.

    python benchmarks/extract.py [--size small|full] [--device auto|cpu|cuda] [--utterances N]
                                 [--out reports/benchmarks.md]

Every encoder of the paper (WavLM, HuBERT, the Whisper encoder, RoBERTa, ModernBERT) is built from its
architecture config with random weights (the FLOPs and memory of the real model, none of its hub download),
saved to a temporary folder and loaded through `medusa.features.encoders.build_encoder`, so that OUR code path is the one
timed. Both ways then encode the same synthetic corpus:

* ours: `medusa.features.extract.extract_to_store` -- wav files decoded in DataLoader workers, length-bucketed batches,
  bf16 autocast on GPU (inside the encoders), Whisper without 30 s padding, frames written to a feature store.
* the authors' way (re-implemented from the paper's description): one file at a time in fp32 without batching;
  WavLM/HuBERT over 3,000-sample chunks (one forward pass each), sum of the last 4 hidden states; Whisper on clips
  padded to 30 s, all 1,500 encoder frames kept; text one sentence at a time, sum of the last 4 layers; one .npy
  file per utterance.

`--size small` (the CPU default) uses base-size stand-ins and a few utterances so that it finishes in minutes on a
laptop; `--size full` is the paper's scale and is meant for a GPU. The script prints a table and writes the
"## Feature extraction" section of the report: reports/benchmarks/extract.json, which benchmarks/report.py renders
into reports/benchmarks.md with the other sections.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Before transformers / tqdm are imported: no hub, no progress bars from the extraction loop.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere, installed package or not
if str(REPO / "benchmarks") not in sys.path:  # _common, when this file is imported rather than run
    sys.path.insert(1, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import report  # noqa: E402  benchmarks/report.py: the Markdown
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from _common import Measurement, busy, cpu_memory_method, device_name, load_average, measure  # noqa: E402

from medusa.features.batches import pick_device  # noqa: E402
from medusa.features.encoders import Encoder, build_encoder  # noqa: E402
from medusa.features.extract import extract_to_store  # noqa: E402
from medusa.features.store.reader import FeatureStore  # noqa: E402
from medusa.pipeline.standins import (  # noqa: E402
    MAX_WORDS,
    MIN_WORDS,
    Arch,
    architectures,
    describe,
    save_model,
    sentence,
    tokenizer_corpus,
    word_pool,
    zipf_weights,
)

SR = 16000
MIN_S, MAX_S = 2.75, 11.0           # MSP-Podcast-like segment durations
WORDS_PER_SECOND = 2.7              # transcript length follows the clip's duration, 8 to 30 words
AUTHORS_CHUNK = 3000                # samples per WavLM/HuBERT forward pass in the authors' way (0.19 s)
CONV_RECEPTIVE_FIELD = 400          # the conv front end of WavLM/HuBERT needs at least this many samples
DEFAULT_UTTERANCES = {"small": 12, "full": 200}
SECTION = "extract"                 # reports/benchmarks/extract.json
REPORT_SECTION = "## Feature extraction"
CPU_NOT_INCLUDED = "model weights, and the DataLoader worker's own memory, are not included"


# ----------------------------------------------------------------------------------------- synthetic corpus


def speech_like(n: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced-sounding signal: a few harmonics of a drifting f0 under a syllable-rate envelope, plus noise.

    (The content does not change the cost of any encoder; it only has to be a plausible, non-silent input.)"""
    t = np.arange(n) / SR
    f0 = rng.uniform(100, 220) * (1 + 0.05 * np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 2 * np.pi)))
    x = 0.15 * envelope * voiced + 0.01 * rng.standard_normal(n)
    return (x / max(1.0, np.abs(x).max())).astype(np.float32)


def make_corpus(folder: Path, n: int, seed: int) -> pd.DataFrame:
    """n wav files (16 kHz mono PCM16, durations uniform in [2.75, 11] s) and a transcript for each.

    Columns as extract_to_store wants them: utt_id, duration_s, path, text."""
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    words = word_pool(prng)
    weights = zipf_weights(len(words))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        samples = int(round(rng.uniform(MIN_S, MAX_S) * SR))
        path = folder / f"utt{i:05d}.wav"
        sf.write(path, speech_like(samples, rng), SR, subtype="PCM_16")
        n_words = int(np.clip(round(samples / SR * WORDS_PER_SECOND), MIN_WORDS, MAX_WORDS))
        rows.append({"utt_id": f"utt{i:05d}", "duration_s": samples / SR, "path": str(path),
                     "text": sentence(words, weights, n_words, prng)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------- timing and peak memory


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


# ------------------------------------------------------------------------------------------------ our way


def warm_up_ours(encoder: Encoder, items: pd.DataFrame) -> None:
    """One small batch before timing: CUDA context, cuBLAS handles, autocast kernels, first-call allocations."""
    first = items.iloc[:2]
    if encoder.kind == "audio":
        encoder.encode([sf.read(p, dtype="float32")[0] for p in first["path"]])
    else:
        encoder.encode(first["text"].tolist())


def run_ours(encoder: Encoder, items: pd.DataFrame, store: Path, args: argparse.Namespace,
             device: torch.device) -> tuple[Measurement, float]:
    warm_up_ours(encoder, items)
    batch_size = args.batch_size if encoder.kind == "audio" else args.text_batch_size
    with measure(device) as m:
        extract_to_store(encoder, items, store, batch_size=batch_size, batch_seconds=args.batch_seconds,
                         num_workers=args.num_workers, device=device)
    stored = FeatureStore(store)
    if len(stored) != len(items):
        raise RuntimeError(f"our store {store} holds {len(stored)} of {len(items)} utterances")
    return m, folder_mb(store)


# --------------------------------------------------------------------------------------------- the authors'


def authors_ssl(model, extractor, path: str, device: torch.device) -> np.ndarray:
    """WavLM/HuBERT the authors' way: the file in 3,000-sample chunks, one forward pass per chunk in fp32,
    the sum of the last 4 hidden states, chunks concatenated in time."""
    audio, _ = sf.read(path, dtype="float32")
    # Normalised once over the whole file (cheaper than per chunk; so the comparison does not favour ours).
    values = extractor(audio, sampling_rate=SR, return_tensors="pt")["input_values"][0]
    frames = []
    for start in range(0, len(values), AUTHORS_CHUNK):
        chunk = values[start:start + AUTHORS_CHUNK]
        if len(chunk) < CONV_RECEPTIVE_FIELD:  # a last sliver too short for the conv front end: zero-pad it
            chunk = torch.nn.functional.pad(chunk, (0, CONV_RECEPTIVE_FIELD - len(chunk)))
        out = model(chunk[None].to(device), output_hidden_states=True)
        frames.append(torch.stack(out.hidden_states[-4:]).sum(0)[0])
    return torch.cat(frames).cpu().numpy()


def authors_whisper(whisper_model, path: str, device: torch.device) -> np.ndarray:
    """Whisper the authors' way: the clip padded to 30 s, its log-mel, all 1,500 encoder frames kept."""
    import whisper

    audio, _ = sf.read(path, dtype="float32")
    audio = whisper.pad_or_trim(torch.from_numpy(audio))
    mel = whisper.log_mel_spectrogram(audio, whisper_model.dims.n_mels, device=device)
    return whisper_model.encoder(mel[None])[0].cpu().numpy()


def authors_text(model, tokenizer, text: str, device: torch.device) -> np.ndarray:
    """A transcript the authors' way: alone, fp32, the sum of the last 4 layers over all its tokens."""
    tok = tokenizer(text, return_tensors="pt")
    out = model(**{k: v.to(device) for k, v in tok.items()}, output_hidden_states=True)
    return torch.stack(out.hidden_states[-4:]).sum(0)[0].cpu().numpy()


def authors_function(encoder: Encoder, device: torch.device) -> Callable[[pd.Series], np.ndarray]:
    """The per-utterance function of the authors' way, on the weights our encoder has already loaded (same
    weights, fp32; no autocast since it is never entered)."""
    if hasattr(encoder, "whisper"):  # medusa's WhisperEncoder holds the openai-whisper model
        return lambda row: authors_whisper(encoder.whisper, row["path"], device)
    if encoder.kind == "text":
        return lambda row: authors_text(encoder.model, encoder.tokenizer, row["text"], device)
    return lambda row: authors_ssl(encoder.model, encoder.extractor, row["path"], device)


def run_authors(encoder: Encoder, items: pd.DataFrame, out_dir: Path,
                device: torch.device) -> tuple[Measurement, float]:
    encode_one = authors_function(encoder, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        encode_one(items.iloc[0])  # warm-up, not saved
        with measure(device) as m:
            for _, row in items.iterrows():
                np.save(out_dir / f"{row['utt_id']}.npy", encode_one(row))
    written = len(list(out_dir.glob("*.npy")))
    if written != len(items):
        raise RuntimeError(f"the authors' way wrote {written} of {len(items)} files")
    return m, folder_mb(out_dir)


# ---------------------------------------------------------------------------------------------- one encoder


@dataclass
class Row:
    encoder: str
    architecture: str
    method: str
    audio_s_per_s: float
    speed_up: float
    peak_mb: float
    wall_s: float
    output_mb: float


@dataclass
class EncoderResult:
    rows: list[Row] = field(default_factory=list)
    note: str = ""


def count_params(encoder: Encoder) -> int:
    module = encoder.whisper.encoder if hasattr(encoder, "whisper") else encoder.model
    return sum(p.numel() for p in module.parameters())


def bench_encoder(arch: Arch, items: pd.DataFrame, sentences: list[str], work: Path, args: argparse.Namespace,
                  device: torch.device) -> EncoderResult:
    model_dir = work / "models" / arch.key
    model = save_model(arch, model_dir, sentences)
    encoder = build_encoder(arch.key, arch.family, model, arch.layers, device,
                            cache_dir=work / "cache", pad_seconds=0.0)
    architecture = describe(arch, count_params(encoder))
    audio_s = float(items["duration_s"].sum())

    ours, ours_mb = run_ours(encoder, items, work / "stores" / arch.key, args, device)
    authors, authors_mb = run_authors(encoder, items, work / "authors" / arch.key, device)

    note = ""
    if arch.kind == "text":
        lengths = [len(encoder.tokenizer(t)["input_ids"]) for t in items["text"]]
        words = [len(t.split()) for t in items["text"]]
        note = f"{np.mean(lengths):.1f} tokens per transcript ({np.sum(lengths) / np.sum(words):.2f} per word)"
    del encoder
    shutil.rmtree(model_dir, ignore_errors=True)  # a full-size checkpoint is gigabytes
    if device.type == "cuda":
        torch.cuda.empty_cache()
    speed_up = authors.wall_s / ours.wall_s
    return EncoderResult([
        Row(arch.key, architecture, "ours", audio_s / ours.wall_s, speed_up, ours.peak_mb, ours.wall_s, ours_mb),
        Row(arch.key, architecture, "authors'", audio_s / authors.wall_s, 1.0, authors.peak_mb, authors.wall_s,
            authors_mb),
    ], note)


# ------------------------------------------------------------------------------------------------- report


def table(rows: list[Row]) -> dict:
    return report.table(["encoder", "architecture", "method", "audio s per s", "speed-up", "peak memory (MB)"],
                        "lllrrr", [[r.encoder, r.architecture, r.method, f"{r.audio_s_per_s:.1f}", f"{r.speed_up:.1f}×",
                                    f"{r.peak_mb:.0f}"] for r in rows])


def console_table(rows: list[Row]) -> str:
    head = f"{'encoder':<11} {'method':<9} {'audio s/s':>10} {'speed-up':>9} {'peak MB':>9} {'wall s':>8} {'out MB':>8}"
    body = [f"{r.encoder:<11} {r.method:<9} {r.audio_s_per_s:>10.1f} {r.speed_up:>8.1f}x {r.peak_mb:>9.0f} "
            f"{r.wall_s:>8.1f} {r.output_mb:>8.1f}" for r in rows]
    return "\n".join([head, "-" * len(head), *body])


def report_section(args: argparse.Namespace, device: torch.device, items: pd.DataFrame,
                   results: dict[str, EncoderResult], total_s: float, load: str) -> report.Doc:
    """The section as a document (benchmarks/report.py renders it)."""
    rows = [r for res in results.values() for r in res.rows]
    cmd = "python benchmarks/extract.py" + "".join(f" {a}" for a in sys.argv[1:])
    memory = ("torch.cuda.max_memory_allocated during the timed region (model weights included)"
              if device.type == "cuda" else cpu_memory_method(CPU_NOT_INCLUDED))
    threads = f"{torch.get_num_threads()} intra-op thread(s)"
    size_text = "the paper's models" if args.size == "full" else "base-size stand-ins for the paper's large models"
    notes = [f"{k}: {res.note}" for k, res in results.items() if res.note]
    return report.doc(REPORT_SECTION[3:], [
        report.text(f"Command: `{cmd}`"),
        report.bullets([
            f"Device: {device_name(device)}; torch {torch.__version__}; {threads}"
            + (f"; load average at start {load} ({busy(load)})" if device.type == "cpu" else ""),
            f"Size: `{args.size}` ({size_text}, built from their configs with random weights: same FLOPs and "
            "memory as trained ones)",
            f"Corpus: {len(items)} synthetic utterances, {items['duration_s'].sum():.1f} s of audio in all "
            f"(16 kHz PCM16 wav, durations uniform in {MIN_S}–{MAX_S} s, seed {args.seed}); transcripts of "
            f"{MIN_WORDS}–{MAX_WORDS} words. Text encoders are credited with the audio seconds of the utterances "
            "whose transcripts they encode.",
            f"Ours: `medusa.features.extract.extract_to_store` into a feature store (float16), audio batch_size "
            f"{args.batch_size} / batch_seconds {args.batch_seconds}, text batch_size {args.text_batch_size}, "
            f"{args.num_workers} DataLoader worker(s), bf16 autocast on GPU, Whisper `pad_seconds=0`; layers: mean "
            "of the last 4 (Whisper: the encoder output).",
            "Authors': one utterance at a time in fp32; WavLM/HuBERT in 3,000-sample chunks (one forward pass "
            "each), sum of the last 4 hidden states; Whisper padded to 30 s, all 1,500 frames kept; text one "
            "sentence at a time, sum of the last 4 layers; one float32 `.npy` per utterance (I/O timed).",
            "Both ways start after the model is loaded and after one warm-up call; audio s per s = audio seconds "
            "encoded / wall seconds (time.perf_counter" + (", CUDA synchronised" if device.type == "cuda" else "")
            + "); speed-up = authors' wall time / ours.",
            f"Peak memory: {memory}.",
            f"Whole run (building models, corpus, both ways): {total_s:.0f} s wall."]),
        table(rows),
        report.text("Wall seconds and output size per run: " + "; ".join(
            f"{r.encoder} {r.method} {r.wall_s:.1f} s, {r.output_mb:.1f} MB" for r in rows) + "."),
        report.text("Tokens: " + "; ".join(notes) + ".") if notes else None,
        report.text("GPU: none was lent to this session; the GPU figures at the paper's scale are still to be "
                    "measured (run `python benchmarks/extract.py --size full --device cuda` on a GPU).")
        if device.type == "cpu" else None])


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("small", "full"), default=None,
                   help="small: base-size stand-ins (default on CPU); full: the paper's models (default on GPU)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--utterances", type=int, default=None,
                   help=f"synthetic utterances (default {DEFAULT_UTTERANCES['small']} small, "
                        f"{DEFAULT_UTTERANCES['full']} full)")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "benchmarks.md", help="report to update")
    p.add_argument("--encoders", default="wavlm,hubert,whisper,roberta,modernbert",
                   help="comma-separated subset to run")
    p.add_argument("--batch-size", type=int, default=16, help="ours, audio: utterances per batch (params.yaml)")
    p.add_argument("--batch-seconds", type=float, default=60.0, help="ours, audio: padded seconds per batch")
    p.add_argument("--text-batch-size", type=int, default=64, help="ours, text: transcripts per batch")
    p.add_argument("--num-workers", type=int, default=1, help="ours: DataLoader workers decoding audio")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 on CPU, so that a busy machine gives steadier "
                        "numbers; torch's default on GPU)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device)
    args.size = args.size or ("full" if device.type == "cuda" else "small")
    args.utterances = args.utterances or DEFAULT_UTTERANCES[args.size]
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    wanted = [k.strip() for k in args.encoders.split(",") if k.strip()]
    archs = [a for a in architectures('full' if args.size == 'full' else 'base') if a.key in wanted]
    if not archs:
        raise SystemExit(f"--encoders {args.encoders!r} names none of wavlm, hubert, whisper, roberta, modernbert")

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    load = load_average()

    start = time.perf_counter()
    print(f"device {device_name(device)}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"size {args.size}, {args.utterances} utterances", flush=True)
    results: dict[str, EncoderResult] = {}
    with tempfile.TemporaryDirectory(prefix="medusa-bench-") as tmp:
        work = Path(tmp)
        items = make_corpus(work / "wav", args.utterances, args.seed)
        sentences = tokenizer_corpus(args.seed)
        print(f"corpus: {len(items)} clips, {items['duration_s'].sum():.1f} s of audio", flush=True)
        for arch in archs:
            t0 = time.perf_counter()
            results[arch.key] = bench_encoder(arch, items, sentences, work, args, device)
            r_ours, r_auth = results[arch.key].rows
            print(f"{arch.key}: ours {r_ours.audio_s_per_s:.1f} audio s/s, authors' {r_auth.audio_s_per_s:.1f} "
                  f"({r_ours.speed_up:.1f}x; {time.perf_counter() - t0:.0f} s with model building)", flush=True)
    total_s = time.perf_counter() - start

    rows = [r for res in results.values() for r in res.rows]
    print()
    print(console_table(rows))
    print(f"\nwhole run: {total_s:.0f} s")
    report.publish(report_section(args, device, items, results, total_s, load), SECTION, args.out)
    print(f"wrote the '{REPORT_SECTION[3:]}' section of {args.out}")


if __name__ == "__main__":
    main()
