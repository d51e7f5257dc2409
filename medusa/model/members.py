"""An ensemble member: one DeepSER, resolved from params, trained on the feature stores, saved to its folder.

A member folder (work/models/<name>/) holds everything later stages and the predict bundle need, in formats that
load without pickle:

    model.safetensors     the weights selected on dev (balanced macro-F1), with the input standardisation
    config.json           the resolved configuration, each setting once: `encoders` with their feature-store
                          metadata, `pools` (time pooling per encoder), `deepser` (the architecture with input
                          widths and class count), `train` (the recipe: the rest of `train`, seed and targets
                          included), `probe` (the probe's section), and `classes`: the run's classes (the
                          manifest's p_ columns), in the order of the model's class outputs. Configs written
                          before it stored each setting once (architecture and pooling in `train` too) read alike.
    history.json          per epoch: stage, epoch, mean training loss, dev balanced macro-F1, utterances seen,
                          optimizer steps so far, test balanced macro-F1 (recorded to diagnose the selection; it never drives it)
    posteriors.parquet    utt_id, split, label, p_<code> of each of the run's classes (class probabilities),
                          arousal, valence, dominance
                          (predicted, on the 1..7 scale) for every dev, test and blind utterance
    metrics.json          test-split scores (medusa.scoring.metrics.classification_scores), attribute CCC, the dev
                          selection score and where it was reached, and `train_rows`: how many training
                          utterances stage 1 trained on (`stage1`) and stage 2's balanced draw could pick from
                          (`stage2_pool`, null without stage 2); `probe_test`: the linear probe's test scores;
                          `intervals`: the resampling behind both blocks' 95 % intervals ({bootstrap, seed}: the
                          run's report.bootstrap and report.seed, as for every interval of the run)
    probe.json            the member's linear probe (medusa.model.linear_probe.LinearProbe) on the same feature stores
    probe_posteriors.parquet  its posteriors, same columns (attributes NaN), dev, test and blind

The folder is written under a temporary name and renamed when complete, so it is either whole or absent.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from medusa.config.params import ArchitectureParams, ModelParams, ProbeParams, TrainParams, resolve_train
from medusa.features.batches import pick_device
from medusa.features.store.reader import FeatureStore
from medusa.io import write_json, write_parquet
from medusa.labels import ATTRIBUTES, CODES, classes_of, target_columns
from medusa.model.dataset import FeatureDataset, input_statistics, unscale_attributes
from medusa.model.deepser import DeepSER, DeepSERConfig, count_parameters
from medusa.model.linear_probe import PROBE_FILE, fit_probe, probe_posteriors
from medusa.model.training import TrainConfig, predict, train_deepser, training_rows
from medusa.scoring.metrics import ccc, classification_scores, run_classes

log = logging.getLogger(__name__)

#: Splits a member scores (it trains on `train` and selects on `dev`; `test` is never seen in training).
SCORED_SPLITS = ("dev", "test", "blind")
PROBE_POSTERIORS = "probe_posteriors.parquet"
FILES = ("model.safetensors", "config.json", "history.json", "posteriors.parquet", "metrics.json", PROBE_FILE,
         PROBE_POSTERIORS)


@dataclass(frozen=True)
class MemberSpec:
    name: str
    encoders: tuple[str, ...]        # feature-store keys, in the order of the model's inputs
    deepser: DeepSERConfig           # derived from `train` (DeepSERConfig.from_train) and the stores' widths
    train: TrainConfig               # params' `train` with the model's overrides, and the model's seed
    probe: ProbeParams               # params' `probe`: the linear probe fitted beside the member

    @property
    def pools(self) -> tuple[int, ...]:
        """Time pooling per encoder (train.pool; encoders not listed: 1)."""
        return tuple(self.train.pool.get(e, 1) for e in self.encoders)

    @property
    def one_hot(self) -> bool:
        return self.train.targets == "one_hot"

    def to_dict(self) -> dict[str, Any]:
        """Each setting once: the architecture under `deepser` and this member's pooling under `pools`, so
        `train` keeps the rest of the recipe (train.pool also names encoders this member does not read)."""
        recipe = self.train.model_dump(exclude={*ArchitectureParams.model_fields, "pool"})
        return {"name": self.name, "encoders": list(self.encoders), "pools": list(self.pools),
                "deepser": self.deepser.to_dict(), "train": recipe, "probe": self.probe.model_dump()}


def resolve_member(name: str, model: ModelParams | dict, train: TrainParams | dict, input_dims: dict[str, int],
                   extra_overrides: dict[str, Any] | None = None, *, probe: ProbeParams | dict) -> MemberSpec:
    """The full configuration of one member: `train` with the model's overrides (then `extra_overrides`, e.g.
    an ablation's switch) applied, each encoder's feature width from `input_dims`, and params' `probe` section."""
    model = model if isinstance(model, ModelParams) else ModelParams.model_validate(model)
    base = train if isinstance(train, TrainParams) else TrainParams.model_validate(train)
    probe = probe if isinstance(probe, ProbeParams) else ProbeParams.model_validate(probe)
    t = resolve_train(resolve_train(base, model.overrides), extra_overrides or {})
    missing = [e for e in model.encoders if e not in input_dims]
    if missing:
        raise KeyError(f"model {name!r}: no feature width known for encoder(s) {missing}")
    return MemberSpec(name=name, encoders=tuple(model.encoders),
                      deepser=DeepSERConfig.from_train([input_dims[e] for e in model.encoders], t),
                      train=TrainConfig.of(t, model.seed), probe=probe)


