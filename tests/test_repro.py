"""`medusa repro` (medusa.pipeline.repro): the training stages run side by side through DVC, and equal the serial run.

A small DVC project holds the repository's own `inputs` and `train` stages (dvc.yaml, notebooks and package copied
in), two members over two synthetic feature stores, and a tiny `train` section. It is reproduced twice: by
`medusa repro --jobs 2` (two members trained at once, one CPU thread each) and by plain `dvc repro` (one after the
other). The members' folders (weights, posteriors, metrics), their metrics files and their dvc.lock entries are the
same bytes."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medusa.features.store.writer import FeatureStoreWriter
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS

REPO = Path(__file__).resolve().parents[1]
MEMBERS = ("whisper_minilm", "whisper_minilm_s1")

pytestmark = pytest.mark.skipif(shutil.which("dvc", path=str(Path(sys.executable).parent)) is None
                                and shutil.which("dvc") is None, reason="dvc is not installed")


def _corpus(work: Path) -> None:
    """work/manifest.parquet and two stores (whisper: the class in its frames' mean; minilm: noise)."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1.5, (8, 5))
    rows = []
    with (FeatureStoreWriter(work / "features" / "whisper", 5, {"kind": "audio", "family": "whisper"}) as wa,
          FeatureStoreWriter(work / "features" / "minilm", 3, {"kind": "text", "family": "minilm"}) as wb):
        for i in range(8 * 30):
            c, split = i % 8, ("train",) * 6 + ("dev", "dev", "test", "test")
            u = f"u{i:04d}"
            wa.add(u, centres[c] + rng.normal(0, 1.0, (int(rng.integers(4, 14)), 5)))
            wb.add(u, rng.normal(0, 1.0, (int(rng.integers(1, 5)), 3)))
            soft = np.full(8, 0.03)
            soft[c] = 1 - 0.03 * 7
            rows.append({"utt_id": u, "split": split[i % 10], "label": CODES[c],
                         **dict(zip(SOFT_TARGET_COLUMNS, soft)), **dict(zip(ATTRIBUTES, [1 + c * 0.8, 4.0, 3.0]))})
    pd.DataFrame(rows).to_parquet(work / "manifest.parquet")


def _project(root: Path) -> Path:
    for name in ("medusa", "notebooks"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {k: stages[k] for k in ("inputs", "train")}},
                                                  sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(hidden=16, heads=2, epoch_steps=3, stage1_epochs=1, stage2_epochs=1, patience=1,
                           standardise=False, threads=1)
    params["models"] = {name: params["models"][name] for name in MEMBERS}
    params["ablate"]["models"] = [MEMBERS[0]]
    params["ensemble"]["top_k"] = [2]
    params["report"]["bootstrap"] = 200
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _corpus(root / "work")
    return root


def _run(cmd: list[str], cwd: Path) -> str:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    side, serial = (_project(tmp_path_factory.mktemp(name)) for name in ("side_by_side", "serial"))
    for project in (side, serial):
        _run(["dvc", "init", "--no-scm", "-q"], project)
    log = _run([sys.executable, "-m", "medusa", "repro", "--jobs", "2"], side)
    _run(["dvc", "repro"], serial)
    return side, serial, log


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_members_trained_side_by_side_equal_the_serial_ones(runs):
    side, serial, log = runs
    for name in MEMBERS:
        a, b = _files(side / "work" / "models" / name), _files(serial / "work" / "models" / name)
        assert any(k.endswith((".pt", ".safetensors")) for k in a), sorted(a)   # the weights are compared
        assert a.keys() == b.keys() and a == b, name
        metrics = f"reports/metrics/train/{name}.json"
        assert (side / metrics).read_bytes() == (serial / metrics).read_bytes()
        assert json.loads((side / metrics).read_text())   # a real metrics file
    # both trainings started before either finished: they did run side by side
    events = re.findall(r"\[train@(\w+)\] (starting|done)", log)
    assert [e for _, e in events[:2]] == ["starting", "starting"], events


def test_dvc_lock_records_the_stages_as_dvc_repro_does(runs):
    side, serial, _ = runs
    locks = [yaml.safe_load((p / "dvc.lock").read_text())["stages"] for p in (side, serial)]
    for name in MEMBERS:
        stage = f"train@{name}"
        assert stage in locks[0], sorted(locks[0])
        outs = [{o["path"]: o.get("md5") for o in lock[stage]["outs"] if "notebooks" not in o["path"]}
                for lock in locks]
        assert outs[0] == outs[1]
        assert locks[0][stage]["params"] == locks[1][stage]["params"]
    # nothing is left to run
    status = _run(["dvc", "status"], side)
    assert "up to date" in status.lower() or not status.strip(), status


# ---- the slot pool over DVC's graph: a stage waits for the stages it reads from; a failure stops only its dependants

_STAGE = ("import json, sys, time; t = time.time(); time.sleep(1.5); "
          "json.dump({'start': t, 'end': time.time()}, open(sys.argv[1], 'w')); sys.exit(int(sys.argv[2]))")


def _stage(name: str, code: int = 0, deps: tuple[str, ...] = ()) -> dict:
    return {"cmd": f'python -c "{_STAGE}" {name}.json {code}', "deps": [f"{d}.json" for d in deps],
            "outs": [f"{name}.json"]}


@pytest.fixture()
def dag(tmp_path):
    """A DVC project of stages that sleep 1.5 s and write their start and end times: c reads a's output, b is
    independent; f fails, g reads f's output, h is independent."""
    stages = {"a": _stage("a"), "b": _stage("b"), "c": _stage("c", deps=("a",)),
              "f": _stage("f", code=1), "g": _stage("g", deps=("f",)), "h": _stage("h")}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    _run(["dvc", "init", "--no-scm", "-q"], tmp_path)
    return tmp_path


def _in(root: Path, fn, *args):
    """fn(*args) with `root` as the working directory and this environment's dvc first on PATH."""
    old, path = Path.cwd(), os.environ.get("PATH", "")
    os.chdir(root)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path}"
    try:
        return fn(*args)
    finally:
        os.chdir(old)
        os.environ["PATH"] = path


