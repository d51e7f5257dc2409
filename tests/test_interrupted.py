"""Interrupted stages (issue 24): `transcribe`, `extract` and `train` killed with SIGKILL mid-run, then run again,
give the bytes of an uninterrupted run, and leave no process and no temporary file behind; a training checkpoint
made by other code is not resumed; temporary files of killed processes are cleaned up.

Each job runs in a subprocess (this file's run_job, started by a small script), which the test kills as soon as it
has made progress it could resume from (a journal line, a committed utterance, a checkpoint). The rerun and the
uninterrupted reference run in this process, each in a folder of its own: the killed process's partial work has to
fit the rerun's exactly, across processes. Every run uses one torch thread, so that float reductions are split the
same way in every process."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import soundfile as sf
import torch
from bad_inputs import leftovers

from medusa.io import remove_stale_temps

TESTS = Path(__file__).resolve().parent

#: The job a subprocess runs: `python job.py MODE ARGS_JSON` (this file's run_job).
JOB = f"""import json, sys
sys.path.insert(0, {str(TESTS)!r})
from test_interrupted import run_job
run_job(sys.argv[1], json.loads(sys.argv[2]))
"""


def run_job(mode: str, args: dict) -> None:
    """One stage's work on the files named in `args`, as the stage's notebook calls it, with one torch thread."""
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    if mode == "transcribe":
        from medusa.features.asr import transcribe_manifest
        from medusa.features.encoders.whisper import load_whisper

        model = load_whisper(args["model"], args["cache"], cpu)
        transcribe_manifest(model, pd.read_parquet(args["manifest"]), args["out"], "en", 0.0,
                            batch_size=1, num_workers=args["num_workers"], beam_size=1)
    elif mode == "extract":
        from medusa.features.encoders import build_encoder
        from medusa.features.extract import extract_to_store

        encoder = build_encoder("wavlm", "wavlm", args["model"], [-1], cpu)
        extract_to_store(encoder, pd.read_parquet(args["items"]), args["root"], batch_size=1, batch_seconds=60.0,
                         num_workers=args["num_workers"], device=cpu)
    elif mode == "train":
        from medusa.model import members

        spec = members.resolve_member("m", {"encoders": ["a", "b"], "seed": 0}, args["train"],
                                      members.store_dims(["a", "b"], args["features"]), probe={"c": 1.0})
        members.train_member(spec, pd.read_parquet(args["manifest"]), args["features"], args["out"],
                             args["checkpoint"], bootstrap=200, bootstrap_seed=0)
    else:
        raise ValueError(mode)


@pytest.fixture(autouse=True)
def _torch_threads():
    """run_job (and train_member, from train.threads) sets torch's thread count: give this process's back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


