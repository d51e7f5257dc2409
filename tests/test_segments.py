"""medusa.serving.segments: coverage weights of overlapping spans, and silero-vad segmentation of real (espeak-ng)
speech separated by noisy pauses."""
from __future__ import annotations

import itertools
import sys
import time

import numpy as np
import pytest
import torch

from medusa.data.audio import SAMPLE_RATE, to_mono_16k
from medusa.errors import UserError
from medusa.serving.predict import window_starts
from medusa.serving.segments import SegmentError, coverage_weights, fit_spans, load_vad, speech_spans, vad_segments

SR = SAMPLE_RATE


def brute_force_weights(spans):
    """The definition, sample by sample."""
    n = max(e for _, e in spans)
    count = np.zeros(n)
    for s, e in spans:
        count[s:e] += 1
    return np.array([np.sum(1 / count[s:e]) for s, e in spans])


# ------------------------------------------------------------------------------------------------ coverage_weights


def test_disjoint_spans_weigh_their_lengths():
    spans = [(0, 100), (250, 300), (300, 301)]          # a gap, then two touching spans
    np.testing.assert_allclose(coverage_weights(spans), [100, 50, 1])
    np.testing.assert_allclose(coverage_weights([(300, 301), (0, 100)]), [1, 100])  # in the order given


def test_fixed_windows_share_their_overlap():
    n, window = 25 * SR, 10 * SR
    starts = window_starts(n, window, window)
    assert starts == [0, 10 * SR, 15 * SR]               # the last window shifted back to end at the file's end
    weights = coverage_weights([(s, s + window) for s in starts])
    np.testing.assert_allclose(weights / SR, [10, 7.5, 7.5])
    # hop < window: every sample is in two or three windows, and still counts once
    spans = [(s, s + window) for s in window_starts(n, window, 3 * SR)]
    weights = coverage_weights(spans)
    assert weights.sum() == pytest.approx(n)
    np.testing.assert_allclose(weights, brute_force_weights(spans))


def test_nested_and_identical_spans():
    np.testing.assert_allclose(coverage_weights([(0, 100), (0, 100)]), [50, 50])
    np.testing.assert_allclose(coverage_weights([(0, 100), (20, 60)]), [60 + 20, 20])
    np.testing.assert_allclose(coverage_weights([(0, 10)]), [10])


def test_weights_match_the_per_sample_definition():
    rng = np.random.default_rng(7)
    for _ in range(300):
        starts = rng.integers(0, 40, size=rng.integers(1, 7))
        spans = [(int(s), int(s + rng.integers(1, 20))) for s in starts]
        weights = coverage_weights(spans)
        np.testing.assert_allclose(weights, brute_force_weights(spans), err_msg=str(spans))
        assert weights.sum() == pytest.approx(len(set().union(*(range(s, e) for s, e in spans))))


def test_weights_of_hours_of_windows_are_computed_on_edges():
    n, window = 10 * 3600 * SR + 12345, 30 * SR          # ten hours: 5.8e8 samples, 1200 windows
    spans = [(s, s + window) for s in window_starts(n, window, window)]
    t = time.perf_counter()
    weights = coverage_weights(spans)
    assert time.perf_counter() - t < 0.5
    assert weights.sum() == pytest.approx(n, abs=1e-3)
    assert weights[0] == window and weights[-1] == pytest.approx((window + 12345) / 2)


@pytest.mark.parametrize("spans", [[], [(5, 5)], [(5, 3)], [(-1, 3)], [(0, 10), (7, 7)]])
def test_bad_spans_are_refused(spans):
    with pytest.raises(ValueError, match="span"):
        coverage_weights(spans)


# ------------------------------------------------------------------------------------------------ fit_spans


def s(seconds: float) -> int:
    return round(seconds * SR)


def test_neighbours_merge_across_short_gaps_while_they_fit():
    spans = [(s(1), s(3)), (s(3.4), s(5)), (s(6), s(8))]         # gaps 0.4 s and 1.0 s
    assert fit_spans(spans, s(10), min_s=1, max_s=11) == [(s(1), s(5)), (s(6), s(8))]
    # the same gaps with merge_gap_s=1.0: all one span
    assert fit_spans(spans, s(10), min_s=1, max_s=11, merge_gap_s=1.0) == [(s(1), s(8))]
    # merging stops where the joined span would pass max_s: 1-5 s fits in 4.5 s, then 1-8 s would not
    assert fit_spans(spans, s(10), min_s=1, max_s=4.5, merge_gap_s=1.0) == [(s(1), s(5)), (s(6), s(8))]
    # greedy, left to right: three 2 s spans 0.2 s apart with max 4.2 s -> the first two join, the third stays
    spans = [(s(0), s(2)), (s(2.2), s(4.2)), (s(4.4), s(6.4))]
    assert fit_spans(spans, s(7), min_s=1, max_s=4.2) == [(s(0), s(4.2)), (s(4.4), s(6.4))]


