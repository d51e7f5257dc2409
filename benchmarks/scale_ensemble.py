"""Stages 3 and the report in benchmarks/scale.py: synthetic member posteriors at the corpus' size, the ensemble as
notebook 05 runs it, and the report's bootstrap intervals.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medusa.config.params import REFERENCE_VARIANT, Params
from medusa.ensemble.meta import MetaConfig
from medusa.ensemble.subsets import ensemble_posteriors, run_subset, subsets
from medusa.labels import ATTRIBUTES, target_columns
from medusa.model import members
from medusa.reporting import ablation, reports
from medusa.scoring.metrics import balanced_macro_f1, run_classes

# ------------------------------------------------------------------------------- synthetic member outputs


def synthetic_posteriors(manifest: pd.DataFrame, classes: tuple[str, ...], names: list[str], splits: tuple[str, ...],
                         seed: int, skill: tuple[float, float], attributes: bool) -> dict[str, pd.DataFrame]:
    """{name: posteriors frame} as members write them (utt_id, split, label, p_<code>, arousal..dominance): a
    softmax of N(0, 1) logits plus a per-member `skill` on the consensus class (where it is one of the run's)."""
    rows = manifest.loc[manifest["split"].isin(splits), ["utt_id", "split", "label"]].reset_index(drop=True)
    lookup = {c: i for i, c in enumerate(classes)}
    truth = np.array([lookup.get(x, -1) for x in rows["label"]])
    known = truth >= 0
    out = {}
    for k, name in enumerate(names):
        rng = np.random.default_rng([seed, k, int(attributes)])
        logits = rng.standard_normal((len(rows), len(classes)))
        logits[np.flatnonzero(known), truth[known]] += rng.uniform(*skill)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        frame = rows.copy()
        frame[list(target_columns(classes))] = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
        frame[list(ATTRIBUTES)] = rng.uniform(1, 7, (len(rows), 3)).astype(np.float32) if attributes else np.nan
        out[name] = frame
    return out


@dataclass
class Outputs:
    posteriors: dict[str, pd.DataFrame]
    probes: dict[str, pd.DataFrame]
    singles: pd.DataFrame
    ablations: dict[tuple[str, str], pd.DataFrame]


def member_outputs(manifest: pd.DataFrame, params: Params, seed: int) -> Outputs:
    classes = run_classes(manifest)
    names = params.ensemble.members or list(params.models)
    scored = ("dev", "test", "blind")
    posteriors = synthetic_posteriors(manifest, classes, names, scored, seed, (1.0, 2.0), True)
    probes = synthetic_posteriors(manifest, classes, names, scored, seed + 1, (0.6, 1.4), False)
    singles = pd.DataFrame({"dev_balanced_macro_f1": [
        balanced_macro_f1(f.loc[f["split"] == "dev", "label"], members.predicted_labels(f[f["split"] == "dev"]),
                          classes) for f in posteriors.values()]}, index=pd.Index(names, name="member"))
    runs = [f"{v}/{m}" for v in params.ablate.variants for m in params.ablate.models]
    frames = synthetic_posteriors(manifest, classes, runs, ("test",), seed + 2, (0.8, 1.8), True)
    ablations = {tuple(key.split("/")): frame for key, frame in frames.items()}
    return Outputs(posteriors, probes, singles, ablations)


def run_ensemble(out: Outputs, manifest: pd.DataFrame, params: Params) -> tuple[dict, pd.DataFrame]:
    """Notebook 05: the meta-classifier config from `ensemble`, the subsets, run_subset each (probes passed), the
    soup's posteriors over the first subset."""
    e = params.ensemble
    names = list(out.singles.index)
    cfg = MetaConfig.from_params(e, len(names))
    groups = subsets(out.singles, e.top_k)
    results = {subset: run_subset(out.posteriors, manifest, chosen, cfg, e.seeds, out.probes,
                                           anchor_grid=e.anchor_l2, cv_folds=e.cv_folds)
               for subset, chosen in groups.items()}
    soup = ensemble_posteriors(out.posteriors, results[next(iter(groups))], probes=out.probes)
    return results, soup


def report_bootstraps(out: Outputs, soup: pd.DataFrame, manifest: pd.DataFrame, params: Params) -> int:
    """Every bootstrap interval of Tables 1-2 and the findings (notebook 06 and the metrics.json of each member and
    ablation run); returns how many systems were scored with intervals."""
    b, seed = params.report.bootstrap, params.report.seed
    classes = run_classes(manifest)
    names = list(out.singles.index)
    scored = 0
    test_f1 = {}
    for name in names:  # train_member: the member's and its probe's test scores (metrics.json)
        model_seed = params.models[name].seed
        test_f1[name] = members.score_test_split(manifest, out.posteriors[name], model_seed, b)["balanced_macro_f1"]
        members.classification_scores_of(out.probes[name], "test", classes, model_seed, b)
        scored += 2
    for (variant, model), frame in out.ablations.items():  # each ablation run's metrics.json
        members.score_test_split(manifest, frame, params.models[model].seed, b)
        scored += 1
    truth, predictions = ablation.aligned_test_predictions({n: out.posteriors[n] for n in names})
    reports.mean_interval(truth, list(predictions.values()), b, seed, classes)  # Table 1's AVG
    scored += 1
    models = {m: params.models[m].model_dump() for m in params.ablate.models}
    configs = ablation.configurations(params.ablate.models, models)
    runs = pd.DataFrame([{"variant": v, "model": m, "configuration": configs[m]}
                         for v in [REFERENCE_VARIANT, *params.ablate.variants] for m in params.ablate.models])
    frames = {(v, m): out.posteriors[m] if v == REFERENCE_VARIANT else out.ablations[(v, m)]
              for v, m in runs[["variant", "model"]].itertuples(index=False)}
    truth, predictions = ablation.aligned_test_predictions(frames)
    ablation.table2(runs, truth, predictions, b, seed, classes=classes)
    scored += len(frames)
    best = max(test_f1, key=test_f1.get)  # findings: MEDUSA against the best single member and the better vote
    votes = reports.vote_frames(out.posteriors, names)
    truth, systems = ablation.aligned_test_predictions({"MEDUSA": soup, best: out.posteriors[best], **votes})
    for other in (best, *reports.VOTES):
        reports.paired_change(truth, systems["MEDUSA"], systems[other], b, seed, classes)
    return scored + 3
