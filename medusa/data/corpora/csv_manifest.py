"""Read a corpus described by one CSV file: the way to bring any corpus (IEMOCAP, CREMA-D, EmoDB, your own).

Columns (a header row; any order; UTF-8, a BOM is fine):
    path        required. The audio file, absolute or relative to the CSV's folder; any format libsndfile reads.
    label       required. A class code (A S H U F D C N, or O = other, X = no agreement), a class name (angry,
                sad, happy, surprise, fear, disgust, contempt, neutral; any case) or a word mapped by
                prepare.label_map. Empty: a blind row (audio without a label, kept for prediction).
    speaker     required. Splits never share a speaker; an empty cell is a speaker of its own.
    group       optional. Rows with the same value stay in one split, with every row of their speakers (a session,
                a recording, a podcast whose voices are not all identified); empty: no group. A placeholder such
                as `unknown`, `none` or `NA` is refused (it would tie all its rows into one group).
    utt_id      optional. The utterance's name (default: the file's name without its extension).
    split       optional. train, dev, test or blind; an empty cell (or no column): derived by prepare.
    gender      optional.
    transcript  optional. The reference transcript (WER and the text probe need it; ASR runs anyway).
    arousal, valence, dominance   optional, 1..7; empty: not rated (the attribute loss skips the row).
    votes       optional. The annotators' primary votes, `angry:3;neutral:1` (words as for label): the soft
                target is their distribution over the run's classes (Other votes dropped, as in MSP-Podcast).
                Without it the soft target is the label's one-hot.
Every error names the file, the line and the value; all unmapped label words are listed at once, with how to map
them where the map is given (prepare.label_map in params.yaml, or `medusa evaluate --label-map`).
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from medusa.data.corpora.msp_podcast import UNKNOWN_SPEAKER, CorpusError
from medusa.labels import ATTRIBUTES, CODES, CONSENSUS_CODES, NO_AGREEMENT, plurality, primary_code

REQUIRED = ("path", "label", "speaker")
OPTIONAL = ("utt_id", "split", "group", "gender", "transcript", *ATTRIBUTES, "votes")
SPLIT_VALUES = ("train", "dev", "test", "blind")
UNKNOWN = UNKNOWN_SPEAKER
#: `group` cells that mean "no group" in a spreadsheet but would be one group of all their rows (compared ignoring
#: case): refused, so that a column of placeholders cannot force half a corpus into one split.
NO_GROUP_WORDS = ("unknown", "none", "na", "n/a", "nan", "null", "-", "?")
#: Where a label map comes from (read_csv_manifest's label_map_from): prepare's setting, or evaluate's option.
LABEL_MAP_PARAMS, LABEL_MAP_OPTION = "prepare.label_map", "--label-map"


def label_code(word: str, label_map: dict[str, str]) -> str | None:
    """A label or vote word -> its code (A..N, O, X); None if the word needs a mapping. label_map wins, then
    one-letter codes, then class names and their usual spellings (medusa.labels.primary_code)."""
    w = word.strip()
    mapped = {k.strip().lower(): v for k, v in label_map.items()}
    if w.lower() in mapped:
        return mapped[w.lower()]
    if len(w) == 1 and w.upper() in CONSENSUS_CODES:
        return w.upper()
    return primary_code(w)


def _rating(text: str, where: str, column: str) -> float:
    if not text.strip():
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise CorpusError(f"{where}: {column} is not a number: {text!r}") from None
    if not 1 <= value <= 7:
        raise CorpusError(f"{where}: {column} {text!r} is outside 1..7 (rescale your ratings to 1..7 or leave "
                          "the cell empty)")
    return value


def _group(text: str, where: str) -> str | None:
    """A `group` cell: the value (stripped), None where empty; a placeholder for "no group" or a control character
    (a line break inside a quoted cell) is an error naming the value."""
    value = text.strip()
    if not value:
        return None
    if value.lower() in NO_GROUP_WORDS:
        raise CorpusError(f"{where}: group {text!r} would put every row with it in one group (and one split); "
                          "leave the cell empty for a row without a group")
    if any(ord(c) < 32 for c in value):
        raise CorpusError(f"{where}: group {text!r} holds a line break or control character (a quote left open?)")
    return value


def _votes(text: str, where: str, label_map: dict[str, str], unmapped: dict[str, list[int]], line: int
           ) -> list[str]:
    """`angry:3;neutral:1` -> ["A", "A", "A", "N"]; unknown words are collected in `unmapped`. Entries are
    separated by `;`: `angry:3,sad:1` is a syntax error, not a word `angry:3,sad` to map."""
    if "," in text:
        raise CorpusError(f"{where}: votes {text!r}: entries are separated by `;`, not `,` (write "
                          f"{';'.join(p.strip() for p in text.split(','))!r})")
    codes: list[str] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        word, sep, count = part.rpartition(":")
        if not sep or not count.strip().isdigit() or int(count) < 1 or not word.strip():
            raise CorpusError(f"{where}: votes entry {part!r} is not `word:count` with a count >= 1 "
                              "(write e.g. angry:3;neutral:1)")
        code = label_code(word, label_map)
        if code is None:
            unmapped.setdefault(word.strip(), []).append(line)
            continue
        if code == NO_AGREEMENT:
            raise CorpusError(f"{where}: votes entry {part!r}: X (no agreement) is a consensus, not a vote")
        codes += [code] * int(count)
    return codes


def read_csv_manifest(path: str | Path, label_map: dict[str, str], *, label_map_from: str) -> pd.DataFrame:
    """The corpus's rows in the form medusa.data.corpora.manifest assembles: utt_id, source, speaker, group (None =
    none), gender, split ("" = derive), label (code, O, X or None), votes (list of codes; None = no votes column),
    attributes, ref_text. Checks columns, labels, ratings, group values, duplicates (the same recording under two
    spellings included: paths are compared resolved) and that every audio file exists. `label_map_from`: where `label_map` was given,
    LABEL_MAP_PARAMS (prepare.label_map in params.yaml) or LABEL_MAP_OPTION (`medusa evaluate --label-map`): the
    message on an unmapped label word says how to map it there."""
    if label_map_from not in (LABEL_MAP_PARAMS, LABEL_MAP_OPTION):
        raise ValueError(f"label_map_from: {LABEL_MAP_PARAMS!r} or {LABEL_MAP_OPTION!r}, got {label_map_from!r}")
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: prepare.corpus names no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); save it as "
                          "UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    records = []  # (line, fields) of each non-empty record: the line it starts on (a quoted cell may span lines)
    while True:
        line = reader.line_num + 1
        fields = next(reader, None)
        if fields is None:
            break
        if any(f.strip() for f in fields):
            records.append((line, fields))
    _check_header(header, records, path)
    rows, lines, unmapped = [], [], {}
    for line, fields in records:
        if len(fields) != len(header):
            raise CorpusError(f"{path}:{line}: expected {len(header)} fields ({', '.join(header)}), got "
                              f"{len(fields)}{_field_hint(header, fields)}")
        rows.append(_row(dict(zip(header, fields)), f"{path}:{line}", path.parent, label_map, unmapped, line))
        lines.append(line)
    if unmapped:
        listed = "; ".join(f"{w!r} ({len(ls)} rows, first on line {ls[0]})" for w, ls in sorted(unmapped.items()))
        first = min(ls[0] for ls in unmapped.values())
        word = min(unmapped, key=lambda w: unmapped[w][0])
        how = (f"with --label-map, e.g. --label-map {_shell_word(word)}=O (one WORD=CODE per word)"
               if label_map_from == LABEL_MAP_OPTION else
               f"in params.yaml, e.g. prepare.label_map: {{{_yaml_word(word)}: O}}")
        raise CorpusError(f"{path}:{first}: label word(s) that are not a class code or name: {listed}. Map each "
                          f"to a code of {' '.join(CONSENSUS_CODES)} {how} (O = other, X = no agreement)")
    if not rows:
        raise CorpusError(f"{path}: no rows")
    table = pd.DataFrame(rows)
    table["line"] = lines
    if "votes" not in header:
        table["votes"] = None
    _refuse_same_audio(table, path)
    _refuse_repeated_names(table, path)
    folders = table[[Path(s).is_dir() for s in table["source"]]]
    if len(folders):
        first = folders.iloc[0]
        raise CorpusError(f"{path}:{first['line']}: path {first['path_cell']!r} is a folder, not an audio file "
                          f"({first['source']}; {len(folders)} such rows): a row names one recording (list the "
                          "folder's files one per row)")
    absent = table[[not Path(s).is_file() for s in table["source"]]]
    if len(absent):
        first = absent.iloc[0]
        raise CorpusError(f"{path}:{first['line']}: audio file not found: {first['source']} ({len(absent)} of "
                          f"{len(table)} files are missing; paths are relative to {path.parent})")
    table["listed_at"] = [f"{path}:{line}" for line in table["line"]]  # named in audio errors (prepare_audio)
    return table.drop(columns=["line", "path_cell"])


def _check_header(header: list[str], records: list[tuple[int, list[str]]], path: Path) -> None:
    """Required columns present, none unknown, repeated or without a name (a trailing comma on every line is an
    empty column name: said so, not listed as an invisible unknown column)."""
    if "" in header:
        at = header.index("")
        if at == len(header) - 1 and len(header) > 1:
            every = bool(records) and all(len(f) == len(header) and not f[-1].strip() for _, f in records)
            raise CorpusError(f"{path}:1: " + ("every line ends with a comma" if every else
                                                "the header ends with a comma")
                              + f": an empty column name after `{header[-2]}` (delete the trailing comma"
                              + (" of every line" if every else "") + ", or name the column)")
        raise CorpusError(f"{path}:1: column {at + 1} has no name" + (f" (after `{header[at - 1]}`)" if at else "")
                          + f"; name it or delete the column (header: {','.join(header)})")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        cased = [h for h in header if h.lower() in REQUIRED + OPTIONAL and h not in REQUIRED + OPTIONAL]
        raise CorpusError(f"{path}:1: the header lacks column(s) {', '.join(missing)} (required: "
                          f"{', '.join(REQUIRED)}; optional: {', '.join(OPTIONAL)}; got: {', '.join(header)})"
                          + (f"; column names are lower-case: {', '.join(cased)}" if cased else ""))
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if unknown or len(set(header)) != len(header):
        twice = [c for c, n in Counter(header).items() if n > 1]
        raise CorpusError(f"{path}:1: unknown or repeated column(s) {', '.join(unknown + twice)} (known: "
                          f"{', '.join(REQUIRED + OPTIONAL)}); rename or drop them")


def _field_hint(header: list[str], fields: list[str]) -> str:
    """Why a record's field count may differ from the header's, where it can be told."""
    if len(fields) > len(header) and not any(f.strip() for f in fields[len(header):]):
        return ": the line ends with a comma the header does not have (delete it)"
    if len(fields) > len(header):
        return (": a cell that holds a comma must be in double quotes"
                + ("; votes are separated by `;` (angry:3;sad:1)" if "votes" in header else ""))
    return ""


def _shell_word(word: str) -> str:
    """A label word as it is typed after --label-map (quoted where the shell would split or expand it)."""
    return word if word.replace("_", "").replace("-", "").isalnum() else "'" + word.replace("'", "'\\''") + "'"


def _yaml_word(word: str) -> str:
    """A label word as a YAML flow-mapping key."""
    return word if word.replace("_", "").replace("-", "").isalnum() else repr(word)


def _refuse_same_audio(table: pd.DataFrame, path: Path) -> None:
    """One recording, one row: paths are compared resolved (`a/../a/y.wav`, `./y.wav` and `y.wav`, a symlink and
    its target are one file), so that the same recording cannot land in two splits with two labels."""
    resolved = pd.Series([str(Path(s).resolve()) for s in table["source"]], index=table.index)
    repeated = resolved[resolved.duplicated(keep=False)]
    if not len(repeated):
        return
    first = table.loc[resolved == repeated.iloc[0]]
    a, b = first.iloc[0], first.iloc[1]
    spelled = "" if a["path_cell"] == b["path_cell"] else \
        f" (line {b['line']} spells it {b['path_cell']!r}: one file, {repeated.iloc[0]})"
    raise CorpusError(f"{path}:{b['line']}: the audio file {a['path_cell']!r} is on lines "
                      f"{', '.join(map(str, first['line']))}{spelled}; each recording is one row "
                      f"({repeated.nunique()} such files)")


def _row(values: dict[str, str], where: str, folder: Path, label_map: dict[str, str],
         unmapped: dict[str, list[int]], line: int) -> dict:
    source = values["path"].strip()
    if not source:
        raise CorpusError(f"{where}: empty path")
    word = values["label"].strip()
    label = label_code(word, label_map) if word else None
    if word and label is None:
        unmapped.setdefault(word, []).append(line)
    split = values.get("split", "").strip().lower()
    if split not in ("", *SPLIT_VALUES):
        raise CorpusError(f"{where}: split {values['split']!r} is not one of {', '.join(SPLIT_VALUES)} (or empty: "
                          "derived)")
    if label is None and not word and split not in ("", "blind"):
        raise CorpusError(f"{where}: split {split} needs a label (an empty label marks a blind row)")
    if word and split == "blind":
        raise CorpusError(f"{where}: a blind row has an empty label, got {word!r}")
    votes = values.get("votes", "").strip()
    vote_codes = _votes(votes, where, label_map, unmapped, line) if votes else None
    if vote_codes is not None and not word:
        raise CorpusError(f"{where}: votes given for a row without a label")
    if vote_codes and label in CODES:  # the label is a class: it must be (one of) the votes' most common answer
        counts = Counter(vote_codes)
        if counts[label] < max(counts.values()):
            raise CorpusError(f"{where}: label {word!r} ({label}) is not the most common vote in {votes!r}; fix "
                              "the label or the votes (X: no agreement; O: other)")
    source_path = Path(source) if Path(source).is_absolute() else folder / source
    return {
        "utt_id": values.get("utt_id", "").strip() or Path(source).stem,
        "source": str(source_path),
        "path_cell": source,
        "speaker": values["speaker"].strip() or UNKNOWN,
        "group": _group(values.get("group", ""), where),
        "gender": values.get("gender", "").strip() or UNKNOWN,
        "split": "blind" if not word else split,
        "label": label,
        "votes": vote_codes,
        **{a: _rating(values.get(a, ""), where, a) for a in ATTRIBUTES},
        "ref_text": values.get("transcript", "").strip() or None,
    }


def _refuse_repeated_names(table: pd.DataFrame, path: Path) -> None:
    """One name per utterance (its transcript, features and predictions are keyed by it): two files with the same
    stem in two folders need a `utt_id` column."""
    repeated = table[table["utt_id"].duplicated(keep=False)]
    if len(repeated):
        value = repeated.iloc[0]["utt_id"]
        at = table.loc[table["utt_id"] == value, "line"].tolist()
        raise CorpusError(f"{path}:{at[1]}: the utterance name {value!r} is on lines {', '.join(map(str, at))} (the "
                          "file name without its extension, unless a `utt_id` column gives one); give a `utt_id` "
                          f"column to tell them apart ({repeated['utt_id'].nunique()} such names)")


def consensus_votes(label: str | None, votes: list[str] | None) -> tuple[list[str], str | None]:
    """(votes, consensus) of a row: a votes cell as given (read_csv_manifest checked that a class label is its
    most common answer); without one, the label itself as a single vote (its one-hot soft target)."""
    if votes is None:
        return ([label] if label in CODES else []), label
    return votes, label if label is not None else plurality(votes)


def write_manifest_csv(corpus_dir: str | Path, out: str | Path) -> Path:
    """An MSP-Podcast-layout folder written as a CSV manifest (paths relative to `out`'s folder): the same corpus
    in the form a researcher writes for theirs. Train/Development rows keep their split (train/dev; test is cut
    from train by prepare, as for the folder), other labelled Split_Sets are left out, blind audio is kept. The
    `group` column holds the podcast of every row of a podcast with unknown speakers (msp_podcast.podcast_groups),
    so that the CSV splits as the folder does."""
    from medusa.data.corpora.msp_podcast import (
        CONSENSUS_NAMES,
        DETAILED_NAMES,
        find_label_file,
        podcast_groups,
        read_consensus,
        read_detailed,
    )
    from medusa.io import atomic_path

    corpus, out = Path(corpus_dir), Path(out)
    consensus = read_consensus(find_label_file(corpus / "Labels", CONSENSUS_NAMES))
    detailed = read_detailed(find_label_file(corpus / "Labels", DETAILED_NAMES))
    votes = detailed.groupby("file_name")["primary"].agg(lambda v: ";".join(f"{c}:{n}" for c, n in
                                                                            Counter(v).items()))
    split_of = {"Train": "train", "Development": "dev"}
    labelled = consensus[consensus["split_set"].isin(split_of)]
    groups = podcast_groups(labelled["file_name"], labelled["speaker"])[0].fillna("").to_numpy()
    audio = sorted(p.name for p in (corpus / "Audios").glob("*.wav"))
    blind = sorted(set(audio) - set(consensus["file_name"]))

    def relative(name: str) -> str:
        return os.path.relpath(corpus / "Audios" / name, out.parent)

    def transcript(name: str) -> str:
        t = corpus / "Transcripts" / (Path(name).stem + ".txt")
        return t.read_text(encoding="utf-8").strip() if t.is_file() else ""

    with atomic_path(out) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "speaker", "group", "split", "gender", "transcript", *ATTRIBUTES, "votes"])
        for r, group in zip(labelled.itertuples(), groups):
            w.writerow([relative(r.file_name), r.label, r.speaker, group, split_of[r.split_set], r.gender,
                        transcript(r.file_name), repr(r.arousal), repr(r.valence), repr(r.dominance),
                        votes.get(r.file_name, "")])
        for name in blind:
            w.writerow([relative(name), "", "", "", "blind", "", transcript(name), "", "", "", ""])
    return out
