"""The package's layering, as docs/layout.md states it: no module imports from a later layer than its own (the
order is read from the page, so the page and the code cannot disagree); the check also shows catching a made-up
upward import."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medusa"
LAYOUT = ROOT / "docs" / "layout.md"


def layer_order(layout_text: str) -> list[set[str]]:
    """The layers of docs/layout.md's rule line, lowest first: `io, labels < config < ... < cli`."""
    for line in layout_text.splitlines():
        m = re.fullmatch(r"\s*`([\w, <]+)`\s*", line)
        if m and m.group(1).count("<") >= 3:
            return [{name.strip() for name in layer.split(",")} for layer in m.group(1).split("<")]
    raise AssertionError("docs/layout.md states no layering rule (a line like `io, labels < config < ... < cli`)")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every medusa module a file imports (function-local imports included), with its line."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # `from medusa import serving` imports medusa.serving; `from medusa.x import y` imports medusa.x
            out += ([(node.lineno, f"{name}.{a.name}") for a in node.names] if name == "medusa"
                    else [(node.lineno, name)])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
            out.append((node.lineno, str(node.args[0].value)))
    return [(line, name) for line, name in out if name == "medusa" or name.startswith("medusa.")]


def layering_problems(order: list[set[str]], files: dict[str, str], packages: frozenset[str] = frozenset()
                      ) -> list[str]:
    """Imports from a later layer. files: {module name: source}; packages: the names among them that are packages
    (their __init__.py). A module's layer is its first name under medusa (medusa.features.store.reader: features);
    the package's own __init__ and __main__ sit above everything."""
    rank = {name: i for i, layer in enumerate(order) for name in layer}
    top = len(order)

    def layer_of(module: str) -> int | None:
        parts = module.split(".")
        if len(parts) == 1 or parts[1] in {"__main__"}:
            return top
        return rank.get(parts[1])

    problems = []
    for module, source in sorted(files.items()):
        mine = layer_of(module)
        if mine is None:
            problems.append(f"{module}: {module.split('.')[1]} is in no layer of docs/layout.md's rule")
            continue
        for line, name in _imported(ast.parse(source), module, module in packages):
            theirs = layer_of(name)
            if name == "medusa" or theirs is None:
                continue  # `import medusa`, or a name that is no sub-package (reported at its own file)
            if theirs > mine:
                problems.append(f"{module}:{line} imports {name}, a later layer")
    return problems


def _package_sources() -> tuple[dict[str, str], frozenset[str]]:
    files = {_module_name(p): p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    return files, frozenset(_module_name(p) for p in PACKAGE.rglob("__init__.py"))


def test_nothing_imports_upward():
    order = layer_order(LAYOUT.read_text(encoding="utf-8"))
    sources, packages = _package_sources()
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert subpackages | modules == set().union(*order), "the rule's layers are the package's sub-packages and modules"
    assert len(sources) > 50 and "medusa.features.store" in packages  # the tree is read
    assert layering_problems(order, sources, packages) == []


def test_layering_check_catches_an_upward_import():
    order = layer_order(LAYOUT.read_text(encoding="utf-8"))
    assert layering_problems(order, {"medusa.scoring.metrics": "def f():\n    from medusa.model.deepser import DeepSER\n"}) \
        == ["medusa.scoring.metrics:2 imports medusa.model.deepser, a later layer"]
    assert layering_problems(order, {"medusa.model.deepser": "from medusa.scoring import metrics\n"}) == []
    assert layering_problems(order, {"medusa.data.audio": "from medusa import serving\n"}) \
        == ["medusa.data.audio:1 imports medusa.serving, a later layer"]
