"""dvc.yaml's deps cover every module a stage imports: a stage reruns when code it runs changes.

The import closure of each stage starts at its command's module (`python -m medusa.pipeline.run`) and at the `medusa`
imports of its notebook's code cells, and follows every `import medusa...` / `from medusa... import ...` statement
in the files reached (function-local imports included: a stage may call them; `if TYPE_CHECKING:` blocks left
out: they never run). Every file of the closure must be a dep of the stage, or inside a folder that is one.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml


def _module_file(root: Path, name: str) -> Path | None:
    path = root.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


def _imports(source: str) -> set[str]:
    """The medusa modules (and `module.name` candidates of `from module import name`) a source imports."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "medusa"}
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "medusa":
            out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return out


def import_closure(root: Path, names: set[str]) -> set[str]:
    """Repository-relative paths of every medusa file the modules `names` import, transitively (packages'
    __init__.py included: importing medusa.x runs medusa/__init__.py first)."""
    seen: set[Path] = set()
    todo = list(names)
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            path = _module_file(root, ".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(_imports(path.read_text(encoding="utf-8")))
    return {p.relative_to(root).as_posix() for p in seen}


def _notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    lines = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code").splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))  # IPython magics


def stage_gaps(root: Path) -> dict[str, list[str]]:
    """{stage: the files of its import closure that none of its deps covers}."""
    gaps = {}
    for name, stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)   # a foreach stage: its template
        deps = [d.rstrip("/") for d in body.get("deps", []) if isinstance(d, str) and "${" not in d]
        roots = {"medusa.pipeline.run"} if "medusa.pipeline.run" in body["cmd"] else set()
        for notebook in (d for d in deps if d.endswith(".ipynb")):
            roots |= _imports(_notebook_code(root / notebook))
        closure = import_closure(root, roots)
        gaps[name] = sorted(f for f in closure if not any(f == d or f.startswith(d + "/") for d in deps))
    return gaps


def test_every_stage_lists_every_module_it_imports(repo_root):
    gaps = {stage: files for stage, files in stage_gaps(repo_root).items() if files}
    assert not gaps, "dvc.yaml: stages import modules they do not list as deps: " + "; ".join(
        f"{stage}: {', '.join(files)}" for stage, files in gaps.items())


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
