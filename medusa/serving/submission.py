"""The challenge submission file: one predicted class per blind audio file.

The categorical task of the Interspeech 2025 SER Challenge is scored on a blind test set (MSP-Podcast Test3)
from a CSV of exactly this form:

    FileName,EmoClass
    MSP-PODCAST_test3_0001.wav,N
    ...

one row per blind file, EmoClass one letter of A S H U F D C N. In an MSP-layout corpus (medusa.data.corpora.msp_podcast)
the blind files are the Audios/*.wav (the extension in any case: msp_podcast.audio_files) without a row in the
consensus label file, the same rule the manifest uses for its `split == "blind"` rows (utt_id = the file's stem).

Two ways to a submission: the ensemble stage's stored posteriors (submission_from_posteriors, no audio read again)
or a bundle run on the corpus's blind audio (submission_from_bundle, which reads and scores the files as
`medusa predict` does). Either frame goes through write_submission, which refuses a file the scorer would reject or
score wrongly: a blind file missing or twice, a file that is not blind, a letter outside the 8.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from medusa.data.corpora.msp_podcast import CONSENSUS_NAMES, CorpusError, audio_files, find_label_file, read_consensus
from medusa.errors import UserError
from medusa.io import atomic_path
from medusa.labels import CODES, classes_of, target_columns

HEADER = ("FileName", "EmoClass")
#: How many names of each kind an error message lists (a wrong corpus can miss thousands).
SHOWN = 5
#: How many unscorable blind files an error message lists with their reasons, one a line.
SHOWN_REASONS = 20

log = logging.getLogger(__name__)


class SubmissionError(UserError, ValueError):
    """The submission cannot be made or would be rejected; the message names the folder, files or rows."""


def _some(names: Iterable[str]) -> str:
    names = list(names)
    listed = ", ".join(names[:SHOWN])
    return f"{listed}, ... ({len(names)} in all)" if len(names) > SHOWN else listed


def blind_files(corpus: str | Path) -> list[str]:
    """Sorted file names (`MSP-PODCAST_test3_0001.wav`, ...) of the blind audio of an MSP-layout folder: the
    Audios/*.wav without a consensus row, as the label files name them (a file `X.WAV` on disk is `X.wav`: the
    listing is msp_podcast.audio_files). Labelled files of any Split_Set (also those prepare leaves out, such as
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
    blind = sorted(name for name in audio_files(audio_dir) if name not in labelled)
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
                           names: list[str] | None = None, *, progress: bool = False) -> pd.DataFrame:
    """The submission of a predict bundle run on every blind file of an MSP-layout corpus. The files are read and
    scored exactly as `medusa predict` reads and scores them (medusa.serving.predict.Predictor.predict_files: any
    format, rate or channel count converted to 16 kHz mono; a file longer than 30 s scored as the mean of its
    windows), found on disk by msp_podcast.audio_files (so the blind file `X.wav` may be `X.WAV` there).

    `bundle`: a loaded medusa.serving.inference.Bundle (scored with its ASR/encoder caches in `cache_dir`) or a
    Predictor; `names`: the blind files (default blind_files(corpus); pass the caller's list when it has one).
    Every file is scored; if any could not be (missing, unreadable, empty, too short, non-finite output),
    SubmissionError naming each one with its reason, one a line: the challenge needs a class for every blind file,
    so no submission is made without one."""
    from medusa.serving.predict import Predictor  # pulls in the audio and bundle code only when scoring

    corpus = Path(corpus)
    names = blind_files(corpus) if names is None else [str(n) for n in names]
    audio_dir = corpus / "Audios"
    on_disk = audio_files(audio_dir) if audio_dir.is_dir() else {}
    paths = [on_disk.get(n, audio_dir / n) for n in names]  # a name not on disk gets its "no such file" row
    predictor = bundle if isinstance(bundle, Predictor) else Predictor(bundle, Path(cache_dir))
    # utterances, scored whole as the pipeline scores its test clips (not cut at the training clips' p95)
    frame = predictor.predict_files(paths, predictor.utterance_window, progress=progress)
    files = frame[frame["level"] == "file"].reset_index(drop=True)
    assert len(files) == len(paths), f"{len(paths)} blind files gave {len(files)} file rows"  # one row a file
    columns = list(target_columns(predictor.classes))
    problems = [str(e) if pd.notna(e) else f"{path}: the bundle gave non-finite probabilities"
                for path, e, finite in zip(paths, files["error"], np.isfinite(files[columns].to_numpy(float)).all(1))
                if pd.notna(e) or not finite]
    if problems:
        shown = problems[:SHOWN_REASONS] + ([f"... ({len(problems)} in all)"] if len(problems) > SHOWN_REASONS else [])
        raise SubmissionError(f"{corpus}: {len(problems)} of {len(names)} blind file(s) could not be scored, so no "
                              "submission was made (the challenge needs a class for every blind file: repair or "
                              "replace them):\n" + "\n".join(f"  {p}" for p in shown))
    warned = [f"{n} ({w})" for n, w in zip(names, files["warning"]) if pd.notna(w)]
    if warned:
        log.warning("%d blind file(s) scored with a warning, their classes deserve suspicion: %s", len(warned),
                    _some(warned))
    return submission_frame([Path(n).stem for n in names], files["predicted"])


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
