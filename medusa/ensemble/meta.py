"""MEDUSA's ensemble level: voting baselines, the meta-classifier (stage 3) and its model soup (stage 4).

Protocol (no leakage): the DeepSER members train on `train` and pick their epoch on `dev`; the meta-classifier
trains on the members' posteriors of `dev` (utterances no member trained on); every reported figure is on
`test`, which neither level saw. (The members' epochs were chosen on dev, so dev posteriors are slightly more
confident than unseen ones; training the meta level on them is the paper's setting, and test stays clean.)

Meta-classifier input: the concatenated class posteriors of the chosen members, in member order (M x C
values, C = the run's classes: the manifest's p_ columns, which every member's posteriors share), as in the
paper ("a meta-classifier learns to combine the posterior distributions of individual classifiers");
`attributes_in` also feeds their attribute predictions (M x 3 more; off in both presets), and
`include_probes` (beyond the paper) the posteriors of each member's linear probe (M x C more, read from the
member's probe_posteriors.parquet; medusa.model.linear_probe), so that MEDUSA can fall back on its best probe. The blocks
follow each other in that order (INPUT_BLOCKS), each one member after member; the predict bundle stacks new audio
through the same `meta_inputs`. Output:
C class logits and, when mse_weight > 0 (`attributes_out`), 3 attributes; loss = ce_weight * soft-target CE +
mse_weight * attribute MSE (the paper's eq. (1)). The two attribute switches are independent. Each epoch draws a
class-balanced subset of dev (stage 2's sampling, uniform class weights); AdamW; no MixUp. A fixed number of
epochs, as no split is left for selection. The soup averages the weights of `seeds` runs.

Scores: balanced macro-F1 on test over the run's classes with its 95 % class-stratified bootstrap interval (the
headline), plain macro-F1 and accuracy beside it (medusa.scoring.metrics); the same resamples for every technique.
Table 3 also carries, whatever `include_probes` says, the soup trained with the other setting of that switch
(same seeds) and the best probe by dev, so that the switch is measured on every run.
"""
from __future__ import annotations

import copy
import json
import logging
import warnings
from dataclasses import InitVar, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from medusa.model.dataset import scale_attributes, unscale_attributes
from medusa.model.deepser import soft_cross_entropy
from medusa.labels import ATTRIBUTES, CODES, balanced_epoch, classes_of, common_classes, target_columns
from medusa.model.members import PROBE_POSTERIORS
from medusa.scoring.metrics import (accuracy, balanced_macro_f1, bootstrap_macro_f1, macro_f1, percentile_interval,
                            run_classes, stratified_bootstrap_indices)

log = logging.getLogger(__name__)
N_ATTRIBUTES = len(ATTRIBUTES)
#: Stage-3 forms (MetaConfig.stage3): the paper's linear layer; the same layer anchored at soft voting (beyond the
#: paper: issue #22); the anchored layer at its start, i.e. soft voting itself (what cross-validation may choose).
STAGE3_FORMS = ("paper", "anchored", "voting")
#: Posteriors are clamped here before the log of the anchor (a member may give a class exactly 0 in float32).
ANCHOR_FLOOR = 1e-6


@dataclass
class Stacked:
    """The members' outputs on one split, aligned on utt_id."""
    utt_ids: np.ndarray
    probs: np.ndarray        # (N, M, C) over `classes`
    attributes: np.ndarray   # (N, M, 3), 1..7 scale
    labels: np.ndarray       # (N,) consensus codes (None for blind)
    probe_probs: np.ndarray | None = None   # (N, M, C): each member's linear probe, when its posteriors were read
    classes: tuple[str, ...] = CODES         # the run's classes, in the order of the last axis of probs


def stack(posteriors: dict[str, pd.DataFrame], split: str, probes: dict[str, pd.DataFrame] | None = None
          ) -> Stacked:
    """Align the members' posteriors of `split` (every member must score the same utterances, over the same
    classes) and, with `probes` ({member: its probe's posteriors}, read_probe_posteriors), their probes'
    posteriors of the same utterances."""
    frames = {name: f[f["split"] == split].set_index("utt_id") for name, f in posteriors.items()}
    found = {f"member {name!r}": classes_of(f) for name, f in frames.items()}
    if probes is not None:
        found.update({f"the probe of {name!r}": classes_of(probes[name]) for name in frames if name in probes})
    classes = common_classes(found, "members' posteriors")
    columns = list(target_columns(classes))
    first = next(iter(frames.values()))
    ids = first.index.to_numpy()
    for name, f in frames.items():
        if set(f.index) != set(ids):
            raise ValueError(f"member {name!r} scores other {split} utterances than {next(iter(frames))!r}")
    probs = np.stack([f.loc[ids, columns].to_numpy(np.float32) for f in frames.values()], 1)
    attrs = np.stack([f.loc[ids, list(ATTRIBUTES)].to_numpy(np.float32) for f in frames.values()], 1)
    probe_probs = None
    if probes is not None:
        probe_columns = []
        for name in frames:
            if name not in probes:
                raise KeyError(f"no probe posteriors for member {name!r} (have: {', '.join(probes) or 'none'})")
            f = probes[name][probes[name]["split"] == split].set_index("utt_id")
            # a set difference (np.setdiff1d compares arrays of strings pair by pair: quadratic, minutes at 25k rows)
            missing = sorted(set(ids) - set(f.index))
            if len(missing):
                raise ValueError(f"the probe of member {name!r} does not score {len(missing)} of its {split} "
                                 f"utterances (e.g. {missing[0]}); retrain it: dvc repro train@{name}")
            probe_columns.append(f.loc[ids, columns].to_numpy(np.float32))
        probe_probs = np.stack(probe_columns, 1)
    return Stacked(ids, probs, attrs, first.loc[ids, "label"].to_numpy(), probe_probs, classes)


def posteriors_frame(stacked: Stacked, split: str, probs: np.ndarray) -> pd.DataFrame:
    """(utt_id, split, label, p_<code> per class of `stacked`): a system's posteriors of the rows of `stacked`, in the
    form every posteriors file has."""
    frame = pd.DataFrame({"utt_id": stacked.utt_ids, "split": split, "label": stacked.labels})
    frame[list(target_columns(stacked.classes))] = probs
    return frame


