"""Stages 1-2 of MEDUSA's recipe for one DeepSER.

Stage 1: every training utterance with a target (FeatureDataset.has_target: soft targets keep X and O rows
that have class votes; one-hot targets only rows of the run's classes; neither has rows without class votes),
soft-target cross-entropy with class weights alpha_c = (N / (|C| f_c))^0.5 (f_c = the target mass of class c),
plus the attribute MSE, Manifold MixUp with probability p.
Stage 2: from stage 1's best weights, each epoch on a freshly drawn class-balanced subset (utterances with a
target whose consensus is one of the run's classes), uniform class weights, one optimizer for the whole stage (the
authors' release re-created it every epoch, and stepped only once per epoch: here every batch steps).
An epoch (the unit of dev evaluation, early stopping and checkpoints) is one pass over the stage's rows, or with
epoch_steps > 0 that many optimizer steps drawn from fresh passes (a budget that does not shrink with the corpus).
Loss = ce_weight * CE + mse_weight * MSE (paper: 1.5 and 0.4); a loss that is not finite stops training with
an error naming the batch's utterances. Model selection: balanced macro-F1 on dev (medusa.scoring.metrics). Every random
draw comes from `seed`: same config, same data, same weights on CPU. A checkpoint resumes only a run with the
same inputs and the same code (_fingerprint: config, architecture, initial weights, rows and targets, feature stores,
the source of every module that shapes training (training_code) and the torch and numpy versions).
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

from medusa.config.params import TrainParams
from medusa.features.store.reader import FRAMES_FILE, INDEX_FILE, META_FILE, FeatureStore
from medusa.imports import import_closure
from medusa.io import atomic_path, remove_stale_temps
from medusa.labels import balanced_epoch, class_weights
from medusa.model.dataset import Batch, FeatureDataset, bucketed
from medusa.model.deepser import DeepSER, manifold_mixup, soft_cross_entropy
from medusa.scoring.metrics import balanced_macro_f1

log = logging.getLogger(__name__)


class TrainConfig(TrainParams):
    """What one training run reads: params' `train` section (with the model's overrides applied:
    medusa.config.params.resolve_train) and the model's seed. Every setting is declared once, in TrainParams."""
    seed: int

    @classmethod
    def of(cls, train: TrainParams, seed: int, **overrides) -> "TrainConfig":
        """`train` with `seed` (and `overrides`, validated like params) as a run's config."""
        return cls.model_validate({**train.model_dump(), **overrides, "seed": seed})


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); a no-op elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def predict(model: DeepSER, data: FeatureDataset, batch_size: int, device: torch.device, amp: bool
            ) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, C: the model's classes) and scaled attributes (N, 3), in the dataset's row order."""
    model.eval()
    probs = np.zeros((len(data), model.cfg.n_classes), np.float32)
    attrs = np.zeros((len(data), model.cfg.n_attributes), np.float32)
    order = np.argsort(data.lengths, kind="stable")
    chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    with torch.no_grad():
        for idx, b in zip(chunks, data.batches(chunks)):
            with autocast(device, amp):
                logits, a = model([x.to(device) for x in b.xs], [m.to(device) for m in b.masks])
            probs[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
            attrs[idx] = a.float().cpu().numpy()
    return probs, attrs


def _labelled_predictions(model: DeepSER, data: FeatureDataset, cfg: TrainConfig, device: torch.device
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(consensus, predicted class) over the utterances of `data` whose consensus is one of its classes (the
    run's: the model's outputs, in the same order)."""
    probs, _ = predict(model, data, 4 * cfg.batch_size, device, cfg.amp)
    keep = np.isin(data.labels, data.classes)
    return data.labels[keep], np.asarray(data.classes)[probs.argmax(1)][keep]


def evaluate(model: DeepSER, data: FeatureDataset, cfg: TrainConfig, device: torch.device) -> float:
    """Balanced macro-F1 (medusa.scoring.metrics: the class-balanced confusion matrix, deterministic, so selection does
    not depend on a resampling seed) on the utterances of `data` whose consensus is one of the run's classes
    (`data.classes`)."""
    return balanced_macro_f1(*_labelled_predictions(model, data, cfg, device), data.classes)


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


class NonFiniteLossError(RuntimeError):
    """A training batch gave a loss that is not finite; the message names the batch's utterances."""


