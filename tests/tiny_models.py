"""What the tests add to the stand-in encoders of medusa.pipeline.standins (the one place that builds random
encoders from their configs): test audio, the tests' variants of the tiny stand-ins saved under a test's folder
(seed 0), and small training configs. Shared by the encoder, extraction, ASR, bundle and training tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medusa.pipeline.standins import BASE_SETUP, save_model, standin

SR = 16000


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise with a slow envelope (not stationary, so that padding effects are not averaged away)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    envelope = 0.2 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * np.arange(n) / SR)
    return (rng.uniform(-1, 1, n) * envelope).astype(np.float32)


def hf_audio(root: Path, family: str, norm: str) -> str:
    """The tiny WavLM / HuBERT / wav2vec 2.0 with the large checkpoints' layer-norm feature encoder used with an
    attention mask (norm "layer"), or the base checkpoints' group-norm one used without (norm "group"): the two
    padding behaviours the extraction must handle."""
    if norm not in ("layer", "group"):
        raise ValueError(f"norm must be 'layer' or 'group', got {norm!r}")
    arch = standin(family, "tiny", **(BASE_SETUP if norm == "group" else {}))
    return save_model(arch, Path(root) / f"{family}-{norm}", seed=0)


def hf_text(root: Path, family: str) -> str:
    """The tiny RoBERTa, ModernBERT or MiniLM (BERT), with its tokenizer."""
    return save_model(standin(family, "tiny"), Path(root) / family, seed=0)


def whisper_checkpoint(root: Path, n_text_ctx: int = 128) -> str:
    """The tiny Whisper as an openai-whisper checkpoint file, with a 2-block decoder whose random tokens follow the
    audio (standins.save_whisper_model's varied_decoder), so that transcripts of different clips, or of one clip
    padded differently, differ. Its context is 128 tokens by default: room for the prompt and the 80-token budget
    of an 8 s window (medusa.features.asr.asr_window), which the stand-in's 64 would not leave."""
    arch = standin("whisper", "tiny", n_text_layer=2, n_text_ctx=n_text_ctx)
    return save_model(arch, Path(root) / "whisper", seed=0, varied_decoder=True)


def train_config(**overrides):
    """A training run's config for tests (medusa.model.training.TrainConfig): the demo's `train` section of params.yaml,
    one pass per epoch, raw inputs, seed 0, then `overrides` (what the test is about)."""
    from medusa.config.params import load_params
    from medusa.model.training import TrainConfig

    train = load_params(Path(__file__).resolve().parents[1] / "params.yaml").train
    defaults = {"epoch_steps": 0, "standardise": False, "threads": 0}
    return TrainConfig.of(train, overrides.pop("seed", 0), **{**defaults, **overrides})


def deepser_config(input_dims, **overrides):
    """A small DeepSERConfig for tests: hidden 16, 2 heads, 2 layers, dropout 0.1, ff_mult 4, deep fusion."""
    from medusa.model.deepser import DeepSERConfig

    settings = {"hidden": 16, "heads": 2, "layers": 2, "dropout": 0.1, "ff_mult": 4, "fusion": "deep", **overrides}
    return DeepSERConfig(input_dims=tuple(input_dims), **settings)
