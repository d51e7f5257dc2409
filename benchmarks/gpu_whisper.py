"""Whisper decoding at forced lengths, the ways benchmarks/gpu.py's ASR part times: openai-whisper through our
batched greedy decoding (medusa.features.asr._decode), its encoder alone, and transformers'
WhisperForConditionalGeneration carrying the same weights.

Random weights decode garbage of any length, so every way decodes exactly `forced_tokens(clip)` tokens per clip
(3.5 per second of audio: ~2.7 words/s): a logit filter makes the end token impossible before that many tokens and
the only choice at that many. Then the ways differ only in how fast they compute the same number of steps.
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from gpu_common import SR, timed

TOKENS_PER_AUDIO_S = 3.5           # ~2.7 words/s of speech x ~1.3 Whisper BPE tokens per word
ASR_LANGUAGE = "en"


# ------------------------------------------------------------------------------------------ forced lengths


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


# ------------------------------------------------------------------------------------------ openai-whisper


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


# ------------------------------------------------------------------------------------------- transformers


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
