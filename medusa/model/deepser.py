"""DeepSER (the paper's Algorithms 1-2) for any number of modalities, with padding masks everywhere.

ENC (Algorithm 1): x <- W2(ReLU(W1 x)); L transformer layers; h_first = output of layer 1, h_last = output of
layer L, pooled = masked mean of h_last. (The paper uses L = 2, so h_first = h1, h_last = h2, pooled = h3.)

DeepSER (Algorithm 2), N modalities:
    unimodal ENC_m on each modality                         -> h_first_m, h_last_m, pooled_m
    fusion ENC f1 over the time-concatenation of all h_first_m -> keep its h_last (a sequence)
    fusion ENC f2 over the concatenation of all h_last_m and f1's h_last -> keep its pooled vector
    x = W(concat(pooled_1 .. pooled_N, f2 pooled))          (the point where Manifold MixUp mixes)
    class logits = W_c(ReLU(x)) (one per class of the run), attributes = W_r(ReLU(x))
The late-fusion variant (Table 2's ablation) keeps only the unimodal ENCs: x = W(concat(pooled_m)).

Masks are boolean (B, T) with True on real frames. Every attention gets the key-padding mask and pooling
averages real frames only, so adding padding to a batch never changes a result (the authors' code had no masks).

Input standardisation (not in the paper; train.standardise): each modality's frames are z-scored by a per-dimension
mean and scale held as buffers of the model (Standardise), so they travel in model.safetensors and training,
evaluation and prediction all apply the same numbers. Left at 0 and 1 they change nothing.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from medusa.config.params import ArchitectureParams
from medusa.labels import ATTRIBUTES, CODES


class DeepSERConfig(ArchitectureParams):
    """One DeepSER: the architecture settings (medusa.config.params.ArchitectureParams, the `train` keys where they
    are declared, bounded and checked once; from_train copies them from there) over what the data decides."""
    input_dims: tuple[int, ...] = Field(min_length=1)  # one per modality, in the order the batches give them
    n_classes: int = len(CODES)        # the run's classes (members.train_member sets it from the manifest)
    n_attributes: int = len(ATTRIBUTES)
    extra: dict = Field(default_factory=dict)  # free-form notes kept with the config (e.g. encoder names)

    def to_dict(self) -> dict:
        """As config.json stores it (plain JSON types)."""
        return {**self.model_dump(), "input_dims": list(self.input_dims)}

    @classmethod
    def from_dict(cls, saved: dict) -> "DeepSERConfig":
        """A config as to_dict wrote it (JSON gives the input widths as a list)."""
        return cls.model_validate({**saved, "input_dims": tuple(saved["input_dims"])})

    @classmethod
    def from_train(cls, input_dims: tuple[int, ...] | list[int], train: ArchitectureParams, **data: Any
                   ) -> "DeepSERConfig":
        """The architecture of `train` (a TrainParams, or the architecture alone) over `input_dims`; `data`: the
        other data-dependent fields (n_classes ...)."""
        architecture = {name: getattr(train, name) for name in ArchitectureParams.model_fields}
        return cls(input_dims=tuple(input_dims), **architecture, **data)


class Standardise(nn.Module):
    """(x - mean) / scale per input dimension, padded frames back to 0. The numbers are buffers: saved with the
    weights, never trained."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return ((x - self.mean) / self.scale).masked_fill(~mask.unsqueeze(-1), 0.0)


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real frames (mask True) of h (B, T, D) -> (B, D)."""
    w = mask.unsqueeze(-1).to(h.dtype)
    return (h * w).sum(1) / w.sum(1).clamp(min=1.0)


class ENC(nn.Module):
    """Algorithm 1: two-layer input MLP, L transformer layers, masked mean pooling."""

    def __init__(self, d_in: int, cfg: DeepSERConfig) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(d_in, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, cfg.ff_mult * cfg.hidden, cfg.dropout,
                                       batch_first=True)
            for _ in range(cfg.layers))

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.proj(x)
        padding = ~mask
        outputs = []
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=padding)
            # PyTorch's fast path may leave anything in padded rows; zero them so nothing downstream sees it.
            h = h.masked_fill(padding.unsqueeze(-1), 0.0)
            outputs.append(h)
        return outputs[0], outputs[-1], masked_mean(outputs[-1], mask)


class DeepSER(nn.Module):
    def __init__(self, cfg: DeepSERConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = len(cfg.input_dims)
        self.standardise = nn.ModuleList(Standardise(d) for d in cfg.input_dims)
        self.unimodal = nn.ModuleList(ENC(d, cfg) for d in cfg.input_dims)
        if cfg.fusion == "deep":
            self.fusion1 = ENC(cfg.hidden, cfg)
            self.fusion2 = ENC(cfg.hidden, cfg)
            fused_in = (n + 1) * cfg.hidden
        else:
            fused_in = n * cfg.hidden
        self.fuse = nn.Linear(fused_in, cfg.hidden)
        self.class_head = nn.Linear(cfg.hidden, cfg.n_classes)
        self.attribute_head = nn.Linear(cfg.hidden, cfg.n_attributes)

    def set_standardisation(self, statistics: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Per modality (mean, scale) of its input dimensions (medusa.model.dataset.input_statistics)."""
        if len(statistics) != len(self.standardise):
            raise ValueError(f"{len(statistics)} sets of statistics for {len(self.standardise)} modalities")
        for m, (layer, (mean, scale)) in enumerate(zip(self.standardise, statistics)):
            mean, scale = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(scale, dtype=torch.float32)
            if mean.shape != layer.mean.shape or scale.shape != layer.scale.shape:
                raise ValueError(f"modality {m}: statistics of shape {tuple(mean.shape)}/{tuple(scale.shape)}, "
                                 f"expected ({layer.mean.numel()},)")
            if not (torch.isfinite(mean).all() and torch.isfinite(scale).all() and (scale > 0).all()):
                raise ValueError(f"modality {m}: input statistics must be finite with positive scales")
            layer.mean.copy_(mean)
            layer.scale.copy_(scale)

    def fused(self, xs: list[Tensor], masks: list[Tensor]) -> Tensor:
        """The fused representation x (B, hidden): the Manifold MixUp point."""
        if len(xs) != len(self.unimodal) or len(masks) != len(xs):
            raise ValueError(f"expected {len(self.unimodal)} modalities, got {len(xs)} inputs and {len(masks)} masks")
        xs = [z(x, m) for z, x, m in zip(self.standardise, xs, masks)]
        firsts, lasts, pooled = zip(*(enc(x, m) for enc, x, m in zip(self.unimodal, xs, masks)))
        if self.cfg.fusion == "late":
            return self.fuse(torch.cat(pooled, dim=-1))
        cat_mask = torch.cat(masks, dim=1)
        _, f1_last, _ = self.fusion1(torch.cat(firsts, dim=1), cat_mask)
        _, _, f2_pooled = self.fusion2(torch.cat([*lasts, f1_last], dim=1), torch.cat([cat_mask, cat_mask], dim=1))
        return self.fuse(torch.cat([*pooled, f2_pooled], dim=-1))

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(class logits (B, n_classes), attributes (B, n_attributes)) from the fused representation."""
        h = torch.relu(x)
        return self.class_head(h), self.attribute_head(h)

    def forward(self, xs: list[Tensor], masks: list[Tensor]) -> tuple[Tensor, Tensor]:
        return self.heads(self.fused(xs, masks))


def manifold_mixup(x: Tensor, targets: Tensor, attributes: Tensor, lam: float, perm: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Mix each sample with sample perm[i]: features, soft targets and attributes all with the same lambda."""
    mix = lambda a: lam * a + (1.0 - lam) * a[perm]  # noqa: E731 - one expression, used three times
    return mix(x), mix(targets), mix(attributes)


def soft_cross_entropy(logits: Tensor, targets: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Mean over the batch of -sum_c w_c p_c log q_c (p: soft targets, q: softmax(logits), w: class weights).

    With one-hot targets and no weights this is the usual cross-entropy; with weights it is the per-sample
    weighted loss averaged over samples (not torch's weight-normalised mean)."""
    log_q = torch.log_softmax(logits, dim=-1)
    weighted = targets * (class_weights if class_weights is not None else 1.0)
    return -(weighted * log_q).sum(-1).mean()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
