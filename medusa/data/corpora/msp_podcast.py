"""Read MSP-Podcast label files (challenge layout): consensus and detailed labels, CSV or JSON.

Accepted files under `<corpus>/Labels/`, first match wins:
- consensus: labels_consensus.csv, labels_concensus.csv (older releases' spelling), then the .json forms;
- detailed:  labels_detailed.csv, then labels_detailed.json.
Malformed rows raise CorpusError naming the file and the line (CSV) or the entry (JSON), and so do duplicates:
a FileName twice in the consensus, or the same (FileName, worker) twice in the detailed labels (its vote would
count twice).

File names are `MSP-PODCAST_<podcast>_<segment>.wav`: podcast_groups ties the rows of a podcast that has
unidentified voices (SpkrID Unknown) into one group, which the splits keep whole (medusa.data.corpora.splits).
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from medusa.errors import UserError
from medusa.labels import CONSENSUS_CODES, primary_code

CONSENSUS_NAMES = ("labels_consensus.csv", "labels_concensus.csv", "labels_consensus.json", "labels_concensus.json")
DETAILED_NAMES = ("labels_detailed.csv", "labels_detailed.json")
CONSENSUS_HEADER = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
#: Columns of the tables the readers return.
CONSENSUS_COLUMNS = ("file_name", "label", "arousal", "valence", "dominance", "speaker", "gender", "split_set")
DETAILED_COLUMNS = ("file_name", "worker", "primary", "secondary", "arousal", "valence", "dominance")
#: The SpkrID of a voice the corpus did not identify (a CSV manifest's empty speaker cell becomes it too).
UNKNOWN_SPEAKER = "Unknown"
#: MSP-Podcast's file names: the podcast (the recording the segment was cut from), then the segment's number.
#: The blind set's `MSP-PODCAST_test3_0001.wav` does not match: it names no podcast.
PODCAST_FILE = re.compile(r"MSP-PODCAST_(\d+)_(\d+)\.wav", re.IGNORECASE)


class CorpusError(UserError, ValueError):
    """A corpus file is missing or malformed; the message names the file (and line or entry)."""


def audio_files(audio_dir: str | Path) -> dict[str, Path]:
    """The audio of an MSP-layout `Audios/` folder: {name as the label files write it (`<stem>.wav`): the file on
    disk}. The one listing of a corpus's audio that prepare, `medusa submission` and `medusa evaluate` use: the
    extension's case does not matter (`X.WAV` is `X.wav`; a glob for "*.wav" would leave it out without a word on a
    case-sensitive file system); hidden files (`.X.wav`, an interrupted copy's temporary) are not audio. CorpusError
    naming both when two files differ only in the extension's case (which would be scored?)."""
    audio_dir = Path(audio_dir)
    found: dict[str, Path] = {}
    for path in sorted(audio_dir.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() != ".wav" or not (path.is_file() or path.is_symlink()):
            continue
        name = path.stem + ".wav"
        if name in found:
            raise CorpusError(f"{audio_dir}: {found[name].name} and {path.name} are the same utterance (the "
                              "extension's case aside): keep one")
        found[name] = path
    return found


def podcast_of(file_name: str) -> str | None:
    """`MSP-PODCAST_0001_0008.wav` -> "podcast:0001" (the number zero-padded to 4 digits, so that `1` and `0001`
    are one podcast); None for a name not of that form."""
    match = PODCAST_FILE.fullmatch(file_name.strip())
    return f"podcast:{int(match.group(1)):04d}" if match else None


def podcast_groups(file_names: pd.Series, speakers: pd.Series) -> tuple[pd.Series, int]:
    """The split group of each labelled row (None: none) and how many Unknown-speaker rows have a file name that
    names no podcast (each stays a speaker of its own, as before there were groups).

    A podcast with at least one Unknown row gets the group `podcast:<number>` on ALL its rows, the known speakers'
    included. Why the known ones too: the unidentified voices of a podcast are most likely its host and guests,
    some of whom the corpus identified in other segments of the same podcast; grouping only the Unknown rows would
    let a known host's clips go to test while the same host's unidentified clips train. Speakers join groups
    transitively (splits.split_units): the group of a podcast also holds every other row of the known speakers
    who speak in it, and through them other such podcasts. A podcast without Unknown rows gets no group: its
    known speakers are told apart by their ids, and the demo corpus (no Unknown speaker) splits as before."""
    file_names = pd.Series(file_names, dtype=object).reset_index(drop=True)
    speakers = pd.Series(speakers, dtype=object).reset_index(drop=True)
    podcasts = file_names.map(podcast_of)
    unknown = (speakers == UNKNOWN_SPEAKER).to_numpy()
    with_unknown = set(podcasts[unknown].dropna())
    groups = pd.Series([g if g in with_unknown else None for g in podcasts], dtype=object)
    return groups, int((unknown & podcasts.isna().to_numpy()).sum())


def find_label_file(label_dir: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (label_dir / name).is_file():
            return label_dir / name
    raise CorpusError(f"{label_dir}: none of {', '.join(names)} found")


def _number(text: str, where: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise CorpusError(f"{where}: {what} is not a number: {text!r}") from None
    if math.isnan(value):
        raise CorpusError(f"{where}: {what} is NaN")
    return value


def _consensus_row(values: dict, where: str) -> tuple:
    label = str(values["EmoClass"]).strip()
    if label not in CONSENSUS_CODES:
        raise CorpusError(f"{where}: EmoClass {label!r} is not one of {' '.join(CONSENSUS_CODES)}")
    name = str(values["FileName"]).strip()
    if not name:
        raise CorpusError(f"{where}: empty FileName")
    attrs = [_number(values[k], where, k) for k in ("EmoAct", "EmoVal", "EmoDom")]
    return (name, label, *attrs, str(values["SpkrID"]).strip(), str(values["Gender"]).strip(),
            str(values["Split_Set"]).strip())


def read_consensus(path: str | Path) -> pd.DataFrame:
    """One row per utterance: file_name, label (A..N, O, X), attributes, speaker, gender, split_set."""
    path = Path(path)
    rows, lines = [], []
    if path.suffix == ".json":
        data = _load_json(path)
        for name, entry in data.items():
            where = f"{path}: entry {name!r}"
            if not isinstance(entry, dict):
                raise CorpusError(f"{where}: expected an object, got {type(entry).__name__}")
            missing = [k for k in CONSENSUS_HEADER[1:] if k not in entry]
            if missing:
                raise CorpusError(f"{where}: missing {', '.join(missing)}")
            rows.append(_consensus_row({**entry, "FileName": name}, where))
    else:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = tuple(h.strip() for h in next(reader, ()))
            missing = [k for k in CONSENSUS_HEADER if k not in header]
            if missing:
                raise CorpusError(f"{path}:1: header lacks {', '.join(missing)} (got {', '.join(header)})")
            for line, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise CorpusError(f"{path}:{line}: expected {len(header)} fields, got {len(fields)}")
                rows.append(_consensus_row(dict(zip(header, fields)), f"{path}:{line}"))
                lines.append(line)
    table = pd.DataFrame(rows, columns=list(CONSENSUS_COLUMNS))
    _reject_duplicates(table, path, lines)
    return table


def parse_emo_detail(text: str, where: str) -> tuple[str, str, tuple[str, ...], float, float, float]:
    """`WORKER00012; Angry; Frustrated,Annoyed; A:5.0; V:2.0; D:4.0;` -> (worker, code, secondary, a, v, d)."""
    parts = [p.strip() for p in text.split(";")]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    if len(parts) != 6:
        raise CorpusError(f"{where}: EmoDetail needs 6 ';'-separated fields "
                          f"(worker; primary; secondary; A:x; V:x; D:x), got {len(parts)}: {text!r}")
    worker, primary, secondary = parts[:3]
    code = primary_code(primary)
    if code is None:
        raise CorpusError(f"{where}: unknown primary emotion {primary!r}")
    ratings = []
    for part, key in zip(parts[3:], "AVD"):
        tag, _, value = part.partition(":")
        if tag.strip() != key:
            raise CorpusError(f"{where}: expected '{key}:<rating>', got {part!r}")
        ratings.append(_number(value, where, f"rating {key}"))
    return worker, code, tuple(s.strip() for s in secondary.split(",") if s.strip()), *ratings


def read_detailed(path: str | Path) -> pd.DataFrame:
    """One row per (utterance, annotator): primary is a class code or O (any `Other-...` answer).

    A worker rates an utterance once: a second row (CSV) or key (JSON) for the same file and worker is refused,
    naming both lines (or the entry). Counted, it would give that worker two votes (7 votes become 14 when a
    file is pasted twice); dropped quietly, it would hide which of two differing ratings is the real one."""
    path = Path(path)
    rows = []
    if path.suffix == ".json":
        data = _load_json(path)
        for name, workers in data.items():
            if not isinstance(workers, dict):
                raise CorpusError(f"{path}: entry {name!r}: expected an object of workers")
            twice = getattr(workers, "duplicate_keys", [])
            if twice:
                raise CorpusError(f"{path}: entry {name!r} lists worker {twice[0]!r} more than once (a worker rates "
                                  "an utterance once; remove the duplicate)")
            for worker, v in workers.items():
                where = f"{path}: entry {name!r} / {worker!r}"
                if not isinstance(v, dict) or "EmoClass_Major" not in v:
                    raise CorpusError(f"{where}: expected an object with EmoClass_Major, EmoAct, EmoVal, EmoDom")
                code = primary_code(str(v["EmoClass_Major"]))
                if code is None:
                    raise CorpusError(f"{where}: unknown primary emotion {v['EmoClass_Major']!r}")
                ratings = [_number(v.get(k), where, k) for k in ("EmoAct", "EmoVal", "EmoDom")]
                rows.append((name, worker, code, (), *ratings))
    else:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = tuple(h.strip() for h in next(reader, ()))
            if header[:2] != ("FileName", "EmoDetail"):
                raise CorpusError(f"{path}:1: expected header FileName,EmoDetail, got {','.join(header)}")
            first_line: dict[tuple[str, str], int] = {}
            duplicates = []  # (line, first line, file, worker)
            for line, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                if len(fields) != 2:
                    raise CorpusError(f"{path}:{line}: expected 2 fields (FileName, EmoDetail), got {len(fields)}")
                row = (fields[0].strip(), *parse_emo_detail(fields[1], f"{path}:{line}"))
                key = (row[0], row[1])
                if key in first_line:
                    duplicates.append((line, first_line[key], *key))
                else:
                    first_line[key] = line
                rows.append(row)
            if duplicates:
                line, first, name, worker = duplicates[0]
                more = ""
                if len(duplicates) > 1:  # name them all (the first 10): a pasted block is fixed in one go
                    listed = ", ".join(str(d[0]) for d in duplicates[:10]) + (" ..." if len(duplicates) > 10 else "")
                    more = f" ({len(duplicates)} such rows; lines {listed})"
                raise CorpusError(f"{path}:{line}: {name} / {worker} was already rated on line {first}; a worker "
                                  f"rates an utterance once, and a repeated row would count its vote twice{more}. "
                                  "Remove the duplicated rows")
    return pd.DataFrame(rows, columns=list(DETAILED_COLUMNS))


class _Object(dict):
    """A JSON object that remembers the keys it held more than once (json keeps the last one silently)."""
    duplicate_keys: list[str]


def _object(pairs: list[tuple[str, object]]) -> _Object:
    obj = _Object(pairs)
    obj.duplicate_keys = []
    if len(obj) < len(pairs):  # only then is there a duplicate to name (one linear pass)
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen and key not in obj.duplicate_keys:
                obj.duplicate_keys.append(key)
            seen.add(key)
    return obj


def _load_json(path: Path) -> dict:
    """The top-level object keyed by file name. A file name given twice is an error (json.loads would keep the
    second entry and drop the first without a word); nested objects report theirs in `duplicate_keys`."""
    try:
        data = json.loads(path.read_text(), object_pairs_hook=_object)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise CorpusError(f"{path}: expected an object keyed by file name")
    if data.duplicate_keys:
        raise CorpusError(f"{path}: the file name {data.duplicate_keys[0]!r} is an entry more than once; "
                          "remove the duplicate")
    return data


def _reject_duplicates(table: pd.DataFrame, path: Path, lines: list[int]) -> None:
    """A FileName on two consensus rows is an error naming the lines (CSV; JSON duplicates fail in _load_json)."""
    dup = table["file_name"][table["file_name"].duplicated()]
    if len(dup):
        name = dup.iloc[0]
        where = [lines[i] for i in np.flatnonzero(table["file_name"].to_numpy() == name)] if lines else []
        at = f":{where[1]}" if where else ""
        first = f" (first on line {where[0]})" if where else ""
        raise CorpusError(f"{path}{at}: {len(dup)} duplicated FileName entries, e.g. {name!r}{first}")