def read_probe_posteriors(names: list[str], models_root: str | Path) -> dict[str, pd.DataFrame]:
    """{member: its linear probe's posteriors (utt_id, split, label, p_<code> per class)} from
    models_root/<member>/."""
    out = {}
    for name in names:
        path = Path(models_root) / name / PROBE_POSTERIORS
        if not path.is_file():  # a member trained before members had probes: only retraining makes them
            raise FileNotFoundError(f"{path.parent}: member {name!r} has no linear probe ({PROBE_POSTERIORS} "
                                    f"missing; trained by an older version of medusa); retrain it: dvc repro "
                                    f"train@{name}")
        frame = pd.read_parquet(path)
        missing = [c for c in ("utt_id", "split", "label") if c not in frame]
        if not any(c.startswith("p_") for c in frame.columns):
            missing.append("p_<code>")
        if missing:
            raise ValueError(f"{path}: no column(s) {', '.join(missing)}; retrain it: dvc repro train@{name}")
        out[name] = frame
    return out


def majority_vote(probs: np.ndarray) -> np.ndarray:
    """Hard voting: each member votes its argmax; the most-voted class wins; a tie goes to the tied class
    with the highest mean posterior. probs (N, M, C) -> class indices (N,) into the C classes."""
    votes = np.zeros((probs.shape[0], probs.shape[2]))
    np.add.at(votes, (np.arange(len(probs))[:, None], probs.argmax(2)), 1)
    tie_break = probs.mean(1) / 2  # < 1: only decides between classes with equal votes
    return (votes + tie_break).argmax(1)


def soft_vote(probs: np.ndarray) -> np.ndarray:
    """Soft voting: argmax of the mean posterior. (N, M, C) -> (N,)."""
    return probs.mean(1).argmax(1)


@dataclass(frozen=True)
class MetaConfig:
    n_models: int
    attributes_in: bool = False      # the members' attribute predictions in, beside their posteriors (not the paper's)
    include_probes: bool = False     # each member's linear-probe posteriors in too (not the paper's)
    attributes_out: bool | None = None   # attribute outputs, trained by eq. (1)'s MSE term; None: mse_weight > 0
    hidden: int = 0                  # 0: linear (the paper); > 0: one ReLU hidden layer
    #: The stage-3 form (STAGE3_FORMS): "paper" learns the class logits from scratch; "anchored" adds the log of
    #: the members' mean posterior to them, so that it starts exactly at soft voting, and penalises its class
    #: weights by anchor_l2 (a pull back to voting); "voting" is the anchored form held at its start.
    stage3: str = "paper"
    anchor_l2: float = 0.0
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    ce_weight: float = 1.5
    mse_weight: float = 0.4
    seed: int = 0
    #: The run's classes: the class outputs, and the posteriors read from each member. Bundles saved before
    #: it was recorded predict all 8 codes.
    classes: tuple[str, ...] = CODES
    #: The former single switch (attributes in *and* out), still read from bundles saved before the split so
    #: that their meta.json keeps loading with the same shapes; not a field, so asdict never writes it again.
    use_attributes: InitVar[bool | None] = None

    def __post_init__(self, use_attributes: bool | None) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))  # meta.json holds a list
        if use_attributes is not None:
            object.__setattr__(self, "attributes_in", bool(use_attributes))
            object.__setattr__(self, "attributes_out", bool(use_attributes))
        elif self.attributes_out is None:
            object.__setattr__(self, "attributes_out", self.mse_weight > 0)

        if self.stage3 not in STAGE3_FORMS:
            raise ValueError(f"stage3 {self.stage3!r}: one of {', '.join(STAGE3_FORMS)}")

    @classmethod
    def from_params(cls, params: Any, n_models: int, **changes: Any) -> "MetaConfig":
        """The config of the run's `ensemble` section (medusa.config.params.EnsembleParams): every field the two share,
        except anchor_l2, which the section holds as the grid that cross-validation chooses from."""
        names = {f.name for f in fields(cls)} - {"anchor_l2", "n_models"}
        values = {k: v for k, v in params.model_dump().items() if k in names}
        return cls(n_models=n_models, **{**values, **changes})

    @property
    def n_inputs(self) -> int:
        return self.n_models * sum(len(columns) for _, columns in input_blocks(self))


#: The meta-classifier's input blocks, in order: (block, the MetaConfig switch that puts it in (None: always),
#: its values per member, from the config: posteriors are over the run's classes). Appending blocks at the end
#: keeps the columns of models trained without them.
INPUT_BLOCKS = (("posteriors", None, lambda cfg: target_columns(cfg.classes)),
                ("attributes", "attributes_in", lambda cfg: ATTRIBUTES),
                ("probe posteriors", "include_probes", lambda cfg: target_columns(cfg.classes)))


def input_blocks(cfg: MetaConfig) -> list[tuple[str, tuple[str, ...]]]:
    """The blocks `cfg` feeds, in input order: [(block, its columns per member)]."""
    return [(block, columns(cfg)) for block, switch, columns in INPUT_BLOCKS
            if switch is None or getattr(cfg, switch)]


def input_names(cfg: MetaConfig, members: list[str]) -> list[str]:
    """The name of every input column ("m01 p_A", "m01 arousal", "m01 probe p_A"), in input order."""
    prefix = {"posteriors": "", "attributes": "", "probe posteriors": "probe "}
    return [f"{m} {prefix[block]}{c}" for block, columns in input_blocks(cfg) for m in members for c in columns]


