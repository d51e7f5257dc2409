"""`medusa repro`: `dvc repro` with the stages after extraction side by side, one per device.

    medusa repro [--jobs N] [--params params.yaml]      (N: parallel.jobs of params.yaml by default)

With `parallel.engine: slurm` the same run goes through SLURM (submitit): transcription and extraction as one
job whose tasks are the ranks, the training stages as a job array, the other stages where this command runs.

DVC runs the stages of one `dvc repro` one after another, but it releases its repository lock while a stage's
command runs, and `dvc --wait-for-lock` waits for that lock instead of failing; so independent stages can run as
separate `dvc repro --single-item STAGE` processes, each recording its own entry of dvc.lock exactly as `dvc repro`
would (DVC takes the lock to hash outputs and write dvc.lock). This command does that:

1. `dvc repro` of the stages that spread their own work over `parallel.ranks` processes (transcribe, extract@ENC)
   and of what they read from (prepare), one after another: each of them keeps every device busy;
2. every other stage (inputs, the members train@MODEL, Table 2's ablate@VARIANT, ensemble, report) through
   `dvc --wait-for-lock repro --single-item STAGE`, `jobs` at a time, each on its own device (GPU i of the
   visible ones, CUDA_VISIBLE_DEVICES, on a GPU machine; a CPU process otherwise). A stage starts once every
   stage it reads from has finished (DVC's graph); free slots take the ready stages that more stages wait for
   first, and among equals Table 2's last: nothing but the report waits for them, while the ensemble (the
   headline) waits for the members. A stage that is up to date returns at once; one that fails stops only the
   stages that read from it. Steps 1 and 2 cover every stage: `dvc status` then says the pipeline is up to date.

With `parallel.engine: slurm`: transcription and extraction run as SLURM jobs whose tasks are the ranks, step 1
also runs the per-model inputs, step 2 submits the training stages (train@, ablate@) as a job array, and a final
`dvc repro` runs the rest (ensemble, report) here.

A run is seeded and single-threaded per process, so its weights and metrics do not depend on its neighbours or
on N (tests/test_repro.py trains members two at a time and one at a time and compares them; tests/test_slurm.py
runs the SLURM path through submitit's local executor).
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from medusa.config.params import PARAMS_FILE, load_params

log = logging.getLogger("medusa.pipeline.repro")

#: foreach groups of dvc.yaml whose stages train independently of each other (members, Table 2's variants)
TRAINING_GROUPS = ("train", "ablate")
#: stages that spread their own work over parallel.ranks processes (medusa.features.ranks): one at a time
RANKED_GROUPS = ("transcribe", "extract")


class ReproError(RuntimeError):
    """A stage failed; the message names it (its output is above, prefixed with its name)."""


def dvc_command() -> list[str]:
    """`dvc` of this environment (its bin folder, as `make repro` puts first on PATH), else the one on PATH."""
    local = Path(sys.executable).parent / "dvc"
    return [str(local) if local.exists() else "dvc"]


@dataclass(frozen=True)
class Plan:
    """The pipeline's stages (dvc.yaml names, e.g. train@m02), from DVC's graph."""
    order: list[str]                # every stage with a command, in an order `dvc repro` could run them
    needs: dict[str, set[str]]      # stage -> every stage it reads from, directly or not

    def _in_order(self, stages: set[str]) -> list[str]:
        return [s for s in self.order if s in stages]

    def _with_inputs(self, stages: list[str]) -> list[str]:
        return self._in_order(set(stages).union(*(self.needs[s] for s in stages)))

    @property
    def training(self) -> list[str]:
        return [s for s in self.order if s.split("@")[0] in TRAINING_GROUPS]

    @property
    def before_training(self) -> list[str]:
        """What the training stages read from (SLURM's step 1)."""
        return [s for s in self._with_inputs(self.training) if s not in self.training]

    @property
    def first(self) -> list[str]:
        """The stages that spread their own work over ranks, and what they read from (step 1)."""
        return self._with_inputs([s for s in self.order if s.split("@")[0] in RANKED_GROUPS])

    @property
    def side_by_side(self) -> list[str]:
        """The other stages (step 2), in the order free slots take those that are ready: the stages more of them
        wait for (directly or not) first; among equals, Table 2's last; then in the pipeline's order (params.yaml's
        order of `models` and `ablate.variants`: the demo lists its shortest variant, w/o stage 2, last)."""
        first = set(self.first)
        pool = [s for s in self.order if s not in first]
        waiting = {s: sum(s in self.needs[t] for t in pool) for s in pool}
        place = {s: i for i, s in enumerate(self.order)}
        return sorted(pool, key=lambda s: (-waiting[s], s.startswith("ablate@"), place[s]))


def plan(root: str | Path = ".") -> Plan:
    """The stages of the pipeline at `root`, from DVC's own graph of it."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph   # edges run from a stage to the stages whose outputs it reads
        order = [s for s in nx.topological_sort(graph.reverse(copy=False)) if s.cmd]
        return Plan([s.addressing for s in order],
                    {s.addressing: {d.addressing for d in nx.descendants(graph, s) if d.cmd} for s in order})


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


def _run_stage(stage: str, slot: int, gpus: list[str]) -> tuple[int, float]:
    """`dvc --wait-for-lock repro --single-item STAGE` on device slot `slot`; (exit code, seconds)."""
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    where = f"GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else f"CPU slot {slot}"
    _say(f"[{stage}] starting on {where}")
    start = time.perf_counter()
    code = _run(_stage_command(stage), stage, env)
    return code, time.perf_counter() - start


def run_side_by_side(stages: list[str], jobs: int, needs: dict[str, set[str]] | None = None) -> list[str]:
    """Each stage through `dvc --wait-for-lock repro --single-item`, `jobs` at a time on this machine, each holding
    one device slot while it runs. A stage starts when a slot is free and the stages of `needs[stage]` among
    `stages` have finished (the others are taken as done); free slots take the ready stages in the order given.
    Returns the stages that failed, and those not run because a stage they read from failed (the others still run).

    Written here rather than taken from a library: DVC runs one stage at a time (its `--jobs` for repro was
    removed), and this is a slot pool over DVC's own graph, not a scheduler of its own."""
    needs = {s: set(needs.get(s, ())) & set(stages) for s in stages} if needs else {s: set() for s in stages}
    gpus = _gpus()
    if gpus and jobs > len(gpus):
        log.warning("%d jobs on %d GPUs: some GPUs train two runs at once", jobs, len(gpus))
    pending, free = list(stages), list(range(jobs))
    done: set[str] = set()
    failed: list[str] = []
    running: dict = {}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="stage") as pool:
        while pending or running:
            for stage in [s for s in pending if needs[s] & set(failed)]:
                pending.remove(stage)
                failed.append(stage)
                _say(f"[{stage}] not run: it reads from {', '.join(sorted(needs[stage] & set(failed)))}, which failed")
            while free and (ready := next((s for s in pending if needs[s] <= done), None)):
                pending.remove(ready)
                slot = free.pop(0)
                running[pool.submit(_run_stage, ready, slot, gpus)] = (ready, slot)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                stage, slot = running.pop(future)
                free.append(slot)
                code, seconds = future.result()
                _say(f"[{stage}] {'done' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f} s")
                (failed.append if code else done.add)(stage)
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
    """The whole pipeline as `dvc repro` would run it, with the stages after transcription and extraction
    `parallel.jobs` at a time on this machine, or the training stages as a submitit job array (parallel.engine)."""
    stages = plan(root)
    here = parallel.engine == "torchrun"
    first, pool = (stages.first, stages.side_by_side) if here else (stages.before_training, stages.training)
    log.info("%d stages one after another, then %d %s %d at a time (%s)%s", len(first), len(pool),
             "stages" if here else "training stages", parallel.jobs, parallel.engine, "" if here else ", then the rest")
    if first and _run([*dvc_command(), "repro", *first], "dvc repro"):
        raise ReproError("`dvc repro` of the stages before training failed (above)")
    failed = (run_side_by_side(pool, parallel.jobs, stages.needs) if here
              # Table 2's first in the array: each trains several runs, the longest jobs
              else submit_side_by_side(sorted(pool, key=lambda s: (not s.startswith("ablate@"), s)), parallel, root))
    if failed:
        raise ReproError(f"{len(failed)} stage(s) failed or did not run: {', '.join(failed)} (their output is "
                         "above, prefixed with their names); fix and rerun: finished stages are kept")
    # on this machine every stage ran in step 1 or 2; after a job array, the stages after training remain
    if not here and _run([*dvc_command(), "repro"], "dvc repro"):
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