def open_stores(encoders: tuple[str, ...] | list[str], features_root: str | Path) -> list[FeatureStore]:
    return [FeatureStore(Path(features_root) / e) for e in encoders]


def store_dims(encoders: list[str] | tuple[str, ...], features_root: str | Path) -> dict[str, int]:
    return {e: s.dim for e, s in zip(encoders, open_stores(encoders, features_root))}


def split_datasets(spec: MemberSpec, manifest: pd.DataFrame, stores: list[FeatureStore]
                   ) -> dict[str, FeatureDataset]:
    """One FeatureDataset per split present in the manifest (train, dev, test, blind)."""
    return {split: FeatureDataset(rows, stores, list(spec.pools), one_hot=spec.one_hot)
            for split, rows in manifest.groupby("split", sort=False) if len(rows)}


def posteriors_frame(data: FeatureDataset, probs: np.ndarray, attrs: np.ndarray, rated: bool = True
                     ) -> pd.DataFrame:
    """utt_id, split, label, p_<code> of each of the run's classes (`data.classes`), attributes (1..7 scale; NaN
    when no training row was rated: an attribute head the MSE term never reached predicts nothing)."""
    frame = data.rows[["utt_id", "split", "label"]].copy()
    frame[list(target_columns(data.classes))] = probs
    frame[list(ATTRIBUTES)] = unscale_attributes(attrs) if rated else np.nan
    return frame.reset_index(drop=True)


def predicted_labels(posteriors: pd.DataFrame) -> np.ndarray:
    """The argmax class code of every row of a posteriors frame, among the classes it holds columns for."""
    classes = classes_of(posteriors)
    return np.asarray(classes)[posteriors[list(target_columns(classes))].to_numpy().argmax(1)]


def attribute_ccc(truth: pd.DataFrame, posteriors: pd.DataFrame) -> dict[str, float]:
    """CCC per attribute between the manifest's ratings and the predictions, over rows rated on it."""
    merged = truth[["utt_id", *ATTRIBUTES]].merge(posteriors[["utt_id", *ATTRIBUTES]], on="utt_id",
                                                   suffixes=("", "_pred"))
    out = {}
    for a in ATTRIBUTES:
        rated = merged[a].notna()
        out[a] = ccc(merged.loc[rated, a], merged.loc[rated, f"{a}_pred"]) if rated.sum() > 1 else float("nan")
    return out


def classification_scores_of(posteriors: pd.DataFrame, split: str, classes: tuple[str, ...] | list[str],
                             seed: int, bootstrap: int) -> dict[str, Any]:
    """medusa.scoring.metrics.classification_scores of the argmax predictions of a posteriors frame on one split, over
    `classes` (the run's classes: medusa.scoring.metrics.run_classes of the manifest)."""
    part = posteriors[posteriors["split"] == split]
    return classification_scores(part["label"], predicted_labels(part), classes, seed, bootstrap)


