"""The challenge submission file: one predicted class per blind audio file.

The categorical task of the Interspeech 2025 SER Challenge is scored on a blind test set (MSP-Podcast Test3)
from a CSV of exactly this form:

    FileName,EmoClass
    MSP-PODCAST_test3_0001.wav,N
    ...

one row per blind file, EmoClass one letter of A S H U F D C N. In an MSP-layout corpus (medusa.data.corpora.msp_podcast)
the blind files are the Audios/*.wav without a row in the consensus label file, the same rule the manifest uses
for its `split == "blind"` rows (utt_id = the file's stem).

Two ways to a submission: the ensemble stage's stored posteriors (submission_from_posteriors, no audio read again)
or a bundle run on the corpus's blind audio (submission_from_bundle). Either frame goes through
write_submission, which refuses a file the scorer would reject or score wrongly: a blind file missing or twice,
a file that is not blind, a letter outside the 8.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable

import pandas as pd

from medusa.data.corpora.msp_podcast import CONSENSUS_NAMES, CorpusError, find_label_file, read_consensus
from medusa.io import atomic_path
from medusa.labels import CODES, classes_of, target_columns

HEADER = ("FileName", "EmoClass")
#: How many names of each kind an error message lists (a wrong corpus can miss thousands).
SHOWN = 5


class SubmissionError(ValueError):
    """The submission cannot be made or would be rejected; the message names the folder, files or rows."""


def _some(names: Iterable[str]) -> str:
    names = list(names)
    listed = ", ".join(names[:SHOWN])
    return f"{listed}, ... ({len(names)} in all)" if len(names) > SHOWN else listed


def blind_files(corpus: str | Path) -> list[str]:
    """Sorted file names (`MSP-PODCAST_test3_0001.wav`, ...) of the blind audio of an MSP-layout folder: the
    Audios/*.wav without a consensus row. Labelled files of any Split_Set (also those prepare leaves out, such as
    Test1) are not blind: the challenge scores only the unlabelled ones.
    SubmissionError naming the folder when it is not an MSP-layout folder or holds no blind file; CorpusError
    (naming the file and line) when its consensus file is malformed."""
    corpus = Path(corpus)
    layout = "an MSP-Podcast-layout folder (Audios/, Labels/ with the consensus labels)"
    if not corpus.is_dir():
        what = "not found" if not corpus.exists() else "not a folder"
        # A CSV manifest has no notion of blind audio the challenge would score: the submission needs the folder.
        raise SubmissionError(f"{corpus}: {what}; the blind test set is read from {layout}")
    audio_dir = corpus / "Audios"
    if not audio_dir.is_dir():
        raise SubmissionError(f"{corpus}: no Audios/ folder; the blind test set is read from {layout}")
    try:
        label_file = find_label_file(corpus / "Labels", CONSENSUS_NAMES)
    except CorpusError as e:
        # Without the consensus file every wav would look blind: refuse rather than submit the training set.
        raise SubmissionError(f"{corpus}: no consensus label file ({e}); the blind files are the audio without "
                              "a consensus row, so it is needed") from None
    labelled = set(read_consensus(label_file)["file_name"])
    blind = sorted(f.name for f in audio_dir.glob("*.wav") if f.name not in labelled)
    if not blind:
        raise SubmissionError(f"{corpus}: no blind audio (every file in {audio_dir} has a row in {label_file.name}); "
                              "put the challenge's test audio in Audios/ to predict it")
    return blind


def submission_frame(utt_ids: Iterable[str], predicted: Iterable[str]) -> pd.DataFrame:
    """FileName (utt_id + ".wav": the manifest's utt_id is the file's stem), EmoClass; sorted by FileName so the
    same predictions always give the same file (and the same DVC hash)."""
    names = [f"{u}.wav" for u in utt_ids]
    letters = [str(c) for c in predicted]
    if len(names) != len(letters):
        raise SubmissionError(f"{len(names)} utterance ids but {len(letters)} predicted classes")
    frame = pd.DataFrame({"FileName": names, "EmoClass": letters}, columns=list(HEADER))
    return frame.sort_values("FileName", kind="stable").reset_index(drop=True)


def submission_from_posteriors(posteriors: pd.DataFrame) -> pd.DataFrame:
    """The submission of a posteriors frame's blind rows (utt_id, split, p_<code> of the run's classes; e.g. the
    ensemble stage's soup posteriors): the argmax class of each, as medusa.model.members.predicted_labels takes it."""
    from medusa.model.members import (
        predicted_labels,  # members pulls in torch; the rest of this module does not need it
    )

    missing = [c for c in ("utt_id", "split") if c not in posteriors.columns]
    if missing:
        raise SubmissionError(f"the posteriors frame has no {', '.join(missing)} column; expected utt_id, split, "
                              "p_<code> (a member's or the ensemble's posteriors)")
    blind = posteriors[posteriors["split"] == "blind"]
    if blind.empty:
        present = ", ".join(sorted(map(str, posteriors["split"].unique())))
        raise SubmissionError("the posteriors hold no blind row: the corpus had no unlabelled audio when the "
                              f"manifest was built (splits present: {present})")
    columns = list(target_columns(classes_of(blind)))
    # argmax over NaN picks the first NaN's class without a word: a wrong letter that looks like a prediction.
    bad = blind[blind[columns].isna().any(axis=1)]
    if len(bad):
        raise SubmissionError(f"{len(bad)} blind row(s) have NaN posteriors: {_some(bad['utt_id'].astype(str))}")
    return submission_frame(blind["utt_id"].astype(str), predicted_labels(blind))


def submission_from_bundle(bundle, corpus: str | Path, cache_dir: str | Path = "work/cache",
                           names: list[str] | None = None) -> pd.DataFrame:
    """The submission of a loaded medusa.serving.inference.Bundle run on every blind file of an MSP-layout corpus, read as
    MSP ships it (16 kHz wav; predict_audio names a file of another rate). One predict_audio call: its batches
    are length-sorted, so one call predicts as the pipeline does; `cache_dir` holds its ASR/encoder caches."""
    corpus = Path(corpus)
    names = blind_files(corpus) if names is None else names  # the caller's list, when it already has one
    frame = bundle.predict_audio([corpus / "Audios" / n for n in names], cache_dir=cache_dir)
    return submission_frame(frame["utt_id"].astype(str), frame["predicted"])


def validate_submission(frame: pd.DataFrame, blind: Iterable[str]) -> None:
    """SubmissionError unless `frame` is a submission the challenge accepts for the blind files `blind`: columns
    exactly FileName, EmoClass; every blind file exactly once (the missing, extra and repeated files named, the
    first few of each); EmoClass one of the 8 codes (a run over fewer classes still predicts letters of the 8).
    Rows are named by their line in the written CSV (the header is line 1)."""
    blind = [str(b) for b in blind]
    if not blind:
        raise SubmissionError("no blind file to check the submission against")
    if tuple(map(str, frame.columns)) != HEADER:
        raise SubmissionError(f"the submission's columns must be exactly {','.join(HEADER)}, "
                              f"got {','.join(map(str, frame.columns))}")
    names = [str(n) for n in frame["FileName"]]
    expected, counts = set(blind), Counter(names)
    problems = []
    missing = sorted(expected - counts.keys())
    if missing:
        problems.append(f"{len(missing)} blind file(s) missing: {_some(missing)}")
    extra = sorted(counts.keys() - expected)
    if extra:
        problems.append(f"{len(extra)} file(s) that are not blind: {_some(extra)}")
    repeated = sorted(n for n, k in counts.items() if k > 1)
    if repeated:
        problems.append(f"{len(repeated)} file(s) listed more than once: {_some(repeated)}")
    bad = [f"line {i + 2} ({name}): {letter!r}" for i, (name, letter) in enumerate(zip(names, frame["EmoClass"]))
           if not (isinstance(letter, str) and letter in CODES)]
    if bad:
        problems.append(f"{len(bad)} row(s) with an EmoClass not one of {' '.join(CODES)}: {_some(bad)}")
    if problems:
        raise SubmissionError("the submission would be rejected: " + "; ".join(problems))


def write_submission(frame: pd.DataFrame, out: str | Path, blind: Iterable[str]) -> Path:
    """Validate `frame` against the blind files, then write it atomically (a scorer or an interrupted run never
    sees half a file): header exactly FileName,EmoClass, no index, '\\n' line endings (the same bytes on every
    platform), rows sorted by FileName. Returns the path written."""
    validate_submission(frame, blind)
    out = Path(out)
    rows = frame.sort_values("FileName", kind="stable")
    with atomic_path(out) as tmp:
        rows.to_csv(tmp, index=False, header=list(HEADER), lineterminator="\n", encoding="utf-8")
    return out
