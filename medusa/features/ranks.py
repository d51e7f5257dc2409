"""Ranks: the processes that share transcription and extraction, started by torchrun's engine.

A stage with `parallel.ranks: N` runs its work function as N processes through torch's elastic launcher (what
`torchrun --standalone --nproc-per-node N` runs; kept by PyTorch, so no home-made process manager here). The same
function runs under a torchrun the user starts (`torchrun --nproc-per-node 8 -m medusa transcribe`, or several nodes
with `--nnodes`): it reads its place from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK). Each rank takes a
contiguous block of the stage's batch plan on its own device (GPU LOCAL_RANK, or the CPU with the stage's thread
count), the ranks meet at a barrier, and rank 0 merges. The batches are those of one process, so the merged
outputs are the same bytes for any number of ranks (tests/test_ranks.py).
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from medusa.errors import UserError

log = logging.getLogger(__name__)

#: How long rank 0 waits at the barrier for the slowest rank. Shards are balanced by audio seconds, but at
#: MSP-Podcast scale one shard is hours of work and a node's GPUs differ in speed: torch's default (30 min) would
#: fail a healthy run.
BARRIER_TIMEOUT = timedelta(days=2)


@dataclass(frozen=True)
class Rank:
    """This process's place among the ranks: `rank` of `world` (its shard), `local` on its node (its GPU)."""
    rank: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_env(cls) -> "Rank":
        """From torchrun's environment; one rank of one when not started by torchrun."""
        env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        if env["WORLD_SIZE"] is None:
            return cls()
        return cls(int(env["RANK"] or 0), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"] or 0))

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def device(self, setting: str) -> torch.device:
        """The stage's device setting for this rank: `auto`/`cuda` are GPU LOCAL_RANK where there are GPUs (one
        rank per GPU); an explicit `cuda:I` with several ranks on a node would put them all on one GPU: refused."""
        from medusa.features.batches import pick_device

        device = pick_device(setting)
        if device.type != "cuda" or self.world == 1:
            return device
        _check_gpus(setting, self.world, self.local + 1)
        return torch.device("cuda", self.local)


class RankError(UserError, ValueError):
    """The `parallel` section asks for what this machine or cluster cannot give (GPUs per rank, SLURM)."""


def check_devices(parallel, setting: str) -> None:
    """Before any rank starts (a rank's own error would come back as a launcher's traceback): on this machine,
    `parallel.ranks` GPU ranks need as many GPUs, and a device setting that each rank can make its own."""
    if parallel.engine != "torchrun" or parallel.ranks == 1 or not torch.cuda.is_available() or setting == "cpu":
        return
    _check_gpus(setting, parallel.ranks, parallel.ranks)


def _check_gpus(setting: str, ranks: int, needed: int) -> None:
    """`ranks` ranks each on a GPU of their own: a device setting each can make its own, and `needed` GPUs here."""
    if setting not in ("auto", "cuda"):
        raise RankError(f"device {setting!r} with {ranks} ranks: every rank would use that one GPU; use auto or "
                        "cuda (rank i of a node takes GPU i)")
    if needed > torch.cuda.device_count():
        raise RankError(f"{ranks} ranks need {needed} GPUs on this node, which has {torch.cuda.device_count()}: "
                        "at most one rank per GPU")


def set_threads(threads: int) -> None:
    """torch's CPU threads for this process (0: torch's default). CPU results can change with the thread count
    (reduction order), so a stage fixes it (params) and every rank uses it: one rank and N ranks then agree."""
    if threads:
        torch.set_num_threads(threads)


class Barrier:
    """The ranks' meeting point (gloo, on CPU tensors: it works beside any GPU backend). With one rank, a no-op."""

    def __init__(self, rank: Rank) -> None:
        self.rank = rank
        self._owned = False
        if rank.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
                self._owned = True

    def wait(self) -> None:
        if self.rank.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self._owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owned = False

    def __enter__(self) -> "Barrier":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_ranks(fn: Callable[..., Any], parallel, *args: Any) -> list[Any]:
    """fn(*args) in `parallel.ranks` ranks; the ranks' return values in rank order. `parallel` is the validated
    `parallel` section. `fn` must be a module-level function (the ranks import it).

    engine torchrun: processes of this machine, as `torchrun --standalone --nproc-per-node RANKS` starts them (one
    rank runs in this process, with no launch cost); a failing rank stops them all and raises. engine slurm (or
    submitit-local): the ranks are the tasks of one job submitted through submitit, over as many nodes as
    `slurm.gpus_per_node` asks; a job preempted or stopped by its time limit is requeued and resumes from its
    shards' journals."""
    nproc = parallel.ranks
    if parallel.engine != "torchrun":
        job = executor(parallel, fn.__name__, nproc).submit(_Task(fn, args))
        log.info("submitted %s as job %s (%d tasks); logs in %s", fn.__name__, job.job_id, nproc, job.paths.folder)
        return job.results()
    if nproc == 1:
        return [fn(*args)]
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # torchrun --standalone's choice
                          max_restarts=0, monitor_interval=1.0, start_method="spawn")
    log.info("starting %d ranks of %s.%s", nproc, fn.__module__, fn.__name__)
    results = elastic_launch(config, fn)(*args)
    return [results[r] for r in range(nproc)]


def executor(parallel, name: str, tasks: int, array_parallelism: int | None = None):
    """A submitit executor for `tasks` ranks of one job (or, with array_parallelism, for a job array of one-task
    jobs), with the `slurm` section's resources: one GPU per task where slurm.gpus_per_node > 0, the tasks packed
    gpus_per_node to a node. engine submitit-local: submitit's local executor (one node)."""
    import submitit

    s = parallel.slurm
    per_node = min(tasks, s.gpus_per_node) if s.gpus_per_node else tasks
    nodes = -(-tasks // per_node)
    if nodes * per_node != tasks:
        raise RankError(f"parallel.ranks {tasks} does not fill whole nodes of {per_node} GPUs "
                         f"(slurm.gpus_per_node): use a multiple of {per_node}")
    local = parallel.engine == "submitit-local"
    if not local and shutil.which("srun") is None:
        raise RankError("parallel.engine: slurm, but this machine has no SLURM (`srun` is not on PATH): run from a "
                         "cluster's login node, or use engine torchrun (this machine) or submitit-local")
    ex = submitit.AutoExecutor(folder=Path(s.folder) / name, cluster="local" if local else "slurm")
    options: dict[str, Any] = {"nodes": nodes, "tasks_per_node": per_node, "cpus_per_task": s.cpus_per_task,
                               "gpus_per_node": per_node if s.gpus_per_node else 0, "mem_gb": s.mem_gb,
                               "timeout_min": s.time_min, "name": f"medusa-{name}"}
    if not local:
        options.update({k: v for k, v in (("slurm_partition", s.partition), ("slurm_account", s.account),
                                          ("slurm_array_parallelism", array_parallelism)) if v})
    ex.update_parameters(**options)
    return ex


class _Task:
    """One rank of a submitit job: torch.distributed's environment from the job's (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT: the first node), then fn(*args). Checkpointable: submitit requeues it when the job is
    preempted or reaches its time limit, and the work resumes from what the shards journaled."""

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self.fn, self.args = fn, args

    def __call__(self) -> Any:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return self.fn(*self.args)

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
