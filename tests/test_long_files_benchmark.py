"""benchmarks/long_files.py: how clips are grouped and laid into joined files, how pieces' probabilities become a
clip's, and a whole run on a tiny eGeMAPS-only bundle (no hub, no ASR) over a dozen synthetic clips."""
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from test_bundle import EGEMAPS, EGEMAPS_STORE, make_meta, write_member
from test_predict import SR, voice

from medusa.serving.bundle import save_bundle
from medusa.serving.predict import rms_dbfs

BENCHMARK = "long_files"


def test_plan_files_keeps_clips_in_order_and_files_within_length(bench):
    # 20 s clips in 60 s files: two fit (41-44 s with silences, at most 46 s), a third never does (>= 61.5 s);
    # the 100 s clip, longer than a file, gets one of its own
    durations = [20.0, 20.0, 20.0, 100.0, 20.0, 20.0, 20.0]
    plans = bench.plan_files(durations, 60.0, np.random.default_rng(0))
    assert [p.clips for p in plans] == [[0, 1], [2], [3], [4, 5], [6]]
    for plan in plans:
        assert all(0.5 <= g <= 2.0 for g in [*plan.gaps_s, plan.tail_s]) and len(plan.gaps_s) == len(plan.clips)
        length = sum(plan.gaps_s) + sum(durations[i] for i in plan.clips) + plan.tail_s
        assert length <= 60.0 or len(plan.clips) == 1
    again = bench.plan_files(durations, 60.0, np.random.default_rng(0))
    assert [(p.gaps_s, p.tail_s) for p in again] == [(p.gaps_s, p.tail_s) for p in plans]  # seeded


