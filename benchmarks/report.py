"""The one Markdown writer of the benchmarks: reports/benchmarks.md is rendered from reports/benchmarks/*.json.

Each benchmark builds its section as data (a "document": JSON) from its measurements and hands it to `publish`;
only this module knows Markdown. So a section's numbers live in one reviewable JSON file per section, a change of
layout is one edit here, and `python benchmarks/report.py` re-renders the report without re-running anything.

A document:

    {"title": "Feature extraction",                     -> "## Feature extraction"
     "blocks": [                                        in order, one blank line between blocks
        {"text": "Command: `python ...`"},              a paragraph (one line as written)
        {"bullets": ["Device: ...", "Size: ..."]},      "- " lines
        {"table": {"columns": ["encoder", "rate"],      a pipe table; align: one "l" or "r" per column
                   "align": "lr", "rows": [["wavlm", "3.6"]]}},
        {"heading": "ASR"},                             "### ASR"
        {"figure": {"alt": "...", "path": "benchmark_figures/x.png"}}]}

A block may carry "gap": the blank lines before it (default 1; 0 glues it to the block above, as some committed
sections have a list right under a table). Cells are text as the benchmark formatted them: the renderer never
rounds, so a committed section renders to the very bytes it was reviewed as.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "reports" / "benchmarks.md"
HEADER = "# Benchmarks\n"

# The sections' order in the report (file stems under reports/benchmarks/); any other section follows, by name,
# so a new benchmark shows up before anyone places it.
ORDER = ("extract", "train", "batch_invariance", "learning", "learning_few_frames_seeds", "learning_small_corpus",
         "learning_width_dropout", "learning_one_annotator_preset", "predict", "long_files", "gpu", "scale",
         "stacking")

Doc = dict[str, Any]


# ------------------------------------------------------------------------------------------ building a document


def doc(title: str, blocks: Iterable[dict | None]) -> Doc:
    """A section document; None blocks (a paragraph a run did not need) are dropped."""
    return {"title": title, "blocks": [b for b in blocks if b is not None]}


def text(line: str, gap: int = 1) -> dict:
    return _gap({"text": line}, gap)


def bullets(items: Iterable[str], gap: int = 1) -> dict:
    return _gap({"bullets": list(items)}, gap)


def table(columns: Iterable[str], align: str, rows: Iterable[Iterable[Any]], gap: int = 1) -> dict:
    columns = list(columns)
    if len(align) != len(columns) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r} does not fit the {len(columns)} columns")
    return _gap({"table": {"columns": columns, "align": align, "rows": [[str(c) for c in r] for r in rows]}}, gap)


def heading(title: str, gap: int = 1) -> dict:
    return _gap({"heading": title}, gap)


def figure(alt: str, path: str, gap: int = 1) -> dict:
    return _gap({"figure": {"alt": alt, "path": path}}, gap)


def _gap(block: dict, gap: int) -> dict:
    if gap != 1:
        block["gap"] = gap
    return block


# ----------------------------------------------------------------------------------------------------- rendering


def _row(cells: Iterable[str]) -> str:
    # an empty cell is "| |", as the hand-written tables have it, not "|  |"
    return "|" + "|".join(f" {c} " if c != "" else " " for c in cells) + "|"


def render_block(block: dict) -> str:
    if "text" in block:
        return block["text"]
    if "bullets" in block:
        return "\n".join(f"- {item}" for item in block["bullets"])
    if "heading" in block:
        return f"### {block['heading']}"
    if "figure" in block:
        return f"![{block['figure']['alt']}]({block['figure']['path']})"
    if "table" in block:
        t = block["table"]
        rule = "|" + "|".join("---:" if a == "r" else "---" for a in t["align"]) + "|"
        return "\n".join([_row(t["columns"]), rule, *(_row(r) for r in t["rows"])])
    raise ValueError(f"unknown block {sorted(block)}")


def render_section(section: Doc) -> str:
    """The section's Markdown, from its "## " heading to its last line (with its newline)."""
    out = f"## {section['title']}\n"
    for block in section["blocks"]:
        out += "\n" * block.get("gap", 1) + render_block(block) + "\n"
    return out


def render(sections: Iterable[Doc]) -> str:
    return HEADER + "".join("\n" + render_section(s) for s in sections)


# -------------------------------------------------------------------------------------------------- the files


def sections_dir(report: Path) -> Path:
    """Where the documents of `report` live: reports/benchmarks.md -> reports/benchmarks/ (any --out alike)."""
    return report.with_suffix("")


def ordered(folder: Path) -> list[Path]:
    files = {p.stem: p for p in folder.glob("*.json")}
    known = [files.pop(name) for name in ORDER if name in files]
    return known + [files[name] for name in sorted(files)]


def load(path: Path) -> Doc:
    return json.loads(path.read_text(encoding="utf-8"))


def dumps(obj: Any, indent: str = "", key: str = "") -> str:
    """JSON with a table row or a column list on one line and a bullet or a block on its own lines, so that a
    diff of a re-run shows the rows and lines that changed."""
    inner = indent + " "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner, k)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}" if items else "{}"
    if isinstance(obj, list):
        if key != "bullets" and all(not isinstance(x, (dict, list)) for x in obj):
            return json.dumps(obj, ensure_ascii=False)
        items = [inner + dumps(x, inner) for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]" if items else "[]"
    return json.dumps(obj, ensure_ascii=False)


def save(section: Doc, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(section) + "\n", encoding="utf-8")


def rebuild(report: Path = REPORT) -> str:
    """Render every document of `report`'s folder into `report`; returns the text."""
    out = render(load(p) for p in ordered(sections_dir(report)))
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(out, encoding="utf-8")
    return out


def publish(section: Doc, name: str, report: Path = REPORT) -> Path:
    """Store a benchmark's section as <report folder>/<name>.json and re-render `report`; the other sections are
    the other documents of the folder, untouched."""
    path = sections_dir(report) / f"{name}.json"
    save(section, path)
    rebuild(report)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render reports/benchmarks.md from reports/benchmarks/*.json.")
    parser.add_argument("--out", type=Path, default=REPORT, help="the report; its documents are in --out without "
                        "its suffix (default reports/benchmarks.md from reports/benchmarks/)")
    parser.add_argument("--check", action="store_true", help="do not write: exit 1 if the report is out of date")
    args = parser.parse_args(argv)
    if args.check:
        wanted = render(load(p) for p in ordered(sections_dir(args.out)))
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if wanted != current:
            print(f"{args.out} is not what {sections_dir(args.out)}/*.json render: run python benchmarks/report.py")
            return 1
        return 0
    rebuild(args.out)
    print(f"wrote {args.out} from {len(ordered(sections_dir(args.out)))} section(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