def _non_finite_loss_message(value: float, batch: Batch) -> str:
    """What to say about a batch whose loss is `value` (nan or inf): its utterances, and the likely cause."""
    no_target = [u for u, t in zip(batch.utt_ids, batch.targets) if not torch.isfinite(t).all()]
    cause = (f"{', '.join(no_target)} {'has' if len(no_target) == 1 else 'have'} no finite training target "
             "(e.g. no annotator rows, or only `Other-...` votes): such rows must not be drawn; check the "
             "manifest's p_ columns" if no_target else
             "every target is finite, so the model itself diverged (lower train.lr, check the features)")
    return (f"the training loss is {value} on the batch of utterances {', '.join(batch.utt_ids)}; {cause}. "
            "Training stopped rather than go on with weights a non-finite gradient would ruin.")


def train_step(model: DeepSER, optimizer: torch.optim.Optimizer, batch: Batch, weights: torch.Tensor | None,
               cfg: TrainConfig, rng: np.random.Generator, device: torch.device) -> float:
    """One optimizer step on one batch (every batch steps; the authors' loop stepped once per epoch).

    Raises NonFiniteLossError, before any weight changes, when the loss is nan or inf: one such step would turn
    every weight into nan and the rest of the run would silently report nonsense."""
    loss = batch_loss(model, batch, weights, cfg, rng, device)
    # read the value before backward (the one host sync per step, moved here from after the step)
    value = loss.item()
    if not np.isfinite(value):
        raise NonFiniteLossError(_non_finite_loss_message(value, batch))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return value


@dataclass
class _Progress:
    """Everything an interrupted run needs to continue exactly where it stopped (saved after every epoch)."""
    stage: int = 1
    epoch: int = 0                 # epochs completed in `stage`
    stale: int = 0                 # epochs since the best dev score (early stopping)
    steps: int = 0                 # optimizer steps so far, both stages
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


def store_identity(store: FeatureStore) -> str:
    """A digest of what a finished feature store holds: sha256 of its meta.json and index.parquet, and the
    size and modification time (ns) of its frames file.

    Why this suffices, cheaply: a finished store is never written again (its writer builds `<root>.partial`
    and renames it into place; a re-extraction replaces the whole folder, frames file included). meta.json
    records what made the frames (encoder spec, dims, counts, library versions), index.parquet every utterance
    with its offset and frame count, so a change of settings, utterances or lengths shows there; new frames of
    the same shapes (other weights under the same name, audio changed at equal length) come in a newly written
    frames file, with a new mtime. Size + mtime_ns is the rule make and rsync use, and medusa.features.fingerprint uses
    for audio. Hashing every frame would be exact but reads the whole file (tens of GB at the paper's scale) at
    every start. The cheap rule errs on the safe side: a store copied or checked out again (new mtime) discards
    a checkpoint, costing a retraining, never a mix of data."""
    h = hashlib.sha256()
    for name in (META_FILE, INDEX_FILE):
        h.update(name.encode() + b"\0" + (store.root / name).read_bytes() + b"\0")
    st = (store.root / FRAMES_FILE).stat()
    h.update(f"{FRAMES_FILE}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _rows_digest(data: FeatureDataset) -> str:
    """sha256 of what a split contributes to training and selection: utterance ids, consensus labels, training
    targets (soft or one-hot, NaN where none) and scaled attributes, in row order."""
    h = hashlib.sha256()
    labels = [x if isinstance(x, str) else None for x in data.labels]
    h.update(json.dumps([list(map(str, data.rows["utt_id"])), labels]).encode())
    for array in (data.targets, data.attributes):
        h.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return h.hexdigest()


#: medusa modules the training step imports whose code cannot change a trained weight: file writing, the error
#: classes, and the params schema (the values it validates are in the fingerprint, as the config).
NOT_TRAINING_CODE = frozenset({"medusa.io", "medusa.errors", "medusa.config.params"})


def training_code() -> dict[str, Path]:
    """{module name: source file} of the code that shapes a training run's result: this module and every medusa
    module it imports, directly or through another (medusa.imports, the closure dvc.yaml's deps use, so a module the
    training step starts to use is covered without a list to update), less NOT_TRAINING_CODE. Today: training,
    deepser, dataset, labels, scoring.metrics, the feature-store reader and their packages' __init__.py."""
    root = Path(__file__).resolve().parents[2]
    code = {}
    for path in sorted(import_closure(root, {__name__})):
        name = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        if name not in NOT_TRAINING_CODE:
            code[name] = root / path
    return code


def code_digests() -> dict[str, str]:
    """{module name: sha256 of its source file} for every module of training_code(), and the torch and numpy
    versions (their kernels make the numbers too). A checkpoint records them: one made by other code is not
    resumed, so an interrupted member never finishes with half old, half new code."""
    digests = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in training_code().items()}
    return {**digests, "torch": str(torch.__version__), "numpy": str(np.__version__)}


