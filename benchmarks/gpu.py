"""GPU figures at the paper's scale in one call (issue #14): Whisper-large-v3 ASR, the five encoders' extraction,
DeepSER training, and the GPU budget of MSP-Podcast with the paper preset that these rates imply.

    python benchmarks/gpu.py [--size small|full] [--device auto|cpu|cuda] [--parts asr,extract,train]
                             [--out reports/benchmarks.md] [--results DIR] [--deadline-s S] [--seed 0]
    python benchmarks/gpu.py --apply DIR/gpu_section.md [--out reports/benchmarks.md]

On the lent GPU machine the one command is `bash benchmarks/gpu.sh` (benchmarks/README.md: the device call).
Every model is built from its architecture config with random weights (`medusa.pipeline.standins`: the FLOPs and memory of
the trained checkpoints); audio and transcripts are synthetic, with MSP-Podcast-like durations (2.75-11 s).

* ASR: Whisper large-v3 (128 mel bins, the full 32-layer decoder), batched greedy decoding through our code
  (`medusa.features.asr`: clips padded to whole seconds, the paper preset's batch and `pad_seconds`), against 30 s windows
  with the same batches; then, where time allows, two ways the project could adopt: openai-whisper with its
  weights cast to fp16 once (it casts them at every call), and transformers' WhisperForConditionalGeneration
  (SDPA, static cache, our windows). Random weights decode garbage of any length, so every way decodes exactly
  `forced_tokens(clip)` tokens per clip (3.5 per second of audio: ~2.7 words/s): a logit filter makes the end
  token impossible before that many tokens and the only choice at that many.
* Extraction: `benchmarks/extract.py`'s own functions (`run_ours`: `medusa.features.extract.extract_to_store` with
  bf16 autocast, length buckets and the feature-store writes; `run_authors`: one file at a time, fp32, 0.19 s
  chunks, 30 s Whisper windows) on WavLM-large, HuBERT-large, the Whisper-large-v3 encoder, RoBERTa-large and
  ModernBERT-large; the authors' way runs on a subset of the clips (its rate does not depend on their number).
* Training: `benchmarks/train.py`'s `bench_mix` on Table 1's models 2 and 14 at the paper's dims and native frame
  rates (ours bf16, ours fp32, the authors' way), Table 1's commonest mix (WavLM + RoBERTa, ours only), and the
  forward-only rate that dev evaluation and prediction run at.
* Budget: `pipeline_budget` turns the measured rates into GPU-hours per stage for MSP-Podcast (~116k utterances,
  ~190 h) with configs/paper.yaml (14 members, Table 2's 20 ablation runs, stage-1 and stage-2 epochs as upper
  bounds), and the report states each of the issue's targets as met or missed.

`--size full` (the default on a GPU) is the paper's scale and is planned to end well within 8 minutes on an H200:
optional pieces (the authors' way beyond WavLM, the ASR alternatives, the fp32 training rows) are skipped when the
`--deadline-s` clock says they no longer fit. `--size small` (the default on CPU) runs the same code on tiny
stand-ins, a few clips and a scaled-down DeepSER: a dry run in a few minutes on 2 cores. Each part prints progress
lines with timings, and after each part the results so far go to `--results` (default: $OUT when set) as
gpu_results.json and gpu_section.md, and into the "## GPU: ..." section of `--out` (other sections kept).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

# Before transformers / tqdm are imported: no hub, no progress bars.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere, installed package or not
if str(REPO / "benchmarks") not in sys.path:  # _common, extract, train, when this file is imported (tests)
    sys.path.insert(1, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import extract as bench_extract  # noqa: E402  benchmarks/extract.py
import train as bench_train  # noqa: E402  benchmarks/train.py
from _common import busy, device_name, load_average, measure, write_section  # noqa: E402
from medusa.features.batches import pick_device  # noqa: E402
from medusa.config.params import load_params  # noqa: E402

REPORT_HEADING = "## GPU: the paper's scale on one GPU (issue #14)"
PRESET = REPO / "configs" / "paper.yaml"
SR = 16000
TOKENS_PER_AUDIO_S = 3.5           # ~2.7 words/s of speech x ~1.3 Whisper BPE tokens per word
ASR_LANGUAGE = "en"

# The targets (reported, never asserted).
TARGET_WAVLM_REALTIME = 5000.0      # WavLM-large extraction, end to end, x real time
TARGET_WAVLM_VS_AUTHORS = 30.0      # ... and against the authors' way
TARGET_ASR_REALTIME = 300.0         # Whisper-large-v3 ASR, x real time
TARGET_PIPELINE_H100_HOURS = 6.0    # the whole paper pipeline on MSP-Podcast


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Plan:
    """What one size runs. Batch sizes, ASR padding and DataLoader workers of `full` come from configs/paper.yaml."""
    standins: str                    # medusa.pipeline.standins size of the five encoders and the ASR model
    asr_clips: int
    asr_batch: int
    asr_pad_seconds: float
    extract_utterances: int
    authors_utterances: int          # the authors' way runs on the first N clips only
    authors_encoders: tuple[str, ...]
    audio_batch: int
    audio_batch_seconds: float
    text_batch: int
    workers: int
    train: bench_train.Size
    train_ways: tuple[str, ...]      # for Table 1's models 2 and 14
    extra_mixes: tuple[str, ...]     # ours only
    deadline_s: float | None         # optional pieces are skipped when they would end past it
    corpus_workers: int


def make_plan(size: str) -> Plan:
    if size == "full":
        p = load_params(PRESET)
        audio = p.encoders["wavlm"]
        return Plan(standins="full", asr_clips=256, asr_batch=p.transcribe.batch_size,
                    asr_pad_seconds=p.transcribe.pad_seconds, extract_utterances=1500, authors_utterances=24,
                    authors_encoders=("wavlm", "whisper", "roberta", "modernbert"),  # HuBERT = WavLM's cost
                    audio_batch=audio.batch_size, audio_batch_seconds=audio.batch_seconds,
                    text_batch=p.encoders["roberta"].batch_size, workers=p.extract.num_workers,
                    train=bench_train.SIZES["full"], train_ways=("ours", "ours-fp32", "authors"),
                    extra_mixes=("wavlm,roberta",), deadline_s=400.0, corpus_workers=min(16, os.cpu_count() or 1))
    # A CPU dry run of the same code: tiny stand-ins, a handful of clips, a DeepSER 64 wide at 5 frames/s.
    return Plan(standins="tiny", asr_clips=6, asr_batch=3, asr_pad_seconds=5.0, extract_utterances=6,
                authors_utterances=2, authors_encoders=("wavlm", "whisper", "roberta", "modernbert"),
                audio_batch=4, audio_batch_seconds=60.0, text_batch=8, workers=1,
                train=replace(bench_train.SIZES["small"], hidden=64, heads=4, batch_size=4, utterances=12, steps=2,
                              audio_fps=5),
                train_ways=("ours", "ours-fp32", "authors"), extra_mixes=("wavlm,roberta",), deadline_s=None,
                corpus_workers=1)


class Clock:
    """Seconds since the start, progress lines, and whether an optional piece still fits before the deadline."""

    def __init__(self, deadline_s: float | None) -> None:
        self.start, self.deadline_s = time.perf_counter(), deadline_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, need_s: float, reserve_s: float = 0.0) -> bool:
        return self.deadline_s is None or self.elapsed() + need_s + reserve_s <= self.deadline_s

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {message}", flush=True)


@dataclass
class Timing:
    wall_s: float = 0.0
    gpu_s: float | None = None       # CUDA events on the current stream (None on CPU)
    peak_mb: float = 0.0

    @property
    def seconds(self) -> float:
        return self.gpu_s if self.gpu_s is not None else self.wall_s


@contextmanager
def timed(device: torch.device) -> Iterator[Timing]:
    """_common.measure (wall time with CUDA synchronised on both ends, peak memory) plus CUDA-event time."""
    t = Timing()
    with measure(device) as m:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        yield t
        if device.type == "cuda":
            end.record()
    t.wall_s, t.peak_mb = m.wall_s, m.peak_mb
    if device.type == "cuda":
        t.gpu_s = start.elapsed_time(end) / 1000.0


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------- synthetic corpus


def _corpus_part(job: tuple[Path, int, int]) -> pd.DataFrame:
    folder, n, seed = job
    return bench_extract.make_corpus(folder, n, seed)


def make_corpus(folder: Path, n: int, seed: int, workers: int) -> pd.DataFrame:
    """benchmarks/extract.py's corpus (16 kHz PCM16 wav of 2.75-11 s, a transcript each), written by `workers`
    processes (before CUDA is initialised), with utterance ids unique over the parts."""
    if workers <= 1 or n < 4 * workers:
        return bench_extract.make_corpus(folder, n, seed)
    sizes = [n // workers + (k < n % workers) for k in range(workers)]
    jobs = [(folder / f"part{k:02d}", size, seed * 1000 + k) for k, size in enumerate(sizes)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        parts = list(pool.map(_corpus_part, jobs))
    for k, part in enumerate(parts):
        part["utt_id"] = [f"p{k:02d}{u}" for u in part["utt_id"]]
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------------------------------- ASR


def forced_tokens(n_samples: int) -> int:
    """Tokens every way decodes for a clip of n_samples: TOKENS_PER_AUDIO_S per second of audio, at least 1."""
    return max(1, round(TOKENS_PER_AUDIO_S * n_samples / SR))


def force_lengths_(logits: torch.Tensor, generated: int, targets: torch.Tensor, eot: int) -> torch.Tensor:
    """In place, on (batch, vocab) logits after `generated` sampled tokens: rows short of their target cannot end;
    rows that reached it can only end. (Greedy decoding then gives each row exactly its target length.)"""
    done = targets.to(logits.device) <= generated
    logits[~done, eot] = -math.inf
    logits[done] = -math.inf
    logits[done, eot] = 0.0
    return logits


class Targets:
    """The forced lengths of the batch being decoded (set before each call, read by the logit filters)."""
    value: torch.Tensor = torch.zeros(0, dtype=torch.long)


class ForceLengthFilter:
    """An openai-whisper LogitFilter (duck-typed) applying force_lengths_."""

    def __init__(self, eot: int, sample_begin: int, targets: type[Targets]) -> None:
        self.eot, self.sample_begin, self.targets = eot, sample_begin, targets

    def apply(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        force_lengths_(logits, tokens.shape[1] - self.sample_begin, self.targets.value, self.eot)


@contextmanager
def whisper_forced_lengths() -> Iterator[None]:
    """Every openai-whisper DecodingTask made inside gets ForceLengthFilter last among its logit filters."""
    import whisper.decoding as decoding

    original = decoding.DecodingTask.__init__

    def patched(task, model, options):
        original(task, model, options)
        task.logit_filters.append(ForceLengthFilter(task.tokenizer.eot, task.sample_begin, Targets))

    decoding.DecodingTask.__init__ = patched
    try:
        yield
    finally:
        decoding.DecodingTask.__init__ = original


@dataclass
class AsrRow:
    way: str
    detail: str
    clips: int
    audio_s: float
    wall_s: float
    gpu_s: float | None
    peak_mb: float
    tokens: int                      # decoded tokens (the forced lengths), all clips
    steps: int                       # decoder forward passes, all batches (the longest row's tokens + the end)
    encoder_s: float | None = None   # the same batches through the encoder alone (mel included)
    lengths_held: bool = True        # every clip decoded exactly its forced number of tokens
    clips_as_ours: int | None = None # clips whose tokens equal ours' (same weights)
    speed_up: float = float("nan")   # against the 30 s windows

    @property
    def same_tokens_as_ours(self) -> bool | None:
        return None if self.clips_as_ours is None else self.clips_as_ours == self.clips

    @property
    def seconds(self) -> float:
        return self.gpu_s if self.gpu_s is not None else self.wall_s

    @property
    def audio_s_per_s(self) -> float:
        return self.audio_s / self.seconds

    @property
    def encoder_share(self) -> float | None:
        return None if self.encoder_s is None else self.encoder_s / self.seconds


@dataclass
class AsrResult:
    model: str = ""
    rows: list[AsrRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    batches: int = 0
    seconds: float = 0.0


def build_openai_whisper(dims: dict, device: torch.device):
    """openai-whisper's Whisper with random weights, built directly on `device` (fp32, as medusa loads it)."""
    from whisper.model import ModelDimensions, Whisper

    try:
        with torch.device(device):  # initialised on the GPU: seconds, not a minute of CPU random numbers
            model = Whisper(ModelDimensions(**dims))
    except (NotImplementedError, RuntimeError):  # an operator without a kernel there (e.g. sparse on meta)
        model = Whisper(ModelDimensions(**dims)).to(device)
    with torch.no_grad():  # openai-whisper leaves the decoder's positional embedding as torch.empty
        model.decoder.positional_embedding.normal_(0.0, 0.01)
    return model.eval()


