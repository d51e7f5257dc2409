"""The steps benchmarks/scale.py times, how one is timed (wall time, peak RSS, sampled anonymous memory), and
what a size's run gives back.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from _common import measure
from scale_corpus import CPU

if TYPE_CHECKING:
    from scale_epoch import FullDim

# --------------------------------------------------------------------------------------------------- steps
STEP_MANIFEST = "manifest (prepare_corpus)"
STEP_WRITE = "stores: write 3 (FeatureStoreWriter)"
STEP_OPEN = "stores: open 3 (FeatureStore)"
STEP_DATASET = "FeatureDataset (train rows)"
STEP_EPOCH = "epoch: stage-1 train batches"
STEP_EVAL = "epoch: dev + test eval batches"
STEP_META = "ensemble: run_subset x3 + soup posteriors"
STEP_TABLE3 = "ensemble: technique_table (Table 3)"
STEP_REPORT = "report: Tables 1-2 + findings bootstraps"
STEPS = (STEP_MANIFEST, STEP_WRITE, STEP_OPEN, STEP_DATASET, STEP_EPOCH, STEP_EVAL, STEP_META, STEP_TABLE3,
         STEP_REPORT)
#: A step whose cost per utterance grows more than this from the smallest to the largest N is flagged.
GROWTH_FLAG = 1.5
RAM_TARGET_GB = 8.0


CPU_NOT_INCLUDED = ("what earlier steps left in memory is not included; file pages of the feature stores that the "
                    "memmaps map in are (file-backed, reclaimable)")


# ------------------------------------------------------------------------------------ memory, in a thread


def _status_mb(field_name: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class AnonPeak:
    """The peak of the process's anonymous memory (RssAnon: heap, arrays; not the file pages a memmap maps in),
    sampled every `interval` seconds in a thread while the block runs."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _status_mb("RssAnon"))
            self._stop.wait(self.interval)

    def __enter__(self) -> "AnonPeak":
        self.peak_mb = _status_mb("RssAnon")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _status_mb("RssAnon"))


@dataclass
class StepRow:
    step: str
    n: int                 # corpus size (utterances)
    rows: int              # rows the step works on (e.g. train rows)
    wall_s: float
    peak_mb: float         # peak RSS above the RSS at the step's start (_common.measure)
    hwm_mb: float          # the process's peak RSS during the step (VmHWM), absolute
    anon_mb: float         # the process's peak anonymous memory during the step (sampled), absolute

    @property
    def s_per_1k(self) -> float:
        return 1000 * self.wall_s / self.n


#: Steps that read and build without side effects and take well under a second at 10k: timed REPEATS times, the
#: fastest kept (one run of a 0.04 s step is mostly noise from the machine and Python's garbage collector).
REPEATS = 3


def timed(rows: list[StepRow], step: str, n: int, n_rows: int, run: Callable[[], object], repeats: int = 1) -> object:
    """Run `run()` under _common.measure and AnonPeak (`repeats` times: the fastest wall time, the largest peaks);
    record a StepRow; return what the last run returned."""
    row = StepRow(step, n, n_rows, float("inf"), 0.0, 0.0, 0.0)
    for _ in range(repeats):
        out = None
        with measure(CPU) as m, AnonPeak() as anon:
            out = run()
        row.wall_s, row.peak_mb = min(row.wall_s, m.wall_s), max(row.peak_mb, m.peak_mb)
        row.hwm_mb, row.anon_mb = max(row.hwm_mb, _status_mb("VmHWM")), max(row.anon_mb, anon.peak_mb)
    rows.append(row)
    print(f"  N={n:>7,}  {step:<42} {row.wall_s:8.2f} s  peak +{row.peak_mb:7.0f} MB  (RSS peak {row.hwm_mb:6.0f} MB, "
          f"anon {row.anon_mb:6.0f} MB)", flush=True)
    return out



@dataclass
class SizeResult:
    n: int
    corpus: dict[str, float]
    splits: dict[str, int]
    classes: tuple[str, ...]
    store_frames: dict[str, int]        # frames per store of the simulated run (all utterances)
    epoch_shapes: list[tuple[int, list[int]]]
    eval_shapes: list[tuple[int, list[int]]]
    scored_systems: int = 0
    full_dim: FullDim | None = None



def growth(rows: list[StepRow], step: str) -> float:
    """Cost per utterance at the largest N over that at the smallest."""
    mine = sorted((r for r in rows if r.step == step), key=lambda r: r.n)
    return mine[-1].s_per_1k / mine[0].s_per_1k if mine[0].wall_s > 0 else float("nan")
