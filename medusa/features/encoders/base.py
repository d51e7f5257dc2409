"""What every encoder is: a name, a kind (audio or text), an output dim, a frame rate, and `encode`.

Two rules every encoder keeps, so that a clip's features depend on that clip alone (not on its batch-mates, their
order, the shard count, or whether the extract stage or the predict bundle encodes it):

* Padding. An encoder whose frames do not depend on padding (a real attention mask over a per-frame feature
  encoder; text with masked padding tokens; openSMILE, one clip at a time) may batch clips of any lengths. One whose
  frames do depend on it (Whisper's encoder has no mask; HuBERT/wav2vec 2.0 base normalise over the whole padded
  input) pads each clip to a length that depends only on the clip -- the next whole second (`grid_samples`) -- and
  runs only clips of the same padded length together: `encode` splits any batch it is given that way
  (`encode_by_padded_length`), and the batch planner (medusa.features.extract.plan_batches) groups clips by
  `Encoder.padded_samples` so that the split rarely happens. `spec()["padding"]` states the rule.

* Layer indices. `layers` index a list of L + 1 hidden states, L = the number of transformer blocks: index i < L
  is the output of block i (0 = the input to block 1: the embeddings, with positional information), and index
  L (= -1) is the encoder's output: the last block's output after the encoder's final LayerNorm where it has
  one (transformers' `last_hidden_state`; Whisper's `ln_post`). `[-4, -3, -2, -1]` = outputs of blocks L-3, L-2,
  L-1 and the final output. This does not depend on the transformers version (`defined_hidden_states`):
  transformers 4.x returned, as `hidden_states`, the input of every block and then, for WavLM/HuBERT/wav2vec 2.0
  with stable layer norm, the *normalised* last output (4.x ModernBERT: the un-normalised one); 5.x returns the
  first block's input and every block's output, the last one un-normalised for WavLM/HuBERT/wav2vec 2.0 and
  normalised for text models. The first L entries agree in both; the last is taken from `last_hidden_state`.
"""
from __future__ import annotations

import importlib.metadata
import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from medusa.errors import UserError

Kind = Literal["audio", "text"]
SAMPLE_RATE = 16000
LAYER_DEFINITION = ("index i < L: output of transformer block i (0: input to block 1); index L (-1): the "
                    "encoder output after its final LayerNorm, if any (last_hidden_state)")


class EncoderWeightsError(UserError, FileNotFoundError):
    """Pretrained weights could not be loaded; the message names the model and how to provide it."""


def weights_error(family: str, model: str, key: str, cause: BaseException, source: str | None = None
                  ) -> EncoderWeightsError:
    """The error for weights `model` of encoder `key` that cannot be loaded (`cause`: the library's exception,
    kept as the error's `cause`), in one line. `source`: the file the encoder's settings came from when it is
    not params.yaml (a predict bundle's encoders.json), so that the message blames that file, not params.yaml."""
    reason = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:200]}"
    if source is None:
        message = (f"cannot load the {family} weights {model!r} ({reason}); this machine has no model hub: "
                   f"download the model where there is one (for example `huggingface-cli download {model} "
                   f"--local-dir /models/{model.split('/')[-1]}`), copy the folder here, and set "
                   f"`encoders.{key}.model` in params.yaml to that folder (a local path is used as is)")
    else:
        message = (f"{source}: {key}.model: cannot load the {family} weights {model!r} ({reason}); the bundle "
                   "names weights of the machine it was built on: copy them to this machine under that name (a "
                   "folder or checkpoint: the same path; a hub name: the Hugging Face cache), or rebuild the "
                   f"bundle with encoders.{key}.model naming weights this machine has (dvc repro ensemble)")
    error = EncoderWeightsError(message)
    error.cause = cause
    return error


