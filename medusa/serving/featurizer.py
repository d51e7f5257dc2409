"""A bundle's pretrained models, built once and kept: Whisper transcripts and each encoder's features for clips in
memory, computed as the pipeline's transcribe and extract stages computed the members' training inputs.

A `Featurizer` belongs to a medusa.serving.predict.Predictor. Each encoder and the Whisper ASR is built on first use
and kept for the next calls, so one file per call costs about what a batched call costs per file (before, every
batch built every model again: at the paper's size ~18 GB of weights per call). Where the ASR and a Whisper
encoder name the same weights, one Whisper model serves both (it is read-only: the ASR slices its positional
embedding for a call and puts it back, and both run it under inference mode).

`resident`: "all" keeps every model (the default: fastest); "one" keeps at most one model in memory, freeing the
others before it builds the next (for a GPU too small for all of them at once). The two give the same features:
the only difference is when a model is built, never how it computes.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from medusa.errors import UserError
from medusa.features.encoders import build_encoder
from medusa.features.encoders.base import weights_error
from medusa.serving.bundle import BundleError
from medusa.serving.inference import ClipError

if TYPE_CHECKING:
    from medusa.serving.inference import Bundle

log = logging.getLogger(__name__)

#: the choices of Featurizer.resident (and of `medusa predict --resident`)
RESIDENT = ("all", "one")
#: the name under which the ASR's Whisper is kept (encoder keys are params.yaml's names, which cannot hold a space)
ASR = "asr model"


class FeaturizerError(UserError, ValueError):
    """A setting of the Featurizer out of range; the message names it."""


@dataclass
class Featurizer:
    """Transcripts and features for a bundle's members (medusa.serving.inference.Bundle: its encoders.json entries,
    asr.json, the members' input widths), with models built once on `device`."""
    bundle: Bundle
    device: torch.device
    cache_dir: Path = Path("work/cache")
    resident: str = "all"
    builds: Counter = field(default_factory=Counter)   # constructions per model (encoder key, or ASR): tests, benchmarks
    _models: dict[str, Any] = field(default_factory=dict, repr=False)
    _whispers: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.resident not in RESIDENT:
            raise FeaturizerError(f"resident must be one of {', '.join(RESIDENT)}, got {self.resident!r}")
        self.cache_dir = Path(self.cache_dir)

    # ---- the models

    def close(self) -> None:
        """Free every model (a later call builds them again)."""
        self._models.clear()
        self._whispers.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def loaded(self) -> list[str]:
        """The models held now: encoder keys, and ASR for the Whisper ASR."""
        return list(self._models)

    def _make_room(self, name: str) -> None:
        """With resident="one": free every model but `name` before `name` is built or used."""
        if self.resident == "one" and any(k != name for k in self._models):
            kept = self._models.pop(name, None)
            self.close()
            if kept is not None:
                self._models[name] = kept

    def _whisper(self, model: str):
        """The Whisper model `model`, loaded once and shared by the ASR and the Whisper encoders naming it.
        FileNotFoundError (load_whisper's) when its weights are not on this machine: the callers say which file of
        the bundle names them."""
        from medusa.features.encoders.whisper import load_whisper

        if model not in self._whispers:
            self._whispers[model] = load_whisper(model, self.cache_dir, self.device).eval()
        return self._whispers[model]

    def asr_model(self):
        """The bundle's Whisper ASR model (asr.json), built on first use."""
        b = self.bundle
        if b.asr is None:
            raise BundleError(f"{b.path}: the bundle has no ASR settings (asr.json is null)")
        self._make_room(ASR)
        if ASR not in self._models:
            try:
                self._models[ASR] = self._whisper(b.asr["model"])
            except FileNotFoundError as e:  # load_whisper's message sends the user to params.yaml: the bundle names it
                cause = e.__context__ or e
                raise BundleError(f"{b.path / 'asr.json'}: model: cannot load the Whisper ASR weights "
                                  f"{b.asr['model']!r} ({type(cause).__name__}: {str(cause).splitlines()[0][:200]}); "
                                  "the bundle was built where they are: copy the checkpoint to that path here, or "
                                  "rebuild the bundle with transcribe.model naming a checkpoint this machine has "
                                  "(dvc repro ensemble)") from None
            self.builds[ASR] += 1
        return self._models[ASR]

    def encoder(self, key: str):
        """The encoder of encoders.json's entry `key`, built on first use. Weights that are not on this machine are
        blamed on the bundle's file and key, not on params.yaml (which the encoder's own message names)."""
        self._make_room(key)
        if key in self._models:
            return self._models[key]
        b, e = self.bundle, self.bundle.encoders[key]
        source = str(b.path / "encoders.json")
        try:
            if e["family"] == "whisper":
                from medusa.features.encoders.whisper import WhisperEncoder
                encoder = WhisperEncoder(e["model"], e["layers"], self.device, self.cache_dir,
                                         float(e.get("pad_seconds", 0.0)), whisper=self._whisper(e["model"]))
            else:
                encoder = build_encoder(key, e["family"], e["model"], e["layers"], self.device, self.cache_dir,
                                        float(e.get("pad_seconds", 0.0)))
        except FileNotFoundError as error:  # EncoderWeightsError: the library's own exception is its cause
            cause = getattr(error, "cause", None) or error.__context__ or error
            raise weights_error(e["family"], e["model"], key, cause, source=source) from None
        if encoder.dim != b.dims[key]:
            raise BundleError(f"encoder {key!r} ({e['family']} {e['model']!r}) gives {encoder.dim}-d frames, "
                              f"the members were trained on {b.dims[key]}-d ones")
        padding = encoder.spec().get("padding")
        if "padding" in e and e["padding"] != padding:
            raise BundleError(f"encoder {key!r}: the members were trained on features padded as {e['padding']!r}, "
                              f"this version of medusa pads as {padding!r}; rebuild the features and the bundle "
                              "with this version (dvc repro)")
        self._models[key] = encoder
        self.builds[key] += 1
        return encoder

    # ---- clips -> transcripts and features

    def transcribe(self, audios: list[np.ndarray]) -> list[str]:
        """Whisper transcripts of float32 16 kHz clips with the bundle's ASR settings, batched as the transcribe
        stage batches (clips of one padding window together): each transcript depends on its clip alone."""
        from medusa.features.asr import asr_batches, transcribe_clips

        model = self.asr_model()
        asr = self.bundle.asr
        pad_seconds = float(asr["pad_seconds"])
        texts = [""] * len(audios)
        batches = asr_batches([f"{i:09d}" for i in range(len(audios))], [len(a) / 16000 for a in audios],
                              int(asr["batch_size"]), pad_seconds)
        for idx in batches:
            out = transcribe_clips(model, [audios[i] for i in idx], asr["language"], pad_seconds,
                                   int(asr.get("beam_size", 1)))
            for i, text in zip(idx, out):
                texts[i] = text
        return texts

    def encode(self, audios: list[np.ndarray], texts: list[str] | None = None, names: list[str] | None = None
               ) -> dict[str, list[np.ndarray]]:
        """Features per encoder key, made as the extract stage made the members' training features: batches
        planned as there (medusa.features.extract.plan_batches), then rounded to float16 as the feature stores hold
        them. `texts` (the transcripts) are needed when a member reads a text encoder; `names` label clips in error
        messages. A BundleError if this code pads clips otherwise than the code that made the members' stores."""
        from medusa.features.extract import plan_batches

        names = names or [f"clip {i}" for i in range(len(audios))]
        items = pd.DataFrame({"utt_id": [f"{i:09d}" for i in range(len(audios))],
                              "duration_s": [len(a) / 16000 for a in audios],
                              "text": texts if texts is not None else [""] * len(audios)})
        features: dict[str, list[np.ndarray]] = {}
        for key in self.bundle.encoder_keys:
            encoder = self.encoder(key)
            if encoder.kind == "text" and texts is None:
                raise ValueError(f"encoder {key!r} reads transcripts; pass texts")
            inputs = audios if encoder.kind == "audio" else list(items["text"])
            e = self.bundle.encoders[key]
            # No batch-mate changes a clip's frames (medusa.features.encoders.base), so the extract stage's batching
            # is used as is; it groups clips by padded length, which the encoder would otherwise split itself.
            out: list[np.ndarray | None] = [None] * len(audios)
            for idx in plan_batches(encoder, items, int(e["batch_size"]), float(e["batch_seconds"])):
                for i, frames in zip(idx, encoder.encode([inputs[i] for i in idx])):
                    out[i] = as_stored(frames, key, names[i])
            features[key] = out  # type: ignore[assignment]
        return features

    def features(self, audios: list[np.ndarray], names: list[str] | None = None
                 ) -> tuple[list[str] | None, dict[str, list[np.ndarray]]]:
        """(transcripts or None when no member reads text, features per encoder key) of clips in memory."""
        texts = self.transcribe(audios) if self.bundle.needs_asr else None
        return texts, self.encode(audios, texts, names)


def as_stored(frames: np.ndarray, key: str, name: str) -> np.ndarray:
    """Frames as a feature store would give them back (float16): the members never saw more precision. ClipError
    naming the clip where float16 cannot hold them (the extract stage refuses such frames too)."""
    x = np.asarray(frames, dtype=np.float32).astype(np.float16)
    if not np.isfinite(x).all():
        raise ClipError(f"{name}: encoder {key!r} gives values float16 cannot hold (NaN, inf or |x| > 65504); "
                        "the extract stage would have refused them too (check the audio)")
    return x


__all__ = ["ASR", "RESIDENT", "Featurizer", "FeaturizerError", "as_stored"]
