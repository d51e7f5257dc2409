"""benchmarks/report.py, the one Markdown writer of the benchmarks: the committed sections render to the committed
report byte for byte, and publishing one section re-renders the report with every other section kept, in order."""
import json

import pytest

BENCHMARK = "report"  # the `bench` fixture (conftest) loads benchmarks/report.py


def test_the_committed_documents_render_to_the_committed_report(bench, repo_root):
    """reports/benchmarks.md is what reports/benchmarks/*.json render to: no section is written by hand, and the
    renderer changes no byte of what was reviewed (run `python benchmarks/report.py` after editing a document)."""
    report = repo_root / "reports" / "benchmarks.md"
    folder = bench.sections_dir(report)
    rendered = bench.render(bench.load(p) for p in bench.ordered(folder))
    assert rendered == report.read_text(encoding="utf-8")
    assert [p.stem for p in bench.ordered(folder)] == [n for n in bench.ORDER if (folder / f"{n}.json").exists()]
    assert bench.main(["--check", "--out", str(report)]) == 0


def test_each_committed_document_is_stored_as_save_writes_it(bench, repo_root):
    """A benchmark's rerun rewrites its document with `save`: the committed files are in that form already, so a
    rerun's diff shows the rows that changed, not a reformatting."""
    for path in bench.ordered(repo_root / "reports" / "benchmarks"):
        assert bench.dumps(bench.load(path)) + "\n" == path.read_text(encoding="utf-8"), path.name


def test_blocks_render_as_markdown(bench):
    section = bench.doc("Title", [
        bench.text("A paragraph."),
        None,  # a block a run did not need
        bench.bullets(["one", "two"]),
        bench.table(["name", "value", "note"], "lrl", [["a", 1.5, ""], ["b", 10, "x"]]),
        bench.bullets(["right under the table"], gap=0),
        bench.heading("Sub"),
        bench.figure("a plot", "benchmark_figures/x.png", gap=2)])
    assert bench.render_section(section) == (
        "## Title\n\nA paragraph.\n\n- one\n- two\n\n"
        "| name | value | note |\n|---|---:|---|\n| a | 1.5 | |\n| b | 10 | x |\n"
        "- right under the table\n\n### Sub\n\n\n![a plot](benchmark_figures/x.png)\n")
    assert bench.render([section, bench.doc("Next", [])]) == (
        "# Benchmarks\n\n" + bench.render_section(section) + "\n## Next\n")
    with pytest.raises(ValueError):
        bench.table(["a", "b"], "l", [])
    with pytest.raises(ValueError):
        bench.render_block({"quote": "?"})


def test_publish_replaces_its_own_section_and_keeps_the_others_in_order(bench, tmp_path):
    report = tmp_path / "benchmarks.md"
    bench.publish(bench.doc("Stage 3 on small dev sets", [bench.text("old")]), "stacking", report)
    bench.publish(bench.doc("Unplaced", [bench.text("after the known ones")]), "zzz_new", report)
    bench.publish(bench.doc("Feature extraction", [bench.text("first")]), "extract", report)
    bench.publish(bench.doc("Stage 3 on small dev sets", [bench.text("new")]), "stacking", report)
    assert report.read_text(encoding="utf-8") == (
        "# Benchmarks\n\n## Feature extraction\n\nfirst\n\n## Stage 3 on small dev sets\n\nnew\n\n"
        "## Unplaced\n\nafter the known ones\n")
    stored = json.loads((tmp_path / "benchmarks" / "stacking.json").read_text(encoding="utf-8"))
    assert stored == {"title": "Stage 3 on small dev sets", "blocks": [{"text": "new"}]}


def test_check_reports_a_stale_report(bench, tmp_path, capsys):
    report = tmp_path / "benchmarks.md"
    bench.publish(bench.doc("Feature extraction", [bench.text("x")]), "extract", report)
    assert bench.main(["--check", "--out", str(report)]) == 0
    report.write_text(report.read_text(encoding="utf-8") + "edited by hand\n", encoding="utf-8")
    assert bench.main(["--check", "--out", str(report)]) == 1 and "python benchmarks/report.py" in capsys.readouterr().out
    assert bench.main(["--out", str(report)]) == 0 and "edited by hand" not in report.read_text(encoding="utf-8")
