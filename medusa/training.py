"""Stages 1-2 of MEDUSA's recipe for one DeepSER.

Stage 1: the whole training set, soft-target cross-entropy with class weights alpha_c = (N / (|C| f_c))^0.5
(f_c = the soft-target mass of class c), plus the attribute MSE, Manifold MixUp with probability p.
Stage 2: from stage 1's best weights, each epoch on a freshly drawn class-balanced subset (utterances whose
consensus is one of the 8 classes), uniform class weights, one optimizer for the whole stage (the authors'
release re-created it every epoch, and stepped only once per epoch: here every batch steps).
Loss = ce_weight * CE + mse_weight * MSE (paper: 1.5 and 0.4). Model selection: balanced macro-F1 on dev
(medusa.metrics). Every random draw comes from `seed`: same config, same data, same weights on CPU.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from medusa.dataset import Batch, FeatureDataset, bucketed
from medusa.deepser import DeepSER, manifold_mixup, soft_cross_entropy
from medusa.labels import CODES, balanced_epoch, class_weights
from medusa.metrics import balanced_macro_f1

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 16
    lr: float = 1e-5
    weight_decay: float = 0.01
    stage1_epochs: int = 10
    stage2_epochs: int = 5          # 0 switches stage 2 off (ablation)
    patience: int = 3               # epochs without a better dev score before a stage stops
    grad_clip: float = 1.0
    mixup_p: float = 0.3            # 0 switches Manifold MixUp off (ablation)
    mixup_alpha: float = 0.4        # lambda ~ Beta(alpha, alpha)
    ce_weight: float = 1.5
    mse_weight: float = 0.4         # 0 switches the multitask attribute loss off (ablation)
    class_weighted: bool = True     # stage-1 class weights
    eval_resamples: int = 10
    amp: bool = True                # bf16 autocast on CUDA (no effect on CPU)
    seed: int = 0


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); a no-op elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def predict(model: DeepSER, data: FeatureDataset, batch_size: int, device: torch.device, amp: bool = True
            ) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, 8) and scaled attributes (N, 3), in the dataset's row order."""
    model.eval()
    probs, attrs = np.zeros((len(data), len(CODES)), np.float32), np.zeros((len(data), 3), np.float32)
    order = np.argsort(data.lengths, kind="stable")
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            b = data.batch(idx)
            with autocast(device, amp):
                logits, a = model([x.to(device) for x in b.xs], [m.to(device) for m in b.masks])
            probs[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
            attrs[idx] = a.float().cpu().numpy()
    return probs, attrs


def evaluate(model: DeepSER, data: FeatureDataset, cfg: TrainConfig, device: torch.device) -> float:
    """Balanced macro-F1 on the utterances of `data` whose consensus is one of the 8 classes."""
    probs, _ = predict(model, data, 4 * cfg.batch_size, device, cfg.amp)
    keep = np.isin(data.labels, CODES)
    pred = np.asarray(CODES)[probs.argmax(1)]
    return balanced_macro_f1(data.labels[keep], pred[keep], cfg.eval_resamples, cfg.seed)[0]


def batch_loss(model: DeepSER, batch: Batch, weights: torch.Tensor | None, cfg: TrainConfig,
               rng: np.random.Generator, device: torch.device) -> torch.Tensor:
    """ce_weight * soft CE (+ mse_weight * attribute MSE), after Manifold MixUp with probability mixup_p."""
    with autocast(device, cfg.amp):
        x = model.fused([t.to(device) for t in batch.xs], [m.to(device) for m in batch.masks])
    x = x.float()
    targets, attrs = batch.targets.to(device), batch.attributes.to(device)
    if cfg.mixup_p > 0 and rng.random() < cfg.mixup_p and len(x) > 1:
        lam = float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
        perm = torch.from_numpy(rng.permutation(len(x))).to(device)
        x, targets, attrs = manifold_mixup(x, targets, attrs, lam, perm)
    logits, pred_attrs = model.heads(x)
    logits, pred_attrs = logits.float(), pred_attrs.float()
    loss = cfg.ce_weight * soft_cross_entropy(logits, targets, weights)
    known = ~torch.isnan(attrs).any(-1)
    if cfg.mse_weight > 0 and known.any():
        loss = loss + cfg.mse_weight * torch.mean((pred_attrs[known] - attrs[known]) ** 2)
    return loss


def train_step(model: DeepSER, optimizer: torch.optim.Optimizer, batch: Batch, weights: torch.Tensor | None,
               cfg: TrainConfig, rng: np.random.Generator, device: torch.device) -> float:
    """One optimizer step on one batch (every batch steps; the authors' loop stepped once per epoch)."""
    loss = batch_loss(model, batch, weights, cfg, rng, device)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.item()


def _run_stage(model, stage: int, train: FeatureDataset, dev: FeatureDataset, cfg: TrainConfig, epochs: int,
               weights: torch.Tensor | None, rng: np.random.Generator, device: torch.device,
               history: list[dict], best: dict) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    usable = np.flatnonzero(~np.isnan(train.targets).any(1))           # rows with a target
    balanced_pool = np.flatnonzero(np.isin(train.labels, CODES))
    stale = 0
    for epoch in range(1, epochs + 1):
        if stage == 1:
            rows = usable
        else:  # a fresh class-balanced subset every epoch
            rows = balanced_pool[balanced_epoch(train.labels[balanced_pool], rng)]
        model.train()
        losses = []
        for idx in tqdm(bucketed(rows, train.lengths, cfg.batch_size, rng), desc=f"stage {stage} epoch {epoch}",
                        unit="batch", leave=False):
            losses.append(train_step(model, optimizer, train.batch(idx), weights, cfg, rng, device))
        score = evaluate(model, dev, cfg, device)
        history.append({"stage": stage, "epoch": epoch, "train_loss": float(np.mean(losses)),
                        "dev_balanced_macro_f1": score, "utterances": int(len(rows))})
        log.info("stage %d epoch %d: loss %.4f, dev balanced macro-F1 %.4f", stage, epoch, np.mean(losses), score)
        if score > best["score"]:
            best.update(score=score, stage=stage, epoch=epoch, state=copy.deepcopy(model.state_dict()))
            stale = 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break


def train_deepser(model: DeepSER, train: FeatureDataset, dev: FeatureDataset, cfg: TrainConfig,
                  device: torch.device) -> tuple[DeepSER, list[dict], dict]:
    """Stages 1 and 2; returns the model with the best dev weights, the history, and where the best was."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model.to(device)
    weights = None
    if cfg.class_weighted:
        mass = np.nansum(train.targets, axis=0)
        weights = torch.tensor(class_weights(mass), dtype=torch.float32, device=device)
    history: list[dict] = []
    best = {"score": -1.0, "stage": 0, "epoch": 0, "state": copy.deepcopy(model.state_dict())}
    _run_stage(model, 1, train, dev, cfg, cfg.stage1_epochs, weights, rng, device, history, best)
    if cfg.stage2_epochs > 0:
        model.load_state_dict(best["state"])
        _run_stage(model, 2, train, dev, cfg, cfg.stage2_epochs, None, rng, device, history, best)
    model.load_state_dict(best["state"])
    summary = {k: best[k] for k in ("score", "stage", "epoch")}
    return model, history, {**summary, "config": asdict(cfg)}
