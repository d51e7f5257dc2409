"""Why DeepSER members learn less than a linear probe on the same features (issue #12), as a rerunnable benchmark.

    python benchmarks/learning.py [--sizes 150 300 828] [--members whisper_egemaps egemaps_minilm]
                                  [--variants demo scales one_annotator few_frames] [--changes base raw ...]
                                  [--seeds S ...] [--workers 2] [--work work/learning] [--out reports/benchmarks.md]
                                  [--figure reports/benchmark_figures/learning.png] [--csv reports/metrics/learning.csv]

Run from the repository root after `dvc repro` (it reads work/manifest.parquet and work/features, and never writes
there). For every variant of the data, training-set size, member and change of the training settings it trains
the member (`medusa.model.members.train_member`) and reads the test balanced macro-F1 (95 % interval) of the member and
of its own linear probe (logistic regression on the member's mean-pooled, standardised features). Causes it
separates:

* `demo`: the demo run's stores and manifest as they are.
* `scales`: every store's dimensions multiplied by 10**U(-2, 3) and shifted by large offsets (seeded), the way raw
  eGeMAPS arrives: with `standardise` the member should match `demo`, without it (change `raw`) it should suffer;
  the probe standardises its inputs and should not care.
* `one_annotator`: the soft targets replaced by the one-hot of the consensus label and the X/O rows dropped from
  train, like the single-annotator corpora of the issue.
* `few_frames`: a synthetic store (`burst`: 32-dim Gaussian frames, 2-4 s at 25 frames/s) where the class is carried
  by a burst of 2 frames (80 ms) and the rest is noise; the mean-pooled probe sees a diluted signal, a sequence model
  should find the burst. Trained as the single-encoder member `burst`, pooled to 5 steps/s like the demo's audio
  (5 frames per step) unless a change sets `pool` (`pool1`: every frame a step).

Training sets are nested, label-stratified, seeded subsamples of the variant's train split (dev and test are
unchanged; a size beyond the split means all of it). Changes are `train` overrides relative to params.yaml
(`CHANGES`, or NAME={yaml mapping} on the command line). Each finished run writes its result JSON under
--work/results, keyed by variant, size, member, change, seed and a hash of everything that determines the run
(resolved spec, training rows, variant data, the medusa code that trains); a rerun skips those. The report section
"## Learning: DeepSER vs its linear probe" of --out, the figure and the CSV are written once every run is done.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# No progress bars from the training loop (one per epoch, hundreds per run); set before tqdm is imported, which
# reads it then. The run-level bar below is enabled explicitly.
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere, installed package or not
if str(REPO / "benchmarks") not in sys.path:  # _common, when this file is imported rather than run
    sys.path.insert(1, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import report  # noqa: E402  benchmarks/report.py: the Markdown
import yaml  # noqa: E402
from _common import load_average  # noqa: E402
from learning_report import SECTION, plot, report_section, results_frame  # noqa: E402

# what the runs train on and what they report live in their own modules; this script plans and runs the runs
from learning_variants import BUILDERS, RESULT_VERSION, VARIANTS, VariantData, digest, subsample_train  # noqa: E402

log = logging.getLogger("learning")

#: The medusa code that decides a run's numbers (files, or packages: every .py in them), relative to medusa/: an
#: edit to any of it invalidates cached results (a result computed before `standardise` / `epoch_steps` existed must
#: not be taken for one computed after).
CODE_PATHS = ("model/members.py", "model/training.py", "model/deepser.py", "model/dataset.py", "model/linear_probe.py",
              "scoring/metrics.py", "config/params.py", "features/store", "labels.py", "features/batches.py")

#: Changes of the `train` settings, relative to params.yaml's `train` (and the member's own overrides). `pool1` is
#: computed per run (every encoder at its full frame rate), hence the None.
CHANGES: dict[str, dict[str, Any] | None] = {
    "base": {},                              # params.yaml as it is
    "raw": {"standardise": False},           # cause (a): inputs at their raw scale
    "epochs": {"epoch_steps": 0},            # cause (b): one pass over the data per epoch (the paper's epoch)
    "pool1": None,                           # cause (c): no time pooling (every frame a step)
    "long": {"epoch_steps": 200},            # 4x the optimizer steps: is the member still under-trained?
    "wide": {"hidden": 64, "heads": 4},      # capacity
    "dropout0": {"dropout": 0.0},            # regularisation
}
#: Without --changes, each variant runs the changes that test its own cause (with --changes: those, everywhere).
DEFAULT_PLAN = {"demo": ["base", "raw", "epochs"], "scales": ["base", "raw"], "one_annotator": ["base"],
                "few_frames": ["base", "pool1"]}
DEFAULT_SIZES = (150, 300, 828)
DEFAULT_MEMBERS = ("whisper_egemaps", "egemaps_minilm")



# ------------------------------------------------------------------------------------------------- helpers


def code_fingerprint() -> str:
    """A hash of CODE_PATHS' sources. A path that is gone fails loudly: a module that moved would otherwise drop out
    of the hash silently, and results trained by older code would be reused."""
    h = hashlib.sha256()
    for name in CODE_PATHS:
        path = REPO / "medusa" / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        if not path.exists() or not files:
            raise FileNotFoundError(f"{path}: in learning.py's CODE_PATHS but not in the package; update the list")
        for file in files:
            h.update(str(file.relative_to(REPO)).encode())
            h.update(file.read_bytes())
    return h.hexdigest()[:12]


# ------------------------------------------------------------------------------------------------------ runs


@dataclass
class Job:
    key: str
    variant: str
    size: int                      # the requested size, capped at the variant's train split
    train_utterances: int          # train rows of the run's manifest (the same number)
    member: str
    change: str
    seed: int
    overrides: dict[str, Any]
    spec: Any                      # medusa.model.members.MemberSpec
    manifest: pd.DataFrame
    features_root: Path
    result_path: Path
    run_dir: Path
    bootstrap: int                 # report.bootstrap and report.seed: the resamples of the member's intervals
    bootstrap_seed: int
    steps_per_utterance: float = 0.0  # time steps the model sees per utterance (all modalities, pooled): its cost


def parse_changes(items: list[str]) -> dict[str, dict[str, Any] | None]:
    """--changes entries: a name of CHANGES, or NAME={yaml mapping of train overrides}."""
    out: dict[str, dict[str, Any] | None] = {}
    for item in items:
        if "=" in item:
            name, text = item.split("=", 1)
            value = yaml.safe_load(text)
            if not isinstance(value, dict):
                raise SystemExit(f"--changes {item!r}: expected NAME={{key: value, ...}}")
            out[name.strip()] = value
        elif item in CHANGES:
            out[item] = CHANGES[item]
        else:
            raise SystemExit(f"--changes: unknown change {item!r} (known: {', '.join(CHANGES)}; "
                             "or NAME={key: value})")
    return out


def resolve_overrides(change: str, changes: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    return {"pool": {}} if change == "pool1" and changes.get(change) is None else dict(changes[change] or {})


def _score_summary(scores: dict[str, Any] | None) -> dict[str, Any] | None:
    if not scores:
        return None
    keep = ("n", "classes", "balanced_macro_f1", "balanced_macro_f1_ci95", "macro_f1", "macro_f1_ci95", "accuracy")
    return {k: scores[k] for k in keep if k in scores}


def run_job(job: Job) -> dict[str, Any]:
    """Train one member (train_member fits its probe too), write the result JSON with both test scores; also
    returned.
    An exception is recorded as the result (same inputs, same failure: not retried unless --retry-failed)."""
    from medusa.io import write_json
    from medusa.model import members

    job.run_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "version": RESULT_VERSION, "key": job.key, "variant": job.variant, "size": job.size,
        "train_utterances": job.train_utterances, "member": job.member, "change": job.change, "seed": job.seed,
        "overrides": job.overrides, "encoders": list(job.spec.encoders), "pools": list(job.spec.pools),
        "load_at_start": load_average()}  # how busy the machine was: train_s is a wall time
    start = time.perf_counter()
    try:
        metrics = members.train_member(job.spec, job.manifest, job.features_root, job.run_dir / "member",
                                       job.run_dir / "checkpoint.pt", bootstrap=job.bootstrap,
                                       bootstrap_seed=job.bootstrap_seed)
        result["train_s"] = time.perf_counter() - start
        history = json.loads((job.run_dir / "member" / "history.json").read_text())
        result.update(
            member_test=_score_summary(metrics["test"]), probe_test=_score_summary(metrics["probe_test"]),
            dev_balanced_macro_f1=metrics.get("dev_balanced_macro_f1"), best_stage=metrics.get("best_stage"),
            best_epoch=metrics.get("best_epoch"), train_rows=metrics.get("train_rows"),
            parameters=metrics.get("parameters"), epochs=len(history),
            steps=history[-1].get("steps") if history else None,
            stage1_utterances_per_epoch=history[0].get("utterances") if history else None)
    except Exception as e:  # noqa: BLE001 - a run that cannot train is a result (e.g. a non-finite loss at raw scale)
        result.update(train_s=time.perf_counter() - start, error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc(limit=8))
        log.error("%s failed: %s", job.key, result["error"])
    result["finished_at"] = time.time()  # with train_s: when the run went, for the report's wall time of the set
    write_json(result, job.result_path)
    return result


def _worker_init() -> None:
    # each worker logs with its process id, so that two runs side by side can be told apart in the log
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [worker {os.getpid()}] %(name)s: %(message)s",
                        force=True)


def _run_in_worker(job: Job) -> dict[str, Any]:
    log.info("training %s", job.key)
    return run_job(job)


def plan_jobs(args: argparse.Namespace, params: Any, manifest: pd.DataFrame, src_root: Path, work: Path
              ) -> tuple[list[Job], dict[str, VariantData], dict[str, dict[str, Any] | None]]:
    from medusa.features.store.reader import FeatureStore
    from medusa.model.members import resolve_member, store_dims

    changes_given = parse_changes(args.changes) if args.changes else None
    all_changes = {**CHANGES, **(changes_given or {})}
    unknown = [m for m in args.members if m not in params.models]
    if unknown:
        raise SystemExit(f"--members: no model {unknown} in params.yaml (have: {', '.join(params.models)})")
    members = {m: params.models[m].model_dump() for m in args.members}
    encoders = sorted({e for m in members.values() for e in m["encoders"]})
    base_train = params.train
    code = code_fingerprint()
    jobs, variants = [], {}
    for v in args.variants:
        if v not in BUILDERS:
            raise SystemExit(f"--variants: unknown variant {v!r} (known: {', '.join(BUILDERS)})")
        data = BUILDERS[v](manifest, src_root, work, encoders, members, args.data_seed)
        variants[v] = data
        used = sorted({e for m in data.members.values() for e in m["encoders"]})
        dims = store_dims(used, data.features_root)
        mean_frames = {e: float(np.mean(list(FeatureStore(data.features_root / e).lengths.values()))) for e in used}
        change_names = list(changes_given) if changes_given else DEFAULT_PLAN[v]
        n_train = int((data.manifest["split"] == "train").sum())
        for size in sorted({min(s, n_train) for s in args.sizes}):
            sub = subsample_train(data.manifest, size, args.data_seed)
            train_ids = digest(sorted(sub.loc[sub["split"] == "train", "utt_id"]))
            for member, model in data.members.items():
                for change in change_names:
                    overrides = {**data.overrides, **resolve_overrides(change, all_changes)}
                    for seed in (args.seeds if args.seeds is not None else [model["seed"]]):
                        spec = resolve_member(member, {**model, "seed": seed}, base_train, dims,
                                              extra_overrides=overrides, probe=params.probe)
                        h = digest({"spec": spec.to_dict(), "train_ids": train_ids, "data": data.fingerprint,
                                    "code": code, "version": RESULT_VERSION,
                                    "intervals": [params.report.bootstrap, params.report.seed],
                                    "manifest": digest(sub.to_json())})
                        key = f"{v}__n{size}__{member}__{change}__s{seed}__{h}"
                        jobs.append(Job(key, v, size, size, member, change, seed, overrides, spec, sub,
                                        data.features_root, work / "results" / f"{key}.json",
                                        work / "runs" / key, params.report.bootstrap, params.report.seed,
                                        sum(mean_frames[e] / p for e, p in zip(spec.encoders, spec.pools))))
    return jobs, variants, all_changes


def run_all(jobs: list[Job], workers: int, retry_failed: bool) -> list[dict[str, Any]]:
    """Run the jobs whose result file is missing (or failed, with retry_failed); all results, in job order."""
    from tqdm import tqdm

    results: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        if job.result_path.is_file():
            done = json.loads(job.result_path.read_text())
            if not (retry_failed and "error" in done):
                done.setdefault("finished_at", job.result_path.stat().st_mtime)  # files written before the field
                results[job.key] = {**done, "reused": True}
                continue
        todo.append(job)
    # longest first (most time steps per utterance: attention cost grows with them), so that a slow run does not
    # start last and leave the other workers idle; the result order stays the jobs' order
    todo.sort(key=lambda j: -j.steps_per_utterance)
    log.info("%d runs: %d already done (in %s), %d to train", len(jobs), len(jobs) - len(todo),
             jobs[0].result_path.parent if jobs else "-", len(todo))
    bar = tqdm(total=len(todo), unit="run", desc="learning", disable=False, file=sys.stderr)
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            bar.set_postfix_str(job.key.rsplit("__", 1)[0])
            log.info("training %s", job.key)
            results[job.key] = run_job(job)
            bar.update()
    else:
        import multiprocessing as mp

        # spawn, not fork: torch's thread pools do not survive a fork; each worker sets its own thread count
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            futures = {pool.submit(_run_in_worker, job): job for job in todo}
            for future in as_completed(futures):
                job = futures[future]
                results[job.key] = future.result()
                r = results[job.key]
                log.info("done %s in %.0f s%s", job.key, r.get("train_s", 0), f" ({r['error']})" if "error" in r else "")
                bar.update()
    bar.close()
    return [results[j.key] for j in jobs]


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                    help="training-set sizes (train utterances; beyond the split = all of it)")
    ap.add_argument("--members", nargs="+", default=list(DEFAULT_MEMBERS), help="entries of params.yaml `models`")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--changes", nargs="+", default=None,
                    help=f"names ({', '.join(CHANGES)}) or NAME={{yaml train overrides}}; default: per variant "
                         f"{DEFAULT_PLAN}")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="model seeds, replacing each member's own (default: the member's seed in params)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the subsamples and the synthetic variants")
    ap.add_argument("--workers", type=int, default=2, help="runs trained side by side (processes)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--manifest", type=Path, default=Path("work/manifest.parquet"))
    ap.add_argument("--features", type=Path, default=Path("work/features"))
    ap.add_argument("--work", type=Path, default=Path("work/learning"),
                    help="built variants, member folders and result JSONs (never the demo's own files)")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks.md"))
    ap.add_argument("--figure", type=Path, default=Path("reports/benchmark_figures/learning.png"))
    ap.add_argument("--csv", type=Path, default=Path("reports/metrics/learning.csv"))
    ap.add_argument("--retry-failed", action="store_true", help="train again the runs whose result is an error")
    ap.add_argument("--dry-run", action="store_true", help="build the variants and list the runs; train nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from medusa.config.params import load_params

    for path in (args.manifest, args.features):
        if not path.exists():
            raise SystemExit(f"{path}: not found; run `dvc repro` first (this script reads a finished demo run)")
    if args.work.resolve() == args.features.resolve() or args.features.resolve() in args.work.resolve().parents:
        raise SystemExit("--work must not be inside --features: the demo's stores are never written")
    params = load_params(args.params)
    manifest = pd.read_parquet(args.manifest)
    load, start = load_average(), time.perf_counter()
    jobs, variants, changes = plan_jobs(args, params, manifest, args.features, args.work)
    if args.dry_run:
        for job in jobs:
            print(job.key, "done" if job.result_path.is_file() else "to train")
        return pd.DataFrame()
    results = run_all(jobs, args.workers, args.retry_failed)
    frame = results_frame(results)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.csv, index=False)
    plot(frame, args.figure)
    command = "python benchmarks/learning.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = report_section(frame, variants, command.strip(), time.perf_counter() - start, load, params,
                             args.figure, args.csv, changes)
    print(report.render_section(section))
    report.publish(section, SECTION, args.out)
    return frame


if __name__ == "__main__":
    main()
