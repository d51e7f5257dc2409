"""Read a corpus described by one CSV file: the way to bring any corpus (IEMOCAP, CREMA-D, EmoDB, your own).

Columns (a header row; any order; UTF-8, a BOM is fine):
    path        required. The audio file, absolute or relative to the CSV's folder; any format libsndfile reads.
    label       required. A class code (A S H U F D C N, or O = other, X = no agreement), a class name (angry,
                sad, happy, surprise, fear, disgust, contempt, neutral; any case) or a word mapped by
                prepare.label_map. Empty: a blind row (audio without a label, kept for prediction).
    speaker     required. Splits never share a speaker; an empty cell is a speaker of its own.
    utt_id      optional. The utterance's name (default: the file's name without its extension).
    split       optional. train, dev, test or blind; an empty cell (or no column): derived by prepare.
    gender      optional.
    transcript  optional. The reference transcript (WER and the text probe need it; ASR runs anyway).
    arousal, valence, dominance   optional, 1..7; empty: not rated (the attribute loss skips the row).
    votes       optional. The annotators' primary votes, `angry:3;neutral:1` (words as for label): the soft
                target is their distribution over the run's classes (Other votes dropped, as in MSP-Podcast).
                Without it the soft target is the label's one-hot.
Every error names the file, the line and the value; all unmapped label words are listed at once.
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from medusa.data.corpora.msp_podcast import CorpusError
from medusa.labels import ATTRIBUTES, CODES, CONSENSUS_CODES, NO_AGREEMENT, plurality, primary_code

REQUIRED = ("path", "label", "speaker")
OPTIONAL = ("utt_id", "split", "gender", "transcript", *ATTRIBUTES, "votes")
SPLIT_VALUES = ("train", "dev", "test", "blind")
UNKNOWN = "Unknown"


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


def _votes(text: str, where: str, label_map: dict[str, str], unmapped: dict[str, list[int]], line: int
           ) -> list[str]:
    """`angry:3;neutral:1` -> ["A", "A", "A", "N"]; unknown words are collected in `unmapped`."""
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


def read_csv_manifest(path: str | Path, label_map: dict[str, str]) -> pd.DataFrame:
    """The corpus's rows in the form medusa.data.corpora.manifest assembles: utt_id, source, speaker, gender, split
    ("" = derive), label (code, O, X or None), votes (list of codes; None = no votes column), attributes,
    ref_text. Checks columns, labels, ratings, duplicates and that every audio file exists."""
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
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CorpusError(f"{path}:1: the header lacks column(s) {', '.join(missing)} (required: "
                          f"{', '.join(REQUIRED)}; optional: {', '.join(OPTIONAL)}; got: {', '.join(header)})")
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if unknown or len(set(header)) != len(header):
        twice = [c for c, n in Counter(header).items() if n > 1]
        raise CorpusError(f"{path}:1: unknown or repeated column(s) {', '.join(unknown + twice)} (known: "
                          f"{', '.join(REQUIRED + OPTIONAL)}); rename or drop them")
    rows, lines, unmapped = [], [], {}
    while True:
        line = reader.line_num + 1  # where the next record starts (a quoted cell may span several lines)
        fields = next(reader, None)
        if fields is None:
            break
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise CorpusError(f"{path}:{line}: expected {len(header)} fields, got {len(fields)}")
        rows.append(_row(dict(zip(header, fields)), f"{path}:{line}", path.parent, label_map, unmapped, line))
        lines.append(line)
    if unmapped:
        listed = "; ".join(f"{w!r} ({len(ls)} rows, first on line {ls[0]})" for w, ls in sorted(unmapped.items()))
        first = min(ls[0] for ls in unmapped.values())
        raise CorpusError(f"{path}:{first}: label word(s) that are not a class code or name: {listed}. Map each in "
                          "params.yaml, e.g. prepare.label_map: {boredom: O, calm: N} (O = other, X = no agreement)")
    if not rows:
        raise CorpusError(f"{path}: no rows")
    table = pd.DataFrame(rows)
    table["line"] = lines
    if "votes" not in header:
        table["votes"] = None
    _refuse_repeats(table, path, "source", "the audio file")
    _refuse_repeats(table, path, "utt_id", "the utterance name (the file name without extension; give a "
                                           "`utt_id` column to tell them apart)")
    absent = table[[not Path(s).is_file() for s in table["source"]]]
    if len(absent):
        first = absent.iloc[0]
        raise CorpusError(f"{path}:{first['line']}: audio file not found: {first['source']} ({len(absent)} of "
                          f"{len(table)} files are missing; paths are relative to {path.parent})")
    table["listed_at"] = [f"{path}:{line}" for line in table["line"]]  # named in audio errors (prepare_audio)
    return table.drop(columns="line")


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
        "speaker": values["speaker"].strip() or UNKNOWN,
        "gender": values.get("gender", "").strip() or UNKNOWN,
        "split": "blind" if not word else split,
        "label": label,
        "votes": vote_codes,
        **{a: _rating(values.get(a, ""), where, a) for a in ATTRIBUTES},
        "ref_text": values.get("transcript", "").strip() or None,
    }


def _refuse_repeats(table: pd.DataFrame, path: Path, column: str, what: str) -> None:
    repeated = table[table[column].duplicated(keep=False)]
    if len(repeated):
        value = repeated.iloc[0][column]
        at = table.loc[table[column] == value, "line"].tolist()
        raise CorpusError(f"{path}:{at[1]}: {what} {value!r} is on lines {', '.join(map(str, at))}; each "
                          f"utterance is one row ({repeated[column].nunique()} such values)")


def consensus_votes(label: str | None, votes: list[str] | None) -> tuple[list[str], str | None]:
    """(votes, consensus) of a row: a votes cell as given (read_csv_manifest checked that a class label is its
    most common answer); without one, the label itself as a single vote (its one-hot soft target)."""
    if votes is None:
        return ([label] if label in CODES else []), label
    return votes, label if label is not None else plurality(votes)


def write_manifest_csv(corpus_dir: str | Path, out: str | Path) -> Path:
    """An MSP-Podcast-layout folder written as a CSV manifest (paths relative to `out`'s folder): the same corpus
    in the form a researcher writes for theirs. Train/Development rows keep their split (train/dev; test is cut
    from train by prepare, as for the folder), other labelled Split_Sets are left out, blind audio is kept."""
    from medusa.data.corpora.msp_podcast import (
        CONSENSUS_NAMES,
        DETAILED_NAMES,
        find_label_file,
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
    audio = sorted(p.name for p in (corpus / "Audios").glob("*.wav"))
    blind = sorted(set(audio) - set(consensus["file_name"]))

    def relative(name: str) -> str:
        return os.path.relpath(corpus / "Audios" / name, out.parent)

    def transcript(name: str) -> str:
        t = corpus / "Transcripts" / (Path(name).stem + ".txt")
        return t.read_text(encoding="utf-8").strip() if t.is_file() else ""

    with atomic_path(out) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "speaker", "split", "gender", "transcript", *ATTRIBUTES, "votes"])
        for r in labelled.itertuples():
            w.writerow([relative(r.file_name), r.label, r.speaker, split_of[r.split_set], r.gender,
                        transcript(r.file_name), repr(r.arousal), repr(r.valence), repr(r.dominance),
                        votes.get(r.file_name, "")])
        for name in blind:
            w.writerow([relative(name), "", "", "blind", "", transcript(name), "", "", "", ""])
    return out
