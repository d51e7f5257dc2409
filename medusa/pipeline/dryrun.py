"""The paper preset's dry run: configs/paper.yaml's whole DAG through DVC, at a size a 2-core CPU runs in minutes.

    python -m medusa.pipeline.dryrun [--dir build/paper-dry-run] [--preset configs/paper.yaml]
                            [--override configs/paper-dry-run.yaml] [--fresh]

`cp configs/paper.yaml params.yaml` is the repository's main promise on a GPU; this proves, before anyone spends a
GPU-day on it, that every stage of that preset runs: its 14 members, Table 2's 4 x 5 ablation runs, the all /
top-7 / top-5 ensembles with 6 soup seeds, every encoder family's code path (WavLM, HuBERT, the Whisper encoder
with 128 mel bins, RoBERTa, ModernBERT) and the Whisper ASR. What it changes is one documented override file
(configs/paper-dry-run.yaml: sizes only), merged over the preset key by key.

The dry run lives in its own DVC workspace (`--dir`, git-ignored under build/): the preset merged with the override
as its params.yaml, this checkout's dvc.yaml, notebooks/ and medusa/ copied in (so DVC hashes the code it runs),
a synthetic corpus (medusa.data.corpora.demo, sized by the override) in data/, and tiny stand-ins of the five
encoders (medusa.pipeline.standins) in standins/. It then runs `medusa repro` there (the parallel path: two ranks, two
training stages at a time) and checks that the reports a real run
writes are there and complete: Tables 1-3 with a row per member, per ablation variant and per ensemble, the
figures, the submission and a predict bundle that loads. Rerunning continues where DVC left off (stages whose
inputs are unchanged are skipped); `--fresh` starts from an empty workspace. A summary goes to
`<dir>/reports/dry_run.json`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medusa.config.params import ParamsError, merge_overrides, read_yaml, validate_params

log = logging.getLogger("medusa.pipeline.dryrun")

REPO = Path(__file__).resolve().parents[2]
PRESET = Path("configs/paper.yaml")
OVERRIDE = Path("configs/paper-dry-run.yaml")
WORKSPACE = Path("build/paper-dry-run")
CODE = ("dvc.yaml", "notebooks", "medusa")   # what the stages run, copied into the workspace
STANDINS = "standins"
STANDIN_SEED = 0


class DryRunError(RuntimeError):
    """A stage failed, or the reports of the dry run are incomplete."""


def dry_run_params(preset: str | Path = PRESET, override: str | Path = OVERRIDE) -> dict[str, Any]:
    """The preset with the override merged in, validated like any params.yaml."""
    raw = [read_yaml(path) for path in (preset, override)]  # a repeated key or a syntax error: one line naming it
    merged = merge_overrides(raw[0], raw[1], source=str(override))
    validate_params(merged, source=f"{preset} + {override}")
    return merged


def _copy_code(workspace: Path) -> None:
    """This checkout's dvc.yaml, notebooks and medusa package, replacing older copies (DVC then reruns exactly the
    stages whose code changed)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in CODE:
        src, dst = REPO / name, workspace / name
        if dst.is_dir():
            shutil.rmtree(dst)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        else:
            shutil.copy2(src, dst)


def _standins(workspace: Path) -> None:
    """Tiny stand-ins of the preset's encoders, built once (a marker records the architectures they were built
    from; other architectures rebuild them)."""
    from medusa.pipeline.standins import architectures, save_standins

    marker = workspace / STANDINS / "architectures.json"
    wanted = json.dumps([[a.key, a.dims] for a in architectures("tiny", whisper_decoder_layers=2)], sort_keys=True)
    if marker.is_file() and marker.read_text() == wanted:
        return
    shutil.rmtree(workspace / STANDINS, ignore_errors=True)
    log.info("building tiny stand-ins of WavLM, HuBERT, Whisper-large-v3, RoBERTa and ModernBERT in %s",
             workspace / STANDINS)
    save_standins(workspace / STANDINS, size="tiny", seed=STANDIN_SEED, whisper_decoder_layers=2)
    marker.write_text(wanted)


