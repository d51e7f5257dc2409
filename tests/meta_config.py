"""The meta-classifier config that tests build: the paper preset's `ensemble` section (configs/paper.yaml: the
paper's stage-3 form, epochs and learning rate), with the changes a test names. Settings come from the schema's
section, as the pipeline's do (MetaConfig.from_params), never from defaults of their own."""
from functools import cache
from pathlib import Path

import yaml

from medusa.config.params import EnsembleParams
from medusa.ensemble.meta import MetaConfig

ROOT = Path(__file__).resolve().parents[1]


@cache
def paper_ensemble() -> EnsembleParams:
    return EnsembleParams(**yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())["ensemble"])


def meta_config(n_models: int, **changes) -> MetaConfig:
    return MetaConfig.from_params(paper_ensemble(), n_models, **changes)