def cast_matmul_weights(model, dtype: torch.dtype) -> None:
    """openai-whisper casts every Linear/Conv1d weight to the activations' dtype at every call: do it once.
    LayerNorms and embeddings stay fp32, as openai-whisper computes them, so the arithmetic is unchanged."""
    from whisper.model import Conv1d, Linear

    for module in model.modules():
        if isinstance(module, (Linear, Conv1d)):
            module.to(dtype)


def decode_openai(model, clips: list[np.ndarray], batches: list[list[int]], pad_seconds: float, device: torch.device,
                  label: str, detail: str, warm_up: bool = True) -> tuple[AsrRow, list[list[int]]]:
    """Our batched greedy decoding (medusa.features.asr._decode: log-mel of the padded window, positions sliced to it,
    openai-whisper's DecodingTask) over `batches`, each clip forced to forced_tokens(clip) tokens."""
    from medusa.features.asr import _decode, asr_window

    def run(idx: list[int]) -> tuple[list, int]:
        audios = [clips[i] for i in idx]
        windows = {asr_window(len(a), pad_seconds) for a in audios}
        if len(windows) != 1:
            raise RuntimeError(f"a batch spans {len(windows)} ASR windows: {sorted(windows)}")
        Targets.value = torch.tensor([forced_tokens(len(a)) for a in audios])
        return _decode(model, audios, ASR_LANGUAGE, windows.pop(), 1), int(Targets.value.max()) + 1

    tokens: list[list[int]] = [[] for _ in clips]
    steps = 0
    with torch.inference_mode(), whisper_forced_lengths():
        if warm_up:
            run(batches[0])
        with timed(device) as t:
            for idx in batches:
                results, n_steps = run(idx)
                steps += n_steps
                for i, r in zip(idx, results):
                    tokens[i] = list(r.tokens)
    held = all(len(tokens[i]) == forced_tokens(len(clips[i])) for i in range(len(clips)))
    audio_s = sum(len(c) for c in clips) / SR
    return AsrRow(label, detail, len(clips), audio_s, t.wall_s, t.gpu_s, t.peak_mb,
                  sum(len(x) for x in tokens), steps, lengths_held=held), tokens


