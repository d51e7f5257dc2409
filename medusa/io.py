"""Atomic writes: a reader (or an interrupted run) never sees half a file."""
from __future__ import annotations

import json
import logging
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


#: The name atomic_path gives its temporary file: `.NAME.tmp-PID`.
_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (os.kill with signal 0 probes without signalling)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    except OverflowError:
        return False
    return True


def remove_stale_temps(folder: str | Path, *, recursive: bool = True) -> list[Path]:
    """Delete the temporary files atomic_path leaves when its process is killed (kill -9, out of memory, power
    loss), `.NAME.tmp-PID` in `folder` and (recursive) every folder below it, whose PID is no running process;
    one log line names them. Returns the files deleted; a missing folder has none.

    A file whose PID is a live process (this one included) is kept: that process may be writing it. A PID reused
    by an unrelated process keeps a stale file until that process ends (a leak, never a deletion of live work).
    PIDs are per machine: on a folder shared between machines, a writer on another one looks dead."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for parent, dirs, files in os.walk(folder):
        for name in files:
            match = _TEMP_NAME.match(name)
            if match and not pid_alive(int(match.group(1))):
                path = Path(parent) / name
                try:
                    path.unlink()
                except FileNotFoundError:  # removed meanwhile (e.g. by another run's cleanup)
                    continue
                removed.append(path)
        if not recursive:
            break
        dirs.sort()
    if removed:
        log.info("removed %d temporary file(s) left under %s by killed processes: %s", len(removed), folder,
                 ", ".join(str(p.relative_to(folder)) for p in removed))
    return removed


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def _strict_json(obj: Any) -> Any:
    """NaN and infinities as null (JSON has no NaN; DVC, jq and browsers reject Python's NaN token)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj


def write_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_strict_json(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
