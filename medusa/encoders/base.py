"""What every encoder is: a name, a kind (audio or text), an output dim, a frame rate, and `encode`."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal, Sequence

import numpy as np
import torch

Kind = Literal["audio", "text"]


class EncoderWeightsError(FileNotFoundError):
    """Pretrained weights could not be loaded; the message names the model and how to provide it."""


def weights_error(family: str, model: str, key: str, cause: Exception) -> EncoderWeightsError:
    return EncoderWeightsError(
        f"cannot load the {family} weights {model!r} ({type(cause).__name__}: {str(cause).splitlines()[0][:200]}).\n"
        f"This machine has no model hub. Download the model where there is one (for example "
        f"`huggingface-cli download {model} --local-dir /models/{model.split('/')[-1]}`), copy the folder here, "
        f"and set `encoders.{key}.model` in params.yaml to that folder (a local path is used as is).")


def mean_of_layers(hidden_states: Sequence[torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    """Average the requested hidden states (indices as in Python: -1 = last; 0 = the embeddings/input)."""
    n = len(hidden_states)
    for i in layers:
        if not -n <= i < n:
            raise ValueError(f"layer {i} out of range: the model gives {n} hidden states (0..{n - 1})")
    return torch.stack([hidden_states[i] for i in layers]).float().mean(0)


class Encoder(ABC):
    """Turns a batch of utterances (float32 16 kHz audio, or transcripts) into frame sequences (T_i, dim).

    Padding never reaches the output: each utterance's frames are cut to its own length."""
    kind: Kind
    dim: int
    frame_rate: float | None  # frames per second of audio; None for text (one frame per token)

    @abstractmethod
    def encode(self, batch: list) -> list[np.ndarray]:
        ...

    def spec(self) -> dict:
        """What the feature store's meta.json records about how the features were made."""
        return {"kind": self.kind, "frame_rate": self.frame_rate}  # the store records dim itself


def autocast(device: torch.device):
    """bf16 autocast on GPU (halves memory traffic, same layer math); plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
