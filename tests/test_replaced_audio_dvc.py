"""A recording replaced in place (same size, same duration, other samples) reruns the stages that read audio on the
next `dvc repro`, and only that utterance's transcript and features change. The repository's own dvc.yaml,
notebooks and package, in a small DVC project on a small demo corpus (the embedded demo's params, smaller)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).parent / "dvc"
ENCODER = "egemaps"  # the cheapest encoder of the demo; every extract stage reads the same manifest and audio


def _small_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo_corpus"].update(n_speakers=8, n_train=24, n_development=8, n_blind=1)
    params["prepare"].update(allow_uncovered_classes=True, probe_max_utterances=50, min_per_class=1)
    params["transcribe"].update(model="demo:tiny.en", compare_subset=0)  # the smallest offline Whisper
    return params


@pytest.mark.skipif(not DVC.exists(), reason="dvc is not installed beside this Python")
def test_a_replaced_recording_reruns_what_reads_audio_and_changes_only_its_rows(tmp_path):
    from medusa.config.params import DemoCorpusParams
    from medusa.data.corpora.demo import build_demo_corpus
    from medusa.features.store.reader import FeatureStore

    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "notebooks", "medusa"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, project / name)
    params = _small_params()
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    build_demo_corpus(project / "data", DemoCorpusParams(**params["demo_corpus"]))
    cache = ROOT / "work" / "cache"  # the converted demo Whisper, if this checkout has one: saves its conversion
    if cache.is_dir():
        shutil.copytree(cache, project / "work" / "cache")
    env = {**os.environ, "PATH": f"{DVC.parent}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0"}

    def dvc(*args: str) -> str:
        proc = subprocess.run([str(DVC), *args], cwd=project, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    dvc("init", "--no-scm", "-q")
    dvc("repro", f"extract@{ENCODER}")

    def outputs():
        manifest = pd.read_parquet(project / "work" / "manifest.parquet").set_index("utt_id")
        texts = pd.read_parquet(project / "work" / "transcripts.parquet").set_index("utt_id")["text"]
        store = FeatureStore(project / "work" / "features" / ENCODER)
        feats = {u: np.array(store[u]) for u in manifest.index}
        return manifest, texts, feats

    manifest, texts, feats = outputs()
    victim = manifest[manifest["split"] == "train"].index[0]
    path = project / manifest.loc[victim, "path"]
    x, rate = sf.read(path, dtype="int16")
    size = path.stat().st_size
    sf.write(path, -x[::-1], rate, subtype="PCM_16")  # another recording of the same length, in place
    assert path.stat().st_size == size

    assert "changed deps" in dvc("status", "prepare")
    ran = dvc("repro", f"extract@{ENCODER}")
    assert "Running stage 'transcribe'" in ran and f"Running stage 'extract@{ENCODER}'" in ran
    manifest2, texts2, feats2 = outputs()
    changed = manifest.index[manifest["audio_sha256"] != manifest2["audio_sha256"]].tolist()
    assert changed == [victim]
    pd.testing.assert_frame_equal(manifest.drop(columns="audio_sha256"), manifest2.drop(columns="audio_sha256"))
    others = manifest.index.drop(victim)
    pd.testing.assert_series_equal(texts[others], texts2[others])
    assert all(np.array_equal(feats[u], feats2[u]) for u in others)
    assert not np.array_equal(feats[victim], feats2[victim])