def _corpus(workspace: Path, params: dict[str, Any]) -> None:
    """The synthetic corpus of the override's demo_corpus section, written once (rebuilt when its params change)."""
    from medusa.config.params import DemoCorpusParams
    from medusa.data.corpora.demo import build_demo_corpus

    data = workspace / params["prepare"]["corpus"]
    marker = workspace / "data.params.json"
    wanted = json.dumps(params["demo_corpus"], sort_keys=True)
    if marker.is_file() and marker.read_text() == wanted and data.is_dir():
        return
    shutil.rmtree(data, ignore_errors=True)
    log.info("writing the synthetic corpus to %s", data)
    build_demo_corpus(data, DemoCorpusParams(**params["demo_corpus"]))
    marker.write_text(wanted)


def prepare_workspace(workspace: str | Path = WORKSPACE, preset: str | Path = PRESET,
                      override: str | Path = OVERRIDE, fresh: bool = False) -> Path:
    """Everything `dvc repro` needs in `workspace`; returns its path."""
    workspace = Path(workspace)
    params = dry_run_params(preset, override)
    if fresh and workspace.exists():
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    header = (f"# Generated by medusa.pipeline.dryrun: {preset} with {override} merged in. Edit those files, not this one.\n")
    (workspace / "params.yaml").write_text(header + yaml.safe_dump(params, sort_keys=False))
    _copy_code(workspace)
    _standins(workspace)
    _corpus(workspace, params)
    if not (workspace / ".dvc").is_dir():
        subprocess.run([_dvc(), "init", "--no-scm", "-q"], cwd=workspace, check=True)
        subprocess.run([_dvc(), "config", "core.analytics", "false"], cwd=workspace, check=True)
    return workspace


def _dvc() -> str:
    """The dvc of this environment (beside this Python), else the one on PATH."""
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


