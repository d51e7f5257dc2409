"""Self-supervised speech encoders from transformers (WavLM, HuBERT, wav2vec 2.0): hub name or local folder.

Padding. A checkpoint whose feature extractor asks for an attention mask (return_attention_mask, e.g. WavLM-large,
HuBERT-large) and whose convolutional feature encoder normalises each frame on its own (feat_extract_norm "layer")
gives the same frames however far a clip is padded: the mask keeps padding out of the attention, the convolutions
only see padding in frames past the clip's end, which are cut. Such clips are batched at any lengths. A checkpoint
used without a mask (return_attention_mask False: HuBERT/wav2vec 2.0 base, trained on unmasked zero-padded input) or
with a group-norm feature encoder (normalised over the whole padded input) does depend on padding: each clip is
padded to whole seconds (medusa.features.encoders.base.grid_samples) and only clips of the same padded length share a
forward pass. The input normalisation of the feature extractor (do_normalize) is computed per clip, on the clip's
own samples only, before any padding.

Layers: see medusa.features.encoders.base (index L = last_hidden_state, the final LayerNorm applied)."""
from __future__ import annotations

import numpy as np
import torch

from medusa.features.encoders.base import (
    LAYER_DEFINITION,
    Encoder,
    autocast,
    defined_hidden_states,
    encode_by_padded_length,
    grid_samples,
    mean_of_layers,
    weights_error,
)


class HFAudioEncoder(Encoder):
    kind = "audio"
    libraries = ("transformers",)

    def __init__(self, family: str, model: str, layers: list[int], device: torch.device, key: str = "") -> None:
        from transformers import AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor

        try:
            self.model = AutoModel.from_pretrained(model).to(device).eval()
        except (OSError, ValueError) as e:
            raise weights_error(family, model, key or family, e) from None
        config = self.model.config
        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(model)
        except (OSError, ValueError):
            # A folder with weights but no preprocessor_config.json: the standard 16 kHz, normalised input, with a
            # mask exactly where the model was trained with one (the layer-norm feature encoders of the large models).
            self.extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True,
                                                      return_attention_mask=config.feat_extract_norm == "layer")
        self.family, self.model_name, self.layers, self.device = family, model, layers, device
        self.dim = int(config.hidden_size)
        self.n_blocks = int(config.num_hidden_layers)
        # Frames per second: 16 kHz divided by the product of the conv strides (320 for these models).
        self.frame_rate = 16000 / float(np.prod(config.conv_stride))
        self.use_mask = bool(getattr(self.extractor, "return_attention_mask", False))
        self.padding_invariant = self.use_mask and config.feat_extract_norm == "layer"
        self.padding_rule = (
            "attention mask over a per-frame (layer-norm) feature encoder: frames do not depend on padding; "
            "batches padded to their longest clip" if self.padding_invariant else
            f"{'attention mask, ' if self.use_mask else 'no attention mask, '}{config.feat_extract_norm}-norm "
            "feature encoder: each clip zero-padded to whole seconds (at least its length); only clips of equal "
            "padded length share a batch")
        self.padding_rule += "; input normalised per clip on its own samples" if self._normalises else ""

    @property
    def _normalises(self) -> bool:
        return bool(getattr(self.extractor, "do_normalize", False))

    def padded_samples(self, n_samples: int) -> int | None:
        return None if self.padding_invariant else grid_samples(n_samples)

    def _prepare(self, audio: np.ndarray) -> np.ndarray:
        """The feature extractor on this clip alone: its normalisation sees the clip's own samples, no padding."""
        values = self.extractor(audio, sampling_rate=16000, return_tensors="np")["input_values"]
        return np.asarray(values, dtype=np.float32).reshape(-1)

    @torch.inference_mode()
    def encode(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        clips = [self._prepare(a) for a in batch]
        if self.padding_invariant:
            return self._encode_padded(clips, max(len(c) for c in clips))
        return encode_by_padded_length(clips, [self.padded_samples(len(c)) for c in clips], self._encode_padded)

    @torch.inference_mode()
    def _encode_padded(self, clips: list[np.ndarray], n_samples: int) -> list[np.ndarray]:
        """Clips zero-padded (the extractor's padding value) to n_samples, in one forward pass."""
        pad_value = float(getattr(self.extractor, "padding_value", 0.0))
        values = torch.full((len(clips), n_samples), pad_value, dtype=torch.float32)
        mask = torch.zeros((len(clips), n_samples), dtype=torch.long)
        for i, c in enumerate(clips):
            values[i, : len(c)] = torch.from_numpy(c)
            mask[i, : len(c)] = 1
        kwargs = {"attention_mask": mask.to(self.device)} if self.use_mask else {}
        with autocast(self.device):
            out = self.model(values.to(self.device), output_hidden_states=True, **kwargs)
        feats = mean_of_layers(defined_hidden_states(out, self.n_blocks), self.layers)
        lengths = self.model._get_feat_extract_output_lengths(torch.tensor([len(c) for c in clips])).tolist()
        return [feats[i, : int(n)].cpu().numpy() for i, n in enumerate(lengths)]

    def spec(self) -> dict:
        return {**super().spec(), "family": self.family, "model": self.model_name, "layers": self.layers,
                "layer_definition": LAYER_DEFINITION}