def test_a_stage_starts_after_the_stages_it_reads_from_and_beside_the_others(dag):
    from medusa.pipeline.repro import run_side_by_side

    # c is offered first, but a has not run: the two slots take a and b, and c waits for a
    assert _in(dag, run_side_by_side, ["c", "a", "b"], 2, {"c": {"a"}}) == []
    t = {n: json.loads((dag / f"{n}.json").read_text()) for n in "abc"}
    assert t["c"]["start"] >= t["a"]["end"]
    assert t["b"]["start"] < t["a"]["end"] and t["a"]["start"] < t["b"]["end"]   # a and b side by side
    lock = yaml.safe_load((dag / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"a", "b", "c"}                                            # recorded as dvc repro would
    assert "up to date" in _run(["dvc", "status", "a", "b", "c"], dag).lower()


def test_a_failed_stage_stops_its_dependants_only(dag):
    from medusa.pipeline.repro import run_side_by_side

    assert _in(dag, run_side_by_side, ["f", "g", "h"], 2, {"g": {"f"}}) == ["f", "g"]
    assert (dag / "h.json").exists() and not (dag / "g.json").exists()


def test_ranked_stages_first_then_the_stages_others_wait_for():
    from medusa.pipeline.repro import Plan

    train = {"prepare", "transcribe", "extract@w", "inputs@a", "inputs@b"}
    needs = {"prepare": set(), "transcribe": {"prepare"}, "extract@w": {"prepare", "transcribe"},
             "inputs@a": {"prepare", "transcribe", "extract@w"}, "inputs@b": {"prepare", "transcribe", "extract@w"},
             "train@a": train - {"inputs@b"}, "train@b": train - {"inputs@a"}, "ablate@x": train,
             "ensemble": train | {"train@a", "train@b"}, "report": train | {"train@a", "train@b", "ablate@x", "ensemble"}}
    order = ["prepare", "transcribe", "extract@w", "inputs@a", "inputs@b", "ablate@x", "train@b", "train@a",
             "ensemble", "report"]
    plan = Plan(order, needs)
    assert plan.first == ["prepare", "transcribe", "extract@w"]
    # the ensemble (waited for by the report, after the members) goes before Table 2's stage; equals keep the
    # pipeline's order (train@b before train@a)
    assert plan.side_by_side == ["inputs@a", "inputs@b", "train@b", "train@a", "ensemble", "ablate@x", "report"]
    assert plan.training == ["ablate@x", "train@b", "train@a"]
    assert plan.before_training == ["prepare", "transcribe", "extract@w", "inputs@a", "inputs@b"]
