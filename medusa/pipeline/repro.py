"""`medusa repro`: `dvc repro` with the training stages side by side, one per device.

    medusa repro [--jobs N] [--params params.yaml]      (N: parallel.jobs of params.yaml by default)

With `parallel.engine: slurm` the same run goes through SLURM (submitit): transcription and extraction as one
job whose tasks are the ranks, the training stages as a job array, the other stages where this command runs.

DVC runs the stages of one `dvc repro` one after another, but it releases its repository lock while a stage's
command runs, and `dvc --wait-for-lock` waits for that lock instead of failing; so independent stages can run as
separate `dvc repro --single-item STAGE` processes, each recording its own entry of dvc.lock exactly as `dvc repro`
would (DVC takes the lock to hash outputs and write dvc.lock). This command does that for the training stages
(train@MODEL and ablate@VARIANT), which depend on nothing but the features and on no other training stage:

1. `dvc repro` of every stage they depend on (prepare .. inputs, ablation_inputs), one after another; the
   transcription and extraction stages spread their own work over `parallel.ranks` processes;
2. the training stages through `dvc --wait-for-lock repro --single-item STAGE`, `jobs` at a time, each on its own
   device: GPU i of the visible ones (CUDA_VISIBLE_DEVICES) on a GPU machine, or a CPU process with
   `train.threads` threads; a stage that is up to date returns at once;
3. `dvc repro` of the rest (ensemble, report), which finds the training stages up to date.

A run is seeded and single-threaded per process, so its weights and metrics do not depend on its neighbours or
on N (tests/test_repro.py trains members two at a time and one at a time and compares them; tests/test_slurm.py
runs the SLURM path through submitit's local executor).
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medusa.config.params import PARAMS_FILE, load_params

log = logging.getLogger("medusa.pipeline.repro")

#: foreach groups of dvc.yaml whose stages train independently of each other (members, Table 2's variants)
TRAINING_GROUPS = ("train", "ablate")


class ReproError(RuntimeError):
    """A stage failed; the message names it (its output is above, prefixed with its name)."""


def dvc_command() -> list[str]:
    """`dvc` of this environment (its bin folder, as `make repro` puts first on PATH), else the one on PATH."""
    local = Path(sys.executable).parent / "dvc"
    return [str(local) if local.exists() else "dvc"]


def plan(root: str | Path = ".") -> tuple[list[str], list[str]]:
    """(the stages the training stages depend on, the training stages), as named in dvc.yaml (e.g. train@m02),
    from DVC's own graph of the pipeline."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph   # edges run from a stage to the stages whose outputs it reads
        training = [s for s in graph.nodes if s.addressing.split("@")[0] in TRAINING_GROUPS and s.cmd]
        upstream = {u for s in training for u in nx.descendants(graph, s)} - set(training)
        ordered = [s.addressing for s in nx.topological_sort(graph.reverse(copy=False)) if s in upstream and s.cmd]
        # Table 2's stages first: each trains several runs one after another, so they are the longest
        names = sorted((s.addressing for s in training), key=lambda n: (not n.startswith("ablate@"), n))
    return ordered, names


def _gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


_PRINT = threading.Lock()


def _say(line: str) -> None:
    """One whole line to stdout: the stages' threads print side by side, and print() may split a line."""
    with _PRINT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _stream(proc: subprocess.Popen, name: str) -> None:
    """Copy a stage's output to ours, each line prefixed with the stage's name (carriage-return progress bars
    become lines)."""
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, ""):
        for part in line.replace("\r", "\n").splitlines():
            if part.strip():
                _say(f"[{name}] {part}")


def _run(cmd: list[str], name: str, env: dict[str, str] | None = None) -> int:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    _stream(proc, name)
    return proc.wait()


def _stage_command(stage: str) -> list[str]:
    return [*dvc_command(), "--wait-for-lock", "repro", "--single-item", stage]


