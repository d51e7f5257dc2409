"""Which stage-3 form a run trains: the paper's layer, the voting-anchored one at a penalty, or soft voting itself, chosen by class-stratified cross-validation within dev."""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from medusa.ensemble.meta import ANCHOR_FLOOR, MetaConfig, meta_predict, take, train_meta, trainable_rows
from medusa.ensemble.voting import Stacked
from medusa.scoring.metrics import balanced_macro_f1


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
                  anchor_grid: list[float] | tuple[float, ...], folds: int) -> tuple[MetaConfig, Stage3Choice]:
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
        chosen = replace(cfg, stage3="voting", anchor_l2=0.0)
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
                               replace(cfg, stage3=form, anchor_l2=l2))
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
    chosen = replace(cfg, stage3=form, anchor_l2=l2)
    return chosen, Stage3Choice(form, l2, folds=k, cv=cv, **base)

