"""Corpus in the MSP-Podcast challenge layout -> the manifest every later stage reads.

Manifest columns (one row per utterance):
    utt_id, path, duration_s, speaker, gender, split, label, p_A .. p_N (soft targets), arousal, valence,
    dominance, agreement, n_votes, ref_text
Splits:
    train  the corpus's training sets (params prepare.train_sets) minus the test cut;
    test   the paper's in-house cut: `test_fraction` of those utterances, speaker-disjoint from train, seeded;
    dev    the development sets (prepare.dev_sets), used for model selection;
    blind  audio in Audios/ with no label row (like the challenge's Test3), kept for prediction.
Rows of other Split_Set values (e.g. Test1/Test2 of older releases) are left out, with a log line.
Soft targets: the normalised primary votes over the 8 classes. `Other-...` votes name no class, so they are
dropped before normalising (an utterance with 2 Sad, 1 Neutral and 1 Other vote gets p_S = 2/3, p_N = 1/3);
an utterance whose votes are all Other (or that has none) has no soft target (NaN), as have blind rows.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from medusa.audio import check_corpus_audio
from medusa.corpora.msp_podcast import (CONSENSUS_NAMES, DETAILED_NAMES, CorpusError, find_label_file,
                                        read_consensus, read_detailed)
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS, soft_targets, vote_counts
from medusa.params import PrepareParams

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test", "blind")
UNKNOWN_SPEAKER = "Unknown"
MANIFEST_COLUMNS = ("utt_id", "path", "duration_s", "speaker", "gender", "split", "label",
                    *SOFT_TARGET_COLUMNS, *ATTRIBUTES, "agreement", "n_votes", "ref_text")


def speaker_disjoint_cut(speakers: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the rows forming a held-out cut of about `fraction` of the rows, whole speakers at a
    time. Speakers are taken in a seeded random order until the cut reaches the target size; an utterance of
    an unknown speaker counts as a speaker of its own (it cannot be matched to anyone)."""
    groups = speakers.astype(str).where(speakers.astype(str) != UNKNOWN_SPEAKER,
                                        "unknown:" + speakers.index.astype(str))
    sizes = groups.value_counts().sort_index()
    order = np.random.default_rng(seed).permutation(len(sizes))
    target = fraction * len(groups)
    chosen, total = [], 0
    for i in order:
        if total >= target:
            break
        # Skip a speaker that would overshoot the target by more than it helps.
        if total + sizes.iloc[i] - target > target - total and total > 0:
            continue
        chosen.append(sizes.index[i])
        total += sizes.iloc[i]
    return groups.isin(chosen).to_numpy()


