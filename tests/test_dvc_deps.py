"""dvc.yaml's deps cover every module a stage imports (medusa.pipeline.stage_deps), and a stage depends on the
feature stores it reads and no other (medusa.pipeline.inputs)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medusa.features.store.reader import STORE_FILES
from medusa.features.store.writer import FeatureStoreWriter
from medusa.pipeline.inputs import InputsError, link_stores
from medusa.pipeline.stage_deps import fix, import_closure, stage_gaps


def test_every_stage_lists_every_module_it_imports(repo_root):
    gaps = {stage: files for stage, files in stage_gaps(repo_root).items() if files}
    assert not gaps, ("dvc.yaml: stages import modules they do not list as deps (python -m medusa.pipeline.stage_deps "
                      "--fix writes them): " + "; ".join(f"{stage}: {', '.join(files)}" for stage, files in gaps.items()))


def test_the_closure_follows_imports_and_skips_type_checking_blocks(tmp_path):
    pkg = tmp_path / "medusa"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from medusa.c import C\n")
    (pkg / "a.py").write_text("def f():\n    from medusa.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("import medusa.d\n")
    (pkg / "c.py").write_text("")
    (pkg / "d.py").write_text("")
    assert import_closure(tmp_path, {"medusa.a"}) == {"medusa/__init__.py", "medusa/a.py", "medusa/sub/__init__.py",
                                                      "medusa/sub/b.py", "medusa/d.py"}


def test_fix_writes_a_stage_s_closure_and_keeps_its_other_deps(tmp_path):
    pkg = tmp_path / "medusa"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "run.py").write_text("import medusa.a\n")
    (pkg / "a.py").write_text("")
    (pkg / "old.py").write_text("")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  one:\n    cmd: python -m medusa.run x\n    deps:\n      - medusa/old.py  # gone\n"
        "      - work/data\n    outs:\n      - work/out\n")
    assert stage_gaps(tmp_path) == {"one": ["medusa/__init__.py", "medusa/a.py", "medusa/run.py"]}
    fix(tmp_path)
    text = (tmp_path / "dvc.yaml").read_text()
    assert "medusa/old.py" not in text and "      - work/data\n" in text
    assert stage_gaps(tmp_path) == {"one": []}


def test_fix_fills_a_deps_list_that_names_only_its_notebook(tmp_path):
    """A stage whose deps are its notebook alone (no module listed yet, nothing after it) still gets its closure."""
    pkg = tmp_path / "medusa"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("")
    (tmp_path / "notebooks").mkdir()
    cells = [{"cell_type": "code", "source": ["import medusa.a\n"]}]
    (tmp_path / "notebooks" / "nb.ipynb").write_text(json.dumps({"cells": cells}))
    (tmp_path / "dvc.yaml").write_text("stages:\n  one:\n    cmd: papermill notebooks/nb.ipynb\n    deps:\n"
                                       "      - notebooks/nb.ipynb\n"
                                       "    outs:\n      - work/out\n")
    assert stage_gaps(tmp_path) == {"one": ["medusa/__init__.py", "medusa/a.py"]}
    fix(tmp_path)
    assert stage_gaps(tmp_path) == {"one": []}


def _store(root: Path, dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with FeatureStoreWriter(root, dim) as writer:
        for i in range(3):
            writer.add(f"u{i}", rng.standard_normal((4, dim)).astype(np.float32))


def test_a_view_links_the_files_a_reader_opens_and_names_a_missing_store(tmp_path):
    features = tmp_path / "features"
    _store(features / "a", 3, 0)
    _store(features / "b", 2, 1)
    view = link_stores(["b", "a", "b"], features, tmp_path / "inputs" / "m")
    assert sorted(p.name for p in view.iterdir()) == ["a", "b"]
    for name in STORE_FILES:
        link = view / "a" / name
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.read_bytes() == (features / "a" / name).read_bytes()
    link_stores(["a"], features, view)       # rebuilt in place: b is gone
    assert sorted(p.name for p in view.iterdir()) == ["a"]
    with pytest.raises(InputsError, match="no complete feature store for c under .*dvc repro extract@c"):
        link_stores(["a", "c"], features, view)


@pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc is not on PATH")
def test_changing_one_store_changes_only_the_stages_that_read_it(repo_root, tmp_path):
    """The pattern dvc.yaml uses (inputs@MODEL views, train@MODEL depending on its view), in a small DVC project:
    after one store changes, `dvc status` names the train stage of the one model that reads it, not the other."""
    project = tmp_path / "project"
    (project / "work").mkdir(parents=True)
    _store(project / "work" / "features" / "a", 3, 0)
    _store(project / "work" / "features" / "b", 2, 1)
    (project / "params.yaml").write_text("models:\n  m_a:\n    encoders: [a]\n  m_ab:\n    encoders: [a, b]\n"
                                          "  m_b:\n    encoders: [b]\n")
    (project / "link.py").write_text(
        "import sys, yaml\nfrom medusa.pipeline.inputs import link_stores\n"
        "m = sys.argv[1]\nlink_stores(yaml.safe_load(open('params.yaml'))['models'][m]['encoders'], 'work/features',"
        " f'work/inputs/{m}')\n")
    (project / "dvc.yaml").write_text(
        "stages:\n  inputs:\n    foreach: ${models}\n    do:\n      cmd: python link.py ${key}\n"
        "      deps: [work/features]\n      params: ['models.${key}.encoders']\n"
        "      outs:\n        - work/inputs/${key}:\n            cache: false\n"
        "  train:\n    foreach: ${models}\n    do:\n      cmd: python -c \"open('work/${key}.out', 'w').write('x')\"\n"
        "      deps: ['work/inputs/${key}']\n      outs: ['work/${key}.out']\n")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(repo_root)}

    def dvc(*args: str) -> str:
        proc = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc("init", "-q")
    dvc("repro")
    shutil.rmtree(project / "work" / "features" / "b")
    _store(project / "work" / "features" / "b", 2, 2)          # b re-extracted with other frames
    status = dvc("status")
    changed_train = sorted(line.strip().rstrip(":") for line in status.splitlines() if line.startswith("train@"))
    assert changed_train == ["train@m_ab", "train@m_b"], status
    ran = dvc("repro")
    assert "Running stage 'train@m_a'" not in ran and "Running stage 'train@m_b'" in ran, ran
