"""benchmarks/scale.py at tiny sizes: every step timed at every size, its own report section written (the others
kept), the temporary folder removed, and the arithmetic behind the disk and GPU figures right on known cases."""
import importlib
import json
import re

import numpy as np
import pandas as pd
import pytest

BENCHMARK = "scale"  # the `bench` fixture (conftest) loads benchmarks/scale.py
SIZES = (300, 600)


def numbers(row: str) -> list[float]:
    """The numbers of a table row after its first cell ("1,234", "0.52", "1.07x", "1.64x **> 1.5x**")."""
    return [float(c.split()[0].replace(",", "").rstrip("x")) for c in row.split("|")[2:-1]]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny run, shared by the tests below (it takes ~20 s on 2 cores)."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("benchmark_scale_run", root / "benchmarks" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    tmp = tmp_path_factory.mktemp("scale")
    report = tmp / "benchmarks.md"
    (tmp / "benchmarks").mkdir()  # the report's documents: its own stale section, and another one that is kept
    for name, title, text in (("other", "Other", "kept"),
                              ("scale", "Scale simulation (MSP-Podcast size, no neural work)", "stale")):
        (tmp / "benchmarks" / f"{name}.json").write_text(json.dumps({"title": title, "blocks": [{"text": text}]}))
    work = tmp / "work"
    res = module.main(["--sizes", *map(str, SIZES), "--full-dim-utterances", "32", "--out", str(report),
                       "--tmp-dir", str(work)])
    yield module, res, report.read_text(encoding="utf-8"), work
    sys.modules.pop(spec.name, None)


def test_every_step_has_a_positive_row_per_size(run):
    _, res, _, work = run
    steps = importlib.import_module("scale_steps")
    assert sorted((r.step, r.n) for r in res.rows) == sorted((s, n) for s in steps.STEPS for n in SIZES)
    for r in res.rows:
        assert r.wall_s > 0 and r.peak_mb >= 0 and r.hwm_mb > 0 and r.anon_mb > 0 and 0 < r.rows <= r.n
    assert list(work.iterdir()) == []  # the temporary folder is gone
    for size in res.sizes:  # the manifest the steps ran on: every split, every store frame counted
        assert {"train", "dev", "test", "blind"} <= set(size.splits) and sum(size.splits.values()) == size.n
        assert size.store_frames["wavlm"] == size.store_frames["hubert"] > size.store_frames["roberta"] > 0
        trained = sum(b for b, _ in size.epoch_shapes)  # one pass over the train rows with a target, batch 16
        assert 0.9 * size.splits["train"] < trained <= size.splits["train"]
        assert all(b <= 16 for b, _ in size.epoch_shapes)


def test_the_section_replaces_the_stale_one_and_has_every_step_per_size(run):
    bench, res, text, _ = run
    steps = importlib.import_module("scale_steps")
    assert "## Other\n\nkept" in text and text.count(bench.REPORT_SECTION) == 1 and "stale" not in text
    section = text[text.index(bench.REPORT_SECTION):]
    assert "--sizes 300 600" in section and "check_audio=True" in section and "dim 16 instead of 1024" in section
    for step in steps.STEPS:
        rows = re.findall(rf"^\| {re.escape(step)} \|.*\|$", section, re.M)
        assert len(rows) == 2, step  # the time / memory table and the per-1k-utterance table
        times = numbers(rows[0])
        assert len(times) == 2 * len(SIZES) and all(t > 0 for t in times[::2]) and all(m >= 0 for m in times[1::2])
        per_k = numbers(rows[1])
        assert len(per_k) == 1 + len(SIZES) + 1 and all(v > 0 for v in per_k)  # rows, s per 1k, growth
    assert "target of 8 GB" in section and "**estimate**" in section


def test_disk_arithmetic(run):
    bench, res, text, _ = run
    corpus = importlib.import_module("scale_corpus")
    assert corpus.store_bytes(300, 1024) == 614_400 and corpus.store_bytes(1_000, 1280) == 2_560_000
    np.testing.assert_array_equal(corpus.audio_frames(np.array([6.0, 2.01, 11.999])), [300, 100, 599])
    np.testing.assert_array_equal(corpus.text_tokens(pd.Series(["one two three", "a b c d e f g h i j", None])),
                                  [6, 15, 2])  # round(1.3 words) + 2 special tokens
    section = text[text.index(bench.REPORT_SECTION):]
    large = res.sizes[-1]
    for key, (_, dim, kind) in corpus.FULL_DIMS.items():
        frames = large.store_frames["wavlm" if kind == "audio" else "roberta"]
        row = re.search(rf"^\| {key} \(.*\|$", section, re.M).group(0)
        assert row.rstrip(" |").endswith(f"{frames * dim * 2 / 1e9:,.2f}"), row


def test_deepser_flops_on_a_hand_computed_case(bench):
    epoch = importlib.import_module("scale_epoch")  # on sys.path once `bench` has loaded benchmarks/scale.py
    # hidden 2, 2 layers, FFN 4x, one 3-d modality of 1 frame, batch 1, 11 outputs: unimodal ENC 228, fusion 1
    # (1 frame) 224, fusion 2 (2 frames) 480, fuse + heads 60 FLOPs
    assert epoch.deepser_forward_flops(1, [1], [3], hidden=2, layers=2, ff_mult=4, n_outputs=11) == 992
    # attention grows with the square of the frames, the rest linearly
    one, two = (epoch.deepser_forward_flops(16, [t, t, 20], [1024] * 3, 1024, 2, 4, 11) for t in (300, 600))
    assert 2 < two / one < 4
