"""The members' outputs side by side (Stacked, aligned on utt_id) and the two voting baselines."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medusa.labels import ATTRIBUTES, CODES, classes_of, common_classes, target_columns
from medusa.model.members import PROBE_POSTERIORS


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