def test_long_spans_split_into_the_fewest_equal_parts():
    parts = fit_spans([(s(2), s(27))], s(30), min_s=2.75, max_s=11)    # 25 s -> 3 parts of 8.33 s
    assert len(parts) == 3
    assert parts[0][0] == s(2) and parts[-1][1] == s(27)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))          # contiguous
    lengths = [e - b for b, e in parts]
    assert max(lengths) - min(lengths) <= 1 and max(lengths) <= s(11)
    # exactly max_s is one part; one sample more is two
    assert fit_spans([(0, s(11))], s(20), min_s=1, max_s=11) == [(0, s(11))]
    assert fit_spans([(0, s(11) + 1)], s(20), min_s=1, max_s=11) == [(0, 88000), (88000, s(11) + 1)]
    # odd lengths: parts differ by one sample at most, none over max
    for length in range(1, 200):
        parts = fit_spans([(3, 3 + length)], 500, min_s=0, max_s=7 / SR)
        assert len(parts) == -(-length // 7)
        assert all(0 < e - b <= 7 for b, e in parts) and parts[0][0] == 3 and parts[-1][1] == 3 + length


def test_short_spans_are_kept_and_spans_stay_in_bounds():
    spans = [(s(9), s(9.5)), (-s(1), s(0.2)), (s(4), s(6)), (s(5), s(7)), (s(7.9), s(12)), (s(2), s(2))]
    # unsorted, one starting before 0, one ending after the clip, an overlapping pair, an empty one
    out = fit_spans(spans, s(10), min_s=1, max_s=11, merge_gap_s=0.5)
    assert out == [(0, s(0.2)), (s(4), s(7)), (s(7.9), s(10))]
    # isolated and short: kept as it is
    assert fit_spans([(s(1), s(1.3)), (s(5), s(8))], s(10), min_s=1, max_s=11) == [(s(1), s(1.3)), (s(5), s(8))]
    assert fit_spans([], s(10), min_s=1, max_s=11) == []


def test_fitted_spans_cover_the_speech_sorted_and_within_range():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 400))
        spans = [(int(a), int(a + rng.integers(1, 80))) for a in rng.integers(-20, n + 10, rng.integers(0, 8))]
        out = fit_spans(spans, n, min_s=0, max_s=50 / SR, merge_gap_s=5 / SR)
        assert all(0 <= b < e <= n and e - b <= 50 for b, e in out)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(out))
        covered = set().union(*(range(b, e) for b, e in out))
        assert set().union(*(range(max(a, 0), min(b, n)) for a, b in spans)) <= covered


@pytest.mark.parametrize("kw", [{"min_s": 5, "max_s": 4}, {"min_s": -1, "max_s": 4}, {"min_s": 1, "max_s": 0},
                                {"min_s": 1, "max_s": float("nan")}, {"min_s": 1, "max_s": "11"},
                                {"min_s": 1, "max_s": 11, "merge_gap_s": -0.1}])
def test_bad_settings_are_user_errors(kw):
    with pytest.raises(SegmentError) as e:
        fit_spans([(0, 10)], 10, **kw)
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ silero-vad

# Sentences without commas, so that espeak-ng makes no pause inside them.
SENTENCES = ["Please open the window and close the door.",
             "My sister bought three green apples at the market.",
             "The train to the city leaves at seven in the morning."]
PAUSES_S = [1.5, 2.0, 1.75, 1.5]             # before, between and after the utterances
NOISE_DBFS = -60.0
SPEECH_LEVEL = 0.01                          # |x| above this is speech, for the true boundaries
TOLERANCE_S = 0.3


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    from medusa.data.corpora.espeak import ESPEAK_RATE_HZ, SynthRequest, synthesize_batch

    audio = synthesize_batch([SynthRequest(t, "en+m3", 160, 100, 50, 50, 0) for t in SENTENCES])
    # int16 at 22.05 kHz -> the models' 16 kHz float32, by the repo's one conversion
    return [to_mono_16k(a.astype(np.float32)[:, None] / 32768, ESPEAK_RATE_HZ) for a in audio]


@pytest.fixture(scope="module")
def model():
    return load_vad()


def with_pauses(clips, pauses_s, seed=0):
    """The clips joined with pauses, gaussian noise at NOISE_DBFS over all of it, and each clip's true speech
    boundaries in the result (samples)."""
    parts, truth, at = [], [], 0
    for i, pause in enumerate(pauses_s):
        parts.append(np.zeros(s(pause), np.float32))
        at += s(pause)
        if i < len(clips):
            loud = np.flatnonzero(np.abs(clips[i]) > SPEECH_LEVEL)
            truth.append((at + loud[0], at + loud[-1] + 1))
            parts.append(clips[i])
            at += len(clips[i])
    x = np.concatenate(parts)
    noise = np.random.default_rng(seed).normal(0, 10 ** (NOISE_DBFS / 20), len(x))
    return (x + noise).astype(np.float32), truth