def build_manifest(p: PrepareParams, check_audio: bool = True) -> pd.DataFrame:
    corpus = Path(p.corpus_dir)
    audio_dir = corpus / "Audios"
    if not audio_dir.is_dir():
        raise CorpusError(f"{audio_dir}: not found (prepare.corpus_dir must hold Audios/, Labels/, Transcripts/)")
    consensus = read_consensus(find_label_file(corpus / "Labels", CONSENSUS_NAMES))
    detailed = read_detailed(find_label_file(corpus / "Labels", DETAILED_NAMES))
    log.info("read %d consensus rows and %d annotator rows", len(consensus), len(detailed))

    # Labelled rows: keep the split sets asked for.
    set_to_split = {**{s: "train" for s in p.train_sets}, **{s: "dev" for s in p.dev_sets}}
    labelled = consensus[consensus["split_set"].isin(set_to_split)].copy()
    dropped = consensus.loc[~consensus["split_set"].isin(set_to_split), "split_set"].value_counts()
    for name, n in dropped.items():
        log.info("leaving out %d rows of Split_Set %r (not in prepare.train_sets or dev_sets)", n, name)
    if labelled.empty:
        raise CorpusError(f"{corpus}: no row has a Split_Set in {sorted(set_to_split)}; "
                          f"found {sorted(consensus['split_set'].unique())}")
    labelled["split"] = labelled["split_set"].map(set_to_split)
    pool = labelled["split"] == "train"
    cut = speaker_disjoint_cut(labelled.loc[pool, "speaker"].reset_index(drop=True), p.test_fraction, p.seed)
    labelled.loc[labelled.index[pool.to_numpy()][cut], "split"] = "test"

    # Soft targets and agreement from the annotators' primary votes.
    votes = detailed.groupby("file_name")["primary"].agg(list)
    file_votes = labelled["file_name"].map(votes)
    no_votes = file_votes.isna()
    if no_votes.any():
        log.warning("%d labelled files have no annotator rows (e.g. %s): they get no soft target",
                    int(no_votes.sum()), labelled.loc[no_votes, "file_name"].iloc[0])
    file_votes = file_votes.apply(lambda v: v if isinstance(v, list) else [])
    counts = np.stack([vote_counts(v) for v in file_votes]) if len(file_votes) else np.zeros((0, len(CODES)))
    n_votes = file_votes.apply(len).to_numpy()
    targets = soft_targets(counts)
    agreement = np.where(n_votes > 0, counts.max(axis=1) / np.maximum(n_votes, 1), np.nan)
    for j, col in enumerate(SOFT_TARGET_COLUMNS):
        labelled[col] = targets[:, j]
    labelled["agreement"] = agreement
    labelled["n_votes"] = n_votes

    # Audio: every labelled file must exist; audio without a label row is blind.
    on_disk = {f.name for f in audio_dir.glob("*.wav")}
    missing = sorted(set(labelled["file_name"]) - on_disk)
    if missing:
        raise CorpusError(f"{audio_dir}: {len(missing)} labelled files are missing, e.g. {missing[:3]}")
    blind = pd.DataFrame({"file_name": sorted(on_disk - set(consensus["file_name"]))})
    blind["split"] = "blind"
    blind["label"] = None
    blind["speaker"] = UNKNOWN_SPEAKER
    blind["gender"] = "Unknown"
    table = pd.concat([labelled, blind], ignore_index=True)

    table["utt_id"] = table["file_name"].str.removesuffix(".wav")
    table["path"] = [str(audio_dir / f) for f in table["file_name"]]
    durations = []
    for path in tqdm(table["path"], desc="checking audio headers", unit="file", disable=not check_audio):
        durations.append(check_corpus_audio(path).duration_s if check_audio else np.nan)
    table["duration_s"] = durations
    transcripts = corpus / "Transcripts"
    table["ref_text"] = [_read_transcript(transcripts / f"{u}.txt") for u in table["utt_id"]]
    table = table.sort_values(["split", "utt_id"], key=lambda s: s.map(SPLITS.index) if s.name == "split" else s)
    return table.loc[:, list(MANIFEST_COLUMNS)].reset_index(drop=True)


def _read_transcript(path: Path) -> str | None:
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def split_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Utterances, speakers, hours and labelled share per split."""
    g = manifest.groupby("split", sort=False)
    return pd.DataFrame({
        "utterances": g.size(),
        "speakers": g["speaker"].nunique(),
        "hours": g["duration_s"].sum() / 3600,
        "with_soft_target": g[SOFT_TARGET_COLUMNS[0]].count(),
    }).reindex([s for s in SPLITS if s in set(manifest["split"])])


def class_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Consensus label counts per split (rows: split, columns: A..N, O, X)."""
    labelled = manifest[manifest["split"] != "blind"]
    table = pd.crosstab(labelled["split"], labelled["label"])
    return table.reindex(columns=[c for c in (*CODES, "O", "X") if c in table.columns], fill_value=0)


def speaker_overlap(manifest: pd.DataFrame) -> pd.DataFrame:
    """Known speakers shared by each pair of labelled splits (train/test must share none)."""
    known = manifest[(manifest["speaker"] != UNKNOWN_SPEAKER) & (manifest["split"] != "blind")]
    by_split = known.groupby("split")["speaker"].agg(set)
    names = [s for s in SPLITS if s in by_split.index]
    return pd.DataFrame([[len(by_split[a] & by_split[b]) for b in names] for a in names], index=names, columns=names)