def score_test_split(manifest: pd.DataFrame, posteriors: pd.DataFrame, seed: int, bootstrap: int
                     ) -> dict[str, Any]:
    """Scores of a member's (or any model's) posteriors on the test split, over the run's classes (the
    manifest's p_ columns), attribute CCC included (NaN, null on disk, for an attribute rated on fewer than 2
    test utterances, e.g. a corpus without attribute ratings)."""
    scores = classification_scores_of(posteriors, "test", run_classes(manifest), seed, bootstrap)
    test = posteriors[posteriors["split"] == "test"]
    return {**scores, "ccc": attribute_ccc(manifest[manifest["split"] == "test"], test)}


def train_member(spec: MemberSpec, manifest: pd.DataFrame, features_root: str | Path, out_dir: str | Path,
                 checkpoint: str | Path | None = None, *, bootstrap: int, bootstrap_seed: int) -> dict[str, Any]:
    """Train one member (stages 1-2, resumable through `checkpoint`), score dev/test/blind, write its folder.
    The 95 % intervals of its test scores and its probe's are drawn from `bootstrap` resamples seeded by
    `bootstrap_seed`: the run's report.bootstrap and report.seed (not the member's own seed, which trains it).
    Returns the contents of metrics.json."""
    out_dir = Path(out_dir)
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)  # CPU results depend on the thread count: fix it (params)
    device = pick_device(spec.train.device)
    stores = open_stores(spec.encoders, features_root)
    data = split_datasets(spec, manifest, stores)
    for split in ("train", "dev"):
        if split not in data:
            raise ValueError(f"model {spec.name!r}: the manifest has no {split!r} utterances")
    classes = run_classes(manifest)
    # one class output per class of the run (the manifest's p_ columns); config.json records them
    spec = replace(spec, deepser=spec.deepser.model_copy(update={"n_classes": len(classes)}))
    torch.manual_seed(spec.train.seed)  # the initial weights come from the seed too
    model = DeepSER(spec.deepser)
    if spec.train.standardise:  # the training split's statistics, kept in the weights (medusa.model.deepser.Standardise)
        model.set_standardisation(input_statistics(data["train"]))
    log.info("%s: DeepSER over %s, %s parameters, on %s", spec.name, "+".join(spec.encoders),
             f"{count_parameters(model):,}", device)
    # the test split is scored after every epoch for the notebook's diagnosis only (never for selection)
    model, history, best = train_deepser(model, data["train"], data["dev"], spec.train, device, checkpoint,
                                         monitor=data.get("test"))
    for row in history:
        if "monitor_balanced_macro_f1" in row:
            row["test_balanced_macro_f1"] = row.pop("monitor_balanced_macro_f1")
    rated = bool(np.isfinite(data["train"].attributes).any())
    if not rated:
        log.info("%s: no training utterance has attribute ratings: the member predicts classes only", spec.name)
    posteriors = pd.concat([posteriors_frame(data[s], *predict(model, data[s], 4 * spec.train.batch_size, device,
                                                                spec.train.amp), rated)
                            for s in SCORED_SPLITS if s in data], ignore_index=True)
    # the member's linear probe: the same stores, mean-pooled, logistic regression (Table 1 shows both)
    probe = fit_probe(manifest, stores, spec.probe.c, spec.train.seed)
    probe_frame = probe_posteriors(probe, manifest[manifest["split"].isin(SCORED_SPLITS)], stores)
    metrics = {"test": score_test_split(manifest, posteriors, bootstrap_seed, bootstrap) if "test" in data else None,
               "probe_test": classification_scores_of(probe_frame, "test", classes, bootstrap_seed, bootstrap)
               if "test" in data else None,
               "intervals": {"bootstrap": bootstrap, "seed": bootstrap_seed},
               "dev_balanced_macro_f1": best["score"], "best_stage": best["stage"], "best_epoch": best["epoch"],
               "parameters": count_parameters(model),
               # which rows trained: one-hot runs leave out X/O rows, every run rows without class votes
               "train_rows": training_rows(data["train"], spec.train)}
    stores_meta = {e: {k: v for k, v in s.meta.items() if k != "n_frames"} for e, s in zip(spec.encoders, stores)}
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(partial / "model.safetensors"))
    write_json({**spec.to_dict(), "classes": list(classes), "feature_stores": stores_meta}, partial / "config.json")
    write_json(history, partial / "history.json")
    write_parquet(posteriors, partial / "posteriors.parquet")
    probe.save(partial)
    write_parquet(probe_frame, partial / PROBE_POSTERIORS)
    write_json(metrics, partial / "metrics.json")
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    return metrics


