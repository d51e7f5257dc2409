"""Posteriors against the annotators: how well a system's class probabilities match the vote distributions and
how well its confidence matches its accuracy, on test (issue #22; beyond the paper, which reports F1 only).

The paper trains on soft targets (the normalised annotator votes) because emotion is ambiguous; these scores
measure whether that shows in the posteriors:

- JSD vs votes: the Jensen-Shannon divergence (base 2, so in [0, 1]: 0 for the same distribution, 1 for
  disjoint ones) between a posterior and the utterance's vote distribution (the manifest's p_<code> columns),
  averaged over the scored test rows with real vote distributions: n_votes > 1. A corpus that gives no votes
  (n_votes NaN) has one-hot targets of the consensus label, and a single vote is one-hot too: a divergence from
  those measures confidence, not agreement with annotators, so such rows are left out (and counted).
- Brier vs votes: the squared distance sum_c (p_c - v_c)^2 from the vote distribution, on the same rows.
- ECE: top-label expected calibration error over equal-width confidence bins (15 by default): the sum over bins
  of |bin|/N |accuracy - mean confidence|, where confidence is the top posterior and accuracy is against the
  consensus label. reliability_curve gives the per-bin points of the reliability diagram.

Scored rows are those of medusa.scoring.metrics: test utterances whose consensus is one of the run's classes. Every
system is scored on the same rows (a system missing one is an error: retrain it on the current manifest).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medusa.labels import classes_of, target_columns
from medusa.scoring.metrics import percentile_interval, run_classes, stratified_bootstrap_indices

#: Equal-width confidence bins of the ECE and the reliability diagram (Guo et al., 2017 used 15).
BINS = 15


def vote_divergence(posteriors: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Per-row Jensen-Shannon divergence (base 2, in [0, 1]) between (N, C) posteriors and (N, C) vote
    distributions; NaN for a row whose votes are NaN.

    Computed from scipy.special.rel_entr, as scipy.spatial.distance.jensenshannon does, but without its square
    root: that returns the JS *distance*, and for near-identical rows rounding makes the divergence a tiny
    negative number whose root is NaN (a posterior of 1 - 1e-9 against a unanimous vote does that); here it is
    clipped at 0 instead."""
    from scipy.special import rel_entr

    p = np.asarray(posteriors, dtype=np.float64)
    q = np.asarray(votes, dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    q = q / q.sum(axis=1, keepdims=True)
    m = (p + q) / 2
    js = (rel_entr(p, m).sum(axis=1) + rel_entr(q, m).sum(axis=1)) / (2 * np.log(2))
    return np.clip(js, 0.0, 1.0)  # NaN rows stay NaN


def reliability_curve(probs: np.ndarray, labels_idx: np.ndarray, bins: int = BINS) -> pd.DataFrame:
    """Top-label reliability: one row per non-empty equal-width confidence bin over [0, 1] (bin index, its
    `lower` and `upper` edge, the mean `confidence` = top posterior, the `accuracy` of the argmax against
    `labels_idx` (column indices of the true classes), and the `count` of rows). Bins are [lower, upper), the
    last one closed (scipy.stats.binned_statistic)."""
    from scipy.stats import binned_statistic

    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels_idx)).astype(np.float64)
    means = binned_statistic(confidence, [confidence, correct], statistic="mean", bins=bins, range=(0.0, 1.0))
    counts = binned_statistic(confidence, confidence, statistic="count", bins=bins, range=(0.0, 1.0)).statistic
    edges = means.bin_edges
    curve = pd.DataFrame({"bin": np.arange(bins), "lower": edges[:-1], "upper": edges[1:],
                          "confidence": means.statistic[0], "accuracy": means.statistic[1],
                          "count": counts.astype(np.int64)})
    return curve[curve["count"] > 0].reset_index(drop=True)


def expected_calibration_error(probs: np.ndarray, labels_idx: np.ndarray, bins: int = BINS) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |bin|/N |accuracy - mean confidence| (NaN for no
    rows). scikit-learn's calibration_curve is for one binary outcome and returns no bin counts, which the ECE
    weighs by, so the bins come from reliability_curve."""
    curve = reliability_curve(probs, labels_idx, bins)
    if curve.empty:
        return float("nan")
    return float(np.sum(curve["count"] / curve["count"].sum() * (curve["accuracy"] - curve["confidence"]).abs()))


@dataclass(frozen=True)
class ScoredRows:
    """The scored test rows of a run (ordered by utt_id): their consensus labels as column indices of the run's
    `classes`, the vote distributions (NaN rows where there are none) and which rows have real ones."""
    utt_ids: np.ndarray
    labels: np.ndarray
    labels_idx: np.ndarray
    votes: np.ndarray
    voted: np.ndarray
    classes: tuple[str, ...]


def scored_rows(manifest: pd.DataFrame) -> ScoredRows:
    """The test rows whose consensus is one of the run's classes; `voted`: n_votes > 1 and a vote distribution
    over the run's classes (a manifest without an n_votes column has no votes)."""
    classes = run_classes(manifest)
    test = manifest[(manifest["split"] == "test") & manifest["label"].isin(classes)].sort_values("utt_id")
    votes = test[list(target_columns(classes))].to_numpy(np.float64)
    n_votes = test["n_votes"].to_numpy(np.float64) if "n_votes" in test else np.full(len(test), np.nan)
    voted = (n_votes > 1) & np.isfinite(votes).all(axis=1)   # NaN > 1 is False: no votes given
    votes = np.where(voted[:, None], votes, np.nan)
    lookup = {c: i for i, c in enumerate(classes)}
    labels = test["label"].to_numpy(dtype=object)
    return ScoredRows(test["utt_id"].to_numpy(), labels, np.array([lookup[c] for c in labels], dtype=np.int64),
                      votes, voted, classes)


