"""Per-model views of the feature stores, so that a stage depends on the stores it reads and on no other.

    python -m medusa.pipeline.inputs --model NAME     # work/inputs/models/NAME: the stores of models.NAME.encoders
    python -m medusa.pipeline.inputs --ablation       # work/inputs/ablation: the stores of every ablate.models entry

DVC cannot list one dependency per entry of a list parameter (`models.<name>.encoders`), so a `train@MODEL` stage
that listed `work/features` would rerun whenever any encoder's store changed: at the paper's scale, re-extracting
one encoder would retrain all 14 members and all of Table 2. Instead each `inputs@MODEL` stage links the files of
its model's stores into one folder (symbolic links: no copy of the frames) and `train@MODEL` depends on that
folder. DVC hashes a linked file by its content, so `dvc status` shows `train@MODEL` changed exactly when one of
its own stores changed; the `inputs@` stages themselves rerun on any store change, in seconds. The stages read
their stores through the view too, so that they read nothing they do not depend on.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from medusa.config import paths
from medusa.config.params import PARAMS_FILE, ParamsError, load_params
from medusa.errors import UserError
from medusa.features.store.reader import STORE_FILES, is_store


class InputsError(UserError, ValueError):
    """A store a view needs does not exist (its extract@ stage has not run)."""


def link_stores(encoders: list[str] | tuple[str, ...], features_root: str | Path, out: str | Path) -> Path:
    """Make `out`/<encoder>/<file> a relative symbolic link to each file a reader opens (STORE_FILES) of each
    encoder's store under `features_root`; built beside `out`, then renamed over it. Returns `out`."""
    features_root, out = Path(features_root), Path(out)
    missing = [e for e in encoders if not is_store(features_root / e)]
    if missing:
        raise InputsError(f"no complete feature store for {', '.join(missing)} under {features_root}: run "
                          f"{' and '.join(f'dvc repro extract@{e}' for e in missing)} first")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for encoder in dict.fromkeys(encoders):      # once each, in order
        folder = partial / encoder
        folder.mkdir(parents=True)
        for name in STORE_FILES:
            target = (features_root / encoder / name).resolve()
            os.symlink(os.path.relpath(target, folder.resolve()), folder / name)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medusa.pipeline.inputs", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="an entry of params.yaml's models")
    which.add_argument("--ablation", action="store_true", help="the stores of every ablate.models entry")
    parser.add_argument("--params", default=PARAMS_FILE)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        if args.model is not None:
            if args.model not in params.models:
                raise ParamsError(f"{args.params}: models has no entry {args.model!r} "
                                  f"(entries: {', '.join(params.models)})")
            link_stores(params.models[args.model].encoders, paths.FEATURES, paths.model_inputs(args.model))
        else:
            encoders = [e for m in params.ablate.models for e in params.models[m].encoders]
            link_stores(encoders, paths.FEATURES, paths.ABLATION_INPUTS)
    except (ParamsError, InputsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
