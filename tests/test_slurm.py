"""The SLURM path (parallel.engine slurm) through submitit's local executor (engine submitit-local): the same jobs,
the same code, on this machine instead of a cluster.

- Transcription as one job of two tasks (the ranks) gives the bytes of one process; a job killed midway and
  submitted again resumes from its shards' journals and still gives those bytes; extraction as one such job gives
  the store of one process.
- `medusa repro` submits the training stages as a job array (at most parallel.jobs at once); the members equal
  those of a serial `dvc repro`, and DVC records them in dvc.lock."""
from __future__ import annotations

import sys
import time

import pandas as pd
import pytest
import test_repro
import yaml
from test_ranks import DURATIONS, _medusa, _project

from medusa.config.params import load_params


def _submitit_local(params, folder, **update):
    return params.parallel.model_copy(update={"engine": "submitit-local", **update,
                                              "slurm": params.parallel.slurm.model_copy(
                                                  update={"folder": str(folder), "time_min": 20})})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import tiny_models

    return {"whisper": tiny_models.whisper_checkpoint(tmp_path_factory.mktemp("models")), "wavlm": ""}


def _one_rank_reference(tmp_path, models) -> bytes:
    reference = _project(tmp_path / "one", models, batch_size=1)
    _medusa(reference, "transcribe")
    return (reference / "work" / "transcripts.parquet").read_bytes()


def test_a_killed_transcription_job_resubmitted_gives_one_process_s_bytes(tmp_path, models, monkeypatch):
    from medusa.config import paths
    from medusa.features.asr import transcribe_rank, transcribe_ranks
    from medusa.features.extract import extract_ranks
    from medusa.features.ranks import _Task, executor

    (tmp_path / "one").mkdir()
    expected = _one_rank_reference(tmp_path, models)
    project = _project(tmp_path / "slurm", models, batch_size=1)
    monkeypatch.chdir(project)
    params = load_params("params.yaml")
    parallel = _submitit_local(params, project / "work" / "slurm", ranks=2)
    args = (params.transcribe, str(paths.MANIFEST), str(paths.TRANSCRIPTS), str(paths.CACHE))
    job = executor(parallel, "transcribe_rank", 2).submit(_Task(transcribe_rank, args))
    journals = lambda: list((project / "work").glob("transcripts.shard-*-of-2.journal.jsonl"))  # noqa: E731
    deadline = time.time() + 120
    while not any(len(j.read_text().splitlines()) > 1 for j in journals()) and time.time() < deadline:
        time.sleep(0.05)
    job.cancel()
    while not job.done() and time.time() < deadline + 30:
        time.sleep(0.1)
    assert job.done() and not paths.TRANSCRIPTS.exists(), job.state   # killed before the merge
    done = sum(len(j.read_text().splitlines()) - 1 for j in journals())
    assert 0 < done < len(DURATIONS), done                            # part of the work journaled

    speed = transcribe_ranks(params.transcribe, parallel, paths.MANIFEST, paths.TRANSCRIPTS, paths.CACHE)
    assert speed["utterances"] < len(DURATIONS)                       # the resubmitted job resumed
    assert paths.TRANSCRIPTS.read_bytes() == expected
    assert not journals()

    # extraction as one job of two tasks: the store one process writes
    extract_ranks("whisper", params.encoders["whisper"], params.extract, parallel, paths.MANIFEST, paths.TRANSCRIPTS,
                  paths.feature_store("whisper"), paths.CACHE)
    reference = tmp_path / "one"
    _medusa(reference, "extract", "whisper")
    store = lambda root: {p.name: p.read_bytes() for p in sorted(root.iterdir())}  # noqa: E731
    assert store(paths.feature_store("whisper")) == store(reference / "work" / "features" / "whisper")
    assert not list((project / "work" / "features").glob("whisper.shard-*"))


def test_training_stages_as_a_submitit_job_array_equal_the_serial_run(tmp_path_factory):
    side, serial = (test_repro._project(tmp_path_factory.mktemp(name)) for name in ("array", "serial"))
    params = yaml.safe_load((side / "params.yaml").read_text())
    params["parallel"].update(engine="submitit-local", jobs=2)
    params["parallel"]["slurm"].update(folder=str(side / "work" / "slurm"), time_min=20)
    (side / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for project in (side, serial):
        test_repro._run(["dvc", "init", "--no-scm", "-q"], project)
    log = test_repro._run([sys.executable, "-m", "medusa", "repro"], side)
    test_repro._run(["dvc", "repro"], serial)
    assert "job array" in log
    for name in test_repro.MEMBERS:
        a, b = (test_repro._files(p / "work" / "models" / name) for p in (side, serial))
        assert a == b and any(k.endswith((".pt", ".safetensors")) for k in a), name
    lock = yaml.safe_load((side / "dvc.lock").read_text())["stages"]
    assert all(f"train@{m}" in lock for m in test_repro.MEMBERS)
    assert pd.read_parquet(side / "work" / "models" / test_repro.MEMBERS[0] / "posteriors.parquet").shape[0] > 0


def test_a_slurm_job_asks_for_one_gpu_per_rank_packed_by_node_and_is_requeued_on_preemption(tmp_path, monkeypatch):
    """The sbatch script submitit writes for 16 ranks with 8 GPUs a node (a stand-in `srun` on PATH: SlurmExecutor
    only checks that it exists): 2 nodes x 8 tasks x 8 GPUs, the partition, and the USR2 signal before the time
    limit that makes submitit checkpoint and requeue the job. Without SLURM, engine slurm is one clear error."""
    from medusa.features.ranks import RankError, executor

    repo = test_repro.REPO
    parallel = load_params(repo / "configs" / "paper.yaml").parallel
    parallel = parallel.model_copy(update={"engine": "slurm", "ranks": 16, "slurm": parallel.slurm.model_copy(
        update={"partition": "gpu", "folder": str(tmp_path)})})
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))
    with pytest.raises(RankError, match="no SLURM"):
        executor(parallel, "transcribe_rank", 16)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    script = executor(parallel, "transcribe_rank", 16)._executor._make_submission_file_text("python x", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu", "--signal=USR2@",
                 "--cpus-per-task=8", "--mem=64GB", "--time=720"):
        assert line in script, (line, script)
    with pytest.raises(RankError, match="does not fill whole nodes"):
        executor(parallel, "transcribe_rank", 12)
