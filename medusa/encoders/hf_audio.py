"""Self-supervised speech encoders from transformers (WavLM, HuBERT, wav2vec 2.0): hub name or local folder."""
from __future__ import annotations

import numpy as np
import torch

from medusa.encoders.base import Encoder, autocast, mean_of_layers, weights_error


class HFAudioEncoder(Encoder):
    kind = "audio"

    def __init__(self, family: str, model: str, layers: list[int], device: torch.device, key: str = "") -> None:
        from transformers import AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor

        try:
            self.model = AutoModel.from_pretrained(model).to(device).eval()
        except (OSError, ValueError) as e:
            raise weights_error(family, model, key or family, e) from None
        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(model)
        except (OSError, ValueError):
            # A folder with weights but no preprocessor_config.json: the standard 16 kHz, normalised input.
            self.extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True,
                                                      return_attention_mask=True)
        self.family, self.model_name, self.layers, self.device = family, model, layers, device
        self.dim = int(self.model.config.hidden_size)
        # Frames per second: 16 kHz divided by the product of the conv strides (320 for these models).
        self.frame_rate = 16000 / float(np.prod(self.model.config.conv_stride))

    @torch.inference_mode()
    def encode(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        inputs = self.extractor(batch, sampling_rate=16000, padding=True, return_attention_mask=True,
                                return_tensors="pt")
        mask = inputs["attention_mask"]
        # Models trained without an attention mask (e.g. HuBERT/wav2vec2 base) expect zero-padded input without
        # a mask; length-bucketed batches keep that padding small.
        kwargs = {"attention_mask": mask.to(self.device)} if self.extractor.return_attention_mask else {}
        with autocast(self.device):
            out = self.model(inputs["input_values"].to(self.device), output_hidden_states=True, **kwargs)
        feats = mean_of_layers(out.hidden_states, self.layers)
        lengths = self.model._get_feat_extract_output_lengths(mask.sum(-1)).tolist()
        return [feats[i, : int(n)].cpu().numpy() for i, n in enumerate(lengths)]

    def spec(self) -> dict:
        return {**super().spec(), "family": self.family, "model": self.model_name, "layers": self.layers}