def run_side_by_side(stages: list[str], jobs: int, root: str | Path = ".") -> list[str]:
    """Each stage through `dvc --wait-for-lock repro --single-item`, `jobs` at a time on this machine, each holding
    one device slot while it runs; the stages that failed (the others still run)."""
    gpus = _gpus()
    slots: queue.Queue[int] = queue.Queue()
    for i in range(jobs):
        slots.put(i)
    if gpus and jobs > len(gpus):
        log.warning("%d jobs on %d GPUs: some GPUs train two runs at once", jobs, len(gpus))

    def one(stage: str) -> tuple[str, int, float]:
        slot = slots.get()
        try:
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
            where = f"GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else f"CPU slot {slot}"
            _say(f"[{stage}] starting on {where}")
            start = time.perf_counter()
            code = _run(_stage_command(stage), stage, env)
            return stage, code, time.perf_counter() - start
        finally:
            slots.put(slot)

    failed = []
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="stage") as pool:
        for stage, code, seconds in pool.map(one, stages):
            _say(f"[{stage}] {'done' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f} s")
            if code:
                failed.append(stage)
    return failed


class StageJob:
    """One training stage as a submitit job (a task of the job array): `dvc --wait-for-lock repro --single-item
    STAGE` in the project folder, which the cluster's nodes share. Checkpointable: a job preempted or stopped by
    its time limit is requeued, and the stage resumes from its per-epoch checkpoint."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(Path(root).resolve())

    def __call__(self, stage: str) -> int:
        return subprocess.run(_stage_command(stage), cwd=self.root).returncode

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def submit_side_by_side(stages: list[str], parallel, root: str | Path = ".") -> list[str]:
    """The training stages as a submitit job array of one-task jobs (one GPU each where slurm.gpus_per_node > 0),
    at most `parallel.jobs` running at once (SLURM's array parallelism; the local executor gets them in waves of
    that size); the stages that failed, each with its log file."""
    from medusa.features.ranks import executor

    failed = []
    waves = [stages] if parallel.engine == "slurm" else [stages[i:i + parallel.jobs]
                                                         for i in range(0, len(stages), parallel.jobs)]
    for wave in waves:
        ex = executor(parallel.model_copy(update={"slurm": parallel.slurm.model_copy(
            update={"gpus_per_node": min(parallel.slurm.gpus_per_node, 1)})}), "training", 1, parallel.jobs)
        submitted = ex.map_array(StageJob(root), wave)
        log.info("submitted %d training stages as job array %s", len(wave), submitted[0].job_id.split("_")[0])
        for stage, job in zip(wave, submitted):
            try:
                code = job.result()
            except Exception as e:  # submitit raises the job's failure (killed, out of memory, ...)
                code, why = 1, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            else:
                why = f"exit {code}"
            _say(f"[{stage}] {'done' if code == 0 else f'FAILED ({why}); log: {job.paths.stdout}'}")
            if code:
                failed.append(stage)
    return failed


def repro(parallel, root: str | Path = ".") -> None:
    """The whole pipeline as `dvc repro` would run it, with the training stages `parallel.jobs` at a time (this
    machine's processes, or a submitit job array: parallel.engine)."""
    upstream, training = plan(root)
    log.info("%d stages before training, %d training stages %d at a time (%s), then the rest", len(upstream),
             len(training), parallel.jobs, parallel.engine)
    if upstream and _run([*dvc_command(), "repro", *upstream], "dvc repro"):
        raise ReproError("`dvc repro` of the stages the training depends on failed (above)")
    failed = (run_side_by_side(training, parallel.jobs, root) if parallel.engine == "torchrun"
              else submit_side_by_side(training, parallel, root))
    if failed:
        raise ReproError(f"{len(failed)} training stage(s) failed: {', '.join(failed)} (their output is above, "
                         "prefixed with their names); fix and rerun: finished stages are kept")
    if _run([*dvc_command(), "repro"], "dvc repro"):
        raise ReproError("`dvc repro` of the stages after training failed (above)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="medusa repro", description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, help="training stages run side by side (default: parallel.jobs)")
    ap.add_argument("--params", default=str(PARAMS_FILE))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parallel = load_params(args.params).parallel
    if args.jobs is not None:
        if args.jobs < 1:
            print(f"error: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
            return 1
        parallel = parallel.model_copy(update={"jobs": args.jobs})
    try:
        repro(parallel)
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
