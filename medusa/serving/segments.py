"""Spans of a long recording: how much each scored span counts in the file's average, and where the speech is.

    from medusa.serving.segments import coverage_weights, load_vad, vad_segments

    weights = coverage_weights(spans)                      # seconds of audio each span stands for (overlaps shared)
    file_probs = weights @ span_probs / weights.sum()      # normalising is the caller's job

    model = load_vad()                                     # silero-vad's torch.jit model, CPU
    spans = vad_segments(samples, model, min_s=2.75, max_s=11.0)   # [(start, end), ...] in samples, end exclusive

Spans are (start, end) pairs of sample indices at medusa.data.audio.SAMPLE_RATE (16 kHz), `end` exclusive, as in
`samples[start:end]`.

Voice activity comes from silero-vad (https://github.com/snakers4/silero-vad, MIT), a small recurrent model run on
32 ms chunks. Two things about the package the functions here work around:
- `import silero_vad` calls torch.set_num_threads(1) for the whole process (silero_vad/model.py), which would slow
  every CPU encoder that runs afterwards; load_vad restores the caller's thread count.
- The model runs once per 512 samples; with more than one intra-op thread each of those tiny calls pays for waking
  the thread pool. Measured on a busy 2-core machine: 0.6 s per minute of audio on one thread, 2.7-5.7 s on two
  (same spans). speech_spans therefore runs on one thread and puts the caller's count back when it returns.
"""
from __future__ import annotations

import itertools
import math
import numbers
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from medusa.data.audio import SAMPLE_RATE
from medusa.errors import UserError

Span = tuple[int, int]


class SegmentError(UserError, ValueError):
    """A segmentation setting out of range (a threshold, a duration), or silero-vad missing; the message names the
    value and what is allowed."""


# ------------------------------------------------------------------------------------------------ weights


def coverage_weights(spans: list[Span]) -> np.ndarray:
    """The number of samples each span stands for when every covered sample counts once: for span j,
    weight_j = sum over the samples t in [start_j, end_j) of 1 / (number of spans covering t).

    Spans may overlap (predict's last fixed window is shifted back to end at the file's end, over the one before;
    windows with hop < window overlap everywhere), so weighting spans by their lengths would count the shared
    seconds twice. The weights sum to the number of distinct samples covered (gaps between spans count for
    nothing); dividing by that sum, to get a weighted mean, is the caller's job. float64, in the order of `spans`.

    Computed on the sorted distinct span edges, O(n log n) in the number of spans whatever the lengths (a file can be
    hours, i.e. 1e8 samples). ValueError for no spans, a negative start or an empty or reversed span (end <= start):
    spans come from code, so that is a bug, not a user's mistake."""
    if len(spans) == 0:
        raise ValueError("coverage_weights needs at least one span")
    bounds = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    starts, ends = bounds[:, 0], bounds[:, 1]
    bad = np.flatnonzero((starts < 0) | (ends <= starts))
    if len(bad):
        raise ValueError(f"span {bad[0]} is {tuple(int(v) for v in bounds[bad[0]])}: a span is (start, end) with "
                         "0 <= start < end")
    edges = np.unique(bounds)                       # the elementary intervals are [edges[i], edges[i+1])
    first = np.searchsorted(edges, starts)           # index of each span's first elementary interval
    last = np.searchsorted(edges, ends)              # index one past its last
    # spans covering each elementary interval: +1 where a span starts, -1 where it ends, summed left to right
    delta = np.zeros(len(edges), dtype=np.int64)
    np.add.at(delta, first, 1)
    np.add.at(delta, last, -1)
    count = np.cumsum(delta)[:-1]
    lengths = np.diff(edges).astype(np.float64)
    share = np.divide(lengths, count, out=np.zeros_like(lengths), where=count > 0)  # a gap (count 0) is nobody's
    # a span's weight is the sum of its intervals' shares: a difference of prefix sums
    cum = np.concatenate([[0.0], np.cumsum(share)])
    return cum[last] - cum[first]


# ------------------------------------------------------------------------------------------------ voice activity


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to n inside the block and put back after (see the module docstring). The
    count is process-wide: torch work in another Python thread meanwhile runs on n threads too."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_vad():
    """silero-vad's voice activity model (the torch.jit one that ships in the silero-vad wheel; no download), on
    the CPU. SegmentError naming the package when silero-vad is not installed. Leaves torch's thread count as it
    found it (importing silero_vad sets it to 1 for the whole process)."""
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    except ImportError as e:
        raise SegmentError(f"voice activity segmentation needs the silero-vad package ({e}); install it with "
                           "`pip install silero-vad`") from None
    finally:
        torch.set_num_threads(threads)
    with warnings.catch_warnings():
        # silero's loader and torch.jit.load warn of their own deprecated calls: nothing a user can act on
        warnings.simplefilter("ignore", DeprecationWarning)
        return load_silero_vad()


def _check_range(name: str, value: float, low: float, high: float = math.inf, *, low_open: bool = False) -> None:
    number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (number and (value > low if low_open else value >= low) and value <= high):
        allowed = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high < math.inf else "")
        raise SegmentError(f"{name}={value!r}: must be a number {allowed}")


