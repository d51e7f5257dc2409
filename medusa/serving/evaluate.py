"""Cross-corpus evaluation: a trained predict bundle scored on another corpus's labelled rows.

    medusa evaluate BUNDLE CORPUS [--label-map WORD=CODE ...] [--splits test ...] [--out metrics.json]

CORPUS is a CSV manifest (medusa.data.corpora.csv_manifest) or an MSP-Podcast-layout folder, read with the same
readers as prepare. Its audio is read and scored as `medusa predict` reads and scores files (medusa.serving.predict:
any format, rate and channel count, converted by medusa.data.audio.read_any), each utterance whole as the pipeline
scores its test clips (Predictor.utterance_window: a file over 30 s is cut into windows and scored as their mean),
a batch at a time: nothing is converted to disk, and memory is bounded by the batch. A file that
cannot be scored stops the run once every file was scored, with each bad file named (--skip-bad-audio scores the
rest and lists them in the metrics' skipped_audio).

Scored: the rows whose consensus is one of the bundle's classes, with the scores every report uses
(medusa.scoring.metrics.classification_scores: balanced macro-F1 with its interval, macro-F1, accuracy, per-class
F1). Rows labelled with anything else (a class the
bundle does not know, O, X) are counted per label in `not_scored`, with what the bundle predicted for them:
reported, never dropped silently. --splits values match a CSV's `split` or an MSP Split_Set ignoring case; one
that matches no labelled row is an error listing the splits there are. A label word the CSV reader cannot map is
an error naming --label-map.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medusa.data.corpora.csv_manifest import LABEL_MAP_OPTION, read_csv_manifest
from medusa.data.corpora.msp_podcast import CONSENSUS_NAMES, CorpusError, audio_files, find_label_file, read_consensus
from medusa.labels import target_columns
from medusa.scoring.metrics import classification_scores

if TYPE_CHECKING:
    from medusa.serving.predict import Predictor

log = logging.getLogger(__name__)

#: How many files that could not be scored the error lists with their reasons, one a line (then a count).
SHOWN_BAD = 20


@dataclass
class Evaluation:
    metrics: dict            # scores over the bundle's classes, plus not_scored, skipped_audio and corpus
    predictions: pd.DataFrame  # utt_id, path (the source file), label, predicted, p_<code>..., error


def corpus_rows(corpus: str | Path, label_map: dict[str, str], splits: list[str] | None = None) -> pd.DataFrame:
    """utt_id, source, label (and, for a CSV, listed_at: file:line) of a corpus's labelled rows (CSV `split` values,
    or MSP Split_Set values, in `splits` when given: matched ignoring case, as the CSV reader lower-cases its split
    values; a value that matches no labelled row is a CorpusError listing the splits there are). Label words are
    mapped by `label_map`, given as `--label-map` (named in the message on an unmapped word)."""
    corpus = Path(corpus)
    if corpus.suffix.lower() == ".csv":
        rows = read_csv_manifest(corpus, label_map, label_map_from=LABEL_MAP_OPTION)
        rows = rows[rows["label"].notna()]
        if splits:
            rows = rows[_in_splits(rows["split"], splits, corpus, "`split`")]
    else:
        if not (corpus / "Audios").is_dir():
            raise CorpusError(f"{corpus}: not a CSV manifest nor a folder holding Audios/ and Labels/")
        consensus = read_consensus(find_label_file(corpus / "Labels", CONSENSUS_NAMES))
        if splits:
            consensus = consensus[_in_splits(consensus["split_set"], splits, corpus, "Split_Set")]
        on_disk = audio_files(corpus / "Audios")  # the one listing of a corpus's audio (`X.WAV` is `X.wav`)
        missing = sorted(set(consensus["file_name"]) - set(on_disk))
        if missing:
            raise CorpusError(f"{corpus / 'Audios'}: {len(missing)} labelled files are missing, e.g. {missing[:3]} "
                              "(labelled in Labels/; restrict the rows with --splits, or restore the files)")
        rows = pd.DataFrame({"utt_id": consensus["file_name"].str.removesuffix(".wav"),
                             "source": [str(on_disk[f]) for f in consensus["file_name"]],
                             "label": consensus["label"]})
    if rows.empty:
        raise CorpusError(f"{corpus}: no labelled row" + (f" in split(s) {', '.join(splits)}" if splits else ""))
    return rows[["utt_id", "source", "label", *(["listed_at"] if "listed_at" in rows else [])]].reset_index(drop=True)


def _in_splits(values: pd.Series, splits: list[str], corpus: Path, column: str) -> pd.Series:
    """Rows whose split (`column`) is one of `splits`, ignoring case and spaces on both sides (the CSV reader
    lower-cases its `split` cells: `--splits Test` must find a CSV's `Test` rows). A value that matches no row is
    refused, listing the splits there are: scoring fewer rows than asked would pass silently."""
    key = values.fillna("").astype(str).str.strip().str.lower()
    wanted = {s.strip().lower(): s for s in splits}
    unmatched = [given for low, given in wanted.items() if not (key == low).any()]
    if unmatched:
        present = values.fillna("").astype(str).str.strip().value_counts()
        listed = ", ".join(f"{v} ({n} rows)" if v else f"none given ({n} rows: prepare derives their split, which "
                           "evaluate cannot see; leave out --splits to score them)" for v, n in present.items())
        raise CorpusError(f"{corpus}: --splits {' '.join(unmatched)} matches no labelled row's {column} (ignoring "
                          f"case; there are: {listed or 'no labelled rows'})")
    return key.isin(set(wanted)).to_numpy()


def evaluate(predictor: Predictor, corpus: str | Path, label_map: dict[str, str] | None = None,
             splits: list[str] | None = None, *, skip_bad_audio: bool, seed: int, bootstrap: int,
             batch_size: int | None = None, progress: bool = False) -> Evaluation:
    """Predict every labelled row of `corpus` with `predictor` (a medusa.serving.predict.Predictor) and score it.

    Each row's source file is read and scored as `medusa predict` does (Predictor.predict_sources: any format, rate
    and channel count; each utterance whole, a file over Predictor.utterance_window cut into windows and scored as
    their mean), `batch_size` pieces at a time,
    so memory is bounded by a batch, not by the corpus; nothing is written to disk. A file that cannot be scored
    (unreadable, empty, too short, non-finite output) gets its reason in its prediction row's `error`. Every file
    is scored first; then, without `skip_bad_audio`, AudioError naming each bad file with its reason, one a line;
    with it, they are left out of the scores and listed in metrics["skipped_audio"] (source, listed_at where the
    corpus is a CSV, error). PredictError for a batch_size below 1."""
    from medusa.data.audio import AudioError
    from medusa.serving.predict import Source

    rows = corpus_rows(corpus, label_map or {}, splits)
    listed_at = list(rows["listed_at"]) if "listed_at" in rows else [None] * len(rows)
    sources = [Source(str(s), w) for s, w in zip(rows["source"], listed_at)]
    classes = tuple(predictor.classes)
    log.info("scoring %d utterances of %s with the bundle's %d members", len(rows), corpus,
             len(predictor.bundle.member_names))
    frame = predictor.predict_sources(sources, predictor.utterance_window, batch_size=batch_size, progress=progress)
    files = frame[frame["level"] == "file"].reset_index(drop=True)  # a long file's windows are left out
    assert len(files) == len(rows), f"{len(rows)} files gave {len(files)} file rows"  # one file row a source
    probabilities = list(target_columns(classes))
    finite = np.isfinite(files[probabilities].to_numpy(np.float64)).all(axis=1)
    errors = [e if pd.notna(e) else None if ok else f"{s}: the bundle gave non-finite probabilities"
              for s, e, ok in zip(rows["source"], files["error"], finite)]
    predictions = pd.DataFrame({"utt_id": rows["utt_id"].to_numpy(), "path": rows["source"].astype(str).to_numpy(),
                                "label": rows["label"].to_numpy(),
                                "predicted": files["predicted"].where(finite, None).to_numpy()})
    for column in probabilities:
        predictions[column] = files[column].where(finite).to_numpy(np.float64)
    predictions["error"] = pd.Series(errors, dtype=object)
    bad = predictions["error"].notna().to_numpy()
    skipped = [{"source": s, **({"listed_at": w} if w else {}), "error": e}
               for s, w, e, b in zip(predictions["path"], listed_at, errors, bad) if b]
    if skipped and not skip_bad_audio:
        raise AudioError(bad_audio_message(corpus, skipped, len(rows)))
    if skipped:
        log.warning("%d of %d audio files of %s could not be scored and are left out of the scores "
                    "(--skip-bad-audio; listed in skipped_audio), e.g. %s", len(skipped), len(rows), corpus,
                    _one_line(skipped[0]))
    kept = predictions[~bad]
    scored = kept["label"].isin(classes)
    metrics = classification_scores(kept["label"], kept["predicted"], classes, seed, bootstrap) \
        if scored.any() else {"n": 0, "classes": list(classes)}
    outside = kept[~scored]
    metrics["not_scored"] = {label: {"utterances": int(len(g)),
                                     "predicted": {k: int(v) for k, v in g["predicted"].value_counts().items()}}
                             for label, g in outside.groupby("label")}
    metrics["skipped_audio"] = skipped
    metrics["corpus"] = str(corpus)
    if not scored.any():
        log.warning("no scored row of %s is labelled with one of the bundle's classes (%s)", corpus,
                    " ".join(classes))
    return Evaluation(metrics, predictions)


def _one_line(skipped: dict) -> str:
    """A bad file's reason, naming the file and where the corpus lists it (prefixed where the reason does not)."""
    text = skipped["error"].replace("\n", " ")  # one line a file, whatever the reason's text
    if skipped["source"] not in text:
        text = f"{skipped['source']}: {text}"
    where = skipped.get("listed_at")
    return f"{text} (listed at {where})" if where and where not in text else text


def bad_audio_message(corpus: str | Path, skipped: list[dict], total: int) -> str:
    """The error for files that could not be scored: one line each (the first SHOWN_BAD, then a count), and how
    to go on."""
    shown = [_one_line(s) for s in skipped[:SHOWN_BAD]]
    if len(skipped) > SHOWN_BAD:
        shown.append(f"... ({len(skipped)} in all)")
    return (f"{corpus}: {len(skipped)} of {total} audio files could not be scored:\n"
            + "".join(f"  {line}\n" for line in shown)
            + "fix or remove them, or pass --skip-bad-audio (skip_bad_audio=True) to score the rest and list these "
              "in the metrics' skipped_audio")
