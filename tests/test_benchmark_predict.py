"""benchmarks/predict.py on a tiny eGeMAPS-only bundle (no hub, no ASR) and four short wav files."""
import json
import re

import soundfile as sf
from test_predict import SR, bundle_path, voice  # noqa: F401  (bundle_path: the module-scoped bundle fixture)

BENCHMARK = "predict"


def test_the_section_has_both_ways_positive_numbers_and_equal_classes(bench, bundle_path, tmp_path):  # noqa: F811
    audio = tmp_path / "audio"
    audio.mkdir()
    for i, seconds in enumerate([2.0, 3.1, 1.5, 2.5]):
        sf.write(audio / f"c{i}.wav", voice(seconds, seed=i), SR, subtype="PCM_16")
    report = tmp_path / "benchmarks.md"
    (tmp_path / "benchmarks").mkdir()  # the report's documents: another benchmark's section is kept
    (tmp_path / "benchmarks" / "other.json").write_text(json.dumps({"title": "Other", "blocks": [{"text": "kept"}]}))

    res = bench.main(["--bundle", str(bundle_path), "--audio", str(audio), "--files", "4", "--device", "cpu",
                      "--report", str(report), "--cache-dir", str(tmp_path / "cache"), "--submission-files", "6",
                      "--corrupt-files", "3"])

    assert res.same_classes and res.errors == 0 and res.max_abs_diff < 1e-4
    assert len(res.files) == 4 and abs(res.audio_s - 9.1) < 1e-6 and res.load_s > 0
    assert [r.way for r in res.rows] == ["first call", "batched", "one file per call", "predict_array per clip"]
    assert [r.files for r in res.rows] == [2, 4, 4, 4] and [r.calls for r in res.rows] == [1, 1, 4, 4]
    assert [r.batch_size for r in res.rows] == [64, 64, 1, 1]
    for row in res.rows:
        assert row.wall_s > 0 and row.files_per_s > 0 and row.rtf > 0 and row.peak_mb >= 0
    assert res.builds == {"egemaps": 1}  # the one encoder, built once over every call
    clean, corrupt = res.submission["clean"], res.submission["corrupt"]
    assert (clean["exit"], clean["rows"], corrupt["exit"], corrupt["written"]) == (0, 6, 1, False)
    assert clean["peak_mb"] > 0 and corrupt["names_it"] and corrupt["counted"]

    text = report.read_text(encoding="utf-8")
    assert "## Other\n\nkept" in text and text.count(bench.REPORT_SECTION) == 1
    assert text.index(bench.REPORT_SECTION) < text.index("## Other")  # a known section before an unplaced one
    section = text[text.index(bench.REPORT_SECTION):]
    assert "e_deep" in section and "e_late" in section and "the same predicted class for every file" in section
    assert "`medusa submission` on 6 blind files" in section and "the refusal names it" in section
    for way in ("batched", "one file per call", "predict_array per clip"):
        cells = re.search(rf"^\| {way} \|(.*)\|$", section, re.M).group(1).split("|")
        numbers = [float(c) for c in cells]
        assert numbers[3] > 0 and all(n > 0 for n in numbers[4:7])  # audio s, wall s, files/s, RTF
