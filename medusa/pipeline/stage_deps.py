"""dvc.yaml's deps cover every module a stage imports, so that a stage reruns when code it runs changes.

    python -m medusa.pipeline.stage_deps           # list what each stage imports but does not list; exit 1 if any
    python -m medusa.pipeline.stage_deps --fix     # write each stage's module deps as its import closure

A stage's import closure starts at its command's module (`python -m medusa...`) and at the `medusa` imports of
its notebook's code cells, and follows every `import medusa...` / `from medusa... import ...` in the files reached
(function-local imports included: a stage may call them; `if TYPE_CHECKING:` blocks left out: they never run;
packages' __init__.py included: importing medusa.x.y runs them first). tests/test_dvc_deps.py runs the check.
Written by hand (an AST walk of ~100 lines) because no kept tool computes a static import closure of notebooks
and modules together.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

from medusa.imports import import_closure, imports_of

_COMMAND_MODULE = re.compile(r"python -m (medusa(?:\.\w+)*)")


def notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    lines = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code").splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))  # IPython magics


def _stages(root: Path) -> dict[str, dict]:
    return {name: stage.get("do", stage)   # a foreach stage: its template
            for name, stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items()}


def stage_closure(root: Path, body: dict) -> set[str]:
    deps = [d for d in body.get("deps", []) if isinstance(d, str)]
    roots = set(_COMMAND_MODULE.findall(body["cmd"]))
    for notebook in (d for d in deps if d.endswith(".ipynb")):
        roots |= imports_of(notebook_code(root / notebook))
    return import_closure(root, roots)


def stage_gaps(root: Path) -> dict[str, list[str]]:
    """{stage: the files of its import closure that none of its deps covers}."""
    gaps = {}
    for name, body in _stages(root).items():
        deps = [d.rstrip("/") for d in body.get("deps", []) if isinstance(d, str) and "${" not in d]
        gaps[name] = sorted(f for f in stage_closure(root, body)
                            if not any(f == d or f.startswith(d + "/") for d in deps))
    return gaps


def fix(root: Path) -> dict[str, int]:
    """Rewrite each stage's `medusa/` deps in dvc.yaml as its import closure (sorted), leaving its other deps,
    comments and layout alone. Returns {stage: module deps written}."""
    stages = _stages(root)
    lines = (root / "dvc.yaml").read_text().splitlines(keepends=True)
    out, written, stage, in_deps, pending = [], {}, None, False, []
    for line in lines:
        header = re.match(r"^  (\w+):\s*(#.*)?$", line)
        key = re.match(r"^(\s+)(deps|params|outs|metrics|cmd|foreach|do):", line)
        if (header or key) and pending:   # a deps list of notebooks only: its modules go at its end
            out.extend(pending)
            pending = []
        if header:
            stage, in_deps = header.group(1), False
        if key:
            in_deps = key.group(2) == "deps"
            out.append(line)
            if in_deps and stage in stages:
                closure = sorted(stage_closure(root, stages[stage]))
                indent = key.group(1) + ("  " if key.group(1) else "")
                pending = [f"{indent}- {f}\n" for f in closure]
                written[stage] = len(closure)
            continue
        if in_deps and re.match(r"^\s+- medusa/", line):
            if pending:
                out.extend(pending)
                pending = []
            continue
        if in_deps and pending and re.match(r"^\s+- ", line) and not line.strip().startswith("- notebooks/"):
            out.extend(pending)
            pending = []
        out.append(line)
    (root / "dvc.yaml").write_text("".join(out))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medusa.pipeline.stage_deps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fix", action="store_true", help="rewrite the module deps of every stage in dvc.yaml")
    parser.add_argument("--root", default=".")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if args.fix:
        for stage, n in fix(root).items():
            print(f"{stage}: {n} modules")
    gaps = {stage: files for stage, files in stage_gaps(root).items() if files}
    for stage, files in gaps.items():
        print(f"{stage}: imports but does not list {', '.join(files)}", file=sys.stderr)
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main())
