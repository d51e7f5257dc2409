"""A corpus -> the manifest every later stage reads (work/manifest.parquet).

A corpus is a CSV manifest (medusa.data.corpora.csv_manifest: the form for any corpus) or a folder in the MSP-Podcast
challenge layout (medusa.data.corpora.msp_podcast). Both become the same table:
    utt_id, path, duration_s, audio_sha256, speaker, gender, split, label, p_<code> for each of the run's classes (soft
    targets), arousal, valence, dominance, agreement, n_votes, ref_text
The p_ columns record the run's classes (medusa.labels.classes_of): every later model, table and prediction
follows them. `path` is the 16 kHz mono file to read (the original, or its conversion in work/audio/); audio_sha256 the hash of
the source file's bytes, so that a replaced recording changes the manifest and reruns what reads audio.
Splits:
    train  the training rows (MSP layout: prepare.train_sets) minus the test cut;
    test   given, or cut from train: `test_fraction` of it, speaker-disjoint, seeded (the paper's in-house cut);
    dev    given (MSP layout: prepare.dev_sets), used for model selection;
    blind  audio without a label (like the challenge's Test3), kept for prediction.
A CSV's rows without a split, and the test cut of a training pool, are whole split units chosen by a seeded search
that puts every class in every split where the speakers allow (medusa.data.corpora.splits). A unit is a speaker,
joined with the groups its rows belong to and every other speaker of those groups (splits.split_units): MSP layout,
the podcast of rows whose SpkrID is Unknown (msp_podcast.podcast_groups: the podcast number of
`MSP-PODCAST_<podcast>_<segment>.wav`); CSV, its optional `group` column. An unknown speaker outside any group is a
speaker of its own per audio file. The units are not a manifest column: PreparedCorpus.split_units has them, and
speaker_group_summary counts them for the prepare notebook and prepare.json.
Rows of other MSP Split_Set values (e.g. Test1/Test2 of older releases) are left out, with a log line.
Soft targets: the normalised primary votes over the run's classes. `Other-...` votes name no class, so they are
dropped before normalising (an utterance with 2 Sad, 1 Neutral and 1 Other vote gets p_S = 2/3, p_N = 1/3);
an utterance whose votes are all Other (or that has none) has no soft target (NaN), as have blind rows.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medusa.config.params import PrepareParams
from medusa.data.audio import prepare_audio
from medusa.data.corpora.csv_manifest import LABEL_MAP_PARAMS, consensus_votes, read_csv_manifest
from medusa.data.corpora.msp_podcast import (
    CONSENSUS_NAMES,
    DETAILED_NAMES,
    CorpusError,
    audio_files,
    find_label_file,
    podcast_groups,
    read_consensus,
    read_detailed,
)

# speaker_disjoint_cut and stratified_speaker_split lived here: imported by name from this module elsewhere
from medusa.data.corpora.splits import (  # noqa: F401
    UNKNOWN_SPEAKER,
    classes_without_train,
    search_splits,
    speaker_disjoint_cut,
    split_units,
    stratified_speaker_split,
)
from medusa.io import atomic_path
from medusa.labels import ATTRIBUTES, CODES, classes_of, soft_targets, target_columns, vote_counts

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test", "blind")


@dataclass
class PreparedCorpus:
    """What prepare makes of a corpus: the manifest, its classes, and what it left out (and why)."""
    manifest: pd.DataFrame
    classes: tuple[str, ...]
    skipped_audio: pd.DataFrame      # source, reason: files prepare.skip_bad_audio left out
    outside_classes: pd.DataFrame    # split, label, utterances: rows labelled with a class outside the run's
    #: How derived splits were found (splits.search_splits' record): under "derived" for a CSV's rows without a
    #: split, "test_cut" for the test cut of a training pool; empty where every split was given.
    split_search: dict = field(default_factory=dict)
    #: Per manifest row (same order): utt_id, group (the podcast of an MSP corpus's unknown-speaker rows, a CSV's
    #: `group` cell; None: none) and unit, the split unit the searches kept whole (splits.split_units).
    split_units: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["utt_id", "group", "unit"]))


def build_manifest(p: PrepareParams, cache_dir: str | Path, check_audio: bool = True) -> pd.DataFrame:
    return prepare_corpus(p, cache_dir, check_audio).manifest


def prepare_corpus(p: PrepareParams, cache_dir: str | Path, check_audio: bool = True) -> PreparedCorpus:
    """Read `prepare.corpus` (a CSV manifest or an MSP-Podcast-layout folder) and build the manifest: audio
    checked and converted to 16 kHz mono once (medusa.data.audio.prepare_audio), splits, the run's classes, soft
    targets over them. `cache_dir` receives converted audio (the pipeline's: medusa.config.paths.AUDIO_CACHE).
    `check_audio=False` skips the audio (tests of the label logic only)."""
    corpus = Path(p.corpus)
    if corpus.suffix.lower() == ".csv":
        rows = read_csv_manifest(corpus, p.label_map, label_map_from=LABEL_MAP_PARAMS)
    else:
        rows = _read_msp_layout(corpus, p)
    rows, skipped = _audio(rows, p, check_audio, cache_dir)
    given = (rows["split"] != "").to_numpy()
    rows, split_search = _assign_splits(rows, p)
    classes = _classes(rows, p, given)
    outside = _outside_classes(rows, classes)
    rows = _targets(rows, classes)
    label = rows["label"].astype(object)
    rows["label"] = label.where(label.notna(), None)  # None on blind rows, whichever reader made the table
    rows = rows.sort_values(["split", "utt_id"], key=lambda s: s.map(SPLITS.index) if s.name == "split" else s)
    group = rows["group"].astype(object)
    units = pd.DataFrame({"utt_id": rows["utt_id"], "group": group.where(group.notna(), None),
                          "unit": _split_units(rows)}).reset_index(drop=True)
    columns = ["utt_id", "path", "duration_s", "audio_sha256", "speaker", "gender", "split", "label", *target_columns(classes),
               *ATTRIBUTES, "agreement", "n_votes", "ref_text"]
    return PreparedCorpus(rows.loc[:, columns].reset_index(drop=True), classes, skipped, outside, split_search, units)


def _read_msp_layout(corpus: Path, p: PrepareParams) -> pd.DataFrame:
    """The challenge layout's rows: Split_Sets mapped to train/dev (test is cut from train later), annotators'
    primary votes per file, audio in Audios/ without a label row as blind."""
    audio_dir = corpus / "Audios"
    if not audio_dir.is_dir():
        raise CorpusError(f"{audio_dir}: not found (prepare.corpus must be a CSV manifest or a folder holding "
                          "Audios/, Labels/, Transcripts/)")
    consensus = read_consensus(find_label_file(corpus / "Labels", CONSENSUS_NAMES))
    detailed = read_detailed(find_label_file(corpus / "Labels", DETAILED_NAMES))
    log.info("read %d consensus rows and %d annotator rows", len(consensus), len(detailed))

    set_to_split = {**{s: "train" for s in p.train_sets}, **{s: "dev" for s in p.dev_sets}}
    labelled = consensus[consensus["split_set"].isin(set_to_split)].copy()
    dropped = consensus.loc[~consensus["split_set"].isin(set_to_split), "split_set"].value_counts()
    for name, n in dropped.items():
        log.info("leaving out %d rows of Split_Set %r (not in prepare.train_sets or dev_sets)", n, name)
    if labelled.empty:
        raise CorpusError(f"{corpus}: no row has a Split_Set in {sorted(set_to_split)}; "
                          f"found {sorted(consensus['split_set'].unique())}")
    labelled["split"] = labelled["split_set"].map(set_to_split)
    groups, unnamed = podcast_groups(labelled["file_name"], labelled["speaker"])
    labelled["group"] = groups.to_numpy()
    unknown = labelled["speaker"] == UNKNOWN_SPEAKER
    if unknown.any():
        log.info("%d of %d labelled rows have SpkrID %s: their podcasts (%d) are split groups, each kept in one split "
                 "with every row of the known speakers who speak in it", int(unknown.sum()), len(labelled),
                 UNKNOWN_SPEAKER, groups.nunique())
    if unnamed:
        log.warning("%d rows with SpkrID %s have a file name not of the form MSP-PODCAST_<podcast>_<segment>.wav "
                    "(e.g. %s): each is a speaker of its own per file, which the splits cannot keep with its "
                    "podcast", unnamed, UNKNOWN_SPEAKER,
                    labelled.loc[unknown & labelled["group"].isna(), "file_name"].iloc[0])
    votes = detailed.groupby("file_name")["primary"].agg(list)
    labelled["votes"] = labelled["file_name"].map(votes)
    no_votes = labelled["votes"].isna()
    if no_votes.any():
        log.warning("%d labelled files have no annotator rows (e.g. %s): they get no soft target",
                    int(no_votes.sum()), labelled.loc[no_votes, "file_name"].iloc[0])
    labelled["votes"] = labelled["votes"].apply(lambda v: v if isinstance(v, list) else [])

    on_disk = audio_files(audio_dir)
    missing = sorted(set(labelled["file_name"]) - set(on_disk))
    if missing:
        raise CorpusError(f"{audio_dir}: {len(missing)} labelled files are missing, e.g. {missing[:3]}")
    blind = pd.DataFrame({"file_name": sorted(set(on_disk) - set(consensus["file_name"]))})
    blind["split"], blind["label"], blind["votes"] = "blind", None, None
    blind["speaker"], blind["gender"], blind["group"] = UNKNOWN_SPEAKER, "Unknown", None
    table = pd.concat([labelled, blind], ignore_index=True)
    table["utt_id"] = table["file_name"].str.removesuffix(".wav")
    table["source"] = [str(on_disk[f]) for f in table["file_name"]]
    transcripts = corpus / "Transcripts"
    table["ref_text"] = [_read_transcript(transcripts / f"{u}.txt") for u in table["utt_id"]]
    return table.drop(columns=["file_name", "split_set"])


def _audio(rows: pd.DataFrame, p: PrepareParams, check: bool, cache_dir: str | Path
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every file checked (and converted to 16 kHz mono where it is not) once; a file over 30 s becomes
    `<utt_id>_segNN` rows when prepare.long_audio is segment; bad files stop prepare or, with
    prepare.skip_bad_audio, are left out and listed."""
    if not check:
        return (rows.assign(path=rows["source"], duration_s=np.nan, audio_sha256=None),
                pd.DataFrame(columns=["source", "reason"]))
    audio, skipped = prepare_audio(list(rows["source"]), cache_dir, long_audio=p.long_audio,
                                   skip_bad=p.skip_bad_audio,
                                   listed_at=list(rows["listed_at"]) if "listed_at" in rows else None)
    # The cache's index: which file became which (and, for the demo, that nothing needed converting). It also
    # keeps the folder non-empty, so that DVC can track it as the stage's output.
    with atomic_path(Path(cache_dir) / "index.csv") as tmp:
        audio.to_csv(tmp, index=False)
    pieces = audio.groupby("source")["segment"].transform("size")
    audio = audio.assign(cut=pieces > 1)
    out = rows.merge(audio[["source", "segment", "path", "duration_s", "sha256", "cut"]]
                     .rename(columns={"sha256": "audio_sha256"}), on="source", how="inner", validate="one_to_many")
    out.loc[out["cut"], "utt_id"] = [f"{u}_seg{k:02d}" for u, k in out.loc[out["cut"], ["utt_id", "segment"]]
                                     .itertuples(index=False)]
    if out["cut"].any() and out.loc[out["cut"], "ref_text"].notna().any():
        log.warning("%d segmented files had a reference transcript: their pieces get none (which words fall in "
                    "which piece is unknown), so WER and the text probe leave them out", out.loc[out["cut"], "source"]
                    .nunique())
        out.loc[out["cut"], "ref_text"] = None
    twice = out["utt_id"][out["utt_id"].duplicated()]
    if len(twice):
        raise CorpusError(f"the utterance name {twice.iloc[0]!r} is given twice after cutting long files into "
                          "`<utt_id>_segNN` pieces; rename the file (or give an `utt_id` column)")
    out["path"] = out["path"].astype(str)  # pandas' string dtype, as for every other text column
    return out.drop(columns=["segment", "cut"]), skipped


def _assign_splits(rows: pd.DataFrame, p: PrepareParams) -> tuple[pd.DataFrame, dict]:
    """Splits as given; rows without one: their speaker's given split if it has one, otherwise speaker-disjoint
    train/dev/test holding every class (splits.search_splits). A training pool with no test row anywhere
    (MSP-Podcast's Train set, or a CSV that names train and dev only) gets its test cut by the same search over
    train/test, as the paper's in-house split. The searches place split units (_split_units: speakers joined by
    their groups); an unknown speaker outside a group is a speaker of its own per audio file (so the pieces of a
    segmented file stay together). Returns the rows and the searches' records."""
    rows = rows.copy()
    speakers = _split_units(rows)
    derive = (rows["split"] == "").to_numpy().copy()
    if derive.any():
        given = rows[~derive & rows["split"].isin(["train", "dev", "test"])].groupby(speakers)["split"].agg(set)
        mixed = [s for s in speakers[derive].unique() if len(given.get(s, ())) > 1]
        if mixed:
            raise CorpusError(f"{p.corpus}: {_unit_words(rows, speakers, mixed[0])} has rows in "
                              f"{' and '.join(sorted(given[mixed[0]]))} and rows without a split; give those a split "
                              "too (a speaker's rows, and a group's, in one split)")
        inherit = derive & speakers.map(lambda s: len(given.get(s, ())) == 1).to_numpy(dtype=bool)
        rows.loc[inherit, "split"] = [next(iter(given[s])) for s in speakers[inherit]]
        derive &= ~inherit
    search = {}
    if derive.any():
        found = search_splits(rows.loc[derive, "label"], speakers[derive],
                              {"train": 1 - p.dev_fraction - p.test_fraction, "dev": p.dev_fraction,
                               "test": p.test_fraction}, p.seed, p.split_draws, p.classes, p.allow_uncovered_classes,
                              f"{p.corpus}: the rows without a split")
        rows.loc[derive, "split"], search["derived"] = found.splits, found.record
    pool = (rows["split"] == "train").to_numpy()
    if not (rows["split"] == "test").any() and pool.any():
        found = search_splits(rows.loc[pool, "label"], speakers[pool], {"train": 1 - p.test_fraction,
                                                                         "test": p.test_fraction},
                              p.seed, p.split_draws, p.classes, p.allow_uncovered_classes,
                              f"{p.corpus}: the training pool (cut into train and test by prepare.test_fraction)")
        rows.loc[pool, "split"], search["test_cut"] = found.splits, found.record
    for split in ("train", "dev"):
        if not (rows["split"] == split).any():
            raise CorpusError(f"{p.corpus}: no {split} rows (give `split` values or leave them empty to derive)")
    shared = _shared_speakers(rows.assign(speaker=speakers))
    if shared:
        log.warning("the given splits share speakers or speaker groups (%s): scores on them are not "
                    "speaker-independent", shared)
    return rows, search


def _split_units(rows: pd.DataFrame) -> pd.Series:
    """Each row's split unit (splits.split_units), indexed like `rows`: its speaker, an unknown speaker being one
    of its own per audio file (so the pieces of a segmented file stay together), joined through the rows' `group`
    (MSP layout: the podcast of unknown speakers; CSV: the `group` column) with the other speakers and groups
    sharing rows with it."""
    keys = rows["speaker"].where(rows["speaker"] != UNKNOWN_SPEAKER, UNKNOWN_SPEAKER + ":" + rows["source"])
    units = split_units(keys, rows["group"] if "group" in rows else None)
    return pd.Series(units.to_numpy(), index=rows.index, name="unit")


def _unit_words(rows: pd.DataFrame, units: pd.Series, unit: str) -> str:
    """A split unit in a message: `speaker 's1'`, or, where groups joined it, `group 'g' (joined with speaker(s)
    s1, s2 by the `group` column)`."""
    mine = rows[(units == unit).to_numpy()]
    if "group" not in rows or not mine["group"].notna().any():
        return f"speaker {unit!r}"
    known = sorted(set(mine["speaker"]) - {UNKNOWN_SPEAKER})
    listed = ", ".join(known[:5]) + (f" and {len(known) - 5} more" if len(known) > 5 else "")
    return (f"group {unit!r} (joined with " + (f"speaker(s) {listed}" if known else "no known speaker")
            + " by the `group` column)")


def _shared_speakers(rows: pd.DataFrame) -> str:
    """'train/test: 3 speakers, e.g. ...' for each pair of labelled splits sharing speakers ('' if none); called with
    the split units as `speaker`, a shared group counts as a shared speaker."""
    by_split = rows[rows["split"].isin(["train", "dev", "test"])].groupby("split")["speaker"].agg(set)
    pairs = [(a, b) for a, b in (("train", "dev"), ("train", "test"), ("dev", "test"))
             if a in by_split and b in by_split and by_split[a] & by_split[b]]
    return "; ".join(f"{a}/{b}: {len(by_split[a] & by_split[b])} speakers, e.g. "
                     f"{sorted(by_split[a] & by_split[b])[0]}" for a, b in pairs)


def _classes(rows: pd.DataFrame, p: PrepareParams, given: np.ndarray) -> tuple[str, ...]:
    """The run's classes: every code labelling a train row (auto), or the list asked for. A class that labels dev or
    test rows but no train row cannot be learnt: an error naming it, its speakers and the ways out
    (splits.classes_without_train), or, with prepare.allow_uncovered_classes, a warning and the class left out
    (auto) -- a class of the list asked for must label a train row either way. `given`: per row, whether its split
    was given (not derived)."""
    corpus, wanted = Path(p.corpus), p.classes
    present = set(rows.loc[rows["split"] == "train", "label"].dropna())
    uncovered = classes_without_train(rows["label"], _split_units(rows), rows["split"], str(corpus), wanted, given)
    if uncovered and (wanted != "auto" or not p.allow_uncovered_classes):
        raise CorpusError(uncovered)
    if uncovered:
        log.warning("%s (prepare.allow_uncovered_classes: the class is not one of the run's)", uncovered)
    classes = tuple(c for c in CODES if c in present and (wanted == "auto" or c in wanted))
    if wanted != "auto" and len(classes) < len(wanted):
        absent = sorted(set(wanted) - set(classes), key=CODES.index)
        raise CorpusError(f"{corpus}: prepare.classes lists {', '.join(absent)}, which label(s) no row of the corpus "
                          f"(train labels: {', '.join(sorted(present))})")
    if not classes:
        raise CorpusError(f"{corpus}: no train row is labelled with a class ({' '.join(CODES)})")
    return classes


def _outside_mask(rows: pd.DataFrame, classes: tuple[str, ...]) -> pd.Series:
    """Rows labelled with a class that is not one of the run's: they stay in the manifest (predicted, shown) but
    get no soft target (a distribution over the run's classes alone would teach a wrong answer) and are not
    scored, like O and X rows."""
    return rows["label"].isin(CODES) & ~rows["label"].isin(classes)


def _outside_classes(rows: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """(split, label, utterances) of the rows of _outside_mask, each logged."""
    outside = _outside_mask(rows, classes)
    counts = rows[outside].groupby(["split", "label"]).size().rename("utterances").reset_index()
    for r in counts.itertuples():
        log.warning("%d %s rows are labelled %s, not one of the run's classes (%s): kept without a target, not "
                    "scored", r.utterances, r.split, r.label, " ".join(classes))
    return counts


def _targets(rows: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """Soft targets: the primary votes for the run's classes, normalised (Other votes and votes for classes
    outside the run name none of its classes, so they are dropped first); no votes: the label's one-hot;
    neither: no target (NaN), as for blind rows and rows labelled with a class outside the run's.
    agreement = the top class's share of all votes."""
    rows = rows.copy()
    outside = _outside_mask(rows, classes)
    vote_lists = [consensus_votes(label, votes)[0] if split != "blind" else []
                  for label, votes, split in zip(rows["label"], rows["votes"], rows["split"])]
    counts = np.stack([vote_counts(v) for v in vote_lists]) if len(rows) else np.zeros((0, len(CODES)))
    n_votes = np.array([len(v) for v in vote_lists])
    given = np.array([isinstance(v, list) for v in rows["votes"]])
    keep = [CODES.index(c) for c in classes]
    targets = soft_targets(counts[:, keep])
    targets[outside.to_numpy()] = np.nan
    for j, col in enumerate(target_columns(classes)):
        rows[col] = targets[:, j]
    rows["agreement"] = np.where(given & (n_votes > 0), counts.max(axis=1) / np.maximum(n_votes, 1), np.nan)
    rows["n_votes"] = np.where(given, n_votes, np.nan)  # NaN: the corpus gives no votes
    for a in ATTRIBUTES:
        if a not in rows:
            rows[a] = np.nan
    return rows


def thin_classes(manifest: pd.DataFrame, classes: tuple[str, ...], minimum: int) -> pd.DataFrame:
    """(split, class, utterances) where a run class has fewer than `minimum` utterances in train, dev or test:
    a balanced score over 2 clips of a class is a coin toss, and model selection on it is noise."""
    labelled = manifest[manifest["split"].isin(["train", "dev", "test"])]
    counts = pd.crosstab(labelled["split"], labelled["label"]).reindex(index=["train", "dev", "test"],
                                                                       columns=list(classes), fill_value=0)
    thin = counts.stack().rename("utterances").reset_index().rename(columns={"label": "class"})
    return thin[thin["utterances"] < minimum].reset_index(drop=True)


def _read_transcript(path: Path) -> str | None:
    """The reference transcript, or None (no file, or an empty one: no reference, not an empty sentence)."""
    return (path.read_text(encoding="utf-8").strip() or None) if path.is_file() else None


def split_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Utterances, speakers, hours and labelled share per split."""
    g = manifest.groupby("split", sort=False)
    return pd.DataFrame({
        "utterances": g.size(),
        "speakers": g["speaker"].nunique(),
        "hours": g["duration_s"].sum() / 3600,
        "with_soft_target": g[target_columns(classes_of(manifest))[0]].count(),
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


@dataclass
class SpeakerGroups:
    """speaker_group_summary's answer."""
    table: pd.DataFrame  # per split (train, dev, test, all): utterances, unknown-speaker ones, groups, units
    counts: dict         # JSON-ready, for prepare.json
    check: str           # one line: how many groups and units two splits share


def speaker_group_summary(manifest: pd.DataFrame, units: pd.DataFrame) -> SpeakerGroups:
    """How the splits grouped the labelled rows (`units`: PreparedCorpus.split_units). Per split and over all:
    utterances, those with an unknown speaker, those of them in a group, groups (MSP layout: podcasts with unknown
    voices; CSV: `group` values), known speakers tied to a group, and split units. The counts add the largest
    unit's share of the labelled rows (a unit over a split's share cannot go to it) and, per pair of splits, the
    groups and units in both: derived splits share none; a pair of given splits (MSP-Podcast's Train and
    Development) can, and is reported as it is."""
    rows = manifest[["utt_id", "split", "speaker"]].merge(units[["utt_id", "group", "unit"]], on="utt_id",
                                                          how="left", validate="one_to_one")
    rows = rows[rows["split"].isin(["train", "dev", "test"])]
    names = [s for s in ("train", "dev", "test") if s in set(rows["split"])]
    unknown = rows["speaker"] == UNKNOWN_SPEAKER
    grouped = rows["group"].notna()

    def column(part: pd.DataFrame) -> dict:
        known = part["speaker"] != UNKNOWN_SPEAKER
        return {"utterances": len(part), "unknown_speaker": int((~known).sum()),
                "unknown_in_a_group": int((~known & part["group"].notna()).sum()),
                "groups": int(part["group"].nunique()),
                "known_speakers_in_groups": int(part.loc[known & part["group"].notna(), "speaker"].nunique()),
                "split_units": int(part["unit"].nunique())}

    table = pd.DataFrame({**{s: column(rows[rows["split"] == s]) for s in names}, "all": column(rows)}).T
    word = "podcasts" if grouped.any() and rows.loc[grouped, "group"].astype(str).str.startswith("podcast:").all() \
        else "groups"
    pairs = [(a, b) for a, b in (("train", "test"), ("train", "dev"), ("dev", "test")) if a in names and b in names]

    def shared(col: str) -> dict:
        by_split = rows[rows[col].notna()].groupby("split")[col].agg(set)
        return {f"{a}/{b}": len(by_split.get(a, set()) & by_split.get(b, set())) for a, b in pairs}

    groups_shared, units_shared = shared("group"), shared("unit")
    sizes = rows["unit"].value_counts()
    counts = {"unknown_speaker_utterances": int(unknown.sum()),
              "unknown_without_group": int((unknown & ~grouped).sum()),
              "groups": int(rows["group"].nunique()),
              "groups_per_split": {s: int(table.loc[s, "groups"]) for s in names},
              "known_speakers_in_groups": int(table.loc["all", "known_speakers_in_groups"]),
              "split_units": int(len(sizes)),
              "largest_unit_share": round(float(sizes.iloc[0] / len(rows)), 4) if len(rows) else 0.0,
              "groups_in_two_splits": groups_shared, "units_in_two_splits": units_shared}

    def line(what: str, shared_: dict) -> str:
        return what + " " + "; ".join(f"in both {a.replace('/', ' and ')}: {n}" for a, n in shared_.items()) + "."

    check = f"{line(word, groups_shared)} {line('Split units (speakers joined by their groups)', units_shared)}"
    if not grouped.any():
        check = f"No row is in a group: every split unit is a speaker (an unknown one per file). {check}"
    return SpeakerGroups(table.rename_axis("split"), counts, check)
