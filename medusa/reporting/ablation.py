"""Table 2: the DeepSER ablations -- the same training with one component switched off.

A variant is a named set of `train` keys (params.yaml `ablate.variants`, e.g. no_mixup: {mixup_p: 0.0}). Each
ablation model (`ablate.models`, entries of `models`) is trained again with the variant's switch on top of its
own settings, through the ensemble's own code path (members.resolve_member with the variant as
`extra_overrides`, members.train_member), with its own seed, into

    work/ablations/<variant>/<model>/    a member folder (weights, config, history, posteriors, metrics)

The reference (Table 2's "DeepSER" row) is the trained member itself, work/models/<model>: same code, same seed,
same thread count, one switch apart. A stage trains its runs one after another; `medusa repro` runs the stages
side by side (parallel.jobs), each process with `train.threads` torch threads: a run's result does not depend on
its neighbours (tests/test_repro.py).

Models that differ only by seed (same encoders and overrides) form one configuration: Table 2 shows their mean
and std over seeds. The comparison is on the test split: balanced macro-F1 (the headline; medusa.scoring.metrics), with
macro-F1 and accuracy beside it, the average over configurations, and the relative change of that average's
balanced macro-F1 from the reference, with paired class-stratified bootstrap intervals (the same resampled test
utterances score the reference and the variant).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medusa.config import paths
from medusa.config.params import REFERENCE_VARIANT, Params
from medusa.labels import classes_of, common_classes
from medusa.model import members
from medusa.scoring.metrics import (
    accuracy,
    balanced_macro_f1,
    bootstrap_macro_f1,
    macro_f1,
    percentile_interval,
    relative_change,
    stratified_bootstrap_indices,
)

log = logging.getLogger(__name__)

#: Row titles of Table 2 for the paper's variants (another variant is shown under its own name).
VARIANT_TITLES = {REFERENCE_VARIANT: "DeepSER", "one_hot": "w. one-hot targets", "late_fusion": "w. late fusion",
                  "no_mixup": "w/o MixUp", "no_multitask": "w/o multitask", "no_stage2": "w/o stage 2"}
#: The paper's Table 2, column Δ (%): relative macro-F1 change of the average over models 2, 8, 9, 13.
PAPER_DELTA_PCT = {"one_hot": -8.23, "late_fusion": -6.31, "no_mixup": -2.93, "no_multitask": -2.18,
                   "no_stage2": -1.20}


def variant_title(variant: str) -> str:
    return VARIANT_TITLES.get(variant, variant)


@dataclass(frozen=True)
class AblationRun:
    variant: str
    model: str
    spec: members.MemberSpec

    @property
    def name(self) -> str:
        return self.model


def run_dir(variant: str, model: str, root: str | Path = paths.ABLATIONS, models_root: str | Path = paths.MODELS
            ) -> Path:
    """The folder of one run; the reference variant's is the ensemble member's own folder."""
    return Path(models_root) / model if variant == REFERENCE_VARIANT else Path(root) / variant / model


def run_checkpoint(root: str | Path, variant: str, model: str) -> Path:
    """Beside the variant's folder: DVC deletes a stage's outputs before it reruns (see paths.model_checkpoint)."""
    return Path(root) / f"{variant}.{model}.checkpoint.pt"


def ablation_runs(params: Params, variant: str, input_dims: dict[str, int]) -> list[AblationRun]:
    """Every model's run of one variant, resolved like its ensemble member plus the variant's switch."""
    if variant not in params.ablate.variants:
        raise KeyError(f"ablate.variants: no variant {variant!r} (have: {', '.join(params.ablate.variants)})")
    return [AblationRun(variant, model, members.resolve_member(model, params.models[model], params.train, input_dims,
                                                               extra_overrides=params.ablate.variants[variant],
                                                               probe=params.probe))
            for model in params.ablate.models]


def configurations(ablation_models: list[str], models: dict[str, Any]) -> dict[str, str]:
    """{ablation model: its configuration}, named after the first listed model with the same encoders and
    overrides (the others are its seed repeats). `models`: params.yaml's `models` (dicts or ModelParams)."""
    first: dict[str, str] = {}
    out = {}
    for model in ablation_models:
        entry = models[model] if isinstance(models[model], dict) else models[model].model_dump()
        key = repr((list(entry["encoders"]), sorted(entry.get("overrides", {}).items())))
        out[model] = first.setdefault(key, model)
    return out


def _train_one(run: AblationRun, manifest_path: str, features_root: str, root: str, bootstrap: int,
               bootstrap_seed: int) -> dict[str, Any]:
    """One run (in a worker process): train, write its folder, return its metrics."""
    logging.basicConfig(level=logging.INFO, format=f"[{run.variant}/{run.name}] %(name)s: %(message)s", force=True)
    manifest = pd.read_parquet(manifest_path)
    return members.train_member(run.spec, manifest, features_root, run_dir(run.variant, run.model, root),
                                run_checkpoint(root, run.variant, run.model), bootstrap=bootstrap,
                                bootstrap_seed=bootstrap_seed)


