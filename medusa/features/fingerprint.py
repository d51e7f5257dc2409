"""Fingerprints of a stage's inputs: a resumed run (a `.partial` feature store, a transcription journal) carries on
only if it was started from the same inputs; otherwise its work is discarded and the stage starts afresh.

An input fingerprint covers the work list and the settings that make the output:

* per utterance, its id and, for audio, the file's path, size, modification time (ns), duration and the source's
  content hash where the manifest has one (audio_sha256, computed once by prepare); for text, the transcript itself;
* the encoder's or ASR's spec (model, layers, padding rule, language, beam, library versions, ...).

Size + mtime_ns identify a file's content the way make and rsync do: writing a file, or replacing a corpus by
another (unpacked or copied without preserving times), gives new mtimes, and a different corpus with the same
names, sizes and nanosecond mtimes is not something that happens by accident. Hashing the audio here would read
the whole corpus (hundreds of GB for MSP-Podcast) before every resume; prepare hashes each source once and keeps the
hash while its size and mtime are unchanged (medusa.data.audio.ContentHashes). The price of the cheap identity is
being conservative: touching or re-checking-out the same files discards a resume.

The fingerprint lives only in private work files (writer.json of a `.partial` store, the journal's first line),
never in a finished store's meta.json: paths and mtimes differ between machines and clones of the same corpus.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd


def file_identity(path: str | os.PathLike) -> list[int] | None:
    """[size, mtime_ns] of a file, or None if it cannot be stat-ed (the stage then fails on it by name)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def audio_work_rows(items: pd.DataFrame) -> list[dict[str, Any]]:
    """utt_id, path, file identity and duration of every row (columns utt_id, path, duration_s), and the source's
    content hash where the rows carry one (a manifest's audio_sha256)."""
    hashes = items["audio_sha256"] if "audio_sha256" in items else [None] * len(items)
    return [{"utt_id": str(u), "path": str(p), "file": file_identity(p), "duration_s": float(d),
             **({"sha256": str(h)} if isinstance(h, str) else {})}
            for u, p, d, h in zip(items["utt_id"], items["path"], items["duration_s"], hashes)]


def text_work_rows(items: pd.DataFrame) -> list[dict[str, Any]]:
    """utt_id and transcript of every row (columns utt_id, text; a missing text counts as "")."""
    return [{"utt_id": str(u), "text": "" if t is None or (isinstance(t, float) and t != t) else str(t)}
            for u, t in zip(items["utt_id"], items["text"])]


def inputs_fingerprint(rows: Iterable[Mapping[str, Any]], spec: Mapping[str, Any]) -> str:
    """sha256 over the spec and the rows, in order (so pass them in a fixed order)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(spec, sort_keys=True, default=str).encode())
    for row in rows:
        digest.update(b"\n" + json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def weights_sample(module) -> str:
    """A cheap identity of a model's weights: every tensor's name and shape and its first and last 64 values.
    The spec names a model by path or hub name only; a checkpoint replaced under the same name must not resume
    work made with the old weights (reading every weight of a large model would cost as much as loading it)."""
    digest = hashlib.sha256()
    for name, p in module.state_dict().items():
        flat = p.detach().reshape(-1)
        digest.update(f"{name}{tuple(p.shape)}".encode())
        digest.update(flat[:64].float().cpu().numpy().tobytes() + flat[-64:].float().cpu().numpy().tobytes())
    return digest.hexdigest()
