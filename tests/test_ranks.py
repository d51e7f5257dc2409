"""Transcription and extraction spread over ranks (medusa.features.ranks): `torchrun --nproc-per-node 2` (gloo, CPU)
and the stages' own launcher give the same transcripts and feature stores, byte for byte, as one process.

A small project (manifest of clips of several lengths, the tiny Whisper and WavLM stand-ins) is built three times:
one process (`python -m medusa transcribe`, `python -m medusa extract ENC`), `torchrun` with two ranks (each its
contiguous block of the batch plan, rank 0 merging), and the stage's path (`transcribe_ranks`/`extract_ranks` with
2 ranks, started by torch's elastic launcher as the notebooks do)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf
import tiny_models
import yaml

from medusa.config.params import load_params

REPO = Path(__file__).resolve().parents[1]
DURATIONS = [1.2, 2.5, 0.8, 3.1, 1.7, 2.2, 0.9, 2.8, 1.4, 3.4]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"whisper": tiny_models.whisper_checkpoint(root), "wavlm": tiny_models.hf_audio(root, "wavlm", "layer")}


def _project(root: Path, models: dict, batch_size: int = 2) -> Path:
    """A project folder: params.yaml (the demo's, with the tiny models, batches of 2 so that each rank has several
    batches), work/manifest.parquet over wav files of several lengths."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    # one DataLoader worker, as the demo: in spawned ranks its collate function must pickle
    params["transcribe"].update(model=models["whisper"], batch_size=batch_size, num_workers=1, device="cpu")
    params["encoders"]["whisper"].update(model=models["whisper"], batch_size=2)
    params["encoders"]["wavlm"] = {"family": "wavlm", "model": models["wavlm"], "layers": [-1], "batch_size": 2,
                                   "batch_seconds": 60.0}
    params["extract"].update(num_workers=0, device="cpu")
    (root / "work" / "audio").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    rows = []
    for i, seconds in enumerate(DURATIONS):
        path = root / "work" / "audio" / f"u{i:02d}.wav"
        sf.write(path, tiny_models.clip(seconds, seed=i), 16000, subtype="PCM_16")
        rows.append({"utt_id": f"u{i:02d}", "path": str(path), "duration_s": len(sf.read(path)[0]) / 16000})
    pd.DataFrame(rows).to_parquet(root / "work" / "manifest.parquet")
    return root


def _medusa(project: Path, *args: str, ranks: int = 1) -> None:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
                if ranks > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*launcher, "-m", "medusa", *args], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def projects(tmp_path_factory, models):
    """The same project run by one process and by torchrun with two ranks: transcripts, then both stores."""
    one = _project(tmp_path_factory.mktemp("one"), models)
    two = _project(tmp_path_factory.mktemp("two"), models)
    for project, ranks in ((one, 1), (two, 2)):
        _medusa(project, "transcribe", ranks=ranks)
        for encoder in ("whisper", "wavlm"):
            _medusa(project, "extract", encoder, ranks=ranks)
    return one, two


def test_torchrun_transcription_equals_one_process(projects):
    one, two = projects
    a = (one / "work" / "transcripts.parquet").read_bytes()
    assert a == (two / "work" / "transcripts.parquet").read_bytes()
    texts = pd.read_parquet(one / "work" / "transcripts.parquet")
    assert list(texts["utt_id"]) == [f"u{i:02d}" for i in range(len(DURATIONS))] and texts["text"].notna().all()
    assert texts["text"].nunique() > 1   # the tiny Whisper's transcripts follow the audio: a real comparison
    # the shards' journals are merged and gone
    assert not list((two / "work").glob("transcripts*.jsonl"))


@pytest.mark.parametrize("encoder", ["whisper", "wavlm"])
def test_torchrun_extraction_equals_one_process(projects, encoder):
    one, two = projects
    a, b = _files(one / "work" / "features" / encoder), _files(two / "work" / "features" / encoder)
    assert a.keys() == b.keys() and "meta.json" in a and not any("shard-" in k for k in b)
    assert a == b


def test_the_stages_launcher_gives_the_same_bytes(projects, tmp_path, models, monkeypatch):
    """transcribe_ranks / extract_ranks with 2 ranks (torch's elastic launcher, as the notebooks call them)."""
    from medusa.config import paths
    from medusa.features.asr import transcribe_ranks
    from medusa.features.extract import extract_ranks

    one, _ = projects
    project = _project(tmp_path, models)
    monkeypatch.chdir(project)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params = load_params("params.yaml")
    parallel = params.parallel.model_copy(update={"ranks": 2, "engine": "torchrun"})
    speed = transcribe_ranks(params.transcribe, parallel, paths.MANIFEST, paths.TRANSCRIPTS, paths.CACHE)
    assert speed["ranks"] == 2 and speed["utterances"] == len(DURATIONS)
    assert paths.TRANSCRIPTS.read_bytes() == (one / "work" / "transcripts.parquet").read_bytes()
    stats = extract_ranks("wavlm", params.encoders["wavlm"], params.extract, parallel, paths.MANIFEST,
                          paths.TRANSCRIPTS, paths.feature_store("wavlm"), paths.CACHE)
    assert stats.utterances == len(DURATIONS)
    assert _files(paths.feature_store("wavlm")) == _files(one / "work" / "features" / "wavlm")


def test_a_shard_made_from_other_settings_is_not_merged(tmp_path, models, monkeypatch):
    """`medusa transcribe --merge` (SLURM's and the by-hand path): a shard journal made under another decoding
    setting (the padding) is named and refused at the merge, in one line, not mixed in. The shards are made in this
    process (the CLI's --shard calls the same transcribe_shard)."""
    import torch

    from medusa.features.asr import TranscriptionPlan, transcribe_shard
    from medusa.features.encoders.whisper import load_whisper

    project = _project(tmp_path, models)
    monkeypatch.chdir(project)
    model = load_whisper(models["whisper"], project / "work" / "cache", torch.device("cpu"))
    manifest = pd.read_parquet("work/manifest.parquet")
    for shard, pad in ((0, 8.0), (1, 5.0)):   # params.yaml says 5.0: shard 0 was made under other settings
        plan = TranscriptionPlan.build(model, manifest, "en", pad, 2, 1, 2)
        transcribe_shard(model, plan, "work/transcripts.parquet", 0, shard)
    proc = subprocess.run([sys.executable, "-m", "medusa", "transcribe", "--merge", "2"], cwd=project,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1
    assert "shard 0 of 2" in proc.stderr and "other inputs or settings" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (project / "work" / "transcripts.parquet").exists()