class Killed:
    """A job started in a subprocess and killed with SIGKILL once `progressed()` holds."""

    def __init__(self, tmp_path: Path, mode: str, args: dict, progressed, timeout: float = 120.0):
        script = tmp_path / "job.py"
        script.write_text(JOB)
        self.log = tmp_path / f"{mode}.stderr"
        env = {**os.environ, "TQDM_DISABLE": "1"}
        with self.log.open("w") as err:
            proc = subprocess.Popen([sys.executable, str(script), mode, json.dumps(args)], stdout=subprocess.DEVNULL,
                                    stderr=err, env=env)
        self.pid = proc.pid
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not progressed() and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is not None:
            pytest.fail(f"the {mode} job ended (exit {proc.returncode}) before it could be killed mid-run: make its "
                        f"work bigger or slower\n{self.log.read_text()[-3000:]}")
        assert progressed(), f"the {mode} job made no progress in {timeout} s\n{self.log.read_text()[-3000:]}"
        me = psutil.Process(proc.pid)
        self.children = me.children(recursive=True)  # e.g. a DataLoader worker decoding audio
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        self.process = me

    def plant_temp(self, folder: Path, name: str) -> Path:
        """The temporary file an atomic write (medusa.io.atomic_path) of the killed process would have left, had the
        kill come during that write (a moment too short to hit on purpose)."""
        path = folder / f".{name}.tmp-{self.pid}"
        path.write_bytes(b"half a file")
        return path

    def assert_gone(self) -> None:
        """Neither the killed process nor any process it started (a DataLoader worker decoding audio) still runs.
        A child that ended but was not reaped yet (a zombie: its new parent, this machine's init, may never reap it)
        counts as gone."""
        assert not self.process.is_running()
        deadline = time.monotonic() + 10  # a worker killed with its parent (batches.audio_batches) is gone at once
        while (alive := [p for p in self.children if _running(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in alive:  # this test's own leftovers: end them (by pid) before failing
            process.kill()
        assert not alive, f"processes left behind by the killed job: {alive}"


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _wavs(folder: Path, seconds: list[float]) -> pd.DataFrame:
    import tiny_models

    folder.mkdir(parents=True)
    rows = []
    for i, s in enumerate(seconds):
        path = folder / f"u{i:02d}.wav"
        sf.write(path, tiny_models.clip(s, seed=i), 16000, subtype="PCM_16")
        rows.append({"utt_id": f"u{i:02d}", "path": str(path), "duration_s": sf.info(path).duration,
                     "split": "train", "ref_text": None, "text": None})
    return pd.DataFrame(rows)


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------------------------ transcribe


def test_transcribe_killed_then_rerun_gives_the_uninterrupted_transcripts(tmp_path, caplog):
    import tiny_models

    checkpoint = tiny_models.whisper_checkpoint(tmp_path / "whisper")
    manifest = _wavs(tmp_path / "audio", [0.4 + 0.2 * i for i in range(5)])
    manifest.to_parquet(tmp_path / "manifest.parquet")
    work = tmp_path / "work"
    work.mkdir()
    out = work / "transcripts.parquet"
    journal = out.with_suffix(".journal.jsonl")
    args = {"model": checkpoint, "cache": str(tmp_path / "cache"), "manifest": str(tmp_path / "manifest.parquet"),
            "out": str(out), "num_workers": 1}
    job = Killed(tmp_path, "transcribe", args, lambda: _lines(journal) >= 2)  # the header and a transcript
    assert not out.exists() and _lines(journal) < 1 + len(manifest)          # killed mid-run
    assert job.children  # its DataLoader worker (transcribe.num_workers 1, as in params.yaml) was running
    stale = job.plant_temp(work, out.name)

    caplog.set_level(logging.INFO)
    run_job("transcribe", args)  # the rerun
    assert "resuming:" in caplog.text and not stale.exists()
    reference = tmp_path / "reference" / "transcripts.parquet"
    run_job("transcribe", {**args, "out": str(reference)})
    assert out.read_bytes() == reference.read_bytes()
    assert pd.read_parquet(out)["text"].str.len().gt(0).all()
    assert not journal.exists() and leftovers(work) == []
    job.assert_gone()


# ------------------------------------------------------------------------------------------------- extract


def test_extract_killed_then_rerun_gives_the_uninterrupted_store(tmp_path, caplog):
    import tiny_models

    model = tiny_models.hf_audio(tmp_path / "models", "wavlm", "layer")
    items = _wavs(tmp_path / "audio", [0.5 + 0.1 * i for i in range(12)])
    items.to_parquet(tmp_path / "items.parquet")
    features = tmp_path / "features"
    root = features / "wavlm"
    partial_journal = features / "wavlm.partial" / "journal.jsonl"
    args = {"model": model, "items": str(tmp_path / "items.parquet"), "root": str(root), "num_workers": 1}
    job = Killed(tmp_path, "extract", args, lambda: _lines(partial_journal) >= 1)  # a committed batch
    assert not root.exists() and _lines(partial_journal) < len(items)             # killed mid-run
    assert job.children  # its DataLoader worker (extract.num_workers 1, as in params.yaml) was running
    stale = job.plant_temp(features / "wavlm.partial", "index.parquet")

    caplog.set_level(logging.INFO)
    run_job("extract", args)
    assert "resuming" in caplog.text and not stale.exists()
    reference = tmp_path / "reference" / "wavlm"
    run_job("extract", {**args, "root": str(reference)})
    assert _folder_bytes(root) == _folder_bytes(reference)  # frames.f16, index.parquet, meta.json
    assert sorted(p.name for p in features.iterdir()) == ["wavlm"] and leftovers(features) == []
    job.assert_gone()


# --------------------------------------------------------------------------------------------------- train

#: A small member (as tests/test_members.py's) with enough epochs that one checkpoint comes well before the end.
TRAIN = {"device": "cpu", "amp": False, "hidden": 16, "layers": 2, "heads": 2, "dropout": 0.1, "ff_mult": 2,
         "fusion": "deep", "targets": "soft", "pool": {"a": 2}, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.01,
         "stage1_epochs": 3, "stage2_epochs": 1, "patience": 8, "grad_clip": 1.0, "mixup_p": 0.3,
         "mixup_alpha": 0.4, "ce_weight": 1.5, "mse_weight": 0.4, "class_weighted": True, "standardise": True,
         "epoch_steps": 4, "threads": 1}


def _member_inputs(root: Path) -> pd.DataFrame:
    """Two feature stores under root/features and the manifest of their 160 utterances (store `a` carries the
    class, `b` is noise)."""
    from medusa.features.store.writer import FeatureStoreWriter
    from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS

    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1.5, (8, 5))
    rows = []
    with FeatureStoreWriter(root / "a", 5, {"kind": "audio"}) as wa, \
            FeatureStoreWriter(root / "b", 3, {"kind": "text"}) as wb:
        for i in range(8 * 20):
            c = i % 8
            u = f"u{i:04d}"
            wa.add(u, centres[c] + rng.normal(0, 1.0, (int(rng.integers(4, 14)), 5)))
            wb.add(u, rng.normal(0, 1.0, (int(rng.integers(1, 5)), 3)))
            soft = np.full(8, 0.03)
            soft[c] = 1 - 0.03 * 7
            split = "train" if i % 10 < 6 else ("dev", "dev", "test", "blind")[i % 10 - 6]
            rows.append({"utt_id": u, "split": split, "label": CODES[c] if split != "blind" else None,
                         **dict(zip(SOFT_TARGET_COLUMNS, soft)), **dict(zip(ATTRIBUTES, [1 + c * 0.8, 4.0, 3.0]))})
    return pd.DataFrame(rows)


def test_train_killed_then_rerun_gives_the_uninterrupted_member(tmp_path, caplog):
    from medusa.model import members

    manifest = _member_inputs(tmp_path / "features")
    manifest.to_parquet(tmp_path / "manifest.parquet")
    models = tmp_path / "models"
    out, checkpoint = models / "m", models / "m.checkpoint.pt"
    args = {"train": TRAIN, "features": str(tmp_path / "features"), "manifest": str(tmp_path / "manifest.parquet"),
            "out": str(out), "checkpoint": str(checkpoint)}
    job = Killed(tmp_path, "train", args, checkpoint.exists)  # after the first epoch
    assert not out.exists() and checkpoint.exists()            # killed mid-run
    stale = job.plant_temp(models, checkpoint.name)            # a torch.save cut short

    caplog.set_level(logging.INFO)
    run_job("train", args)
    assert "resuming from" in caplog.text and not stale.exists()
    reference = tmp_path / "reference"
    run_job("train", {**args, "out": str(reference / "m"), "checkpoint": str(reference / "m.checkpoint.pt")})
    # every file byte for byte: the weights (safetensors), history, posteriors (parquet), metrics, probe
    assert sorted(p.name for p in out.iterdir()) == sorted(members.FILES)
    assert _folder_bytes(out) == _folder_bytes(reference / "m")
    assert sorted(p.name for p in models.iterdir()) == ["m"] and leftovers(models) == []
    job.assert_gone()


# ------------------------------------------------------------------------- a checkpoint of other code (point 4)


def test_a_checkpoint_made_by_other_code_is_not_resumed(tmp_path, caplog, monkeypatch):
    """A member interrupted, then training.py or deepser.py edited: the next run must not finish the old run with
    the new code. The checkpoint is discarded (a log line names the changed module) and training starts afresh,
    to the result of a fresh run; a checkpoint of the same code still resumes."""
    from tiny_models import deepser_config, train_config

    from medusa.features.store.reader import FeatureStore
    from medusa.model import training
    from medusa.model.dataset import FeatureDataset
    from medusa.model.deepser import DeepSER

    rows = _member_inputs(tmp_path)
    stores = [FeatureStore(tmp_path / "a"), FeatureStore(tmp_path / "b")]
    train, dev = (FeatureDataset(rows[rows["split"] == s], stores, [1, 1]) for s in ("train", "dev"))
    cfg = train_config(batch_size=16, stage1_epochs=2, stage2_epochs=0, patience=5)
    ckpt = tmp_path / "m.checkpoint.pt"

    def model():
        torch.manual_seed(0)
        return DeepSER(deepser_config((5, 3)))

    def interrupted():  # one epoch, then the process "dies"
        ckpt.unlink(missing_ok=True)  # a finished run's checkpoint is deleted by its caller (train_member)

        def stop(row):
            raise KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            training.train_deepser(model(), train, dev, cfg, torch.device("cpu"), checkpoint=ckpt, on_epoch=stop)
        assert ckpt.exists()

    fresh = training.train_deepser(model(), train, dev, cfg, torch.device("cpu"))[1]
    interrupted()
    real = training.code_digests()
    monkeypatch.setattr(training, "code_digests", lambda: {**real, "medusa.model.deepser": "edited"})
    caplog.set_level(logging.INFO, logger="medusa.model.training")
    history = training.train_deepser(model(), train, dev, cfg, torch.device("cpu"), checkpoint=ckpt)[1]
    assert "made by other code (changed since: medusa.model.deepser)" in caplog.text
    assert "resuming" not in caplog.text and history == fresh

    interrupted()  # under the "edited" code: the same code resumes
    caplog.clear()
    history = training.train_deepser(model(), train, dev, cfg, torch.device("cpu"), checkpoint=ckpt)[1]
    assert "resuming from" in caplog.text and history == fresh


def test_the_code_digest_covers_what_training_imports():
    """The modules are found from the import statements of medusa.model.training (and of what it imports), not
    listed by hand; each digest is its source file's sha256."""
    import hashlib

    from medusa.model import dataset, deepser, training

    code = training.training_code()
    assert {"medusa.model.training", "medusa.model.deepser", "medusa.model.dataset", "medusa.labels",
            "medusa.scoring.metrics", "medusa.features.store.reader"} <= set(code)
    assert not set(code) & training.NOT_TRAINING_CODE
    digests = training.code_digests()
    for module in (training, deepser, dataset):
        assert digests[module.__name__] == hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()
    assert digests["torch"] == str(torch.__version__)


# -------------------------------------------------------------------- temporary files of killed processes


def test_remove_stale_temps_deletes_only_the_files_of_dead_processes(tmp_path):
    """`.NAME.tmp-PID` of a process that is gone goes, in every folder below; one of a live process (this one)
    stays, as do files that only look alike."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "audio" / "spk1").mkdir(parents=True)
    stale = [tmp_path / f".manifest.parquet.tmp-{dead.pid}", tmp_path / "audio" / "spk1" / f".u1.wav.tmp-{dead.pid}"]
    live = tmp_path / "audio" / f".u2.wav.tmp-{os.getpid()}"
    alike = [tmp_path / "audio" / f"u3.wav.tmp-{dead.pid}", tmp_path / "audio" / f".u4.wav.tmp-{dead.pid}x",
             tmp_path / "audio" / "u5.wav"]
    for path in [*stale, live, *alike]:
        path.write_bytes(b"x")
    assert remove_stale_temps(tmp_path / "audio", recursive=False) == []   # spk1 not searched
    assert sorted(remove_stale_temps(tmp_path)) == sorted(stale)
    assert live.exists() and all(p.exists() for p in alike) and not any(p.exists() for p in stale)
    assert remove_stale_temps(tmp_path / "not-there") == []