#: What a member needs to predict (the rest of its folder is history and scores).
MODEL_FILES = ("model.safetensors", "config.json")


def read_member_config(folder: str | Path) -> dict[str, Any]:
    """The resolved config of a member folder; a clear error if the folder is not a trained member."""
    folder = Path(folder)
    missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not a trained member folder (missing {', '.join(missing)}); "
                                "run its train stage (dvc repro train@<name>)")
    return json.loads((folder / "config.json").read_text())


def member_classes(config: dict[str, Any]) -> tuple[str, ...]:
    """The classes of a member's class outputs, in order, from its config.json (`classes`; members trained
    before configs recorded them predict all 8 CODES). ValueError if they are not distinct codes in CODES order,
    one per class output of its DeepSER."""
    classes = tuple(config.get("classes", CODES))
    outputs = int(config["deepser"].get("n_classes", len(CODES)))
    if list(classes) != [c for c in CODES if c in classes]:  # an unknown code, a repeat or another order
        raise ValueError(f"classes {list(classes)} are not distinct class codes in the order {' '.join(CODES)}")
    if len(classes) != outputs:
        raise ValueError(f"{len(classes)} classes ({' '.join(classes)}) but the model has {outputs} class outputs")
    return classes


def load_member(folder: str | Path, device: str | torch.device = "cpu") -> tuple[DeepSER, dict[str, Any]]:
    """The trained DeepSER of a member folder (safetensors + JSON only) and its resolved config; its classes
    are checked against the model's class outputs (member_classes)."""
    folder = Path(folder)
    config = read_member_config(folder)
    try:
        member_classes(config)
    except ValueError as e:
        raise ValueError(f"{folder / 'config.json'}: {e}; retrain the member (dvc repro train@<name>)") from None
    model = DeepSER(DeepSERConfig.from_dict(config["deepser"]))
    state = load_file(str(folder / "model.safetensors"), device=str(device))
    missing = [k for k in model.state_dict() if k not in state]
    if missing:  # e.g. the standardisation buffers, which members trained before them lack
        raise ValueError(f"{folder / 'model.safetensors'}: no {', '.join(missing[:3])}"
                         f"{' ...' if len(missing) > 3 else ''}: written by an older version of medusa; retrain "
                         "the member (dvc repro train@<name>)")
    model.load_state_dict(state)
    return model.to(device).eval(), config


def history_frame(folder: str | Path) -> pd.DataFrame:
    history = pd.DataFrame(json.loads((Path(folder) / "history.json").read_text()))
    history["step"] = np.arange(1, len(history) + 1)  # epochs across both stages, for plotting
    return history


def read_metrics(folder: str | Path, stage: str | None = None) -> dict[str, Any]:
    """A trained folder's metrics.json (a member or an ablation run); a clear error naming the DVC `stage` to
    rerun (default: the member's, train@<folder name>) when it is missing or was written before test scores led
    with balanced macro-F1."""
    stage = stage or f"train@{Path(folder).name}"
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not trained; run `dvc repro {stage}`")
    metrics = json.loads(path.read_text())
    if "balanced_macro_f1_ci95" not in (metrics.get("test") or {}):
        raise ValueError(f"{path}: its test scores have no balanced_macro_f1_ci95 (written by an older version "
                         f"of medusa); rerun `dvc repro {stage}`")
    return metrics


def check_intervals(metrics: Mapping[str, Any], folder: str | Path, bootstrap: int, seed: int,
                    stage: str | None = None) -> None:
    """ValueError, naming the DVC `stage` to rerun (default train@<folder name>), unless the intervals of a
    metrics.json were drawn from `bootstrap` resamples seeded by `seed` (report.bootstrap, report.seed): a table
    must not show a member's interval drawn under other settings beside intervals drawn under the run's."""
    used = metrics.get("intervals")
    if used != {"bootstrap": bootstrap, "seed": seed}:
        drawn = ("record no resampling settings (written by an older version of medusa)" if used is None else
                 f"were drawn from {used.get('bootstrap')} resamples with seed {used.get('seed')}")
        stage = stage or f"train@{Path(folder).name}"
        raise ValueError(f"{Path(folder) / 'metrics.json'}: its intervals {drawn}, but report.bootstrap is "
                         f"{bootstrap} and report.seed {seed}; rerun `dvc repro {stage}` (its stage reads the "
                         "report section)")


