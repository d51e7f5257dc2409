"""The meta-classifier (stage 3): its config, input blocks, the linear layer (paper's or voting-anchored), training on dev, and the soup of seeds (stage 4)."""
from __future__ import annotations

import copy
from dataclasses import InitVar, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medusa.ensemble.voting import Stacked
from medusa.labels import ATTRIBUTES, CODES, balanced_epoch, target_columns
from medusa.model.dataset import scale_attributes, unscale_attributes
from medusa.model.deepser import soft_cross_entropy

N_ATTRIBUTES = len(ATTRIBUTES)



#: Stage-3 forms (MetaConfig.stage3): the paper's linear layer; the same layer anchored at soft voting (beyond the
#: paper: issue #22); the anchored layer at its start, i.e. soft voting itself (what cross-validation may choose).
STAGE3_FORMS = ("paper", "anchored", "voting")



#: Posteriors are clamped here before the log of the anchor (a member may give a class exactly 0 in float32).
ANCHOR_FLOOR = 1e-6



@dataclass(frozen=True)
class MetaConfig:
    """One meta-classifier's settings: those of the run's `ensemble` section (medusa.config.params.EnsembleParams,
    where each is declared, documented and defaulted once: build this through `from_params`), plus what the run
    decides (the member count, the classes, the seed, the chosen anchor penalty)."""
    n_models: int
    attributes_in: bool              # the members' attribute predictions in, beside their posteriors
    include_probes: bool             # each member's linear-probe posteriors in too
    hidden: int                      # 0: linear (the paper); > 0: one ReLU hidden layer
    #: The stage-3 form (STAGE3_FORMS): "paper" learns the class logits from scratch; "anchored" adds the log of
    #: the members' mean posterior to them, so that it starts exactly at soft voting, and penalises its class
    #: weights by anchor_l2 (a pull back to voting); "voting" is the anchored form held at its start.
    stage3: str
    anchor_l2: float                 # the one penalty this model trains with (the section holds the grid)
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    ce_weight: float
    mse_weight: float
    seed: int
    #: The run's classes: the class outputs, and the posteriors read from each member.
    classes: tuple[str, ...]
    attributes_out: bool | None = None   # attribute outputs, trained by eq. (1)'s MSE term; None: mse_weight > 0
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
        """The config of the run's `ensemble` section (EnsembleParams): every setting the two share; anchor_l2
        starts at 0 (the section holds the grid cross-validation chooses from), seed at the first of `seeds`,
        classes at all 8 codes (run_subset sets the run's); `changes` override any field."""
        names = {f.name for f in fields(cls)} - {"anchor_l2", "n_models"}
        values = {k: v for k, v in params.model_dump().items() if k in names}
        return cls(n_models=n_models, **{"anchor_l2": 0.0, "seed": params.seeds[0], "classes": CODES,
                                         **values, **changes})

    @classmethod
    def from_saved(cls, config: dict[str, Any]) -> "MetaConfig":
        """A config as a bundle's meta.json stores it (asdict). Fields added after bundles were first written
        take the value that every model saved before them was trained with."""
        legacy = {"attributes_in": False, "include_probes": False, "stage3": "paper", "anchor_l2": 0.0,
                  "classes": CODES}
        return cls(**{**legacy, **config})

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



def train_meta(stacked: Stacked, targets: np.ndarray, attributes: np.ndarray, cfg: MetaConfig,
               init_seed: int | None = None) -> MetaClassifier:
    """Stage 3 on `stacked` (dev): soft `targets` (N, C) over cfg.classes (the run's), `attributes` (N, 3) on the
    1..7 scale (NaN = unrated: the MSE term reads rated rows only, and none when no row is rated). Only utterances
    whose consensus is one of the run's classes and that have a target (class votes) are drawn, class-balanced,
    afresh every epoch: a row without votes has NaN targets, and one NaN in a batch would turn every weight of
    the soup into NaN. A loss that is not finite stops with the batch's utterances named.

    The initial weights are drawn with `init_seed` (None: cfg.seed), the class-balanced draws with cfg.seed; a
    soup's runs share their start through it (soup_runs)."""
    classes = cfg.classes
    if np.shape(targets) != (len(stacked.probs), len(classes)):
        raise ValueError(f"targets of shape {np.shape(targets)}, expected ({len(stacked.probs)}, {len(classes)}): "
                         f"one column per class of the run ({' '.join(classes)})")
    torch.manual_seed(cfg.seed if init_seed is None else init_seed)
    model = MetaClassifier(cfg)
    torch.manual_seed(cfg.seed)  # anything drawn from torch after the initial weights follows the run's own seed
    rng = np.random.default_rng(cfg.seed)
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



def soup_runs(stacked: Stacked, targets: np.ndarray, attributes: np.ndarray, cfg: MetaConfig,
              seeds: list[int]) -> list[MetaClassifier]:
    """Stage 4's ingredients: one train_meta run on `stacked` per seed of `seeds` (ensemble.seeds).

    With a hidden layer (cfg.hidden > 0) every run starts from the same initial weights, drawn with the first of
    `seeds`, and its own seed varies only its class-balanced draws (the order and make-up of its batches): the
    soup averages weights unit by unit, which means something only for networks that start alike (the hidden
    units of independently initialised networks need not correspond, so their mean is no model of either).
    The linear layer (hidden 0, the paper's and the demo's) keeps a start per seed, as it always had: a mean of
    linear layers is the mean of their logits whatever their start, and a shared start would move the committed
    results for no gain in meaning."""
    if not seeds:
        raise ValueError("a soup needs at least one seed (ensemble.seeds)")
    init_seed = seeds[0] if cfg.hidden else None
    return [train_meta(stacked, targets, attributes, replace(cfg, seed=s), init_seed=init_seed) for s in seeds]



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

