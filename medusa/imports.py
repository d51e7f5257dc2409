"""The medusa modules a piece of code imports, read from its source (an AST walk, nothing is imported).

Two users: dvc.yaml's deps (medusa.pipeline.stage_deps: a stage reruns when code it runs changes) and the training
checkpoint (medusa.model.training.training_code: a member resumes only with the code it started with). Written by
hand because no kept tool computes a static import closure of notebooks and modules together.
Followed: every `import medusa...` / `from medusa... import ...` (function-local imports included: they may run;
`if TYPE_CHECKING:` blocks left out: they never run; packages' __init__.py included: importing medusa.x.y runs them).
"""
from __future__ import annotations

import ast
from pathlib import Path


def module_file(root: Path, name: str) -> Path | None:
    path = root.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


def imports_of(source: str) -> set[str]:
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
    """Repository-relative paths of every medusa file the modules `names` import, transitively."""
    seen: set[Path] = set()
    todo = list(names)
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(root, ".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imports_of(path.read_text(encoding="utf-8")))
    return {p.relative_to(root).as_posix() for p in seen}