def score_table(scores: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per system from {system: classification_scores}: n, balanced macro-F1 with its 95 % interval
    (the headline), macro-F1 with its interval, accuracy, and the number of classes scored."""
    return pd.DataFrame([{"system": system, "n": s["n"], "balanced_macro_f1": s["balanced_macro_f1"],
                          "ci95_low": s["balanced_macro_f1_ci95"][0], "ci95_high": s["balanced_macro_f1_ci95"][1],
                          "macro_f1": s["macro_f1"], "macro_f1_ci95_low": s["macro_f1_ci95"][0],
                          "macro_f1_ci95_high": s["macro_f1_ci95"][1], "accuracy": s["accuracy"],
                          "classes": len(s["classes"])} for system, s in scores.items()]).set_index("system")


def compare_to_baseline(table: pd.DataFrame, model: str = "DeepSER", baseline: str = "probe") -> str:
    """A sentence on how the model compares with its baseline (the member's linear probe) on a score_table (balanced macro-F1, interval
    overlap included)."""
    m, b = table.loc[model], table.loc[baseline]
    gap = m["balanced_macro_f1"] - b["balanced_macro_f1"]
    overlap = m["ci95_low"] <= b["ci95_high"] and b["ci95_low"] <= m["ci95_high"]
    where = "above" if gap > 0 else "below" if gap < 0 else "level with"
    certainty = ("the 95 % intervals overlap, so on these {n} utterances the difference is within resampling noise"
                 if overlap else "the 95 % intervals do not overlap").format(n=int(m["n"]))
    return (f"{model} balanced macro-F1 {m['balanced_macro_f1']:.3f} is {where} the {baseline}'s "
            f"{b['balanced_macro_f1']:.3f} ({gap:+.3f}); {certainty}. Chance is {1 / m['classes']:.3f} "
            f"({int(m['classes'])} classes).")


def selection_note(history: pd.DataFrame, best_stage: int, best_epoch: int, tolerance: float = 0.02) -> str:
    """How well dev-based selection did, judged by the per-epoch test scores recorded for diagnosis: the test
    balanced macro-F1 at the selected epoch, the best over all epochs, and the spread among near-best dev epochs."""
    chosen = history[(history["stage"] == best_stage) & (history["epoch"] == best_epoch)].iloc[0]
    near = history[history["dev_balanced_macro_f1"] >= chosen["dev_balanced_macro_f1"] - tolerance]
    top = history.loc[history["test_balanced_macro_f1"].idxmax()]
    score = "test_balanced_macro_f1"
    return (f"Selected by dev: stage {best_stage} epoch {best_epoch} (dev balanced macro-F1 "
            f"{chosen['dev_balanced_macro_f1']:.3f}), test balanced macro-F1 {chosen[score]:.3f}. The best test "
            f"balanced macro-F1 of any epoch was {top[score]:.3f} (stage {int(top['stage'])} epoch "
            f"{int(top['epoch'])}); the {len(near)} epoch(s) within {tolerance} of the selected dev score span "
            f"{near[score].min():.3f}-{near[score].max():.3f} on test. A wide span means dev "
            f"cannot tell these epochs apart and the choice among them is luck.")


#: metrics.json's keys (train_member) that the member's stage reports in its metrics file.
_TEST_KEYS = ("balanced_macro_f1", "balanced_macro_f1_ci95", "macro_f1", "macro_f1_ci95", "accuracy", "n", "ccc")
_PROBE_KEYS = ("balanced_macro_f1", "balanced_macro_f1_ci95", "macro_f1", "accuracy")


def member_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The member stage's metrics file (reports/metrics/train/<name>.json) from its metrics.json."""
    return {**{f"test_{k}": metrics["test"][k] for k in _TEST_KEYS},
            **{k: metrics[k] for k in ("dev_balanced_macro_f1", "best_stage", "best_epoch", "parameters")},
            **{f"probe_test_{k}": metrics["probe_test"][k] for k in _PROBE_KEYS}}
