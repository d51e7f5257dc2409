"""benchmarks/train.py on a tiny configuration: both ways train, and only its own report section is rewritten."""
import json

import pytest

BENCHMARK = "train"  # the `bench` fixture (conftest) loads benchmarks/train.py


TINY = ["--device", "cpu", "--size", "small", "--hidden", "16", "--heads", "2", "--utterances", "6",
        "--batch-size", "3", "--steps", "2", "--fps", "5", "--threads", "1", "--mixes", "wavlm,roberta"]


def test_tiny_run_times_both_ways_and_keeps_the_other_sections(bench, tmp_path):
    report = tmp_path / "benchmarks.md"
    sections = tmp_path / "benchmarks"  # the report's documents: benchmarks/report.py renders them into report
    sections.mkdir()
    for name, title, text in (("extract", "Feature extraction", "keep this table"),
                              ("train", "DeepSER training", "stale figures"), ("later", "Later", "and this one")):
        (sections / f"{name}.json").write_text(json.dumps({"title": title, "blocks": [{"text": text}]}))

    rows = bench.main([*TINY, "--out", str(report)])

    assert [r.method for r in rows] == ["ours", "authors'"]
    assert all(r.samples_per_s > 0 and r.wall_s > 0 for r in rows)
    ours, authors = rows
    assert authors.speed_up == pytest.approx(1.0)
    assert ours.speed_up == pytest.approx(ours.samples_per_s / authors.samples_per_s)
    assert all(0 < r.real_frames <= r.padded_frames for r in rows)

    text = report.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n\n## Feature extraction\n\nkeep this table\n\n## DeepSER training\n")
    assert text.count("## DeepSER training") == 1 and "stale figures" not in text
    assert text.rstrip().endswith("## Later\n\nand this one")
    section = text.split("## DeepSER training", 1)[1].split("## Later", 1)[0]
    assert "| wavlm+roberta | ours |" in section and "| wavlm+roberta | authors' |" in section
    assert "benchmarks/train.py --size full --device cuda" in section  # the CPU note
    assert json.loads((sections / "train.json").read_text())["title"] == "DeepSER training"


def test_ways_are_named_once_each(bench):
    assert bench.parse_args([]).ways == ("ours", "authors")
    assert bench.parse_args(["--ways", "ours,ours-fp32,authors"]).ways == ("ours", "ours-fp32", "authors")
    for bad in ("ours,ours", "fp16", ""):
        with pytest.raises(SystemExit):
            bench.parse_args(["--ways", bad])
