"""The ensemble stage's computation, as notebook 05 shows it and tests run it: read the members' posteriors,
train stages 3-4 on every subset (all members, then each top-k), and score Table 3 (with the calibration
columns), the headline and the probes' comparison. Writing the outputs (posteriors, bundle, submission, metrics)
is medusa.pipeline.stages.write_ensemble's job."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medusa.ensemble.meta import MetaConfig
from medusa.ensemble.subsets import SubsetResult, ensemble_posteriors, member_table, run_subset, subsets
from medusa.ensemble.tables import calibration_columns, headline, probes_summary, technique_table
from medusa.ensemble.voting import read_probe_posteriors
from medusa.scoring.metrics import run_classes


@dataclass
class EnsembleRun:
    manifest: pd.DataFrame
    models_root: Path
    classes: tuple[str, ...]
    names: list[str]                        # the members, in the meta-classifier's input order
    posteriors: dict[str, pd.DataFrame]     # each member's posteriors.parquet
    probes: dict[str, pd.DataFrame]         # each member's linear-probe posteriors (Table 3 reads them either way)
    singles: pd.DataFrame                   # the members' own scores (member_table)
    cfg: MetaConfig
    groups: dict[str, list[str]]            # subset name -> its members; the first is all of them
    results: dict[str, SubsetResult]
    table: pd.DataFrame                     # Table 3 (technique_table) with the calibration columns
    summary: dict[str, Any]                 # the headline of the all-members subset
    probe_summary: dict[str, Any]
    medusa: pd.DataFrame                    # the soup's posteriors over all members (test, blind)

    @property
    def all_subset(self) -> str:
        return next(iter(self.groups))

    def stage3_record(self) -> dict[str, Any]:
        return {subset: r.stage3.record() for subset, r in self.results.items()}


def run_ensemble(section: Any, names: list[str], manifest: pd.DataFrame, models_root: str | Path, bootstrap: int,
                 seed: int) -> EnsembleRun:
    """Stages 3-4 per the run's `ensemble` section (EnsembleParams) over the members `names`, whose folders are
    under `models_root`; Table 3's intervals from `bootstrap` resamples drawn with `seed` (the `report`
    section's, as for every interval)."""
    models_root = Path(models_root)
    posteriors = {n: pd.read_parquet(models_root / n / "posteriors.parquet") for n in names}
    probes = read_probe_posteriors(names, models_root)
    singles = member_table(names, models_root)
    cfg = MetaConfig.from_params(section, n_models=len(names))
    groups = subsets(singles, section.top_k)
    results = {subset: run_subset(posteriors, manifest, chosen, cfg, section.seeds, probes,
                                  anchor_grid=section.anchor_l2, cv_folds=section.cv_folds)
               for subset, chosen in groups.items()}
    table = technique_table(results, bootstrap, seed).merge(calibration_columns(results, manifest), how="left",
                                                            on=["technique", "subset"])
    all_subset = next(iter(groups))   # the first subset holds every member (EnsembleRun.all_subset)
    return EnsembleRun(manifest, models_root, run_classes(manifest), list(names), posteriors, probes, singles, cfg,
                       groups, results, table, headline(table, singles, all_subset),
                       probes_summary(table, results[all_subset], all_subset),
                       ensemble_posteriors(posteriors, results[all_subset], probes=probes))