def test_one_segment_per_utterance(clips, model):
    x, truth = with_pauses(clips, PAUSES_S)
    t = time.perf_counter()
    found = vad_segments(x, model, min_s=1.0, max_s=11.0)
    took = time.perf_counter() - t
    print(f"\nclips (s): {[round(len(c) / SR, 2) for c in clips]}, speech (s): "
          f"{[round(float(e - b) / SR, 2) for b, e in truth]}; file {len(x) / SR:.1f} s")
    print(f"true {[(float(b) / SR, float(e) / SR) for b, e in truth]}\nfound {[(b / SR, e / SR) for b, e in found]}")
    print(f"VAD: {took:.2f} s for {len(x) / SR:.1f} s: {took / (len(x) / SR / 60):.2f} s per minute of audio")
    assert len(found) == len(truth)
    for (b, e), (tb, te) in zip(found, truth):
        assert abs(b - tb) <= s(TOLERANCE_S) and abs(e - te) <= s(TOLERANCE_S), ((b, e), (tb, te))
    assert found == speech_spans(x, model, min_silence_s=0.3)   # already in range: fit_spans changed nothing


def test_long_speech_is_split_into_equal_parts(clips, model):
    x, truth = with_pauses(clips, PAUSES_S)
    whole = vad_segments(x, model, min_s=1.0, max_s=11.0)
    max_s = 0.6 * min((e - b) / SR for b, e in whole)      # every utterance is too long now
    parts = vad_segments(x, model, min_s=0.5, max_s=max_s)
    for b, e in whole:
        mine = [p for p in parts if b <= p[0] < e]
        assert len(mine) == -(-(e - b) // int(max_s * SR)) >= 2
        assert mine[0][0] == b and mine[-1][1] == e and all(p[1] == q[0] for p, q in itertools.pairwise(mine))
        assert all(q - p <= max_s * SR for p, q in mine)
    # two utterances back to back (only espeak's own trailing silence, under merge_gap_s, between them): one
    # stretch of speech, split in two equal parts once it is longer than max_s
    x, truth = with_pauses([np.concatenate(clips[:2])], [1.5, 1.5])
    speech = (truth[0][1] - truth[0][0]) / SR
    joined = vad_segments(x, model, min_s=1.0, max_s=11.0)
    assert len(joined) == 1
    halves = vad_segments(x, model, min_s=1.0, max_s=0.75 * speech)
    assert len(halves) == 2 and halves[0][1] == halves[1][0]
    assert (halves[0][0], halves[1][1]) == joined[0]
    assert abs((halves[0][1] - halves[0][0]) - (halves[1][1] - halves[1][0])) <= 1


def test_spans_depend_on_the_samples_alone(clips, model):
    a, _ = with_pauses(clips, PAUSES_S, seed=1)
    b, _ = with_pauses(clips[::-1], [0.3, 0.5, 0.4, 0.2], seed=2)
    first = speech_spans(a, model)
    assert speech_spans(a, model) == first
    other = speech_spans(b, model)                  # another file in between, ending mid-speech
    model(torch.from_numpy(b[:512].copy()), SR)     # and the model's state left dirty by a direct call
    assert speech_spans(a, model) == first
    assert speech_spans(a, load_vad()) == first     # a fresh model agrees
    assert other != first


def test_thread_count_is_left_as_found(clips, model):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        load_vad()                                 # importing silero_vad sets 1 for the process
        assert torch.get_num_threads() == 2
        speech_spans(clips[0], model)              # runs on one thread, puts 2 back
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_vad_settings_are_checked(clips, model):
    for kw in ({"threshold": 0}, {"threshold": 1.5}, {"min_silence_s": -1}, {"pad_s": float("inf")}):
        with pytest.raises(SegmentError):
            speech_spans(clips[0], model, **kw)
    with pytest.raises(SegmentError, match="min_s"):
        vad_segments(clips[0], None, min_s=3, max_s=2)   # before the model runs
    with pytest.raises(ValueError, match="1-D"):
        speech_spans(np.zeros((2, 1000), np.float32), model)
    assert speech_spans(np.zeros(0, np.float32), model) == []
    assert vad_segments(np.zeros(s(2), np.float32), model, min_s=1, max_s=11) == []   # silence: no speech


def test_missing_silero_is_a_one_line_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "silero_vad", None)   # what Python does for a package that is not installed
    with pytest.raises(SegmentError, match="pip install silero-vad") as e:
        load_vad()
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
