"""Cross-corpus evaluation: a trained predict bundle scored on another corpus's labelled rows.

    medusa evaluate BUNDLE CORPUS [--label-map WORD=CODE ...] [--splits test ...] [--out metrics.json]

CORPUS is a CSV manifest (medusa.data.corpora.csv_manifest) or an MSP-Podcast-layout folder, read with the same
readers (and the same audio checks and 16 kHz conversion) as prepare. Scored: the rows whose consensus is one of
the bundle's classes, with the scores every report uses (medusa.scoring.metrics.classification_scores: balanced
macro-F1 with its interval, macro-F1, accuracy, per-class F1). Rows labelled with anything else (a class the
bundle does not know, O, X) are counted per label in `not_scored`, with what the bundle predicted for them:
reported, never dropped silently. --splits values match a CSV's `split` or an MSP Split_Set ignoring case; one
that matches no labelled row is an error listing the splits there are. A label word the CSV reader cannot map is
an error naming --label-map.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medusa.data.corpora.csv_manifest import LABEL_MAP_OPTION, read_csv_manifest
from medusa.data.corpora.msp_podcast import CONSENSUS_NAMES, CorpusError, audio_files, find_label_file, read_consensus
from medusa.labels import target_columns
from medusa.scoring.metrics import classification_scores

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    metrics: dict            # scores over the bundle's classes, plus not_scored and skipped_audio
    predictions: pd.DataFrame  # utt_id, path, label, predicted, p_<code>...


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


def evaluate(bundle, corpus: str | Path, label_map: dict[str, str] | None = None, splits: list[str] | None = None,
             audio_cache: str | Path = "work/cache/audio", cache_dir: str | Path = "work/cache",
             *, skip_bad_audio: bool, seed: int, bootstrap: int) -> Evaluation:
    """Predict every labelled row of `corpus` with `bundle` (a medusa.serving.inference.Bundle) and score it."""
    from medusa.data.audio import AudioError, prepare_audio

    rows = corpus_rows(corpus, label_map or {}, splits)
    try:
        audio, skipped = prepare_audio(list(rows["source"]), audio_cache, long_audio="reject",
                                       skip_bad=skip_bad_audio,
                                       listed_at=list(rows["listed_at"]) if "listed_at" in rows else None)
    except AudioError as e:  # its hints name prepare's params; say what evaluate takes
        raise AudioError(f"{e}\n(medusa evaluate: --skip-bad-audio lists and skips such files; files over 30 s "
                         "must be cut first)") from None
    rows = rows.merge(audio[["source", "path"]], on="source", how="inner")
    log.info("scoring %d utterances of %s with the bundle's %d members", len(rows), corpus,
             len(bundle.member_names))
    frame = bundle.predict_audio(list(rows["path"]), cache_dir=cache_dir)
    frame = frame.drop(columns=["utt_id"]).assign(utt_id=rows["utt_id"].to_numpy(), label=rows["label"].to_numpy())
    classes = tuple(bundle.classes)
    scored = frame["label"].isin(classes)
    metrics = classification_scores(frame["label"], frame["predicted"], classes, seed, bootstrap) if scored.any() \
        else {"n": 0, "classes": list(classes)}
    outside = frame[~scored]
    metrics["not_scored"] = {label: {"utterances": int(len(g)),
                                     "predicted": {k: int(v) for k, v in g["predicted"].value_counts().items()}}
                             for label, g in outside.groupby("label")}
    metrics["skipped_audio"] = skipped.to_dict(orient="records")
    metrics["corpus"] = str(corpus)
    if not scored.any():
        log.warning("no row of %s is labelled with one of the bundle's classes (%s)", corpus, " ".join(classes))
    columns = ["utt_id", "path", "label", "predicted", *target_columns(classes)]
    return Evaluation(metrics, frame[columns])
