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
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from medusa.dataset import Batch, FeatureDataset, bucketed
from medusa.io import atomic_path
from medusa.deepser import DeepSER, manifold_mixup, soft_cross_entropy
from medusa.labels import CODES, balanced_epoch, class_weights
from medusa.metrics import balanced_macro_f1, macro_f1

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


def _labelled_predictions(model: DeepSER, data: FeatureDataset, cfg: TrainConfig, device: torch.device
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(consensus, predicted class) over the utterances of `data` whose consensus is one of the 8 classes."""
    probs, _ = predict(model, data, 4 * cfg.batch_size, device, cfg.amp)
    keep = np.isin(data.labels, CODES)
    return data.labels[keep], np.asarray(CODES)[probs.argmax(1)][keep]


def evaluate(model: DeepSER, data: FeatureDataset, cfg: TrainConfig, device: torch.device) -> float:
    """Balanced macro-F1 on the utterances of `data` whose consensus is one of the 8 classes."""
    return balanced_macro_f1(*_labelled_predictions(model, data, cfg, device), cfg.eval_resamples, cfg.seed)[0]


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


@dataclass
class _Progress:
    """Everything an interrupted run needs to continue exactly where it stopped (saved after every epoch)."""
    stage: int = 1
    epoch: int = 0                 # epochs completed in `stage`
    stale: int = 0                 # epochs since the best dev score (early stopping)
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"score": -1.0, "stage": 0, "epoch": 0})
    best_state: dict | None = None
    optimizer: dict | None = None  # the current stage's optimizer; None when a stage starts


def _rng_states(rng: np.random.Generator) -> dict:
    states = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(rng: np.random.Generator, states: dict) -> None:
    rng.bit_generator.state = states["numpy"]
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _fingerprint(model: DeepSER, train: FeatureDataset, dev: FeatureDataset, cfg: TrainConfig) -> str:
    """What a checkpoint was made for: config, architecture and the utterances; another one is not resumed."""
    blob = json.dumps([asdict(cfg), model.cfg.to_dict(), list(train.rows["utt_id"]), list(dev.rows["utt_id"]),
                       train.pools], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _save_checkpoint(path: Path, model: DeepSER, progress: _Progress, rng: np.random.Generator, fingerprint: str
                     ) -> None:
    state = {"fingerprint": fingerprint, "model": model.state_dict(), "rng": _rng_states(rng), **asdict(progress)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, model: DeepSER, rng: np.random.Generator, fingerprint: str,
                     device: torch.device) -> _Progress | None:
    if not path.exists():
        return None
    try:
        # on the CPU: torch.set_rng_state needs a CPU tensor; load_state_dict moves weights to the model's device
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: say so and start afresh rather than fail the stage
        log.warning("ignoring unreadable checkpoint %s (%s); training from the start", path, e)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("checkpoint %s was made with other settings or data; training from the start", path)
        return None
    model.load_state_dict(state["model"])
    _set_rng_states(rng, state["rng"])
    progress = _Progress(**{k: state[k] for k in _Progress.__dataclass_fields__})
    log.info("resuming from %s: stage %d, %d epoch(s) done", path, progress.stage, progress.epoch)
    return progress


def _epoch_rows(stage: int, train: FeatureDataset, rng: np.random.Generator) -> np.ndarray:
    if stage == 1:  # every utterance with a target (all-Other ones have none)
        return np.flatnonzero(~np.isnan(train.targets).any(1))
    pool = np.flatnonzero(np.isin(train.labels, CODES))  # stage 2: a fresh class-balanced subset every epoch
    return pool[balanced_epoch(train.labels[pool], rng)]


def train_deepser(model: DeepSER, train: FeatureDataset, dev: FeatureDataset, cfg: TrainConfig,
                  device: torch.device, checkpoint: str | Path | None = None,
                  on_epoch: Callable[[dict], None] | None = None, monitor: FeatureDataset | None = None
                  ) -> tuple[DeepSER, list[dict], dict]:
    """Stages 1 and 2; returns the model with the best dev weights, the history, and where the best was.

    With `checkpoint`, the state after every epoch (weights, optimizer, random generators, history, best
    weights) is saved there, and a later call with the same settings and data resumes from it: the result is
    the same as an uninterrupted run. The caller deletes the file once the outputs are safely written.
    `on_epoch(history_row)` is called after each epoch (and its checkpoint).
    `monitor` (e.g. the test split) is scored after every epoch as `monitor_macro_f1` in the history, for
    diagnosis only: it never takes part in selection or early stopping.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model.to(device)
    weights = None
    if cfg.class_weighted:
        mass = np.nansum(train.targets, axis=0)
        weights = torch.tensor(class_weights(mass), dtype=torch.float32, device=device)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    fingerprint = _fingerprint(model, train, dev, cfg)
    progress = (_load_checkpoint(checkpoint, model, rng, fingerprint, device) if checkpoint else None) or _Progress()
    if progress.best_state is None:
        progress.best_state = copy.deepcopy(model.state_dict())
    stages = [(1, cfg.stage1_epochs, weights)] + ([(2, cfg.stage2_epochs, None)] if cfg.stage2_epochs > 0 else [])
    for stage, epochs, stage_weights in stages:
        if stage < progress.stage:
            continue
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if progress.optimizer is not None:
            optimizer.load_state_dict(progress.optimizer)
        elif stage > 1:  # stage 2 starts from stage 1's best weights, with a fresh optimizer
            model.load_state_dict(progress.best_state)
        while progress.epoch < epochs and progress.stale < cfg.patience:
            rows = _epoch_rows(stage, train, rng)
            model.train()
            losses = [train_step(model, optimizer, train.batch(idx), stage_weights, cfg, rng, device)
                      for idx in tqdm(bucketed(rows, train.lengths, cfg.batch_size, rng), unit="batch",
                                      desc=f"stage {stage} epoch {progress.epoch + 1}", leave=False)]
            score = evaluate(model, dev, cfg, device)
            progress.epoch += 1
            row = {"stage": stage, "epoch": progress.epoch, "train_loss": float(np.mean(losses)),
                   "dev_balanced_macro_f1": score, "utterances": int(len(rows))}
            if monitor is not None:
                row["monitor_macro_f1"] = macro_f1(*_labelled_predictions(model, monitor, cfg, device))
            progress.history.append(row)
            log.info("stage %d epoch %d: loss %.4f, dev balanced macro-F1 %.4f", stage, progress.epoch,
                     row["train_loss"], score)
            if score > progress.best["score"]:
                progress.best = {"score": score, "stage": stage, "epoch": progress.epoch}
                progress.best_state = copy.deepcopy(model.state_dict())
                progress.stale = 0
            else:
                progress.stale += 1
            progress.optimizer = optimizer.state_dict()
            if checkpoint:
                _save_checkpoint(checkpoint, model, progress, rng, fingerprint)
            if on_epoch:
                on_epoch(row)
        progress = replace(progress, stage=stage + 1, epoch=0, stale=0, optimizer=None)
    model.load_state_dict(progress.best_state)
    return model, progress.history, {**progress.best, "config": asdict(cfg)}