def mean_of_layers(hidden_states: Sequence[torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    """Average the requested hidden states (indices as in Python: -1 = last; 0 = the embeddings/input)."""
    n = len(hidden_states)
    for i in layers:
        if not -n <= i < n:
            raise ValueError(f"layer {i} out of range: the model gives {n} hidden states (0..{n - 1})")
    return torch.stack([hidden_states[i] for i in layers]).float().mean(0)


def defined_hidden_states(out: Any, n_blocks: int) -> list[torch.Tensor]:
    """The L + 1 hidden states of the module docstring from a transformers model output (run with
    output_hidden_states=True): the first L entries of `hidden_states` (block inputs = outputs of the block before,
    the same in transformers 4.x and 5.x), then `last_hidden_state` (the final LayerNorm applied where the model
    has one), not `hidden_states[-1]`, whose meaning changed between 4.x and 5.x."""
    states = out.hidden_states
    if states is None or len(states) != n_blocks + 1:
        got = "none" if states is None else len(states)
        raise RuntimeError(f"expected {n_blocks + 1} hidden states from a model with {n_blocks} blocks, got {got}: "
                           "this transformers version lays them out differently; see medusa/features/encoders/base.py")
    return [*states[:n_blocks], out.last_hidden_state]


def grid_samples(n_samples: int, *, min_seconds: float = 0.0, trailing_seconds: float = 0.0,
                 max_seconds: float | None = None) -> int:
    """The padded length of a clip of n_samples: the clip plus `trailing_seconds`, rounded up to whole seconds,
    at least `min_seconds` (itself rounded up), at most `max_seconds`. A function of the clip alone."""
    seconds = max(math.ceil((n_samples + trailing_seconds * SAMPLE_RATE) / SAMPLE_RATE), math.ceil(min_seconds), 1)
    if max_seconds is not None:
        seconds = min(seconds, max_seconds)
    return int(seconds * SAMPLE_RATE)


def encode_by_padded_length(batch: Sequence, padded: Sequence[Any], run: Callable[[list, Any], list]) -> list:
    """`run(sub_batch, key)` on the items of each distinct key of `padded` (in key order), results in batch order:
    clips that would be padded to different lengths never share a forward pass."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(padded):
        groups.setdefault(key, []).append(i)
    out: list = [None] * len(batch)
    for key in sorted(groups):
        idx = groups[key]
        for i, result in zip(idx, run([batch[i] for i in idx], key)):
            out[i] = result
    return out


def library_versions(*dists: str) -> dict[str, str | None]:
    """Installed versions of the libraries that define an encoder's frames (torch from torch itself)."""
    versions: dict[str, str | None] = {}
    for dist in ("torch", *dists):
        if dist == "torch":
            versions[dist] = torch.__version__
            continue
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


class Encoder(ABC):
    """Turns a batch of utterances (float32 16 kHz audio, or transcripts) into frame sequences (T_i, dim).

    Padding never reaches the output: each utterance's frames are cut to its own length."""
    kind: Kind
    dim: int
    frame_rate: float | None  # frames per second of audio; None for text (one frame per token)
    #: the distributions (besides torch) whose version defines the frames; recorded in spec()["versions"]
    libraries: tuple[str, ...] = ()
    #: how clips are padded, in words (spec()["padding"], hence the store's meta.json)
    padding_rule: str = "none"

    @abstractmethod
    def encode(self, batch: list) -> list[np.ndarray]:
        ...

    def padded_samples(self, n_samples: int) -> int | None:
        """The length a clip of n_samples is padded to, when the encoder's frames depend on it (clips are then
        batched only with clips of the same padded length); None when padding does not change the frames."""
        return None

    def spec(self) -> dict:
        """What the feature store's meta.json records about how the features were made."""
        # the store records dim itself
        return {"kind": self.kind, "frame_rate": self.frame_rate, "padding": self.padding_rule,
                "versions": library_versions(*self.libraries)}


def autocast(device: torch.device):
    """bf16 autocast on GPU (halves memory traffic, same layer math); plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
