"""What the benchmark scripts share: timing and peak memory of a block, the device and the machine's load in words.

Imported by the scripts of this folder (`from _common import ...`; a script's own folder is on sys.path when it
runs, and each script puts it there when it is imported some other way, e.g. by a test).
"""
from __future__ import annotations

import ctypes
import gc
import os
import platform
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

# ------------------------------------------------------------------------------- timing and peak memory


def _proc_status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_free_heap() -> None:
    """Give the pages that malloc keeps after free() back to the OS (glibc malloc_trim), so that memory freed
    by an earlier run (or the warm-up) does not hide the next run's own allocations from the RSS peak."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) of this process to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_memory_method(not_included: str) -> str:
    """How `measure` gets the CPU peak, in words for a report; `not_included` says what the figure leaves out."""
    if _reset_rss_peak() and _proc_status_kb("VmHWM") is not None:
        return ("peak RSS of the benchmark process above its RSS before the timed region (VmHWM of "
                "/proc/self/status, reset through /proc/self/clear_refs before each run, after malloc_trim has "
                f"returned freed heap); {not_included}")
    return ("peak RSS (getrusage ru_maxrss) above the RSS before the timed region; ru_maxrss cannot be reset, "
            "so a run that stays below an earlier run's peak reads 0 (a lower bound)")


@dataclass
class Measurement:
    wall_s: float = 0.0
    peak_mb: float = 0.0


@contextmanager
def measure(device: torch.device) -> Iterator[Measurement]:
    """Wall time (perf_counter, with CUDA synchronised on both ends) and peak memory of the block.

    CUDA: torch.cuda.max_memory_allocated during the block (weights included). CPU: see cpu_memory_method."""
    m = Measurement()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _release_free_heap()
        baseline_kb = _proc_status_kb("VmRSS") or 0
        exact = _reset_rss_peak()
    start = time.perf_counter()
    yield m
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    m.wall_s = time.perf_counter() - start
    if device.type == "cuda":
        m.peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_kb = _proc_status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        m.peak_mb = max(0, (peak_kb or 0) - baseline_kb) / 1024


# ------------------------------------------------------------------------------------------ the machine


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"{model}, {os.cpu_count()} cores (CPU)"


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, read before a run ("?" where /proc/loadavg is missing)."""
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "?"


def busy(load: str) -> str:
    """What the 1-minute load average before the run says about other work on the machine."""
    try:
        first = float(load.split()[0])
    except (ValueError, IndexError):
        return "unknown"
    if first >= 0.5:
        return "other jobs were running: CPU figures are noisy"
    return "the machine was otherwise idle"


def scoring_device(name: str, threads: int | None) -> tuple[torch.device, int | None]:
    """The device a prediction benchmark runs on (pick_device: auto, cpu, cuda...) and its torch threads: `threads`,
    else 1 on CPU (a busy machine gives steadier numbers on one); set here, with library warnings silenced."""
    import warnings

    from medusa.features.batches import pick_device

    device = pick_device(name)
    threads = threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    return device, threads