def test_assemble_lays_clips_after_their_silences_over_quiet_noise(bench):
    clips = [np.full(SR, 0.5, np.float32), np.full(SR // 2, -0.25, np.float32)]
    audio, spans = bench.assemble(clips, [1.0, 0.5], 2.0, np.random.default_rng(1))
    assert audio.dtype == np.float32 and len(audio) == SR * 5
    assert spans == [(SR, 2 * SR), (int(2.5 * SR), 3 * SR)]
    assert abs(audio[SR:2 * SR].mean() - 0.5) < 1e-3 and abs(audio[int(2.5 * SR):3 * SR].mean() + 0.25) < 1e-3
    silence = np.concatenate([audio[:SR], audio[2 * SR:int(2.5 * SR)], audio[3 * SR:]])
    assert abs(rms_dbfs(silence) - bench.NOISE_DBFS) < 0.5 and (silence != 0).all()
    # a clip at full scale stays there: noise pushing samples past it is clipped, so reading the file back does
    # not scale it all down
    loud, _ = bench.assemble([np.ones(SR, np.float32)], [0.5], 0.5, np.random.default_rng(2))
    assert np.abs(loud).max() == 1.0 and (loud[SR // 2:SR // 2 + SR] > 0.99).all()


def test_clip_probabilities_weigh_pieces_by_overlap_and_miss_uncovered_clips(bench):
    classes = ("A", "H")
    rows = pd.DataFrame([
        # a.wav, cut: its file row (the pieces' mean) is not a piece; a failed piece is left out
        {"file": "a.wav", "level": "file", "start_s": 0.0, "end_s": 10.0, "p_A": 0.5, "p_H": 0.5, "error": None},
        {"file": "a.wav", "level": "segment", "start_s": 0.0, "end_s": 4.0, "p_A": 1.0, "p_H": 0.0, "error": None},
        {"file": "a.wav", "level": "segment", "start_s": 4.0, "end_s": 6.0, "p_A": 0.0, "p_H": 1.0, "error": None},
        {"file": "a.wav", "level": "segment", "start_s": 6.0, "end_s": 8.0, "p_A": np.nan, "p_H": np.nan,
         "error": "bad"},
        # b.wav, not cut: its file row is the piece
        {"file": "b.wav", "level": "file", "start_s": 0.0, "end_s": 3.0, "p_A": 0.2, "p_H": 0.8, "error": None}])
    pieces = bench.scored_pieces(rows)
    assert len(pieces) == 3 and set(pieces["level"]) == {"file", "segment"}
    truth = pd.DataFrame({"file": ["a.wav", "a.wav", "a.wav", "b.wav", "c.wav"],
                          "start_s": [1.0, 3.0, 6.5, 1.0, 0.0], "end_s": [2.0, 5.0, 7.5, 2.0, 1.0]})
    probs, covered = bench.clip_probabilities(truth, pieces, classes)
    np.testing.assert_allclose(probs[:4], [[1.0, 0.0], [0.5, 0.5], [np.nan, np.nan], [0.2, 0.8]])
    np.testing.assert_allclose(covered, [1.0, 2.0, 0.0, 1.0, 0.0])
    # 3 s against [3, 5]: 1 s of the A piece, 1 s of the H one; a tie goes to the first class
    assert bench.predicted_classes(probs, classes) == ["A", "A", None, "H", None]


def test_missed_clips_count_as_wrong_in_one_f1_and_are_left_out_of_the_other(bench):
    labels = ["A", "A", "H", "H"]
    wrong, left_out = bench.balanced_f1(labels, ["A", None, "H", "H"], ("A", "H"), seed=0, bootstrap=50)
    assert left_out.value == 1.0 and left_out.n == 3 and wrong.n == 4 and wrong.value < 1.0
    diff, low, high = bench.paired_difference(labels, ["A", "A", "H", "H"], ["A", None, "H", "H"], ("A", "H"),
                                              seed=0, bootstrap=50)
    assert diff == pytest.approx(1.0 - wrong.value) and low <= diff <= high


def test_a_run_scores_every_clip_three_ways_and_writes_the_section(bench, tmp_path):
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "work").mkdir()
    labels = ["A", "H", "N", "S"] * 3
    durations = [2.0 + 0.25 * (i % 5) for i in range(len(labels))]
    rows = [{"utt_id": f"u{i}", "path": f"data/u{i}.wav", "duration_s": d, "split": "test", "label": lab,
             "speaker": i % 3} for i, (d, lab) in enumerate(zip(durations, labels))]
    rows += [{"utt_id": "x", "path": "data/x.wav", "duration_s": 2.0, "split": "test", "label": "X", "speaker": 0},
             {"utt_id": "t", "path": "data/t.wav", "duration_s": 2.0, "split": "train", "label": "A", "speaker": 0}]
    for i, row in enumerate(rows):
        sf.write(root / row["path"], voice(row["duration_s"], seed=i), SR, subtype="PCM_16")
    pd.DataFrame(rows).to_parquet(root / "work" / "manifest.parquet")
    models = tmp_path / "models"
    members = [write_member(models, "e_deep", {"egemaps": 25}, [20], {"egemaps": EGEMAPS_STORE}, seed=3)[0],
               write_member(models, "e_late", {"egemaps": 25}, [5], {"egemaps": EGEMAPS_STORE}, seed=4,
                            fusion="late")[0]]
    bundle = save_bundle(tmp_path / "bundle", make_meta(2, use_attributes=True), members, {"egemaps": EGEMAPS},
                         None, train_durations=durations)
    report = tmp_path / "reports" / "benchmarks.md"

    res = bench.main(["--bundle", str(bundle), "--manifest", str(root / "work" / "manifest.parquet"),
                      "--file-seconds", "14", "--report", str(report), "--out-dir", str(tmp_path / "joined"),
                      "--cache-dir", str(tmp_path / "cache")])

    truth = res.joined.truth
    assert res.n_split == 13 and res.n_available == 12 and len(truth) == 12
    assert sorted(truth["utt_id"]) == sorted(f"u{i}" for i in range(12))
    assert all(d <= 14.0 for d in res.joined.durations_s) and len(res.joined.files) == res.joined.planned >= 3
    for file, clips in truth.groupby("file"):  # the clips lie in their file, in order, apart, with their audio
        info = sf.info(file)
        assert info.samplerate == SR and info.subtype == "FLOAT"
        assert (clips["start_s"] >= 0.5 - 1e-9).all() and clips["end_s"].max() <= info.duration - 0.5 + 1e-9
        assert (clips["start_s"].to_numpy()[1:] - clips["end_s"].to_numpy()[:-1] >= 0.5 - 1e-4).all()
    assert res.default_window == pytest.approx(float(np.percentile(durations, 95)), abs=1e-3)

    fixed, default, vad = res.ways
    files_s = sum(res.joined.durations_s)
    # files under 30 s are scored whole by the fixed windows; the training-length windows (~3 s) cut them
    assert fixed.pieces == len(res.joined.files) and fixed.scored_s == pytest.approx(files_s, abs=1e-3)
    assert default.pieces > 3 * len(res.joined.files) and default.missed == 0 and fixed.missed == 0
    assert res.reference.pieces == 12 and res.reference.audio_s == pytest.approx(sum(durations), abs=0.01)
    for r in [*res.ways, res.reference]:
        assert r.wall_s > 0 and r.errors == 0 and len(r.predicted) == 12
        assert 0 <= r.f1_wrong.low <= r.f1_wrong.value <= r.f1_wrong.high <= 1
    assert res.best in [r.way for r in res.ways] and len(res.differences) == 2
    saved = pd.read_csv(tmp_path / "joined" / "truth.csv")
    assert list(saved["predicted_fixed"].fillna("")) == [p or "" for p in fixed.predicted]

    section = json.loads((tmp_path / "reports" / "benchmarks" / "long_files.json").read_text())
    assert section["title"] == bench.REPORT_SECTION[3:]
    text = report.read_text(encoding="utf-8")
    assert bench.REPORT_SECTION in text and "| VAD segments (the default) |" in text and "Best on this data:" in text
    assert "| fixed 30 s windows |" in text and "each clip on its own (reference)" in text