def system_probs(frame: pd.DataFrame, rows: ScoredRows, name: str) -> np.ndarray:
    """(N, C) posteriors of one system on `rows`, in their order; ValueError when its posteriors are over other
    classes or miss a scored row."""
    if classes_of(frame) != rows.classes:
        raise ValueError(f"{name}: posteriors over {' '.join(classes_of(frame))}, not the run's classes "
                         f"{' '.join(rows.classes)}; retrain it on the current manifest (dvc repro)")
    test = frame[frame["split"] == "test"].set_index("utt_id")
    missing = sorted(set(rows.utt_ids) - set(test.index))
    if missing:
        raise ValueError(f"{name}: no test posteriors for {len(missing)} scored utterances (e.g. {missing[0]}); "
                         "retrain it on the current manifest (dvc repro)")
    return test.loc[rows.utt_ids, list(target_columns(rows.classes))].to_numpy(np.float64)


def calibration_table(posteriors: dict[str, pd.DataFrame], manifest: pd.DataFrame, bins: int = BINS
                      ) -> pd.DataFrame:
    """One row per system ({name: posteriors frame}, in that order), all on the same scored test rows: `n`
    (scored rows), `n_votes` (of them, rows with a vote distribution), `jsd_votes` and `brier_votes` (means over
    those rows; NaN when there are none), `ece`, and beside it the `accuracy` and mean top-posterior
    `confidence` (confidence above accuracy: overconfident)."""
    rows = scored_rows(manifest)
    lines = []
    for name, frame in posteriors.items():
        probs = system_probs(frame, rows, name)
        voted = rows.voted
        has_votes = bool(voted.any())
        lines.append({"system": name, "n": len(rows.utt_ids), "n_votes": int(voted.sum()),
                      "jsd_votes": float(vote_divergence(probs[voted], rows.votes[voted]).mean()) if has_votes
                      else np.nan,
                      "brier_votes": float(((probs[voted] - rows.votes[voted]) ** 2).sum(axis=1).mean()) if has_votes
                      else np.nan,
                      "ece": expected_calibration_error(probs, rows.labels_idx, bins),
                      "accuracy": float((probs.argmax(axis=1) == rows.labels_idx).mean()),
                      "confidence": float(probs.max(axis=1).mean())})
    return pd.DataFrame(lines).set_index("system")


def reliability_curves(posteriors: dict[str, pd.DataFrame], manifest: pd.DataFrame, bins: int = BINS
                       ) -> dict[str, pd.DataFrame]:
    """reliability_curve of every system on the scored test rows: {name: curve}."""
    rows = scored_rows(manifest)
    return {name: reliability_curve(system_probs(frame, rows, name), rows.labels_idx, bins)
            for name, frame in posteriors.items()}


def divergence_change(posteriors: dict[str, pd.DataFrame], manifest: pd.DataFrame, systems: list[str],
                      references: list[str], bootstrap: int, seed: int
                      ) -> tuple[float, float, float] | None:
    """The mean JSD vs votes of `systems` (averaged over them) minus that of `references`, on the rows with
    votes, with its 95 % interval: a class-stratified bootstrap of those rows (medusa.scoring.metrics), paired (each
    resample scores both sides). (change, low, high); None when there is no system or no row with votes."""
    rows = scored_rows(manifest)
    if not systems or not references or not rows.voted.any():
        return None
    votes = rows.votes[rows.voted]

    def mean_divergence(names: list[str]) -> np.ndarray:
        return np.mean([vote_divergence(system_probs(posteriors[n], rows, n)[rows.voted], votes) for n in names],
                       axis=0)

    per_row = mean_divergence(systems) - mean_divergence(references)
    indices = stratified_bootstrap_indices(rows.labels[rows.voted], bootstrap, seed)
    low, high = percentile_interval(per_row[indices].mean(axis=1))
    return float(per_row.mean()), low, high