def encoder_only_seconds(model, clips: list[np.ndarray], batches: list[list[int]], pad_seconds: float,
                         device: torch.device) -> float:
    """The encoder's share: the same batches' log-mel and encoder forward, nothing else (as DecodingTask runs it)."""
    from medusa.features.asr import asr_window
    from medusa.features.encoders.whisper import SAMPLES_PER_ENCODER_FRAME, log_mel_batch, short_positions

    def run(idx: list[int]) -> None:
        audios = [clips[i] for i in idx]
        n, _ = asr_window(len(audios[0]), pad_seconds)
        mel = log_mel_batch(audios, model.dims.n_mels, n, device)
        with short_positions(model.encoder, n // SAMPLES_PER_ENCODER_FRAME):
            model.encoder(mel.half() if device.type == "cuda" else mel)

    with torch.inference_mode():
        run(batches[0])
        with timed(device) as t:
            for idx in batches:
                run(idx)
    return t.seconds


OPENAI_TO_HF = [  # openai-whisper parameter names -> transformers' WhisperForConditionalGeneration
    (r"^encoder\.positional_embedding$", "model.encoder.embed_positions.weight"),
    (r"^encoder\.conv([12])\.", r"model.encoder.conv\1."),
    (r"^encoder\.ln_post\.", "model.encoder.layer_norm."),
    (r"^decoder\.positional_embedding$", "model.decoder.embed_positions.weight"),
    (r"^decoder\.token_embedding\.weight$", "model.decoder.embed_tokens.weight"),
    (r"^decoder\.ln\.", "model.decoder.layer_norm."),
]
OPENAI_TO_HF_BLOCK = [  # inside a block (prefixes: "attn." must not catch "cross_attn.")
    ("attn.query.", "self_attn.q_proj."), ("attn.key.", "self_attn.k_proj."), ("attn.value.", "self_attn.v_proj."),
    ("attn.out.", "self_attn.out_proj."), ("attn_ln.", "self_attn_layer_norm."),
    ("cross_attn.query.", "encoder_attn.q_proj."), ("cross_attn.key.", "encoder_attn.k_proj."),
    ("cross_attn.value.", "encoder_attn.v_proj."), ("cross_attn.out.", "encoder_attn.out_proj."),
    ("cross_attn_ln.", "encoder_attn_layer_norm."), ("mlp.0.", "fc1."), ("mlp.2.", "fc2."),
    ("mlp_ln.", "final_layer_norm."),
]


def hf_name(name: str) -> str:
    """The transformers name of an openai-whisper parameter (e.g. decoder.blocks.3.cross_attn.key.weight ->
    model.decoder.layers.3.encoder_attn.k_proj.weight)."""
    block = re.match(r"^(encoder|decoder)\.blocks\.(\d+)\.(.*)$", name)
    if block:
        part, i, rest = block.groups()
        for old, new in OPENAI_TO_HF_BLOCK:
            if rest.startswith(old):
                return f"model.{part}.layers.{i}.{new}{rest[len(old):]}"
    else:
        for pattern, repl in OPENAI_TO_HF:
            new_name, n = re.subn(pattern, repl, name)
            if n:
                return new_name
    raise KeyError(f"no transformers name for {name!r}")


def hf_from_openai(model, device: torch.device, dtype: torch.dtype):
    """transformers' WhisperForConditionalGeneration with SDPA attention and the openai-whisper model's own
    weights (the same architecture; proj_out is tied to the token embedding in both)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    d = model.dims
    config = WhisperConfig(vocab_size=d.n_vocab, num_mel_bins=d.n_mels, d_model=d.n_audio_state,
                           encoder_layers=d.n_audio_layer, encoder_attention_heads=d.n_audio_head,
                           decoder_layers=d.n_text_layer, decoder_attention_heads=d.n_text_head,
                           encoder_ffn_dim=4 * d.n_audio_state, decoder_ffn_dim=4 * d.n_text_state,
                           max_source_positions=d.n_audio_ctx, max_target_positions=d.n_text_ctx)
    with torch.device(device):
        try:
            hf = WhisperForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=dtype)
        except TypeError:  # transformers < 4.56 calls it torch_dtype
            hf = WhisperForConditionalGeneration._from_config(config, attn_implementation="sdpa", torch_dtype=dtype)
    state = {hf_name(k): v for k, v in model.state_dict().items() if k not in ("decoder.mask", "alignment_heads")}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    wrong = [k for k in missing if k != "proj_out.weight"] + list(unexpected)
    if wrong:
        raise RuntimeError(f"openai-whisper -> transformers: {len(wrong)} parameters unmatched, e.g. {wrong[:3]}")
    if hf.proj_out.weight.data_ptr() != hf.model.decoder.embed_tokens.weight.data_ptr():
        hf.proj_out.weight = hf.model.decoder.embed_tokens.weight  # tie it, as openai-whisper's logits are
    return hf.eval()


@contextmanager
def hf_short_positions(model, n_frames: int) -> Iterator[None]:
    """Let transformers' Whisper encoder take n_frames < 1500 (our windows), as medusa's short_positions does for
    openai-whisper: its length check and positional embedding are cut to n_frames for the duration."""
    encoder = model.get_encoder()
    full, n_max = encoder.embed_positions, encoder.config.max_source_positions
    encoder.embed_positions = torch.nn.Embedding.from_pretrained(full.weight[:n_frames], freeze=True)
    encoder.config.max_source_positions = n_frames
    try:
        yield
    finally:
        encoder.embed_positions, encoder.config.max_source_positions = full, n_max


def hf_generate(model, audios: list[np.ndarray], window: tuple[int, int], prompt: Sequence[int], eot: int,
                device: torch.device, dtype: torch.dtype, cache: str | None = None, forced: bool = False,
                suppress: Sequence[int] = (), begin_suppress: Sequence[int] = ()) -> list[list[int]]:
    """Greedy decoding of clips that share one window with GenerationMixin.generate (Whisper's own generate
    wrapper wants a hub generation config): our log-mel window, positions cut to it, the same prompt as ours.
    forced: every clip decodes exactly forced_tokens(clip) tokens; otherwise up to the window's token budget.
    Returns each clip's tokens up to its end token."""
    from transformers import LogitsProcessor, LogitsProcessorList
    from transformers.generation.utils import GenerationMixin

    from medusa.features.encoders.whisper import SAMPLES_PER_ENCODER_FRAME, log_mel_batch

    class ForceLength(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return force_lengths_(scores, input_ids.shape[1] - len(prompt), Targets.value, eot)

    n, budget = window
    mel = log_mel_batch(audios, model.config.num_mel_bins, n, device).to(dtype)
    if forced:
        Targets.value = torch.tensor([forced_tokens(len(a)) for a in audios])
    ids = torch.tensor([list(prompt)] * len(audios), device=device)
    # Not compiled: with a static cache on CUDA transformers would compile the decoder, once per batch shape.
    kwargs = {"cache_implementation": cache, "disable_compile": True} if cache else {}
    with hf_short_positions(model, n // SAMPLES_PER_ENCODER_FRAME):
        out = GenerationMixin.generate(
            model, input_features=mel, decoder_input_ids=ids, decoder_attention_mask=torch.ones_like(ids),
            max_new_tokens=int(Targets.value.max()) + 1 if forced else budget, do_sample=False, num_beams=1,
            eos_token_id=eot, pad_token_id=eot, suppress_tokens=list(suppress) or None,
            begin_suppress_tokens=list(begin_suppress) or None,
            logits_processor=LogitsProcessorList([ForceLength()] if forced else []), **kwargs)
    tokens = []
    for row in out[:, len(prompt):].tolist():
        tokens.append(row[:row.index(eot)] if eot in row else row)
    return tokens


def decode_hf(model, clips: list[np.ndarray], batches: list[list[int]], pad_seconds: float, prompt: Sequence[int],
              eot: int, device: torch.device, dtype: torch.dtype, cache: str | None, label: str, detail: str
              ) -> tuple[AsrRow, list[list[int]]]:
    """decode_openai's batches, windows and forced lengths through hf_generate."""
    from medusa.features.asr import asr_window

    tokens: list[list[int]] = [[] for _ in clips]
    steps = 0

    def run(idx: list[int]) -> list[list[int]]:
        audios = [clips[i] for i in idx]
        return hf_generate(model, audios, asr_window(len(audios[0]), pad_seconds), prompt, eot, device, dtype,
                           cache, forced=True)

    with torch.inference_mode():
        run(batches[0])
        with timed(device) as t:
            for idx in batches:
                for i, row in zip(idx, run(idx)):
                    tokens[i] = row
                steps += max(forced_tokens(len(clips[i])) for i in idx) + 1
    held = all(len(tokens[i]) == forced_tokens(len(clips[i])) for i in range(len(clips)))
    audio_s = sum(len(c) for c in clips) / SR
    return AsrRow(label, detail, len(clips), audio_s, t.wall_s, t.gpu_s, t.peak_mb, sum(len(x) for x in tokens),
                  steps, lengths_held=held), tokens


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


PARITY_FILE = REPO / "reports" / "metrics" / "asr_parity.json"


def wer_parity(n: int, model_name: str, pad_seconds: float, batch_size: int, device: torch.device) -> dict:
    """WER parity of transformers' Whisper with ours on real weights: the first n clips of work/manifest.parquet
    that have a reference transcript, decoded greedily in our windows by medusa.features.asr._decode (openai-whisper) and
    by hf_generate on the same weights, with openai-whisper's token suppression (its non-speech symbols, and a
    blank or the end token as the first token). No forced lengths: each stops at its end token or at the window's
    budget. Returns both WERs (medusa.features.asr.word_error_rate), the clips transcribed identically, and the timings."""
    import whisper
    import whisper.tokenizer

    from medusa.features.asr import _decode, _normaliser, asr_batches, asr_window, word_error_rate
    from medusa.data.audio import load_audio
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


# ---------------------------------------------------------------------------------------------- extraction


@dataclass
class ExtractRow:
    encoder: str
    architecture: str
    method: str
    utterances: int
    audio_s: float
    wall_s: float
    peak_mb: float
    output_mb: float
    speed_up: float = float("nan")   # ours' rate / the authors' rate

    @property
    def audio_s_per_s(self) -> float:
        return self.audio_s / self.wall_s


@dataclass
class ExtractResult:
    rows: list[ExtractRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def rate(self, encoder: str, method: str = "ours") -> float | None:
        return next((r.audio_s_per_s for r in self.rows if r.encoder == encoder and r.method == method), None)


def extract_part(plan: Plan, items: pd.DataFrame, work: Path, device: torch.device, clock: Clock,
                 reserve_s: float) -> ExtractResult:
    """Each encoder: built, saved and loaded through build_encoder, then benchmarks/extract.py's run_ours on
    every clip and its run_authors on the first plan.authors_utterances."""
    from medusa.features.encoders import build_encoder
    from medusa.pipeline.standins import architectures, describe, save_model, tokenizer_corpus

    result = ExtractResult()
    eargs = argparse.Namespace(batch_size=plan.audio_batch, batch_seconds=plan.audio_batch_seconds,
                               text_batch_size=plan.text_batch, num_workers=plan.workers)
    sentences = tokenizer_corpus(0)
    subset = items.iloc[:plan.authors_utterances]
    for arch in architectures(plan.standins):
        t0 = time.perf_counter()
        model_dir = work / "models" / arch.key
        model = save_model(arch, model_dir, sentences, seed=0)
        encoder = build_encoder(arch.key, arch.family, model, arch.layers, device, cache_dir=work / "cache",
                                pad_seconds=0.0)
        name = describe(arch, bench_extract.count_params(encoder))
        built = time.perf_counter() - t0
        m, mb = bench_extract.run_ours(encoder, items, work / "stores" / arch.key, eargs, device)
        ours = ExtractRow(arch.key, name, "ours", len(items), float(items["duration_s"].sum()), m.wall_s, m.peak_mb, mb)
        result.rows.append(ours)
        shutil.rmtree(work / "stores" / arch.key, ignore_errors=True)
        line = f"extract {arch.key}: built and loaded in {built:.0f} s; ours {ours.audio_s_per_s:.0f} audio s/s"
        if arch.key in plan.authors_encoders and clock.allows(15, reserve_s):
            m, mb = bench_extract.run_authors(encoder, subset, work / "authors" / arch.key, device)
            authors = ExtractRow(arch.key, name, "authors'", len(subset), float(subset["duration_s"].sum()),
                                 m.wall_s, m.peak_mb, mb, 1.0)
            ours.speed_up = ours.audio_s_per_s / authors.audio_s_per_s
            result.rows.append(authors)
            shutil.rmtree(work / "authors" / arch.key, ignore_errors=True)
            line += f", authors' {authors.audio_s_per_s:.1f} ({ours.speed_up:.0f}x)"
        elif arch.key in plan.authors_encoders:
            result.notes.append(f"{arch.key}: the authors' way skipped (deadline)")
        del encoder
        shutil.rmtree(model_dir, ignore_errors=True)  # a full-size checkpoint is gigabytes
        free(device)
        clock.log(line + f" ({time.perf_counter() - t0:.0f} s)")
    if "hubert" not in plan.authors_encoders:
        result.notes.append("HuBERT's authors' way is not timed: same architecture and chunking as WavLM's")
    return result


# ------------------------------------------------------------------------------------------------ training


@dataclass
class TrainRow:
    mix: str
    method: str
    samples_per_s: float
    audio_s_per_s: float             # samples/s x the mean clip duration of the synthetic rows
    speed_up: float                  # against the authors' way (nan when it did not run)
    step_s: float
    padding: float
    peak_mb: float


@dataclass
class EvalRow:
    mix: str
    batch: int
    samples_per_s: float
    audio_s_per_s: float
    peak_mb: float


@dataclass
class TrainResult:
    size: dict = field(default_factory=dict)
    mean_duration_s: float = 0.0
    models: dict[str, str] = field(default_factory=dict)
    rows: list[TrainRow] = field(default_factory=list)
    evals: list[EvalRow] = field(default_factory=list)
    sdpa: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def rate(self, mix: str, method: str = "ours") -> float | None:
        return next((r.audio_s_per_s for r in self.rows if r.mix == mix and r.method == method), None)


def sdpa_backends() -> str:
    b = torch.backends.cuda
    flags = [f"flash {'on' if b.flash_sdp_enabled() else 'off'}",
             f"memory-efficient {'on' if b.mem_efficient_sdp_enabled() else 'off'}",
             f"math {'on' if b.math_sdp_enabled() else 'off'}"]
    if hasattr(b, "cudnn_sdp_enabled"):
        flags.append(f"cuDNN {'on' if b.cudnn_sdp_enabled() else 'off'}")
    return ", ".join(flags) + f"; TF32 matmul {'on' if b.matmul.allow_tf32 else 'off'}"


def forward_rate(features: list, size: bench_train.Size, device: torch.device, seed: int) -> EvalRow:
    """Samples per second of the forward pass alone (eval mode, no_grad, bf16 autocast on CUDA) at
    medusa.model.training.predict's batch (4 x the training batch), over length-sorted batches of random frames at the
    synthetic rows' lengths, generated before the timed loop (no feature-store reads)."""
    from medusa.model.deepser import DeepSER
    from medusa.model.training import autocast

    torch.manual_seed(seed)
    model = DeepSER(bench_train.model_config(features, size)).to(device).eval()
    _, durations = bench_train.make_rows(size.utterances, seed)
    durations = np.sort(durations)
    batch = 4 * size.batch_size
    batches = []
    for start in range(0, len(durations), batch):
        chunk = durations[start:start + batch]
        xs, masks = [], []
        for f in features:
            lengths = torch.tensor([f.frames(d, size.audio_fps) for d in chunk])
            xs.append(torch.randn(len(chunk), int(lengths.max()), f.dim, device=device))
            masks.append((torch.arange(int(lengths.max()))[None] < lengths[:, None]).to(device))
        batches.append((xs, masks))
    with torch.no_grad(), autocast(device, True):
        model(*batches[0])
        with timed(device) as t:
            for xs, masks in batches:
                model(xs, masks)
    samples = len(durations)
    label = "+".join(f.key for f in features)
    del model, batches
    free(device)
    return EvalRow(label, batch, samples / t.seconds, float(durations.sum()) / t.seconds, t.peak_mb)


def train_part(plan: Plan, work: Path, device: torch.device, clock: Clock, reserve_s: float, seed: int
               ) -> TrainResult:
    size = plan.train
    _, durations = bench_train.make_rows(size.utterances, seed)
    result = TrainResult(size=asdict(size), mean_duration_s=float(durations.mean()), sdpa=sdpa_backends())
    jobs = [(mix, plan.train_ways) for mix in bench_train.DEFAULT_MIXES] + [(m, ("ours",)) for m in plan.extra_mixes]
    for k, (mix, ways) in enumerate(jobs):
        if k and not clock.allows(25, reserve_s):
            result.notes.append(f"{mix}: skipped (deadline)")
            continue
        if "ours-fp32" in ways and k and not clock.allows(45, reserve_s):
            ways = tuple(w for w in ways if w != "ours-fp32")
            result.notes.append(f"{mix}: ours fp32 skipped (deadline)")
        t0 = time.perf_counter()
        res = bench_train.bench_mix(mix, size, argparse.Namespace(seed=seed, ways=ways), device, work)
        result.models[res.mix] = res.model
        for r in res.rows:
            result.rows.append(TrainRow(res.mix, r.method, r.samples_per_s, r.samples_per_s * result.mean_duration_s,
                                        r.speed_up, r.step_s, r.padding, r.peak_mb))
        evals = forward_rate(bench_train.parse_mix(mix), size, device, seed)
        result.evals.append(evals)
        free(device)
        clock.log(f"train {res.mix}: " + ", ".join(f"{r.method} {r.samples_per_s:.1f} samples/s" for r in res.rows)
                  + f"; forward only {evals.samples_per_s:.0f} samples/s ({time.perf_counter() - t0:.0f} s)")
    return result


# -------------------------------------------------------------------------------------------------- budget


@dataclass(frozen=True)
class Corpus:
    """MSP-Podcast as the paper preset splits it: the challenge release's ~84k Train rows (90 % train, 10 % the
    in-house test cut) and ~32k Development rows; ~190 h of audio in all."""
    utterances: int = 116_000
    audio_hours: float = 190.0
    train: int = 75_600
    dev: int = 32_000
    test: int = 8_400

    @property
    def mean_s(self) -> float:
        return self.audio_hours * 3600 / self.utterances


@dataclass(frozen=True)
class TrainingRun:
    """One DeepSER trained through stages 1-2: its encoders, fusion, epochs, and what it predicts afterwards
    (a member: every utterance, for the meta-classifier and the tables; an ablation run: the test split)."""
    name: str
    mix: tuple[str, ...]
    fusion: str
    stage1_epochs: int
    stage2_epochs: int
    predict_all: bool


@dataclass(frozen=True)
class BudgetLine:
    stage: str
    detail: str
    gpu_hours: float


def run_hours(run: TrainingRun, corpus: Corpus, train_rate: float, eval_rate: float,
              stage2_share: float = 1.0) -> tuple[float, float]:
    """(training, evaluation) GPU-hours of one run: every epoch one pass (stage 1 over the train split, stage 2
    over stage2_share of it: 1.0 is the upper bound, a class-balanced draw is smaller), the dev split scored after
    every epoch, then its predictions. Rates in audio seconds per second."""
    epochs = run.stage1_epochs + run.stage2_epochs
    trained = (run.stage1_epochs + run.stage2_epochs * stage2_share) * corpus.train * corpus.mean_s
    scored = (epochs * corpus.dev + (corpus.utterances if run.predict_all else corpus.test)) * corpus.mean_s
    return trained / train_rate / 3600, scored / eval_rate / 3600


def pipeline_budget(corpus: Corpus, asr_rate: float, extraction_rates: Mapping[str, float],
                    runs: Sequence[TrainingRun], rates: Mapping[tuple[tuple[str, ...], str], tuple[float, float]],
                    stage2_share: float = 1.0) -> list[BudgetLine]:
    """GPU-hours per stage of the whole pipeline, from rates in audio seconds per second: ASR of every clip, each
    encoder over every clip, and each training run at `rates[(mix, fusion)]` = (training, forward-only). The
    ensemble's stages 3-4 (a linear layer over the members' posteriors) take CPU seconds and are left out."""
    audio_s = corpus.audio_hours * 3600
    lines = [BudgetLine("ASR", "Whisper-large-v3, every clip", audio_s / asr_rate / 3600)]
    lines += [BudgetLine("extraction", key, audio_s / rate / 3600) for key, rate in extraction_rates.items()]
    groups: dict[str, list[float]] = {}
    for run in runs:
        train_h, eval_h = run_hours(run, corpus, *rates[(run.mix, run.fusion)], stage2_share)
        group = "members" if run.predict_all else "ablation"
        totals = groups.setdefault(group, [0, 0.0, 0.0])
        totals[0] += 1
        totals[1] += train_h
        totals[2] += eval_h
    for group, (n, train_h, eval_h) in groups.items():
        what = f"{n} DeepSER members" if group == "members" else f"{n} Table 2 ablation runs"
        lines.append(BudgetLine("training", what + ", stages 1-2", train_h))
        lines.append(BudgetLine("evaluation", what + ": dev every epoch, then "
                                + ("every utterance" if group == "members" else "the test split"), eval_h))
    return lines


def budget_total(lines: Sequence[BudgetLine]) -> float:
    return sum(line.gpu_hours for line in lines)


def paper_runs(params) -> list[TrainingRun]:
    """The training runs of configs/paper.yaml: every member, then every ablation model x variant (the variant's
    `train` keys over the model's own; the reference row of Table 2 is the member itself, not trained again)."""
    from medusa.config.params import merge_overrides

    base = params.train.model_dump()
    runs = []
    for name, spec in params.models.items():
        train = merge_overrides(base, spec.overrides)
        runs.append(TrainingRun(name, tuple(spec.encoders), train["fusion"], train["stage1_epochs"],
                                train["stage2_epochs"], True))
    for name in params.ablate.models:
        spec = params.models[name]
        for variant, switch in params.ablate.variants.items():
            train = merge_overrides(merge_overrides(base, spec.overrides), switch)
            runs.append(TrainingRun(f"{name}/{variant}", tuple(spec.encoders), train["fusion"],
                                    train["stage1_epochs"], train["stage2_epochs"], False))
    return runs


def enc_flops(d_in: int, frames: float, hidden: int, ff: int, layers: int) -> float:
    """Forward FLOPs of one ENC over `frames` frames: the input MLP, then per transformer layer the four attention
    projections, the scores and the mixing (2 x 2 T^2 h) and the feed-forward."""
    t = frames
    return 2 * t * (d_in * hidden + hidden * hidden) + layers * (
        2 * t * (4 * hidden * hidden + 2 * hidden * ff) + 4 * t * t * hidden)


def deepser_flops(dims: Sequence[int], frames: Sequence[float], hidden: int, ff: int, layers: int,
                  fusion: str) -> float:
    """Forward FLOPs of DeepSER on one sample: a unimodal ENC per input; deep fusion adds fusion ENC 1 over all
    inputs' frames and fusion ENC 2 over twice that (the unimodal outputs and fusion 1's)."""
    total = sum(enc_flops(d, t, hidden, ff, layers) for d, t in zip(dims, frames))
    if fusion == "deep":
        s = sum(frames)
        total += enc_flops(hidden, s, hidden, ff, layers) + enc_flops(hidden, 2 * s, hidden, ff, layers)
    return total


def mix_cost(mix: Sequence[str], fusion: str, duration_s: float, hidden: int = 1024, ff_mult: int = 4,
             layers: int = 2, audio_fps: float = bench_train.PAPER_AUDIO_FPS) -> float:
    """DeepSER forward FLOPs per second of audio for an utterance of duration_s (the paper's dims by default)."""
    features = [bench_train.FEATURES[k] for k in mix]
    frames = [f.frames(duration_s, audio_fps) for f in features]
    return deepser_flops([f.dim for f in features], frames, hidden, ff_mult * hidden, layers, fusion) / duration_s


def scaled_rate(cost: float, measured: Mapping[Any, tuple[float, float]]) -> tuple[float, Any]:
    """A rate for a model of `cost` FLOPs per audio second from the measured (cost, rate) nearest to it in cost
    (log ratio): scaled down by their cost ratio when it costs more, kept when it costs less (a cheaper model
    does not shed a step's fixed overheads, so its time stays an upper bound). Returns (rate, the key used)."""
    key = min(measured, key=lambda k: abs(math.log(measured[k][0] / cost)))
    ref_cost, ref_rate = measured[key]
    return ref_rate * min(1.0, ref_cost / cost), key


@dataclass
class BudgetResult:
    corpus: dict = field(default_factory=dict)
    lines: list[BudgetLine] = field(default_factory=list)
    total_hours: float = 0.0
    mixes: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def budget_part(asr: AsrResult, extraction: ExtractResult, training: TrainResult, corpus: Corpus = Corpus()
                ) -> BudgetResult:
    """The measured rates -> paper_runs' rates (FLOP-scaled from the nearest measured mix where not measured)
    -> pipeline_budget."""
    runs = paper_runs(load_params(PRESET))
    d = training.mean_duration_s
    size = bench_train.Size(**training.size)

    def cost(mix: tuple[str, ...], fusion: str) -> float:
        return mix_cost(mix, fusion, d, size.hidden, size.ff_mult, size.layers, size.audio_fps)

    measured_train = {tuple(r.mix.split("+")): (cost(tuple(r.mix.split("+")), "deep"), r.audio_s_per_s)
                      for r in training.rows if r.method == "ours"}
    measured_eval = {tuple(e.mix.split("+")): (cost(tuple(e.mix.split("+")), "deep"), e.audio_s_per_s)
                     for e in training.evals}
    rates, mixes = {}, []
    for key in dict.fromkeys((run.mix, run.fusion) for run in runs):
        c = cost(*key)
        train_rate, train_from = scaled_rate(c, measured_train)
        eval_rate, _ = scaled_rate(c, measured_eval)
        rates[key] = (train_rate, eval_rate)
        exact = train_from == key[0] and key[1] == "deep"
        mixes.append({"mix": "+".join(key[0]), "fusion": key[1], "gflop_per_audio_s": c / 1e9,
                      "train_audio_s_per_s": train_rate, "eval_audio_s_per_s": eval_rate,
                      "source": "measured" if exact else f"scaled from {'+'.join(train_from)}",
                      "runs": sum(1 for r in runs if (r.mix, r.fusion) == key)})
    ours_asr = next(r for r in asr.rows if r.way == "ours")
    extraction_rates = {r.encoder: r.audio_s_per_s for r in extraction.rows if r.method == "ours"}
    lines = pipeline_budget(corpus, ours_asr.audio_s_per_s, extraction_rates, runs, rates)
    result = BudgetResult(asdict(corpus), lines, budget_total(lines), mixes)
    m2 = ("wavlm", "hubert", "roberta")
    if m2 in measured_train:
        epoch_h = corpus.train * corpus.mean_s / measured_train[m2][1] / 3600
        s1, s2 = runs[0].stage1_epochs, runs[0].stage2_epochs
        result.notes.append(f"One epoch of Table 1's model 2 over the train split: {60 * epoch_h:,.1f} GPU-minutes "
                            f"({epoch_h * (s1 + s2):,.1f} GPU-hours for {s1} + {s2} epochs): the training rows scale "
                            "with the epochs that early stopping leaves.")
    authors_wavlm = extraction.rate("wavlm", "authors'")
    if authors_wavlm:
        result.notes.append(f"WavLM-large extraction the authors' way would take "
                            f"{corpus.audio_hours * 3600 / authors_wavlm / 3600:,.1f} GPU-hours alone (ours: "
                            f"{corpus.audio_hours * 3600 / extraction_rates['wavlm'] / 3600:,.2f}).")
    best = max((r for r in asr.rows if r.lengths_held and r.way != "30 s windows" and not (
        r.way == "ours, fp16 weights" and r.same_tokens_as_ours is False)), key=lambda r: r.audio_s_per_s)
    if best.way != "ours":
        hours = corpus.audio_hours * 3600 / best.audio_s_per_s / 3600
        result.notes.append(f"ASR with '{best.way}' instead: {hours:.2f} GPU-hours (ours {lines[0].gpu_hours:.2f}).")

    def store_bytes(mix: tuple[str, ...]) -> float:  # float16 feature bytes per audio second
        return sum(bench_train.FEATURES[f].dim * 2 * (size.audio_fps if bench_train.FEATURES[f].kind == "audio"
                                                      else bench_train.TOKENS_PER_S) for f in mix)

    hungriest = max(measured_train, key=lambda k: store_bytes(k) * measured_train[k][1])
    per_s = store_bytes(hungriest)
    result.notes.append(f"Feature reads while training {'+'.join(hungriest)}: {per_s / 1e3:.0f} kB of float16 per "
                        f"audio second, {per_s * measured_train[hungriest][1] / 1e9:.2f} GB/s at its measured rate; "
                        "its stores for MSP-Podcast's train split hold "
                        f"{per_s * corpus.train * corpus.mean_s / 1e9:,.0f} GB, so beyond the page cache storage must "
                        "keep up (the benchmark reads a warm cache).")
    return result


# -------------------------------------------------------------------------------------------------- report


def fmt_rate(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else (f"{x:,.0f}" if x >= 100 else f"{x:,.1f}")


def fmt_x(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else (f"{x:,.0f}×" if x >= 100 else f"{x:,.1f}×")


def gpu_factor(device_text: str) -> tuple[float, float] | None:
    """How H100-hours relate to hours on the measured GPU: an H200 has the H100's dense bf16 peak and 1.4 times its
    memory bandwidth, so a job takes 1.0 (compute-bound) to 1.4 (memory-bound) times as long on an H100."""
    if "H100" in device_text:
        return 1.0, 1.0
    if "H200" in device_text:
        return 1.0, 1.4
    return None


def target_rows(results: dict, device_text: str, cpu: bool) -> list[tuple[str, str, str]]:
    """(target, measured, met / missed / not measured) for each of the issue's four targets."""
    def status(ok: bool | None) -> str:
        if cpu:
            return "not measured (CPU dry run)"
        return "not measured" if ok is None else ("met" if ok else "missed")

    extraction, asr, budget = results.get("extract"), results.get("asr"), results.get("budget")
    wavlm = extraction.rate("wavlm") if extraction else None
    authors = extraction.rate("wavlm", "authors'") if extraction else None
    ours_asr = next((r.audio_s_per_s for r in asr.rows if r.way == "ours"), None) if asr else None
    rows = [
        (f"WavLM-large extraction >= {TARGET_WAVLM_REALTIME:,.0f}× real time, end to end", fmt_x(wavlm),
         status(None if wavlm is None else wavlm >= TARGET_WAVLM_REALTIME)),
        (f"WavLM-large extraction >= {TARGET_WAVLM_VS_AUTHORS:g}× the authors' way",
         fmt_x(wavlm / authors) if wavlm and authors else "—",
         status(None if not (wavlm and authors) else wavlm / authors >= TARGET_WAVLM_VS_AUTHORS)),
        (f"Whisper-large-v3 ASR >= {TARGET_ASR_REALTIME:g}× real time", fmt_x(ours_asr),
         status(None if ours_asr is None else ours_asr >= TARGET_ASR_REALTIME)),
    ]
    if budget is None:
        rows.append((f"whole paper pipeline <= {TARGET_PIPELINE_H100_HOURS:g} H100-hours", "—", status(None)))
    else:
        factor = gpu_factor(device_text)
        total = budget.total_hours
        if factor is None:
            measured, ok = f"{total:,.1f} GPU-hours on {device_text} (no H100 equivalent)", None
        else:
            low, high = total * factor[0], total * factor[1]
            measured = (f"{low:,.1f} H100-hours" if low == high else f"{low:,.1f}–{high:,.1f} H100-hours "
                        f"({total:,.1f} on the {device_text})")
            ok = True if high <= TARGET_PIPELINE_H100_HOURS else (False if low > TARGET_PIPELINE_H100_HOURS else None)
        rows.append((f"whole paper pipeline <= {TARGET_PIPELINE_H100_HOURS:g} H100-hours (upper bound: every epoch)",
                     measured, status(ok) if ok is not None or cpu else "undecided (within the H100 range)"))
    return rows


def asr_table(asr: AsrResult) -> list[str]:
    lines = ["| way | what | audio s per s (× real time) | vs 30 s windows | encoder share | decoder steps per s | "
             "tokens per s | forced lengths held | peak memory (MB) |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in asr.rows:
        share = "—" if r.encoder_share is None else f"{100 * r.encoder_share:.0f} %"
        same = "" if r.clips_as_ours is None else f"; tokens = ours: {r.clips_as_ours}/{r.clips} clips"
        lines.append(f"| {r.way} | {r.detail} | {fmt_rate(r.audio_s_per_s)} | {fmt_x(r.speed_up)} | {share} | "
                     f"{r.steps / r.seconds:,.0f} | {r.tokens / r.seconds:,.0f} | "
                     f"{'yes' if r.lengths_held else 'no'}{same} | {r.peak_mb:,.0f} |")
    return lines


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


def extract_table(ex: ExtractResult) -> list[str]:
    lines = ["| encoder | architecture | method | clips | audio s per s (× real time) | speed-up | wall s | "
             "peak memory (MB) |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in ex.rows:
        lines.append(f"| {r.encoder} | {r.architecture} | {r.method} | {r.utterances} | {fmt_rate(r.audio_s_per_s)} "
                     f"| {fmt_x(r.speed_up)} | {r.wall_s:.2f} | {r.peak_mb:,.0f} |")
    return lines


def train_table(tr: TrainResult) -> list[str]:
    lines = ["| features | method | samples per s | audio s per s | vs the authors' | s per step | padding | "
             "peak memory (MB) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in tr.rows:
        lines.append(f"| {r.mix} | {r.method} | {r.samples_per_s:,.1f} | {fmt_rate(r.audio_s_per_s)} | "
                     f"{fmt_x(r.speed_up)} | {r.step_s:.3f} | {100 * r.padding:.0f} % | {r.peak_mb:,.0f} |")
    for e in tr.evals:
        lines.append(f"| {e.mix} | forward only (eval, batch {e.batch}) | {e.samples_per_s:,.1f} | "
                     f"{fmt_rate(e.audio_s_per_s)} | — | — | — | {e.peak_mb:,.0f} |")
    return lines


def budget_table(b: BudgetResult) -> list[str]:
    lines = ["| stage | what | GPU-hours |", "|---|---|---:|"]
    lines += [f"| {x.stage} | {x.detail} | {x.gpu_hours:,.2f} |" for x in b.lines]
    lines.append(f"| **total** | | **{b.total_hours:,.2f}** |")
    lines += ["", "| DeepSER | fusion | runs | GFLOP per audio s (forward) | training audio s per s | "
                  "forward audio s per s | rate |", "|---|---|---:|---:|---:|---:|---|"]
    lines += [f"| {m['mix']} | {m['fusion']} | {m['runs']} | {m['gflop_per_audio_s']:,.3g} | "
              f"{fmt_rate(m['train_audio_s_per_s'])} | {fmt_rate(m['eval_audio_s_per_s'])} | {m['source']} |"
              for m in b.mixes]
    return lines


def report_section(results: dict, meta: dict) -> str:
    cpu = meta["device_type"] == "cpu"
    plan: Plan = meta["plan"]
    lines = [REPORT_HEADING, "", f"Command: `{meta['command']}`", ""]
    if cpu:
        lines += ["**Status: not yet measured on a GPU.** No GPU was lent to the session that wrote this; what follows "
                  "is the CPU dry run of the same script (`--size small`: tiny stand-ins, a handful of clips), which "
                  "proves the code path, not the figures. The paper-scale run is one device call: "
                  "benchmarks/README.md, `gpu.py`.", ""]
    lines += [
        f"- Device: {meta['device']}; torch {meta['torch']}, transformers {meta['transformers']}, openai-whisper "
        f"{meta['whisper']}; SDPA: {meta['sdpa']}" + (f"; load average at start {meta['load']} ({busy(meta['load'])})"
                                                      if cpu else ""),
        f"- Size `{meta['size']}`: every model built from its architecture config with random weights "
        f"(`medusa.pipeline.standins`, size `{plan.standins}`); synthetic 16 kHz clips of 2.75–11 s. Rates are audio seconds "
        "per second (× real time) timed after a warm-up" + (" with CUDA events (wall clock, CUDA synchronised, "
                                                              "for extraction and training)" if not cpu else "") + ".",
        f"- Whole run: {meta['total_s']:.0f} s wall (" + ", ".join(f"{k} {v:.0f} s" for k, v in meta["parts_s"].items())
        + ")" + (f"; the deadline for optional pieces was {plan.deadline_s:.0f} s" if plan.deadline_s else "") + ".",
        *[f"- **Failed**: {f}" for f in meta.get("failures", [])],
    ]
    asr = results.get("asr")
    lines += ["", "### ASR", ""]
    if asr is None:
        lines.append("Not run.")
    else:
        lines += [
            f"{asr.model}; {asr.rows[0].clips} clips, {asr.rows[0].audio_s:,.0f} s of audio, {asr.batches} batches "
            f"of up to {plan.asr_batch} (`medusa.features.asr.asr_batches`: one padded window per batch), greedy, English. "
            f"Every way decodes exactly {TOKENS_PER_AUDIO_S:g} tokens per second of audio per clip (~2.7 words/s; "
            "random weights would decode garbage of any length): a logit filter makes the end token impossible "
            "before a clip's count and the only choice at it; a batch runs as many decoder steps as its longest "
            "clip's count + 1. 'Encoder share': the same batches' log-mel and encoder alone, over the way's time. "
            "The compression-ratio retry of `transcribe_clips` (a looping decode again in a 30 s window) is not "
            "timed.", "", *asr_table(asr), ""]
        lines += [asr_verdict(asr) if not cpu else
                  "No verdict from a CPU dry run: a tiny model, and on CPU 'ours, fp16 weights' computes exactly what "
                  "ours computes (no fp16 there).", ""]
        lines.append(
            "WER parity is the condition for adopting an alternative. 'ours, fp16 weights' computes with the very "
            "fp16 weights that openai-whisper casts at every call in ours, so its tokens must equal ours on every "
            "clip (the table counts them). transformers is another implementation, so parity has to be shown on real "
            "weights: `python benchmarks/gpu.py --wer-parity N` decodes the demo corpus's first N clips with reference "
            "transcripts on CPU with `demo:base` (copied into WhisperForConditionalGeneration by renaming "
            "openai-whisper's parameters, `hf_from_openai`), both ways in our windows, and compares the transcripts "
            "and their WER (`medusa.features.asr.word_error_rate`); the table's token counts compare the two on this run's "
            "random weights too.")
        if PARITY_FILE.exists():
            lines += ["", parity_line(json.loads(PARITY_FILE.read_text(encoding="utf-8")))]
        lines += [f"- {n}" for n in asr.notes]
    ex = results.get("extract")
    lines += ["", "### Feature extraction", ""]
    if ex is None:
        lines.append("Not run.")
    else:
        lines += [
            f"`benchmarks/extract.py`'s `run_ours` (`medusa.features.extract.extract_to_store` into a float16 feature store: "
            f"audio batches of {plan.audio_batch} / {plan.audio_batch_seconds:g} s, text {plan.text_batch}, "
            f"{plan.workers} DataLoader worker(s), bf16 autocast on GPU, Whisper without 30 s padding) on every clip, "
            f"and its `run_authors` (one file at a time, fp32, WavLM/HuBERT in 3,000-sample chunks, Whisper padded "
            "to 30 s, text one sentence at a time, one .npy per clip) on the first "
            f"{plan.authors_utterances}; speed-up = ours' rate / the authors' rate. Model loading is not timed; "
            "text encoders are credited with the audio seconds of the clips whose transcripts they encode.", "",
            *extract_table(ex)]
        lines += [f"- {n}" for n in ex.notes]
    tr = results.get("train")
    lines += ["", "### DeepSER training", ""]
    if tr is None:
        lines.append("Not run.")
    else:
        size = bench_train.Size(**tr.size)
        lines += [
            f"`benchmarks/train.py`'s `bench_mix`: DeepSER hidden {size.hidden}, {size.heads} heads, FFN "
            f"{size.ff_mult * size.hidden}, {size.layers} layers per ENC, batch {size.batch_size}, audio features at "
            f"{size.audio_fps:g} frames/s, no pooling; {size.utterances} synthetic utterances per mix (mean "
            f"{tr.mean_duration_s:.2f} s), one warm-up step then {size.steps} timed steps per way, batch loading "
            "included. ours = float16 stores, length buckets, masks, bf16 autocast; ours fp32 = the same without "
            "autocast; authors' = one float32 .npy per sample and feature, random batches padded to the longest, "
            "no masks, fp32. Audio s per s = samples per s × the mean duration. Forward only: eval mode, no_grad, "
            "bf16 autocast, length-sorted batches of random frames (no store reads), what dev scoring and "
            f"prediction run at. SDPA: {tr.sdpa} (a key-padding mask rules the flash kernel out: attention with "
            "masks runs on the memory-efficient or cuDNN kernel).", "", *train_table(tr)]
        lines += [f"- {mix}: {model}" for mix, model in tr.models.items()]
        lines += [f"- {n}" for n in tr.notes]
    b = results.get("budget")
    lines += ["", "### Budget: MSP-Podcast with the paper preset", ""]
    if b is None:
        lines.append("Not computed (needs the ASR, extraction and training rates).")
    else:
        c = Corpus(**b.corpus)
        lines += [
            f"`pipeline_budget`: {c.utterances:,} utterances, {c.audio_hours:g} h of audio (mean {c.mean_s:.1f} s): "
            f"{c.train:,} train (stage 1), {c.dev:,} dev, {c.test:,} test. configs/paper.yaml: 14 members and Table "
            "2's 20 ablation runs (4 models × 5 variants; `no_stage2` has no stage 2, `late_fusion` no fusion "
            "ENCs); stage 1 20 and stage 2 10 epochs, each one pass over the train split (an upper bound: patience "
            "5 may stop a stage early, and stage 2's class-balanced draw is smaller than the split); dev scored "
            "after every epoch; members then predict every utterance, ablation runs the test split. Rates: the "
            "measured ones in audio seconds per second (ASR: ours), DeepSER mixes not measured scaled from the "
            "nearest measured mix by their forward FLOPs per audio second (only ever down: a cheaper mix keeps the "
            "measured rate). The blind set (3,200 clips, ~3 %) is "
            "left out.", "", *budget_table(b)]
        lines += [f"- {n}" for n in b.notes]
    lines += ["", "### Targets", "", "| target | measured | status |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {s} |" for t, m, s in target_rows(results, meta["device"], cpu)]
    if not cpu:
        lines += ["", "H100-hours: the run's GPU-hours × 1.0 (compute-bound) to 1.4 (memory-bound) when measured on "
                      "an H200 (an H100 has its dense bf16 peak and 1/1.4 of its memory bandwidth)."]
    return "\n".join(lines) + "\n"


def to_json(results: dict, meta: dict) -> str:
    def plain(x):
        if hasattr(x, "__dataclass_fields__"):
            return {k: plain(v) for k, v in asdict(x).items()}
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x
    derived = {}
    if results.get("asr"):
        derived["asr_audio_s_per_s"] = {r.way: r.audio_s_per_s for r in results["asr"].rows}
    if results.get("extract"):
        derived["extract_audio_s_per_s"] = {f"{r.encoder} {r.method}": r.audio_s_per_s
                                            for r in results["extract"].rows}
    return json.dumps({"meta": plain({k: v for k, v in meta.items() if k != "plan"}), "plan": plain(meta["plan"]),
                       "results": plain(results), "derived": derived}, indent=1, default=str)


def save(results: dict, meta: dict, out: Path, results_dir: Path | None) -> None:
    """The section into `out` (other sections kept) and, with a results folder, gpu_section.md and gpu_results.json
    there (written after every part, so that a run cut short still brings back what it measured)."""
    section = report_section(results, meta)
    write_section(out, REPORT_HEADING, section)
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / "gpu_section.md").write_text(section, encoding="utf-8")
        (results_dir / "gpu_results.json").write_text(to_json(results, meta), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- main


PARTS = ("asr", "extract", "train")
PLANNED_S = {"full": {"asr": 90, "extract": 130, "train": 90}}  # H200 estimates; see benchmarks/README.md


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("small", "full"), default=None,
                   help="full: the paper's models (default on GPU); small: tiny stand-ins, a CPU dry run")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated among {', '.join(PARTS)}")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "benchmarks.md", help="report to update")
    p.add_argument("--results", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                   help="folder for gpu_results.json and gpu_section.md after every part (default: $OUT if set)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="skip optional pieces that would end later (default: 400 full, none small)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: 1 on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wer-parity", type=int, default=None, metavar="N",
                   help="instead: transformers' Whisper against ours on real weights (--parity-model) over the "
                        f"first N demo clips with references (CPU), written to {PARITY_FILE.relative_to(REPO)}")
    p.add_argument("--parity-model", default="demo:base", help="a Whisper for --wer-parity (default demo:base)")
    p.add_argument("--apply", type=Path, default=None,
                   help="write this gpu_section.md (from a device run's $OUT) into --out and exit")
    return p.parse_args(argv)


def library_version(name: str) -> str:
    import importlib.metadata
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.apply is not None:
        text = args.apply.read_text(encoding="utf-8")
        if not text.startswith(REPORT_HEADING):
            raise SystemExit(f"{args.apply} does not start with {REPORT_HEADING!r}")
        write_section(args.out, REPORT_HEADING, text)
        print(f"wrote the '{REPORT_HEADING[3:]}' section of {args.out} from {args.apply}")
        return {}
    if args.wer_parity is not None:
        device = pick_device(args.device)
        torch.set_num_threads(args.threads or (1 if device.type == "cpu" else torch.get_num_threads()))
        warnings.filterwarnings("ignore")
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        parity = wer_parity(args.wer_parity, args.parity_model, 5.0, 8, device)
        PARITY_FILE.parent.mkdir(parents=True, exist_ok=True)
        PARITY_FILE.write_text(json.dumps(parity, indent=1) + "\n", encoding="utf-8")
        print(parity_line(parity))
        print(json.dumps({k: parity[k] for k in ("seconds", "differences")}, indent=1))
        return parity
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        raise SystemExit(f"--parts {args.parts!r}: name parts among {', '.join(PARTS)}")
    device = pick_device(args.device)
    args.size = args.size or ("full" if device.type == "cuda" else "small")
    plan = make_plan(args.size)
    if args.deadline_s is not None:
        plan = replace(plan, deadline_s=args.deadline_s)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    clock = Clock(plan.deadline_s)
    load = load_average()
    tmp = tempfile.TemporaryDirectory(prefix="medusa-bench-gpu-")
    work = Path(tmp.name)
    n_clips = max(plan.extract_utterances, plan.asr_clips)
    items = make_corpus(work / "wav", n_clips, args.seed, plan.corpus_workers)  # forks: before CUDA is initialised
    corpus_s = clock.elapsed()
    meta = {"command": "python benchmarks/gpu.py" + "".join(f" {a}" for a in argv), "size": args.size,
            "plan": plan, "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "transformers": library_version("transformers"), "whisper": library_version("openai-whisper"),
            "sdpa": sdpa_backends(), "load": load, "parts_s": {}, "total_s": 0.0}
    clock.log(f"device {meta['device']}, torch {meta['torch']}, transformers {meta['transformers']}, openai-whisper "
              f"{meta['whisper']}, size {args.size}, parts {','.join(parts)}, deadline {plan.deadline_s}")
    planned = PLANNED_S.get(args.size, {})
    results: dict[str, Any] = {}
    with tmp:
        clock.log(f"corpus: {len(items)} clips, {items['duration_s'].sum():,.0f} s of audio ({corpus_s:.1f} s)")
        for part in parts:
            later = sum(planned.get(p, 0) for p in parts[parts.index(part) + 1:])  # kept for the parts after
            t0 = time.perf_counter()
            clock.log(f"--- {part} (planned {planned.get(part, '?')} s)")
            try:
                if part == "asr":
                    results["asr"] = asr_part(plan, items, device, clock, later)
                elif part == "extract":
                    results["extract"] = extract_part(plan, items.iloc[:plan.extract_utterances], work, device,
                                                      clock, later)
                else:
                    results["train"] = train_part(plan, work, device, clock, later, args.seed)
            except Exception as e:  # keep what the other parts measure
                import traceback
                traceback.print_exc()
                meta.setdefault("failures", []).append(f"{part}: {type(e).__name__}: {str(e)[:300]}")
            free(device)
            meta["parts_s"][part] = time.perf_counter() - t0
            if all(k in results for k in PARTS):
                try:
                    results["budget"] = budget_part(results["asr"], results["extract"], results["train"])
                except Exception as e:
                    meta.setdefault("failures", []).append(f"budget: {type(e).__name__}: {str(e)[:300]}")
            meta["total_s"] = clock.elapsed()
            save(results, meta, args.out, args.results)
            clock.log(f"--- {part} done in {meta['parts_s'][part]:.0f} s; results saved")
    print()
    print(report_section(results, meta))
    print(f"wrote the '{REPORT_HEADING[3:]}' section of {args.out}"
          + (f" and gpu_section.md, gpu_results.json in {args.results}" if args.results else ""))
    if meta.get("failures"):
        print("FAILED: " + "; ".join(meta["failures"]), file=sys.stderr)
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