def _state_digest(model: DeepSER) -> str:
    """sha256 of a model's weights and buffers: the initial state a run starts from (seeded weights, the
    standardisation statistics), which the code that builds the model (e.g. medusa.model.members) decides."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode() + b"\0" + str(value.dtype).encode() + str(tuple(value.shape)).encode() + b"\0")
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fingerprint(model: DeepSER, train: FeatureDataset, dev: FeatureDataset, cfg: TrainConfig,
                 monitor: FeatureDataset | None = None, code: dict[str, str] | None = None) -> str:
    """What a checkpoint was made for; a checkpoint of anything else is not resumed. Config, architecture, the
    model's initial weights, time pooling, the rows of train and dev (ids, labels, targets, attributes: a manifest
    whose labels changed gives other targets), the monitor's rows (its scores are in the history), the identity of
    every feature store read (store_identity), and the code (`code`, default code_digests())."""
    identities: dict[Path, str] = {}  # each store hashed once, listed in modality order for every split

    def identity(store: FeatureStore) -> str:
        key = store.root.resolve()
        if key not in identities:
            identities[key] = store_identity(store)
        return identities[key]

    splits = [d for d in (train, dev, monitor) if d is not None]
    # the device is where, not what: a run may resume on another one
    blob = json.dumps([cfg.model_dump(exclude={"device"}), model.cfg.to_dict(), train.pools, monitor is not None,
                       [_rows_digest(d) for d in splits], [[identity(s) for s in d.stores] for d in splits],
                       _state_digest(model), code if code is not None else code_digests()],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _save_checkpoint(path: Path, model: DeepSER, progress: _Progress, rng: np.random.Generator, fingerprint: str,
                     code: dict[str, str]) -> None:
    state = {"fingerprint": fingerprint, "code": code, "model": model.state_dict(), "rng": _rng_states(rng),
             **asdict(progress)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, model: DeepSER, rng: np.random.Generator, fingerprint: str,
                     code: dict[str, str]) -> _Progress | None:
    if not path.exists():
        return None
    try:
        # on the CPU: torch.set_rng_state needs a CPU tensor; load_state_dict moves weights to the model's device
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: say so and start afresh rather than fail the stage
        log.warning("ignoring unreadable checkpoint %s (%s); training from the start", path, e)
        return None
    if not isinstance(state, dict):
        log.warning("ignoring %s: not a training checkpoint; training from the start", path)
        return None
    if state.get("fingerprint") != fingerprint and state.get("code") != code:
        made = state.get("code") or {}
        changed = sorted(k for k in set(made) | set(code) if made.get(k) != code.get(k))
        log.warning("checkpoint %s was made by other code (changed since: %s); discarding it, training from the "
                    "start", path, ", ".join(changed) if made else "unknown: the checkpoint records no code")
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("checkpoint %s was made with other settings or data (config, architecture, initial weights, "
                    "training or dev rows and their targets, or feature stores differ); discarding it, training from "
                    "the start", path)
        return None
    model.load_state_dict(state["model"])
    _set_rng_states(rng, state["rng"])
    progress = _Progress(**{k: state[k] for k in _Progress.__dataclass_fields__})
    log.info("resuming from %s: stage %d, %d epoch(s) done", path, progress.stage, progress.epoch)
    return progress


def _stage1_rows(train: FeatureDataset) -> np.ndarray:
    """Stage 1 trains on every utterance with a training target (FeatureDataset.has_target)."""
    return np.flatnonzero(train.has_target)


def _stage2_pool(train: FeatureDataset) -> np.ndarray:
    """Stage 2 draws from utterances with a target whose consensus is one of the run's classes (it balances by
    consensus). A labelled row without a target (no annotator rows, or only `Other-...` votes) is never
    drawn: its NaN target would make every loss of the stage nan."""
    return np.flatnonzero(train.has_target & np.isin(train.labels, train.classes))


def training_rows(train: FeatureDataset, cfg: TrainConfig) -> dict[str, int | None]:
    """How many training utterances stage 1 trains on and how many stage 2's balanced draw may pick from
    (None when stage 2 is switched off)."""
    return {"stage1": int(len(_stage1_rows(train))),
            "stage2_pool": int(len(_stage2_pool(train))) if cfg.stage2_epochs > 0 else None}


def _epoch_rows(stage: int, train: FeatureDataset, rng: np.random.Generator) -> np.ndarray:
    if stage == 1:
        return _stage1_rows(train)
    pool = _stage2_pool(train)  # stage 2: a fresh class-balanced subset every epoch
    return pool[balanced_epoch(train.labels[pool], rng, classes=train.classes)]


def _epoch_batches(stage: int, train: FeatureDataset, cfg: TrainConfig, rng: np.random.Generator
                   ) -> list[np.ndarray]:
    """The batches of one epoch: one pass over the stage's rows (epoch_steps 0, the paper's epoch), or
    epoch_steps batches taken from as many fresh passes as that needs (the last one cut short), so that the
    number of optimizer steps does not shrink with the corpus. Each pass is shuffled (stage 2: a new
    class-balanced draw) and length-bucketed."""
    batches: list[np.ndarray] = []
    while True:
        batches += bucketed(_epoch_rows(stage, train, rng), train.lengths, cfg.batch_size, rng)
        if cfg.epoch_steps == 0:
            return batches
        if len(batches) >= cfg.epoch_steps:
            return batches[:cfg.epoch_steps]


def train_deepser(model: DeepSER, train: FeatureDataset, dev: FeatureDataset, cfg: TrainConfig,
                  device: torch.device, checkpoint: str | Path | None = None,
                  on_epoch: Callable[[dict], None] | None = None, monitor: FeatureDataset | None = None
                  ) -> tuple[DeepSER, list[dict], dict]:
    """Stages 1 and 2; returns the model with the best dev weights, the history, and where the best was.

    With `checkpoint`, the state after every epoch (weights, optimizer, random generators, history, best
    weights) is saved there, and a later call with the same settings and data resumes from it: the result is
    the same as an uninterrupted run. The caller deletes the file once the outputs are safely written.
    `on_epoch(history_row)` is called after each epoch (and its checkpoint).
    `monitor` (e.g. the test split) is scored after every epoch as `monitor_balanced_macro_f1` in the history, for
    diagnosis only: it never takes part in selection or early stopping.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model.to(device)
    for split, data in (("training", train), ("dev", dev), ("monitor", monitor)):
        if data is not None and data.classes != train.classes:
            raise ValueError(f"the {split} rows have the classes {' '.join(data.classes)} but the training rows "
                             f"{' '.join(train.classes)}: every split must come from one manifest")
    if model.cfg.n_classes != len(train.classes):
        raise ValueError(f"the model has {model.cfg.n_classes} class outputs but the run has {len(train.classes)} "
                         f"classes ({' '.join(train.classes)}): build it with n_classes={len(train.classes)}")
    if not len(_stage1_rows(train)):
        raise ValueError(f"none of the {len(train)} training utterances has a training target "
                         f"({'one-hot: X/O consensus or no class votes' if train.one_hot else 'no class votes'}); "
                         "check the manifest's label and p_ columns")
    if cfg.stage2_epochs > 0 and not len(_stage2_pool(train)):
        raise ValueError("stage 2 draws class-balanced subsets by consensus class, but no training utterance with "
                         f"a target has one of {' '.join(train.classes)} as its consensus; set train.stage2_epochs: 0")
    classes = train.classes  # the run's classes: dev selection and the monitor score over them
    weights = None
    if cfg.class_weighted:  # rows without a target hold NaN: nansum counts the target mass of the rows that train
        mass = np.nansum(train.targets, axis=0)
        weights = torch.tensor(class_weights(mass), dtype=torch.float32, device=device)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    code = code_digests()
    fingerprint = _fingerprint(model, train, dev, cfg, monitor, code)
    if checkpoint:  # a torch.save killed mid-write leaves its temporary file: drop those of dead processes
        remove_stale_temps(checkpoint.parent)
    progress = (_load_checkpoint(checkpoint, model, rng, fingerprint, code) if checkpoint else None) or _Progress()
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
            batches = _epoch_batches(stage, train, cfg, rng)
            model.train()
            try:
                losses = [train_step(model, optimizer, batch, stage_weights, cfg, rng, device)
                          for batch in tqdm(train.batches(batches), total=len(batches), unit="batch",
                                            desc=f"stage {stage} epoch {progress.epoch + 1}", leave=False)]
            except NonFiniteLossError as e:  # say where; no checkpoint of this epoch is written
                raise NonFiniteLossError(f"stage {stage} epoch {progress.epoch + 1}: {e}") from None
            score = evaluate(model, dev, cfg, device)
            progress.epoch += 1
            progress.steps += len(batches)
            row = {"stage": stage, "epoch": progress.epoch, "train_loss": float(np.mean(losses)),
                   "dev_balanced_macro_f1": score, "utterances": int(sum(len(b) for b in batches)),
                   "steps": progress.steps}
            if monitor is not None:
                predictions = _labelled_predictions(model, monitor, cfg, device)
                row["monitor_balanced_macro_f1"] = balanced_macro_f1(*predictions, classes)
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
                _save_checkpoint(checkpoint, model, progress, rng, fingerprint, code)
            if on_epoch:
                on_epoch(row)
        progress = replace(progress, stage=stage + 1, epoch=0, stale=0, optimizer=None)
    model.load_state_dict(progress.best_state)
    return model, progress.history, {**progress.best, "config": cfg.model_dump()}