def train_runs(runs: list[AblationRun], manifest_path: str | Path, features_root: str | Path, root: str | Path,
               *, bootstrap: int, bootstrap_seed: int) -> dict[str, dict[str, Any]]:
    """Train every run, one after another (resumable: each has its per-epoch checkpoint); {run name: metrics},
    each run's intervals from `bootstrap` resamples seeded by `bootstrap_seed` (report.bootstrap, report.seed;
    members.train_member). Table 2's stages run side by side under `medusa repro` (parallel.jobs), not its runs
    inside a stage: one mechanism spreads all training over the devices."""
    out = {}
    for run in runs:
        out[run.name] = _train_one(run, str(manifest_path), str(features_root), str(root), bootstrap, bootstrap_seed)
        log.info("%s: test balanced macro-F1 %.3f", run.name, out[run.name]["test"]["balanced_macro_f1"])
    return out


def _count(value: int | None) -> float:
    return float("nan") if value is None else float(value)


def load_runs(variants: list[str], models_: list[str], configs: dict[str, str], root: str | Path = paths.ABLATIONS,
              models_root: str | Path = paths.MODELS) -> pd.DataFrame:
    """One row per run, the reference first: variant, model, its configuration, seed, test scores (balanced
    macro-F1 with its interval `ci95_low/high`, as reports.member_rows; macro-F1, accuracy), the
    epoch its dev score selected, and the training rows of stage 1 and of stage 2's draw pool
    (`train_rows_stage1`, `train_rows_stage2_pool`; NaN where not recorded or without stage 2), from
    metrics.json and config.json."""
    rows = []
    for variant in [REFERENCE_VARIANT, *variants]:
        for model in models_:
            folder = run_dir(variant, model, root, models_root)
            if not (folder / "metrics.json").is_file():
                stage = f"train@{model}" if variant == REFERENCE_VARIANT else f"ablate@{variant}"
                raise FileNotFoundError(f"{folder}: run missing; run `dvc repro {stage}`")
            m = json.loads((folder / "metrics.json").read_text())
            seed = json.loads((folder / "config.json").read_text())["train"]["seed"]
            test = m["test"]
            # members trained before train_rows was recorded lack it: NaN (unknown), not a made-up count
            train_rows = m.get("train_rows") or {}
            rows.append({"variant": variant, "model": model, "configuration": configs[model], "seed": seed,
                         "n": test["n"], "balanced_macro_f1": test["balanced_macro_f1"],
                         "ci95_low": test["balanced_macro_f1_ci95"][0], "ci95_high": test["balanced_macro_f1_ci95"][1],
                         "macro_f1": test["macro_f1"], "accuracy": test["accuracy"],
                         "best_stage": int(m["best_stage"]), "best_epoch": int(m["best_epoch"]),
                         "train_rows_stage1": _count(train_rows.get("stage1")),
                         "train_rows_stage2_pool": _count(train_rows.get("stage2_pool"))})
    return pd.DataFrame(rows)


def aligned_test_predictions(frames: dict[Any, pd.DataFrame]) -> tuple[np.ndarray, dict[Any, np.ndarray]]:
    """From posteriors frames (all over the same classes, the run's): the test labels (utterances with one of
    those classes, ordered by utt_id) and each frame's argmax predictions on them, so that bootstrap resamples
    pair up across systems."""
    classes = common_classes({str(key): classes_of(post) for key, post in frames.items()}, "systems' posteriors")
    truth, predictions = None, {}
    for key, post in frames.items():
        test = post[(post["split"] == "test") & post["label"].isin(classes)].sort_values("utt_id")
        if truth is None:
            truth = test[["utt_id", "label"]].reset_index(drop=True)
        elif not np.array_equal(truth["utt_id"].to_numpy(), test["utt_id"].to_numpy()):
            raise ValueError(f"{key} was scored on other test utterances than {next(iter(frames))}; retrain it on "
                             "the current manifest (dvc repro)")
        predictions[key] = members.predicted_labels(test)
    return truth["label"].to_numpy(), predictions


def test_predictions(runs: pd.DataFrame, root: str | Path = paths.ABLATIONS, models_root: str | Path = paths.MODELS
                     ) -> tuple[np.ndarray, dict[tuple[str, str], np.ndarray]]:
    """aligned_test_predictions of every run in `runs`, keyed (variant, model)."""
    return aligned_test_predictions({(v, m): pd.read_parquet(run_dir(v, m, root, models_root) / "posteriors.parquet")
                                     for v, m in runs[["variant", "model"]].itertuples(index=False)})