def speech_spans(samples: np.ndarray, model, *, threshold: float = 0.5, min_speech_s: float = 0.25,
                 min_silence_s: float = 0.3, pad_s: float = 0.05) -> list[Span]:
    """The speech in a clip as silero-vad finds it: sorted, non-overlapping spans within [0, len(samples)).

    samples: float32 mono at 16 kHz (1-D; a clip shorter than 32 ms is padded with zeros by silero). threshold: a
    32 ms chunk whose speech probability reaches it starts speech (speech then lasts until the probability falls
    below threshold - 0.15). min_speech_s: shorter bursts are dropped. min_silence_s: a pause must last this long
    to end a span (shorter pauses stay inside it). pad_s: each span is widened by this much on both sides (by half
    the pause when two spans are closer than 2 * pad_s), clipped to the clip. Resolution: 512 samples (32 ms).

    The result depends on the samples and settings alone: silero's get_speech_timestamps resets the model's
    recurrent state (model.reset_states()) before the first chunk, so nothing carries over from an earlier clip.
    SegmentError for a setting out of range; ValueError for samples that are not 1-D."""
    import torch
    from silero_vad import get_speech_timestamps

    _check_range("threshold", threshold, 0.0, 1.0, low_open=True)
    for name, value in (("min_speech_s", min_speech_s), ("min_silence_s", min_silence_s), ("pad_s", pad_s)):
        _check_range(name, value, 0.0)
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"speech_spans needs 1-D mono samples, got shape {samples.shape}")
    if len(samples) == 0:
        return []
    audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    # silero takes durations in ms; rounding to whole ms is far below its 32 ms resolution. get_speech_timestamps
    # runs under torch.no_grad() itself; not inference_mode: the model keeps its last state as an attribute, and an
    # inference tensor there breaks the caller's next direct call of the model outside inference mode.
    with _torch_threads(1):
        found = get_speech_timestamps(audio, model, sampling_rate=SAMPLE_RATE, threshold=threshold,
                                      min_speech_duration_ms=round(min_speech_s * 1000),
                                      min_silence_duration_ms=round(min_silence_s * 1000),
                                      speech_pad_ms=round(pad_s * 1000))
    return [(int(s["start"]), int(s["end"])) for s in found]


# ------------------------------------------------------------------------------------------------ shaping


def fit_spans(spans: list[Span], n_samples: int, *, min_s: float, max_s: float,
              merge_gap_s: float = 0.5) -> list[Span]:
    """Speech spans shaped to the utterance durations the models were trained on (MSP-Podcast: 2.75-11 s).

    1. Spans are sorted and clipped to [0, n_samples]; empty ones are dropped and overlapping ones joined.
    2. Merge, greedily left to right: a span joins the one before (the gap becoming part of it) when the gap
       between them is <= merge_gap_s and the joined span is <= max_s. Only across such gaps: a short pause
       inside a turn, not a change of turn. (Joining a too-short span across a longer gap would be a guess about
       who speaks; it is not done.)
    3. Split: a span longer than max_s becomes the fewest equal parts (to a sample) each <= max_s, i.e.
       ceil(length / max_s) parts; each is then longer than max_s / 2, so no part is under min_s when
       max_s >= 2 * min_s. The cuts fall wherever the arithmetic puts them, possibly inside a word.

    Spans shorter than min_s stay as they are: the caller decides (predict scores them with a warning);
    min_s is checked against max_s here so that a bad pair of settings fails before any audio is read.
    Returns sorted, non-overlapping spans within [0, n_samples]. SegmentError for min_s, max_s or merge_gap_s
    out of range (max_s must be at least one sample and >= min_s)."""
    _check_range("min_s", min_s, 0.0)
    _check_range("max_s", max_s, 1 / SAMPLE_RATE)
    _check_range("merge_gap_s", merge_gap_s, 0.0)
    if min_s > max_s:
        raise SegmentError(f"min_s={min_s:g} is above max_s={max_s:g}: the shortest span cannot be longer than the "
                           "longest")
    # a hair of slack so that e.g. 2.75 s is 44000 samples, not 43999 after float rounding
    max_len = math.floor(max_s * SAMPLE_RATE + 1e-6)
    max_gap = math.floor(merge_gap_s * SAMPLE_RATE + 1e-6)

    clipped = sorted((max(0, int(s)), min(n_samples, int(e))) for s, e in spans)
    joined: list[list[int]] = []
    for start, end in clipped:
        if end <= start:
            continue
        if joined and start < joined[-1][1]:          # overlap: one stretch of speech, whatever its length
            joined[-1][1] = max(joined[-1][1], end)
        else:
            joined.append([start, end])

    merged: list[list[int]] = []
    for start, end in joined:
        if merged and start - merged[-1][1] <= max_gap and end - merged[-1][0] <= max_len:
            merged[-1][1] = end
        else:
            merged.append([start, end])

    out: list[Span] = []
    for start, end in merged:
        parts = -(-(end - start) // max_len)            # ceil: the fewest parts of <= max_len samples
        # cuts at start + round(i * length / parts): the parts differ by at most one sample, the longest being
        # ceil(length / parts) <= max_len since length / parts <= max_len and max_len is whole
        cuts = [start + round(i * (end - start) / parts) for i in range(parts + 1)]
        out.extend(itertools.pairwise(cuts))
    return out


def vad_segments(samples: np.ndarray, model, *, min_s: float, max_s: float, merge_gap_s: float = 0.5,
                 **vad_settings) -> list[Span]:
    """The clip's speech cut into segments for scoring: fit_spans(speech_spans(samples, model, **vad_settings),
    len(samples), min_s=..., max_s=..., merge_gap_s=...). vad_settings: threshold, min_speech_s, min_silence_s,
    pad_s (see speech_spans). The settings are checked before the model runs. An empty list when silero finds no
    speech (the caller decides: predict can fall back to fixed windows or report silence)."""
    fit_spans([], len(samples), min_s=min_s, max_s=max_s, merge_gap_s=merge_gap_s)   # fail fast on the settings
    spans = speech_spans(samples, model, **vad_settings)
    return fit_spans(spans, len(samples), min_s=min_s, max_s=max_s, merge_gap_s=merge_gap_s)
