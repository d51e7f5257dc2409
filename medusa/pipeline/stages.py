"""What a stage does beyond the package's computations, in one function each, so that the stage notebooks
(parameters, one call, displays) and the tests run the same code: the outputs of the ensemble stage."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from medusa.ensemble.stage import EnsembleRun
from medusa.io import write_json, write_parquet
from medusa.serving.bundle import save_bundle
from medusa.serving.inference import load_bundle, stored_agreement
from medusa.serving.submission import submission_from_posteriors, write_submission

#: Blind clips the ensemble stage scores again through the saved bundle (a seeded, shuffled request), and how far
#: the bundle's posteriors may be from the stored soup's: float noise only (batch invariance; README "Prediction").
BUNDLE_CHECK_CLIPS = 24
BUNDLE_CHECK_TOLERANCE = 0.005


def bundle_check(bundle_dir: str | Path, manifest: pd.DataFrame, stored: pd.DataFrame,
                 cache_dir: str | Path) -> dict[str, Any] | None:
    """Score up to BUNDLE_CHECK_CLIPS blind clips with the saved bundle and compare them with the stored soup
    posteriors; None without blind clips. Raises if the bundle disagrees: prediction would differ from the
    pipeline."""
    blind = manifest.query("split == 'blind'")
    files = list(blind["path"].sample(n=min(BUNDLE_CHECK_CLIPS, len(blind)), random_state=0))
    if not files:
        return None
    check = stored_agreement(load_bundle(bundle_dir), files, stored, cache_dir)
    if check["max_abs_diff"] > BUNDLE_CHECK_TOLERANCE or check["argmax_agree"] != check["clips"]:
        raise AssertionError(f"the bundle in {bundle_dir} does not reproduce the stored soup posteriors: {check}")
    return check


def write_submission_file(run: EnsembleRun, out: str | Path) -> pd.Series | None:
    """The challenge's submission (FileName,EmoClass) for the blind split, from the soup's posteriors; the file
    exists either way (a header without rows when there are no blind clips). Returns blind files per class."""
    blind = run.manifest.query("split == 'blind'")
    if not len(blind):
        Path(out).write_text("FileName,EmoClass\n")
        return None
    write_submission(submission_from_posteriors(run.medusa), out, list(blind["utt_id"] + ".wav"))
    return pd.read_csv(out)["EmoClass"].value_counts().rename("blind files per class")


def write_ensemble(run: EnsembleRun, ensemble_dir: str | Path, bundle_dir: str | Path,
                   encoders: Mapping[str, Any], transcribe: Mapping[str, Any] | None) -> None:
    """The soup's posteriors and Table 3 under `ensemble_dir`, and the predict bundle of the all-members soup."""
    all_members = run.results[run.all_subset]
    write_parquet(run.medusa, Path(ensemble_dir) / "posteriors.parquet")
    write_parquet(run.table, Path(ensemble_dir) / "table3.parquet")
    save_bundle(bundle_dir, all_members.soup, [Path(run.models_root) / n for n in all_members.members],
                encoders, transcribe, run.manifest.query("split == 'train'")["duration_s"])


def write_ensemble_metrics(run: EnsembleRun, check: dict[str, Any] | None, out: str | Path) -> None:
    write_json({**run.summary, "probes": run.probe_summary, "bundle_check": check, "stage3": run.stage3_record(),
                "table3": run.table.to_dict(orient="records")}, out)
