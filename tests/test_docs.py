"""The documentation (README.md and docs/*.md) against the code it describes.

- every command it shows (`medusa ...`, `python -m medusa....`, `python benchmarks/....py`) names a subcommand and
  flags that its argparse parser has (the parsers are built and inspected, never their help text);
- docs/layout.md names every module of the package and every `medusa/...` path the pages name exists (the layering
  it states: tests/test_layering.py);
- README.md stays a front door: at most 150 lines;
- every relative link points to an existing file (and heading, where it names one).

Each check is a function that returns what is wrong, so that each test also shows the check catching a made-up
mistake.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medusa"
README = ROOT / "README.md"
LAYOUT = ROOT / "docs" / "layout.md"
README_MAX_LINES = 150


def doc_pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def _rel(path: Path) -> str:
    path = path.resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


# ---------------------------------------------------------------------------------------------------------------
# Markdown: code (fenced blocks and inline spans), links, headings

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)


def _blocks(text: str) -> list[tuple[bool, int, str]]:
    """(fenced, first line number, text) of the runs of lines inside and outside fenced code blocks."""
    blocks, fenced, start, lines = [], False, 1, []
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            blocks.append((fenced, start, "\n".join(lines)))
            fenced, start, lines = not fenced, number + 1, []
        else:
            lines.append(line)
    blocks.append((fenced, start, "\n".join(lines)))
    return blocks


def code_snippets(text: str) -> list[tuple[int, str]]:
    """(line number, code) for every line of a fenced block and every inline code span outside them (a span may
    wrap over lines: it is joined into one)."""
    out = []
    for fenced, start, block in _blocks(text):
        if fenced:
            out.extend((start + i, line) for i, line in enumerate(block.split("\n")))
        else:
            out.extend((start + block.count("\n", 0, m.start()), " ".join(m.group(2).split()))
                       for m in _INLINE_CODE.finditer(block))
    return out


def prose(text: str) -> str:
    """The text outside code (fenced blocks and inline spans): links are not read inside code."""
    return "\n".join(_INLINE_CODE.sub("", block) for fenced, _, block in _blocks(text) if not fenced)


def heading_slugs(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    slugs, seen, fenced = set(), {}, False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


# ---------------------------------------------------------------------------------------------------------------
# (a) commands against their parsers


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__(parser.prog)
        self.parser = parser


@contextmanager
def _capture_parse():
    def capture(self, *args, **kwargs):
        raise _Captured(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture):
        yield


def parser_of_main(main) -> argparse.ArgumentParser:
    """The parser a `main(argv)` builds, taken at its parse_args call (nothing after it runs)."""
    with _capture_parse():
        try:
            main([])
        except _Captured as captured:
            return captured.parser
    raise AssertionError(f"{main.__module__}.main never called parse_args")


@lru_cache(maxsize=None)
def cli_parser() -> argparse.ArgumentParser:
    from medusa.cli import build_parser

    return build_parser()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


@lru_cache(maxsize=None)
def module_parser(module: str) -> argparse.ArgumentParser | None:
    """The parser of `python -m MODULE` (its `main`), or None when MODULE has no `main`."""
    main = getattr(importlib.import_module(module), "main", None)
    return None if main is None else parser_of_main(main)


@lru_cache(maxsize=None)
def script_parser(script: str) -> argparse.ArgumentParser | None:
    path = ROOT / script
    if not path.is_file():
        return None
    sys.path.insert(0, str(path.parent))
    try:
        name = f"_docs_check_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return parser_of_main(module.main) if hasattr(module, "main") else None


_SHELL_STOP = {";", "&&", "||", "|", ">", ">>", "<", "&"}


def _tokens(code: str) -> list[str]:
    try:
        tokens = shlex.split(code, comments=True)
    except ValueError:  # an unbalanced quote in a code span: split on blanks
        tokens = code.split()
    return tokens


def _args_until_stop(tokens: list[str]) -> list[str]:
    out = []
    for token in tokens:
        if token in _SHELL_STOP or token.startswith("$(") or token == ")":
            break
        out.append(token)
    return out


def _flag_problems(parser: argparse.ArgumentParser, args: list[str], command: str) -> list[str]:
    known = option_strings(parser)
    problems = []
    for arg in args:
        if not arg.startswith("-") or arg == "-" or arg == "--" or re.fullmatch(r"-\d+(\.\d+)?", arg):
            continue
        flag = arg.split("=", 1)[0]
        if flag not in known:
            problems.append(f"`{command}`: no option {flag} (has: {', '.join(sorted(known)) or 'none'})")
    return problems


def command_problems(code: str) -> list[str]:
    """What is wrong with the medusa and benchmark commands in one line of code."""
    tokens, problems = _tokens(code), []
    for i, token in enumerate(tokens):
        before = tokens[i - 1] if i else ""
        if (token == "medusa" or token.endswith("/medusa")) and before not in {"from", "import"}:
            args = _args_until_stop(tokens[i + 1:])
            if not args:
                continue
            sub = args[0]
            if sub.startswith("-"):
                problems += _flag_problems(cli_parser(), args, code)
                continue
            commands = subcommands(cli_parser())
            if sub not in commands:
                problems.append(f"`{code}`: medusa has no subcommand {sub!r} (has: {', '.join(sorted(commands))})")
                continue
            # `medusa run` hands its arguments to medusa.pipeline.run's own parser
            parser = module_parser("medusa.pipeline.run") if sub == "run" else commands[sub]
            problems += _flag_problems(parser, args[1:], code)
        elif re.fullmatch(r"(.*/)?python3?", token) and i + 1 < len(tokens):
            if tokens[i + 1] == "-m" and i + 2 < len(tokens) and tokens[i + 2].split(".")[0] == "medusa":
                module, args = tokens[i + 2], _args_until_stop(tokens[i + 3:])
                if module == "medusa":
                    problems += command_problems(" ".join(["medusa", *map(shlex.quote, args)]))
                    continue
                if importlib.util.find_spec(module) is None:
                    problems.append(f"`{code}`: no module {module}")
                    continue
                parser = module_parser(module)
                if parser is None:
                    problems.append(f"`{code}`: {module} has no main(argv)")
                    continue
                problems += _flag_problems(parser, args, code)
            elif tokens[i + 1].startswith("benchmarks/") and tokens[i + 1].endswith(".py"):
                script, args = tokens[i + 1], _args_until_stop(tokens[i + 2:])
                parser = script_parser(script)
                if parser is None:
                    problems.append(f"`{code}`: {script} does not exist or has no main(argv)")
                    continue
                problems += _flag_problems(parser, args, code)
    return problems


def docs_command_problems(pages: list[Path]) -> list[str]:
    problems = []
    for page in pages:
        for number, code in code_snippets(page.read_text(encoding="utf-8")):
            problems += [f"{_rel(page)}:{number}: {p}" for p in command_problems(code)]
    return problems


def test_commands_in_the_docs_exist():
    assert docs_command_problems(doc_pages()) == []


def test_command_check_catches_made_up_commands_and_flags():
    assert command_problems("medusa predict work/bundle a.wav --out p.csv --batch-size 8") == []
    assert command_problems("from medusa import Predictor") == []
    assert command_problems("medusa predict work/bundle a.wav --made-up-flag 3")
    assert command_problems("medusa extract ENC --shard 0/2 && medusa extract ENC --merge 2 --nope")
    assert command_problems("medusa made-up-command DIR")
    assert command_problems("medusa run notebooks/01_prepare.ipynb --section prepare") == []
    assert command_problems("medusa run notebooks/01_prepare.ipynb --sektion prepare")
    assert command_problems("python -m medusa.pipeline.dryrun --fresh") == []
    assert command_problems("python -m medusa.pipeline.dryrun --stale")
    assert command_problems("python -m medusa.pipeline.no_such_module")
    assert command_problems("python benchmarks/no_such_script.py")
    # and through the page reader: a fenced block and an inline span
    text = "```bash\nmedusa evaluate B C --label-map x=O --made-up\n```\nand `medusa submission B C --out s.csv --also-made-up`\n"
    found = [p for _, code in code_snippets(text) for p in command_problems(code)]
    assert len(found) == 2 and "--made-up" in found[0] and "--also-made-up" in found[1]


# ---------------------------------------------------------------------------------------------------------------
# (b) the layout page against the tree; paths named in the docs


def package_modules() -> list[str]:
    """Every module file of the package, as `medusa/...py` (package __init__ files left out)."""
    return sorted(_rel(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" and "__pycache__" not in p.parts)


def package_folders() -> list[str]:
    return sorted(_rel(p.parent) + "/" for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE)


def layout_problems(layout_text: str, modules: list[str], folders: list[str]) -> list[str]:
    named = set(re.findall(r"medusa/[\w/]*\w\.py|medusa/[\w/]+/", layout_text))
    return ([f"docs/layout.md does not name the module {m}" for m in modules if m not in named]
            + [f"docs/layout.md does not name the sub-package {f}" for f in folders if f not in named])


_REPO_PATH = re.compile(r"(?<![\w./-])((?:medusa|benchmarks|configs|tests|docs)/[\w./-]*[\w/])")
_DOTTED = re.compile(r"(?<![\w./-])(medusa(?:\.[a-z_][a-z0-9_]*)+)")


def path_problems(pages: list[Path]) -> list[str]:
    """`medusa/...`, `benchmarks/...`, `configs/...`, `tests/...` and `docs/...` paths, and dotted `medusa.x.y`
    modules, named anywhere in the pages, that do not exist (a path with `{a,b}` alternatives is not checked)."""
    problems = []
    for page in pages:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for path in _REPO_PATH.findall(line):
                if "{" not in path and not (ROOT / path.rstrip("/")).exists():
                    problems.append(f"{_rel(page)}:{number}: {path} does not exist")
            for dotted in _DOTTED.findall(line):
                parts = dotted.split(".")
                # a module, a package, or a name defined in one (medusa.serving.predict.Predictor)
                candidates = [ROOT.joinpath(*parts), ROOT.joinpath(*parts[:-1])]
                if not any(c.with_suffix(".py").is_file() or (c / "__init__.py").is_file() for c in candidates):
                    problems.append(f"{_rel(page)}:{number}: no module {dotted}")
    return problems


def test_layout_names_every_module_of_the_tree():
    modules, folders = package_modules(), package_folders()
    assert "medusa/cli.py" in modules and "medusa/features/store/" in folders  # the tree is read
    assert layout_problems(LAYOUT.read_text(encoding="utf-8"), modules, folders) == []


def test_layout_check_catches_a_missing_module():
    text = LAYOUT.read_text(encoding="utf-8")
    assert layout_problems(text, [*package_modules(), "medusa/features/made_up.py"], package_folders()) == [
        "docs/layout.md does not name the module medusa/features/made_up.py"]
    assert layout_problems(text.replace("medusa/serving/inference.py", "medusa/serving/"), package_modules(),
                           package_folders()) == ["docs/layout.md does not name the module medusa/serving/inference.py"]


def test_paths_named_in_the_docs_exist():
    assert path_problems(doc_pages()) == []


def test_path_check_catches_a_made_up_path(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("The store is `medusa/features/store.py`, run by `medusa.pipeline.run`; also "
                    "medusa/features/store/reader.py, `medusa.serving.predict.Predictor` and medusa.made_up.module.\n")
    problems = path_problems([page])
    assert len(problems) == 2 and "medusa/features/store.py" in problems[0] and "medusa.made_up.module" in problems[1]


# ---------------------------------------------------------------------------------------------------------------
# (c) the README is a front door
def readme_problems(text: str, limit: int = README_MAX_LINES) -> list[str]:
    n = len(text.splitlines())
    return [] if n <= limit else [f"README.md has {n} lines, more than {limit}: move detail into docs/"]


def test_readme_is_short():
    assert readme_problems(README.read_text(encoding="utf-8")) == []
    assert readme_problems("line\n" * (README_MAX_LINES + 1))


def test_readme_keeps_the_two_commands():
    """.ci/run runs `make test` and `make repro`: the README's two commands."""
    text = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in ("make repro", "make test"):
        assert command in text and command in ci