def table2(runs: pd.DataFrame, truth: np.ndarray, predictions: dict[tuple[str, str], np.ndarray],
           bootstrap: int, seed: int, reference: str = REFERENCE_VARIANT, *,
           classes: tuple[str, ...]) -> pd.DataFrame:
    """Table 2 in long form: one row per (variant, configuration) and one per (variant, "AVG").

    Scored from each run's test `predictions` over `classes` (the run's classes, medusa.scoring.metrics): per
    configuration, balanced macro-F1 (the headline), macro-F1 and accuracy, each the mean over its seeds with
    the std (`*_std`), and a 95 % class-stratified bootstrap interval of the mean balanced macro-F1
    (`balanced_macro_f1_ci95_low/high`). AVG: the mean over configurations, with its interval. delta_pct: the
    relative change of the row's balanced macro-F1 from the reference's (same configuration, or AVG), in %,
    with a paired interval: each resample of the test utterances scores both. All intervals share the same
    `bootstrap` resamples."""
    if reference not in set(runs["variant"]):
        raise ValueError(f"no run of the reference {reference!r}: Table 2's changes are relative to it")
    scores = {"balanced_macro_f1": balanced_macro_f1, "macro_f1": macro_f1, "accuracy": accuracy}
    points = {key: {name: score(truth, pred, classes) for name, score in scores.items()}
              for key, pred in predictions.items()}
    indices = stratified_bootstrap_indices(truth, bootstrap, seed)
    resampled = {key: bootstrap_macro_f1(truth, pred, classes=classes, indices=indices, balanced=True)
                 for key, pred in predictions.items()}
    rows, curves = [], {}
    for (variant, config), group in runs.groupby(["variant", "configuration"], sort=False):
        curves[(variant, config)] = np.mean([resampled[(variant, m)] for m in group["model"]], axis=0)
        row = {"variant": variant, "configuration": config, "seeds": len(group)}
        for name in scores:
            values = np.array([points[(variant, m)][name] for m in group["model"]])
            row.update({name: float(values.mean()), f"{name}_std": float(values.std()) if len(group) > 1 else np.nan})
        rows.append(row)
    frame = pd.DataFrame(rows)
    averages = []
    for variant, group in frame.groupby("variant", sort=False):
        curves[(variant, "AVG")] = np.mean([curves[(variant, c)] for c in group["configuration"]], axis=0)
        row = {"variant": variant, "configuration": "AVG", "seeds": int(group["seeds"].min())}
        for name in scores:
            row.update({name: float(group[name].mean()), f"{name}_std": np.nan})
        averages.append(row)
    frame = pd.concat([frame, pd.DataFrame(averages)], ignore_index=True)
    reference_f1 = frame[frame["variant"] == reference].set_index("configuration")["balanced_macro_f1"]
    extra = []
    for variant, config, value in frame[["variant", "configuration", "balanced_macro_f1"]].itertuples(index=False):
        if config not in reference_f1:
            raise ValueError(f"configuration {config!r} has no {reference!r} run to compare {variant!r} with")
        low, high = percentile_interval(curves[(variant, config)])
        d_low, d_high = percentile_interval(relative_change(curves[(variant, config)], curves[(reference, config)]))
        extra.append({"balanced_macro_f1_ci95_low": low, "balanced_macro_f1_ci95_high": high,
                      "delta_pct": float(relative_change(value, reference_f1[config])),
                      "delta_ci95_low": d_low, "delta_ci95_high": d_high})
    frame = pd.concat([frame, pd.DataFrame(extra)], axis=1)
    variant_rank = {v: i for i, v in enumerate(dict.fromkeys(runs["variant"]))}
    config_rank = {c: i for i, c in enumerate([*dict.fromkeys(runs["configuration"]), "AVG"])}
    frame["_order"] = [variant_rank[v] * 1000 + config_rank[c] for v, c in zip(frame["variant"], frame["configuration"])]
    return frame.sort_values("_order").drop(columns="_order").reset_index(drop=True)


def stage2_check(runs: pd.DataFrame, full: str = REFERENCE_VARIANT, no_stage2: str = "no_stage2") -> pd.DataFrame:
    """w/o stage 2 is stage 1 of the full run (same seed, same draws): when the full run selected a stage-1
    epoch, both must be the same model and score exactly the same. A False in `identical` means the training is
    not deterministic."""
    if not {full, no_stage2} <= set(runs["variant"]):
        return pd.DataFrame()
    pair = runs[runs["variant"] == full].merge(runs[runs["variant"] == no_stage2], on="model",
                                               suffixes=("_full", "_no_stage2"))
    picked_stage1 = pair["best_stage_full"] == 1
    same = (pair["best_epoch_full"] == pair["best_epoch_no_stage2"]) & np.isclose(
        pair["balanced_macro_f1_full"], pair["balanced_macro_f1_no_stage2"], rtol=0, atol=1e-12)
    pair["identical"] = [bool(s) if p else None for s, p in zip(same, picked_stage1)]
    return pair[["model", "best_stage_full", "best_epoch_full", "balanced_macro_f1_full", "best_epoch_no_stage2",
                 "balanced_macro_f1_no_stage2", "identical"]]