def run_pipeline(workspace: Path) -> float:
    """`medusa repro` in the workspace (the parallel path: `dvc repro` with the training stages parallel.jobs at a
    time, transcription and extraction over parallel.ranks), with this environment first on PATH; returns its wall
    seconds."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "medusa", "repro"], cwd=workspace, env=env)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise DryRunError(f"`medusa repro` in {workspace} failed (exit {result.returncode}) after {seconds:.0f} s; the "
                          f"failing stage's notebook is under {workspace}/work/notebooks/. Fix it and rerun: finished "
                          "stages are kept")
    return seconds


def check_reports(workspace: Path) -> dict[str, Any]:
    """What the dry run proves, read back from its reports: a row per member in Table 1, per ablation variant in
    Table 2 (each on every ablated model), per ensemble subset in Table 3, and the figures, metrics, submission and
    predict bundle a real run writes. Raises DryRunError listing whatever is missing."""
    from medusa.config.params import load_params
    from medusa.reporting.ablation import variant_title
    from medusa.serving.inference import load_bundle

    p = load_params(workspace / "params.yaml")
    reports, work = workspace / "reports", workspace / "work"
    problems: list[str] = []

    def table(name: str) -> pd.DataFrame:
        path = reports / "tables" / f"{name}.csv"
        if not path.is_file():
            problems.append(f"{path} is missing")
            return pd.DataFrame()
        return pd.read_csv(path)

    t1, t2, t3 = table("table1_models"), table("table2_ablations"), table("table3_ensembles")
    if len(t1):
        # one row per member (the best by dev marked " (top)"), then the members' average and MEDUSA
        members = sorted(str(m).removesuffix(" (top)") for m in t1["model"] if m not in ("AVG", "MEDUSA"))
        if members != sorted(p.models):
            problems.append(f"Table 1 has members {members}, expected the preset's {sorted(p.models)}")
        if "MEDUSA" not in set(t1["model"]):
            problems.append("Table 1 has no MEDUSA row")
    if len(t2):
        variants = [variant_title(v) for v in p.ablate.variants]
        missing = [v for v in variants if v not in set(t2["variant"])]
        problems += [f"Table 2 has no row {v!r}" for v in missing]
        for m in p.ablate.models:
            if f"{m} bal. F1" not in t2.columns:
                problems.append(f"Table 2 has no column for ablated model {m}")
    n_members = len(p.ensemble.members or p.models)
    subsets = [f"all ({n_members})"] + [f"top-{k}" for k in p.ensemble.top_k]
    problems += [f"Table 3 has no column for the {s} ensemble" for s in subsets
                 if len(t3) and f"{s} bal. F1" not in t3.columns]
    # the preset's stage 3 is the paper's linear layer: every subset's soup must have been trained as that
    ensemble_json = reports / "metrics" / "ensemble.json"
    forms = {}
    if ensemble_json.is_file():
        forms = {s: r["form"] for s, r in (json.loads(ensemble_json.read_text()).get("stage3") or {}).items()}
    allowed = {"paper"} if p.ensemble.stage3 == "paper" else {"anchored", "voting"}
    if sorted(forms) != sorted(subsets) or not set(forms.values()) <= allowed:
        problems.append(f"{ensemble_json}: stage-3 forms {forms or 'missing'}, expected {' or '.join(sorted(allowed))} "
                        f"for {', '.join(subsets)}")
    figures = sorted(f.name for f in (reports / "figures").glob("*.png"))
    if not figures:
        problems.append(f"no figures in {reports / 'figures'}")
    notebooks = sorted(f.name for f in (reports / "notebooks").glob("*.html"))
    expected_notebooks = (2 + len(p.encoders) + len(p.models) + len(p.ablate.variants) + 2)
    if len(notebooks) != expected_notebooks:
        problems.append(f"{len(notebooks)} rendered notebooks in {reports / 'notebooks'}, expected "
                        f"{expected_notebooks} (one per stage)")
    submission = work / "submission.csv"
    n_blind = 0
    if submission.is_file():
        n_blind = len(pd.read_csv(submission))
    else:
        problems.append(f"{submission} is missing")
    bundle_members: list[str] = []
    try:
        bundle_members = load_bundle(work / "bundle").member_names
    except Exception as e:  # noqa: BLE001 -- reported with the others
        problems.append(f"the predict bundle {work / 'bundle'} does not load: {type(e).__name__}: {e}")
    if problems:
        raise DryRunError("the dry run's reports are incomplete:\n  " + "\n  ".join(problems))
    return {"models": len(p.models), "ablation_rows": len(t2), "ablated_models": list(p.ablate.models),
            "ensemble_subsets": subsets, "figures": figures, "rendered_notebooks": len(notebooks),
            "submission_rows": n_blind, "bundle_members": bundle_members, "stage3_forms": forms,
            "encoders": {k: e.family for k, e in p.encoders.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medusa.pipeline.dryrun", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=str(WORKSPACE), help="the dry run's DVC workspace (default %(default)s)")
    parser.add_argument("--preset", default=str(PRESET), help="the preset to prove (default %(default)s)")
    parser.add_argument("--override", default=str(OVERRIDE), help="what the dry run changes (default %(default)s)")
    parser.add_argument("--fresh", action="store_true", help="delete the workspace first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()
    try:
        workspace = prepare_workspace(args.dir, args.preset, args.override, fresh=args.fresh)
        prepared = time.perf_counter() - start
        log.info("workspace ready in %.0f s; running `dvc repro` in %s", prepared, workspace)
        repro = run_pipeline(workspace)
        summary = {"preset": args.preset, "override": args.override, "prepare_seconds": round(prepared, 1),
                   "repro_seconds": round(repro, 1), **check_reports(workspace)}
    except (ParamsError, DryRunError) as e:
        print(f"paper dry run: {e}", file=sys.stderr)
        return 1
    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    out = workspace / "reports" / "dry_run.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"paper dry run: OK in {summary['total_seconds']:.0f} s ({summary['models']} members, "
          f"{len(summary['ablated_models'])} ablated models x {summary['ablation_rows'] - 1} variants, ensembles "
          f"{', '.join(summary['ensemble_subsets'])}); reports in {workspace / 'reports'}, summary in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