# ---------------------------------------------------------------------------------------------------------------
# (d) relative links

_LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')


def link_problems(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    problems = []
    for target in _LINK.findall(prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{_rel(page)}: link to {target}: {path} does not exist")
            continue
        if anchor and dest.suffix == ".md" and anchor not in heading_slugs(dest.read_text(encoding="utf-8")):
            problems.append(f"{_rel(page)}: link to {target}: no heading #{anchor} in {_rel(dest)}")
    return problems


def test_relative_links_resolve():
    assert [p for page in doc_pages() for p in link_problems(page)] == []


def test_link_check_catches_broken_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Here\n\n[ok](#here), [gone](missing.md), ![figure](nope.png), [bad anchor](#nowhere), "
                    "[web](https://example.org/x), `[not a link](in-code.md)`\n")
    problems = link_problems(page)
    assert len(problems) == 3
    assert "missing.md" in problems[0] and "nope.png" in problems[1] and "#nowhere" in problems[2]


@pytest.mark.parametrize("heading, slug", [
    ("## DeepSER, stages 1-2 (`train@MODEL`)", "deepser-stages-1-2-trainmodel"),
    ("## The switch: `ensemble.include_probes`", "the-switch-ensembleinclude_probes"),
    ("## Proven before a GPU-day: `make paper-dry-run`", "proven-before-a-gpu-day-make-paper-dry-run"),
])
def test_heading_slugs_follow_github(heading, slug):
    assert slug in heading_slugs(heading)