class MetaClassifier(nn.Module):
    def __init__(self, cfg: MetaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_out = len(cfg.classes) + (N_ATTRIBUTES if cfg.attributes_out else 0)
        if cfg.hidden:
            self.net = nn.Sequential(nn.Linear(cfg.n_inputs, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, n_out))
        else:
            self.net = nn.Linear(cfg.n_inputs, n_out)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        out, n_classes = self.net(x), len(self.cfg.classes)
        logits = out[:, :n_classes]
        if self.cfg.stage3 != "paper":
            logits = logits + voting_logits(x, self.cfg)
        return logits, (out[:, n_classes:] if self.cfg.attributes_out else None)

    def class_head(self) -> tuple[Tensor, Tensor]:
        """The weight and bias rows of the class logits in the last layer: what the anchored form penalises, and
        what is zero when it is soft voting."""
        last = self.net[-1] if isinstance(self.net, nn.Sequential) else self.net
        n_classes = len(self.cfg.classes)
        return last.weight[:n_classes], last.bias[:n_classes]


def voting_logits(x: Tensor, cfg: MetaConfig) -> Tensor:
    """log of the members' mean posterior, read from the first input block (the members' posteriors, member after
    member): softmax of it is soft voting's distribution, so an anchored layer whose class weights are zero is soft
    voting exactly, in training, evaluation and the predict bundle alike."""
    n_classes = len(cfg.classes)
    mean = x[:, :cfg.n_models * n_classes].reshape(len(x), cfg.n_models, n_classes).mean(1)
    return torch.log(mean.clamp_min(ANCHOR_FLOOR))


def meta_inputs(stacked: Stacked, cfg: MetaConfig) -> np.ndarray:
    """(N, cfg.n_inputs): the blocks `cfg` switches on (input_blocks), each member after member -- the one place
    where inputs are assembled, for training, dev, test, blind and the predict bundle."""
    def probe_block() -> np.ndarray:
        if stacked.probe_probs is None:
            raise ValueError("the meta-classifier reads the members' probe posteriors (include_probes), but none "
                             "were stacked: pass them (read_probe_posteriors) to stack / run_subset")
        return stacked.probe_probs

    if stacked.classes != cfg.classes:
        raise ValueError(f"the meta-classifier reads posteriors over the classes {' '.join(cfg.classes)}, the "
                         f"members' are over {' '.join(stacked.classes)}")
    values = {"posteriors": lambda: stacked.probs, "attributes": lambda: scale_attributes(stacked.attributes),
              "probe posteriors": probe_block}
    n = len(stacked.probs)
    parts = []
    for block, columns in input_blocks(cfg):
        v = np.asarray(values[block]())
        if v.shape[1:] != (cfg.n_models, len(columns)):
            raise ValueError(f"the meta-classifier takes {block} of {cfg.n_models} member(s) x {len(columns)}, "
                             f"got shape {v.shape[1:]}")
        parts.append(v.reshape(n, -1))
    return np.concatenate(parts, 1).astype(np.float32)


def train_meta(stacked: Stacked, targets: np.ndarray, attributes: np.ndarray, cfg: MetaConfig) -> MetaClassifier:
    """Stage 3 on `stacked` (dev): soft `targets` (N, C) over cfg.classes (the run's), `attributes` (N, 3) on the
    1..7 scale (NaN = unrated: the MSE term reads rated rows only, and none when no row is rated). Only utterances
    whose consensus is one of the run's classes and that have a target (class votes) are drawn, class-balanced,
    afresh every epoch: a row without votes has NaN targets, and one NaN in a batch would turn every weight of
    the soup into NaN. A loss that is not finite stops with the batch's utterances named."""
    classes = cfg.classes
    if np.shape(targets) != (len(stacked.probs), len(classes)):
        raise ValueError(f"targets of shape {np.shape(targets)}, expected ({len(stacked.probs)}, {len(classes)}): "
                         f"one column per class of the run ({' '.join(classes)})")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = MetaClassifier(cfg)
    x = torch.from_numpy(meta_inputs(stacked, cfg))
    t = torch.from_numpy(np.array(targets, np.float32))
    a = torch.from_numpy(scale_attributes(attributes))
    pool = trainable_rows(stacked, targets, classes)
    if not len(pool):
        raise ValueError(f"no dev utterance with a target and one of the classes {' '.join(classes)} as its "
                         "consensus to train the meta-classifier on")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    for _ in range(cfg.epochs):
        rows = pool[balanced_epoch(stacked.labels[pool], rng, classes=classes)]
        for start in range(0, len(rows), cfg.batch_size):
            idx = torch.from_numpy(rows[start:start + cfg.batch_size])
            logits, pred_a = model(x[idx])
            loss = cfg.ce_weight * soft_cross_entropy(logits, t[idx])
            known = ~torch.isnan(a[idx]).any(-1)
            if pred_a is not None and cfg.mse_weight > 0 and known.any():
                loss = loss + cfg.mse_weight * torch.mean((pred_a[known] - a[idx][known]) ** 2)
            if cfg.stage3 == "anchored" and cfg.anchor_l2 > 0:
                weight, bias = model.class_head()
                loss = loss + cfg.anchor_l2 * (weight.pow(2).sum() + bias.pow(2).sum())
            if not torch.isfinite(loss):
                raise ValueError(f"the meta-classifier's loss is not finite on a batch of dev utterances "
                                 f"{', '.join(stacked.utt_ids[idx.numpy()][:10])}: check their targets and the "
                                 "members' posteriors")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if cfg.stage3 == "voting":  # the class logits stay soft voting's; only attribute outputs were learnt
        with torch.no_grad():
            for rows in model.class_head():
                rows.zero_()
    return model.eval()


def trainable_rows(stacked: Stacked, targets: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Indices of the rows stage 3 may train on: consensus one of the run's classes, and a finite target."""
    return np.flatnonzero(np.isin(stacked.labels, classes) & np.isfinite(np.asarray(targets, np.float64)).all(1))


def take(stacked: Stacked, rows: np.ndarray) -> Stacked:
    """The rows `rows` of `stacked` (a fold of dev)."""
    pick = lambda a: None if a is None else a[rows]  # noqa: E731
    return Stacked(stacked.utt_ids[rows], stacked.probs[rows], stacked.attributes[rows], stacked.labels[rows],
                   pick(stacked.probe_probs), stacked.classes)


@dataclass
class Stage3Choice:
    """What stage 3 was trained as, and on what: the form the run used (cross-validation may turn "anchored" into
    "voting"), its penalty, the dev rows and classes it learnt from, and the cross-validation behind the choice."""
    form: str                         # STAGE3_FORMS
    anchor_l2: float
    dev_rows: int                     # scored dev clips it trained on (consensus one of the run's classes)
    dev_classes: dict[str, int]       # clips per class among them
    n_inputs: int
    folds: int = 0                    # cross-validation folds (0: none, the paper's form)
    cv: pd.DataFrame | None = None    # candidate, anchor_l2, cv_balanced_ce, cv_balanced_macro_f1, chosen
    warning: str | None = None

    def record(self) -> dict[str, Any]:
        """For ensemble.json."""
        out = {k: v for k, v in asdict(self).items() if k != "cv"}
        out["cv"] = None if self.cv is None else self.cv.to_dict(orient="records")
        return out


def dev_warnings(dev_classes: dict[str, int], n_inputs: int) -> str | None:
    """What makes a dev set unfit to train stage 3 on, in words (None: nothing): fewer scored clips than inputs
    (a linear layer over more inputs than rows can learn dev by heart: issue #22, 48 clips against 30-60 inputs),
    and classes of the run that no dev clip has (a layer trained on it learns never to predict them: issue #22's
    dev of Angry and Happy only gave a MEDUSA that predicted nothing else)."""
    rows, missing = sum(dev_classes.values()), [c for c, n in dev_classes.items() if not n]
    problems = []
    if rows < n_inputs:
        problems.append(f"stage 3 trains on {rows} scored dev clips but reads {n_inputs} inputs per clip: a "
                        "meta-classifier can learn so small a dev set by heart")
    if missing:
        problems.append(f"no dev clip of class {', '.join(missing)}: a meta-classifier trained on this dev set "
                        "learns never to predict it")
    if not problems:
        return None
    return "; ".join(problems) + ("; the voting-anchored form (ensemble.stage3: anchored) keeps soft voting where a "
                                  "class is missing and falls back to it where dev cannot support more")


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-row weights under which every class present counts alike (they sum to 1): the class-balanced objective
    stage 3 trains on, applied to a held-out score."""
    counts = pd.Series(labels).value_counts()
    return 1.0 / (counts.reindex(labels).to_numpy() * len(counts))


def cross_entropy_rows(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-row soft-target cross-entropy."""
    return -(targets * np.log(np.clip(probs, ANCHOR_FLOOR, 1))).sum(1)


def choose_stage3(dev: Stacked, targets: np.ndarray, attributes: np.ndarray, cfg: MetaConfig,
                  anchor_grid: list[float] | tuple[float, ...] = (), folds: int = 5) -> tuple[MetaConfig, Stage3Choice]:
    """The paper's form as configured, or, for cfg.stage3 "anchored", the penalty by K-fold cross-validation within
    dev (class-stratified, seeded by cfg.seed): soft voting and the anchored layer at each anchor_l2 of the grid are
    scored by their out-of-fold class-balanced cross-entropy; the candidate kept is the closest to voting (voting,
    then the largest penalty) whose loss is within one standard error of the best one's (paired over clips: the
    "one-standard-error rule"), so that a few dozen dev clips do not pull MEDUSA off voting on noise."""
    from sklearn.model_selection import StratifiedKFold

    classes = cfg.classes
    pool = trainable_rows(dev, targets, classes)
    labels = dev.labels[pool]
    counts = {c: int((labels == c).sum()) for c in classes}
    base = dict(dev_rows=len(pool), dev_classes=counts, n_inputs=cfg.n_inputs,
                warning=dev_warnings(counts, cfg.n_inputs))
    if cfg.stage3 != "anchored":
        return cfg, Stage3Choice(cfg.stage3, cfg.anchor_l2, **base)
    candidates = [("voting", 0.0)] + [("anchored", float(l)) for l in sorted(anchor_grid, reverse=True)]
    smallest = min((n for n in counts.values() if n), default=0)
    k = max(2, min(folds, smallest))
    # A class without dev clips: cross-validation cannot see the harm (no fold holds one), and every candidate but
    # voting learns to push it down (benchmarks/stacking.py, skewed subsets); too few clips for k folds: no choice.
    if len(candidates) == 1 or len(pool) < 2 * k or not all(counts.values()):
        chosen = MetaConfig(**{**asdict(cfg), "stage3": "voting", "anchor_l2": 0.0})
        return chosen, Stage3Choice("voting", 0.0, **base)
    oof = np.zeros((len(candidates), len(pool), len(classes)))
    with warnings.catch_warnings():  # "the least populated class has fewer members than n_splits": expected
        warnings.simplefilter("ignore", UserWarning)
        splits = list(StratifiedKFold(k, shuffle=True, random_state=cfg.seed).split(np.zeros(len(pool)), labels))
    for fit, held in splits:
        fold, rest = take(dev, pool[held]), take(dev, pool[fit])
        for i, (form, l2) in enumerate(candidates):
            if form == "voting":
                oof[i, held] = fold.probs.mean(1)
                continue
            model = train_meta(rest, targets[pool[fit]], attributes[pool[fit]],
                               MetaConfig(**{**asdict(cfg), "stage3": form, "anchor_l2": l2}))
            oof[i, held] = meta_predict(model, fold)[0]
    losses = np.stack([cross_entropy_rows(p, targets[pool]) for p in oof])
    w = class_balanced_weights(labels)
    means = losses @ w
    best = int(means.argmin())
    keep = best
    for i in range(len(candidates)):  # closest to voting first
        d = losses[i] - losses[best]
        if (w * d).sum() <= np.sqrt((w ** 2 * (d - (w * d).sum()) ** 2).sum()):
            keep = i
            break
    f1 = [balanced_macro_f1(labels, np.asarray(classes)[p.argmax(1)], classes) for p in oof]
    cv = pd.DataFrame({"candidate": [f for f, _ in candidates], "anchor_l2": [l for _, l in candidates],
                       "cv_balanced_ce": means, "cv_balanced_macro_f1": f1,
                       "chosen": [i == keep for i in range(len(candidates))]})
    form, l2 = candidates[keep]
    chosen = MetaConfig(**{**asdict(cfg), "stage3": form, "anchor_l2": l2})
    return chosen, Stage3Choice(form, l2, folds=k, cv=cv, **base)


def soup(models: list[MetaClassifier]) -> MetaClassifier:
    """Stage 4: a model whose every weight is the element-wise mean of the runs' weights."""
    if not models:
        raise ValueError("a soup needs at least one model")
    mixed = copy.deepcopy(models[0])
    states = [m.state_dict() for m in models]
    mixed.load_state_dict({k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[0]})
    return mixed.eval()


def meta_predict(model: MetaClassifier, stacked: Stacked) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities (N, C) over model.cfg.classes and, if the model has them, attributes (N, 3) on the
    1..7 scale."""
    with torch.no_grad():
        logits, attrs = model(torch.from_numpy(meta_inputs(stacked, model.cfg)))
    return torch.softmax(logits, -1).numpy(), (unscale_attributes(attrs.numpy()) if attrs is not None else None)


def top_k_names(scores: dict[str, float], k: int) -> list[str]:
    """The k members with the highest held-out score (ties: params order)."""
    order = sorted(scores, key=lambda name: -scores[name])  # stable: equal scores keep their order
    return order[:k]


def assert_no_leakage(manifest: pd.DataFrame, meta_utt_ids: np.ndarray, meta_split: str = "dev") -> None:
    """The meta-classifier's training utterances must all be in `meta_split` and none in train or test."""
    split_of = manifest.set_index("utt_id")["split"]
    splits = split_of.reindex(meta_utt_ids)
    bad = splits[splits != meta_split]
    if len(bad):
        raise AssertionError(f"{len(bad)} meta-classifier training utterances are not in {meta_split!r} "
                             f"(e.g. {bad.index[0]} in {bad.iloc[0]!r})")


@dataclass
class SubsetResult:
    """One subset of members on test: each technique's predicted class indices, the soup, the seeds' runs."""
    members: list[str]
    predictions: dict[str, np.ndarray]        # technique -> (N,) class indices on test ("single" = seed 0)
    single_runs: list[np.ndarray]             # per seed, (N,) class indices
    soup: MetaClassifier
    runs: list[MetaClassifier]
    test: Stacked
    meta_train_utt_ids: np.ndarray            # the utterances the meta-classifiers trained on (dev)
    classes: tuple[str, ...] = field(default=CODES)   # the run's classes: what technique_table scores
    other_soup: MetaClassifier | None = None  # the soup with the other setting of include_probes (probes read)
    probe_dev_scores: dict[str, float] = field(default_factory=dict)  # member -> its probe's dev balanced macro-F1
    best_probe: str | None = None             # the member whose probe has the best dev score (probes read)
    stage3: Stage3Choice | None = None        # the form the soup was trained as, on what, and why
    other_form_soup: MetaClassifier | None = None   # the soup of the other stage-3 form (paper <-> anchored)


#: Table 3's row for the soup trained with the other setting of `include_probes`, keyed by the main soup's setting.
OTHER_PROBES_SOUP = {False: "meta-classifier soup + probes", True: "meta-classifier soup without probes"}
#: Table 3's row for the soup trained in the other stage-3 form, keyed by that form.
OTHER_FORM_SOUP = {"paper": "paper's meta-classifier soup", "anchored": "voting-anchored meta-classifier soup"}
#: Table 3's row for the probe of the subset's member whose probe scores best on dev.
BEST_PROBE = "best probe"


def probe_dev_scores(dev: Stacked, members: list[str], classes: tuple[str, ...]) -> dict[str, float]:
    """Each member's probe's balanced macro-F1 on dev (over `classes`): the score the best probe is chosen by."""
    return {m: balanced_macro_f1(dev.labels, np.asarray(dev.classes)[dev.probe_probs[:, i].argmax(1)], classes)
            for i, m in enumerate(members)}


def run_subset(posteriors: dict[str, pd.DataFrame], manifest: pd.DataFrame, members: list[str], cfg: MetaConfig,
               seeds: list[int], probes: dict[str, pd.DataFrame] | None = None,
               anchor_grid: list[float] | tuple[float, ...] = (), cv_folds: int = 5) -> SubsetResult:
    """Stages 3-4 for one subset: meta-classifiers trained on dev with each seed, their soup, and the voting
    baselines, all predicting test. With `probes` ({member: its probe's posteriors}; required when
    cfg.include_probes), also the soup trained exactly alike (same seeds) with the other setting of
    include_probes, and the best probe by dev balanced macro-F1 (Table 3's OTHER_PROBES_SOUP and BEST_PROBE). cfg.stage3 "anchored" picks its penalty among
    `anchor_grid` (or soft voting) by `cv_folds`-fold cross-validation within dev (choose_stage3); the soup of the
    other form (paper or anchored) is trained alike and scored as Table 3's OTHER_FORM_SOUP row."""
    if cfg.include_probes and probes is None:
        raise ValueError("include_probes: the meta-classifier reads the members' probe posteriors; pass them "
                         "(read_probe_posteriors)")
    chosen = {m: posteriors[m] for m in members}
    chosen_probes = None if probes is None else {m: probes[m] for m in members}
    dev, test = stack(chosen, "dev", chosen_probes), stack(chosen, "test", chosen_probes)
    assert_no_leakage(manifest, dev.utt_ids)
    classes = run_classes(manifest)
    if dev.classes != classes:
        raise ValueError(f"the members' posteriors are over the classes {' '.join(dev.classes)}, the manifest's run "
                         f"over {' '.join(classes)}: retrain the members on this manifest")
    truth = manifest.set_index("utt_id").loc[dev.utt_ids]
    targets = truth[list(target_columns(classes))].to_numpy(np.float32)
    attributes = truth[list(ATTRIBUTES)].to_numpy(np.float32)
    cfg = MetaConfig(**{**asdict(cfg), "n_models": len(members), "classes": classes})
    if not np.isfinite(attributes).any():  # a corpus without ratings: nothing would train attribute outputs
        if cfg.attributes_in:
            raise ValueError("ensemble.attributes_in: no dev utterance has attribute ratings, so the members' "
                             "attribute predictions are empty; set ensemble.attributes_in: false")
        cfg = MetaConfig(**{**asdict(cfg), "attributes_out": False})

    def seeded_runs(c: MetaConfig) -> tuple[list[MetaClassifier], Stage3Choice]:
        """The form (cross-validated for "anchored", with the first seed), then one run per seed on all of dev."""
        c, choice = choose_stage3(dev, targets, attributes, MetaConfig(**{**asdict(c), "seed": seeds[0]}),
                                  anchor_grid, cv_folds)
        return [train_meta(dev, targets, attributes, MetaConfig(**{**asdict(c), "seed": s})) for s in seeds], choice

    runs, choice = seeded_runs(cfg)
    if choice.warning:
        log.warning("%s: %s", ", ".join(members), choice.warning)
    mixed = soup(runs)
    single_runs = [meta_predict(r, test)[0].argmax(1) for r in runs]
    predictions = {"majority voting": majority_vote(test.probs), "soft voting": soft_vote(test.probs),
                   "meta-classifier (single)": single_runs[0],
                   "meta-classifier (soup)": meta_predict(mixed, test)[0].argmax(1)}
    # the same dev rows, targets and seeds in the other form: Table 3 measures the paper's stage 3 against the
    # voting-anchored one on every run, whichever the param chose
    other_form = "paper" if cfg.stage3 == "anchored" else "anchored"
    other_form_soup = soup(seeded_runs(MetaConfig(**{**asdict(cfg), "stage3": other_form}))[0])
    predictions[OTHER_FORM_SOUP[other_form]] = meta_predict(other_form_soup, test)[0].argmax(1)
    other, scores, best = None, {}, None
    if probes is not None:
        # the same dev rows, targets and seeds: the two soups differ by the probe inputs alone
        other = soup(seeded_runs(MetaConfig(**{**asdict(cfg), "include_probes": not cfg.include_probes}))[0])
        predictions[OTHER_PROBES_SOUP[cfg.include_probes]] = meta_predict(other, test)[0].argmax(1)
        scores = probe_dev_scores(dev, list(members), classes)
        best = top_k_names(scores, 1)[0]
        predictions[BEST_PROBE] = test.probe_probs[:, list(members).index(best)].argmax(1)
    return SubsetResult(list(members), predictions, single_runs, mixed, runs, test, dev.utt_ids, classes, other,
                        scores, best, choice, other_form_soup)


def technique_probabilities(result: SubsetResult) -> dict[str, list[np.ndarray]]:
    """{technique: its (N, C) test posteriors, one array per run} for the techniques of Table 3 that have posteriors
    (majority voting has none): soft voting is the members' mean posterior, the single meta-classifier one array
    per seed."""
    test = result.test
    out = {"soft voting": [test.probs.mean(1)],
           "meta-classifier (single)": [meta_predict(run, test)[0] for run in result.runs],
           "meta-classifier (soup)": [meta_predict(result.soup, test)[0]]}
    for model, names in ((result.other_form_soup, OTHER_FORM_SOUP.values()),
                         (result.other_soup, OTHER_PROBES_SOUP.values())):
        technique = next((t for t in names if t in result.predictions), None)
        if model is not None and technique is not None:
            out[technique] = [meta_predict(model, test)[0]]
    if result.best_probe is not None:
        out[BEST_PROBE] = [test.probe_probs[:, result.members.index(result.best_probe)]]
    return out


def calibration_columns(results: dict[str, SubsetResult], manifest: pd.DataFrame) -> pd.DataFrame:
    """(technique, subset, jsd_votes, ece): Table 3's posteriors against the annotators on test (beyond the paper;
    medusa.scoring.calibration.calibration_table): mean JSD from the vote distributions and expected calibration error,
    the single meta-classifier's as the mean over its seeds."""
    from medusa.scoring.calibration import calibration_table

    rows = []
    for subset, r in results.items():
        for technique, runs in technique_probabilities(r).items():
            frames = {f"run {i}": posteriors_frame(r.test, "test", probs) for i, probs in enumerate(runs)}
            scores = calibration_table(frames, manifest)
            rows.append({"technique": technique, "subset": subset, "jsd_votes": float(scores["jsd_votes"].mean()),
                         "ece": float(scores["ece"].mean())})
    return pd.DataFrame(rows, columns=["technique", "subset", "jsd_votes", "ece"])


def stage3_table(results: dict[str, SubsetResult]) -> pd.DataFrame:
    """Per subset: the stage-3 form its soup was trained as, the penalty, the folds that chose it, the dev clips and
    classes it learnt from, its inputs, and the warning when dev holds fewer clips than inputs."""
    rows = []
    for subset, r in results.items():
        c = r.stage3
        rows.append({"subset": subset, "form": c.form, "anchor_l2": c.anchor_l2 if c.form == "anchored" else None,
                     "cv_folds": c.folds or None, "dev_clips": c.dev_rows,
                     "dev_classes": " ".join(f"{k}:{n}" for k, n in c.dev_classes.items()), "inputs": c.n_inputs,
                     "warning": ", ".join(w for w, bad in (
                         ("fewer dev clips than inputs", c.dev_rows < c.n_inputs),
                         ("classes without dev clips", not all(c.dev_classes.values()))) if bad)})
    return pd.DataFrame(rows).set_index("subset")


def technique_table(results: dict[str, SubsetResult], bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Table 3's analogue: one row per (technique, subset), scored on the test utterances whose consensus is one
    of the run's classes: balanced macro-F1 (the headline) and macro-F1, each with a 95 % class-stratified
    bootstrap interval (the same resamples for every technique of a subset), and accuracy. The single
    meta-classifier is the mean over seeds, with its std (`*_std`); its interval is that of the mean."""
    rows = []
    for subset, r in results.items():
        keep = np.isin(r.test.labels, r.classes)
        truth = r.test.labels[keep]
        named = lambda idx: np.asarray(r.classes)[idx][keep]  # noqa: E731
        indices = stratified_bootstrap_indices(truth, bootstrap, seed)
        for technique, idx in r.predictions.items():
            runs = [named(run) for run in (r.single_runs if technique == "meta-classifier (single)" else [idx])]
            several = len(runs) > 1
            row = {"technique": technique, "subset": subset, "n": int(len(truth))}
            for key, score, balanced in (("balanced_macro_f1", balanced_macro_f1, True),
                                         ("macro_f1", macro_f1, False)):
                values = [score(truth, run, r.classes) for run in runs]
                low, high = percentile_interval(np.mean(
                    [bootstrap_macro_f1(truth, run, classes=r.classes, indices=indices, balanced=balanced)
                     for run in runs], axis=0))
                row.update({key: float(np.mean(values)), f"{key}_std": float(np.std(values)) if several else np.nan,
                            f"{key}_ci95_low": low, f"{key}_ci95_high": high})
            accs = [accuracy(truth, run, r.classes) for run in runs]
            row.update({"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)) if several else np.nan})
            rows.append(row)
    return pd.DataFrame(rows)


def member_class_weights(meta: MetaClassifier, members: list[str]) -> pd.DataFrame:
    """For a linear meta-classifier: the weight from member m's posterior of class c to the logit of class c
    (rows: members, then, with include_probes, "<member> (probe)" for their probes; columns: classes) -- how much
    each member (and probe) is trusted for each class."""
    if meta.cfg.hidden:
        raise ValueError("per-member weights are defined for the linear meta-classifier (hidden: 0) only")
    classes = meta.cfg.classes
    w = meta.net.weight.detach().numpy()[:len(classes)]
    column = {name: i for i, name in enumerate(input_names(meta.cfg, members))}
    sources = [(m, f"{m} ") for m in members]
    if meta.cfg.include_probes:
        sources += [(f"{m} (probe)", f"{m} probe ") for m in members]
    diag = [[w[k, column[prefix + c]] for k, c in enumerate(target_columns(classes))] for _, prefix in sources]
    return pd.DataFrame(np.asarray(diag), index=[row for row, _ in sources], columns=list(classes))


def member_table(names: list[str], models_root) -> pd.DataFrame:
    """Each member's held-out scores from its metrics.json: dev balanced macro-F1 (its selection score, used
    to rank members for top-k) and test balanced macro-F1, macro-F1 and accuracy (reported, never used to choose)."""
    from medusa.model.members import read_metrics

    rows = []
    for name in names:
        m = read_metrics(Path(models_root) / name, f"train@{name}")
        rows.append({"member": name, "dev_balanced_macro_f1": m["dev_balanced_macro_f1"],
                     "test_balanced_macro_f1": m["test"]["balanced_macro_f1"],
                     "test_macro_f1": m["test"]["macro_f1"], "test_accuracy": m["test"]["accuracy"]})
    return pd.DataFrame(rows).set_index("member")


def subsets(members: pd.DataFrame, top_k: list[int]) -> dict[str, list[str]]:
    """{"all (M)": every member, "top-k": the k best by dev balanced macro-F1} (k = M is not repeated)."""
    names = list(members.index)
    out = {f"all ({len(names)})": names}
    for k in top_k:
        if k < len(names):
            out[f"top-{k}"] = top_k_names(members["dev_balanced_macro_f1"].to_dict(), k)
    return out


def headline(table: pd.DataFrame, members: pd.DataFrame, subset: str) -> dict[str, Any]:
    """MEDUSA (the soup over `subset`) against the best single member on test and the two votes, by balanced
    macro-F1 (with plain macro-F1 and accuracy beside it)."""
    row = lambda technique: table[(table["technique"] == technique) & (table["subset"] == subset)].iloc[0]  # noqa: E731
    best = members["test_balanced_macro_f1"].idxmax()
    medusa, single = row("meta-classifier (soup)"), row("meta-classifier (single)")
    return {"subset": subset, "n": int(medusa["n"]),
            "medusa_test_balanced_macro_f1": float(medusa["balanced_macro_f1"]),
            "medusa_test_balanced_macro_f1_ci95": [float(medusa["balanced_macro_f1_ci95_low"]),
                                                   float(medusa["balanced_macro_f1_ci95_high"])],
            "medusa_test_macro_f1": float(medusa["macro_f1"]), "medusa_test_accuracy": float(medusa["accuracy"]),
            "majority_voting_test_balanced_macro_f1": float(row("majority voting")["balanced_macro_f1"]),
            "soft_voting_test_balanced_macro_f1": float(row("soft voting")["balanced_macro_f1"]),
            "meta_single_test_balanced_macro_f1_mean": float(single["balanced_macro_f1"]),
            "meta_single_test_balanced_macro_f1_std": float(single["balanced_macro_f1_std"]),
            "best_single": best,
            "best_single_test_balanced_macro_f1": float(members.loc[best, "test_balanced_macro_f1"]),
            "best_single_test_macro_f1": float(members.loc[best, "test_macro_f1"]),
            "relative_gain_pct": float(100 * (medusa["balanced_macro_f1"] / members.loc[best, "test_balanced_macro_f1"]
                                              - 1))}


def ensemble_posteriors(posteriors: dict[str, pd.DataFrame], result: SubsetResult, splits=("test", "blind"),
                        probes: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """The soup's posteriors (utt_id, split, label, p_<code> of each of the run's classes and, with attributes,
    arousal..dominance; NaN without); `probes`
    (the members' probe posteriors) are needed when the soup reads them (include_probes)."""
    frames = []
    chosen = {m: posteriors[m] for m in result.members}
    chosen_probes = None if probes is None else {m: probes[m] for m in result.members}
    for split in splits:
        if not any((f["split"] == split).any() for f in chosen.values()):
            continue
        s = stack(chosen, split, chosen_probes)
        probs, attrs = meta_predict(result.soup, s)
        frame = posteriors_frame(s, split, probs)
        frame[list(ATTRIBUTES)] = attrs if attrs is not None else np.nan
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def table3_view(table: pd.DataFrame) -> pd.DataFrame:
    """technique_table laid out like the paper's Table 3: rows = technique, columns = (subset, bal. F1 [95 % CI] |
    F1 | ACC); the single meta-classifier's cells read "mean ± std" over seeds."""
    def cell(value: float, std: float, low: float | None = None, high: float | None = None) -> str:
        text = f"{value:.3f}" if np.isnan(std) else f"{value:.3f} ± {std:.3f}"
        return text if low is None else f"{text} [{low:.3f}, {high:.3f}]"

    # with calibration_columns merged in: JSD vs votes and ECE beside the scores ("–": no posteriors)
    extra = {"JSD": "jsd_votes", "ECE": "ece"} if "jsd_votes" in table else {}
    view = table.assign(**{
        "bal. F1": [cell(*v) for v in zip(table["balanced_macro_f1"], table["balanced_macro_f1_std"],
                                          table["balanced_macro_f1_ci95_low"], table["balanced_macro_f1_ci95_high"])],
        "F1": [cell(v, s) for v, s in zip(table["macro_f1"], table["macro_f1_std"])],
        "ACC": [cell(v, s) for v, s in zip(table["accuracy"], table["accuracy_std"])],
        **{name: ["–" if np.isnan(v) else f"{v:.3f}" for v in table[column]] for name, column in extra.items()}})
    order = list(dict.fromkeys(table["technique"]))
    metrics = ["bal. F1", "F1", "ACC", *extra]
    wide = view.pivot(index="technique", columns="subset", values=metrics).swaplevel(axis=1)
    return wide.reindex(index=order, columns=[(s, m) for s in dict.fromkeys(table["subset"]) for m in metrics])


def headline_sentence(summary: dict) -> str:
    """What the numbers of `headline` say, in words (the paper's claim: meta > voting, MEDUSA > best single)."""
    medusa, best = summary["medusa_test_balanced_macro_f1"], summary["best_single_test_balanced_macro_f1"]
    low, high = summary["medusa_test_balanced_macro_f1_ci95"]
    votes = max(summary["majority_voting_test_balanced_macro_f1"], summary["soft_voting_test_balanced_macro_f1"])
    return (f"MEDUSA (meta-classifier soup over {summary['subset']}) reaches test balanced macro-F1 {medusa:.3f} "
            f"[{low:.3f}, {high:.3f}] (macro-F1 {summary['medusa_test_macro_f1']:.3f}, accuracy "
            f"{summary['medusa_test_accuracy']:.3f}), {summary['relative_gain_pct']:+.1f} % relative to the best single "
            f"member ({summary['best_single']}, {best:.3f}; the paper: +7.23 %). The better vote reaches {votes:.3f}, "
            f"so the meta-classifier is {'above' if medusa > votes else 'not above'} voting here (the paper: above). "
            f"The single meta-classifiers average {summary['meta_single_test_balanced_macro_f1_mean']:.3f} ± "
            f"{summary['meta_single_test_balanced_macro_f1_std']:.3f}. On {summary['n']} test utterances the 95 % "
            f"interval is ±{(high - low) / 2:.3f} wide: differences smaller than that are within noise here.")


def probes_summary(table: pd.DataFrame, result: SubsetResult, subset: str) -> dict[str, Any]:
    """MEDUSA (the soup over `subset`) with and without the members' probe posteriors in, and the best probe by
    dev, on test (balanced macro-F1 with its interval). One of the two soups is the main result (`include_probes`,
    the param), the other is Table 3's OTHER_PROBES_SOUP row; `result` (of `subset`) must have read the probes."""
    if result.best_probe is None:
        raise ValueError(f"subset {subset!r} was run without the members' probe posteriors (run_subset(probes=...))")
    on = result.soup.cfg.include_probes

    def scores(technique: str) -> tuple[float, list[float]]:
        r = table[(table["technique"] == technique) & (table["subset"] == subset)].iloc[0]
        return float(r["balanced_macro_f1"]), [float(r["balanced_macro_f1_ci95_low"]),
                                               float(r["balanced_macro_f1_ci95_high"])]

    main, other = scores("meta-classifier (soup)"), scores(OTHER_PROBES_SOUP[on])
    (with_f1, with_ci), (without_f1, without_ci) = (main, other) if on else (other, main)
    probe_f1, probe_ci = scores(BEST_PROBE)
    return {"subset": subset, "include_probes": on,
            "with_probes_test_balanced_macro_f1": with_f1, "with_probes_test_balanced_macro_f1_ci95": with_ci,
            "without_probes_test_balanced_macro_f1": without_f1,
            "without_probes_test_balanced_macro_f1_ci95": without_ci,
            "best_probe": result.best_probe,
            "best_probe_dev_balanced_macro_f1": float(result.probe_dev_scores[result.best_probe]),
            "best_probe_test_balanced_macro_f1": probe_f1, "best_probe_test_balanced_macro_f1_ci95": probe_ci}


def probes_sentence(summary: dict) -> str:
    """What probes_summary says, in words: MEDUSA with against without the probes, and against the best probe."""
    with_f1 = summary["with_probes_test_balanced_macro_f1"]
    without_f1 = summary["without_probes_test_balanced_macro_f1"]
    probe_f1 = summary["best_probe_test_balanced_macro_f1"]
    low, high = summary["with_probes_test_balanced_macro_f1_ci95"]
    half = (high - low) / 2
    gain, over_probe = with_f1 - without_f1, with_f1 - probe_f1
    ci = lambda key: "[{:.3f}, {:.3f}]".format(*summary[key])  # noqa: E731
    where = lambda d: "above" if d > 0 else "below" if d < 0 else "level with"  # noqa: E731
    on = summary["include_probes"]
    return (f"MEDUSA here (soup over {summary['subset']}) is the soup {'with' if on else 'without'} the members' "
            f"probe posteriors in (`ensemble.include_probes: {str(on).lower()}`). With them it reaches test balanced "
            f"macro-F1 {with_f1:.3f} {ci('with_probes_test_balanced_macro_f1_ci95')}, without them {without_f1:.3f} "
            f"{ci('without_probes_test_balanced_macro_f1_ci95')} (same dev rows and seeds): the probes move it by "
            f"{gain:+.3f}, {'within' if abs(gain) <= half else 'beyond'} the ±{half:.3f} half-width of the "
            f"with-probes soup's 95 % interval. The best probe by dev ({summary['best_probe']}, dev "
            f"{summary['best_probe_dev_balanced_macro_f1']:.3f}) reaches {probe_f1:.3f} "
            f"{ci('best_probe_test_balanced_macro_f1_ci95')} on test; the soup with probes is {where(over_probe)} it "
            f"({over_probe:+.3f}).")
