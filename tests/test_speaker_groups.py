"""Speaker-safe splits: MSP-Podcast's Unknown speakers grouped by podcast, a CSV's `group` column, and the summary
the prepare notebook shows. The corpora are small and written by the tests (MSP layout: Audios/, Labels/)."""
import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from medusa.config.params import PrepareParams
from medusa.data.corpora.csv_manifest import write_manifest_csv
from medusa.data.corpora.manifest import prepare_corpus, speaker_group_summary
from medusa.data.corpora.msp_podcast import CorpusError, podcast_groups, podcast_of
from medusa.data.corpora.splits import split_units

LABELS = "ASHN"
#: Train podcasts 1..24, Development 25..32; odd podcasts have 4 Unknown rows beside their host's 4 rows.
#: Speaker 77 speaks in podcast 3 (which has Unknown rows) and in podcast 4 (which has none): the safe rule ties
#: all 77's rows, podcast 4's included, to podcast 3; podcast 4's host (104) stays free.
TRAIN, DEV = range(1, 25), range(25, 33)
UNNAMED = "OTHER-SHOW_0001.wav"  # an Unknown speaker whose file names no podcast


def corpus_rows() -> list[tuple[str, str, str, str]]:
    """(file name, label, SpkrID, Split_Set) of the test corpus."""
    rows = []
    for k in [*TRAIN, *DEV]:
        split_set = "Train" if k in TRAIN else "Development"
        speakers = [str(100 + k)] * 4 + (["Unknown"] * 4 if k % 2 else []) + (["77"] * 2 if k in (3, 4) else [])
        for j, spk in enumerate(speakers):
            rows.append((f"MSP-PODCAST_{k:04d}_{j + 1:04d}.wav", LABELS[j % 4], spk, split_set))
    rows.append((UNNAMED, "A", "Unknown", "Train"))
    return rows


def write_msp(root: Path, rows=None) -> Path:
    rows = corpus_rows() if rows is None else rows
    for sub in ("Audios", "Labels", "Transcripts"):
        (root / sub).mkdir(parents=True)
    tone = (0.1 * np.sin(np.arange(3200) / 5)).astype(np.float32)
    for name, *_ in rows:
        sf.write(root / "Audios" / name, tone, 16000, subtype="PCM_16")
    with (root / "Labels" / "labels_consensus.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        w.writerows([name, label, 4.0, 4.0, 4.0, spk, "Female", split] for name, label, spk, split in rows)
    words = {"A": "Angry", "S": "Sad", "H": "Happy", "N": "Neutral"}
    with (root / "Labels" / "labels_detailed.csv").open("w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["FileName", "EmoDetail"])
        w.writerows([name, f"WORKER00001; {words[label]}; ; A:4.0; V:4.0; D:4.0;"] for name, label, *_ in rows)
    return root


def params(corpus, **kw) -> PrepareParams:
    base = dict(corpus=str(corpus), train_sets=["Train"], dev_sets=["Development"], classes="auto", label_map={},
                dev_fraction=0.2, test_fraction=0.2, min_per_class=1, long_audio="reject", skip_bad_audio=False,
                seed=0, split_draws=20, allow_uncovered_classes=False, probe_max_utterances=100)
    return PrepareParams(**{**base, **kw})


def podcasts_in_splits(manifest: pd.DataFrame) -> pd.Series:
    """Per podcast (of a file name of the MSP form), the set of labelled splits its rows are in."""
    rows = manifest[manifest["split"] != "blind"]
    podcast = rows["utt_id"].map(lambda u: podcast_of(u + ".wav"))
    return rows[podcast.notna()].groupby(podcast[podcast.notna()])["split"].agg(set)


def test_file_names_give_the_podcast():
    assert podcast_of("MSP-PODCAST_0001_0008.wav") == "podcast:0001"
    assert podcast_of("MSP-PODCAST_12345_0008.wav") == "podcast:12345"
    assert podcast_of("msp-podcast_1_8.WAV") == "podcast:0001"           # one podcast however it is padded
    assert podcast_of("MSP-PODCAST_test3_0001.wav") is None               # the blind set names no podcast
    assert podcast_of("MSP-PODCAST_0001.wav") is None
    groups, unnamed = podcast_groups(pd.Series(["MSP-PODCAST_0001_0001.wav", "MSP-PODCAST_0001_0002.wav",
                                                "MSP-PODCAST_0002_0001.wav", "odd.wav"]),
                                     pd.Series(["Unknown", "7", "8", "Unknown"]))
    # podcast 1 has an Unknown row: all its rows are its group, known speaker 7's included; podcast 2 has none
    assert groups.tolist() == ["podcast:0001", "podcast:0001", None, None] and unnamed == 1


def test_split_units_join_speakers_through_groups_and_keep_lone_speakers_names():
    speakers = pd.Series(["s1", "s2", "s2", "s3", "s4", "Unknown:a.wav", "s5"])
    groups = pd.Series(["g", None, "h", "h", "", "g", "s5"])
    units = split_units(speakers, groups)
    # s1 and the unknown file share g; s2 and s3 share h; s4 and s5 have no partner. A group named like a lone
    # speaker ("s5" is both) keeps the speaker's name free: s5's unit is its group, named apart.
    assert units[0] == units[5] == "g" and units[1] == units[2] == units[3] == "h" and units[4] == "s4"
    assert units[6] == "s5"
    collide = split_units(pd.Series(["s1", "s2"]), pd.Series(["s2", None]))
    assert collide[1] == "s2" and collide[0] != "s2" and collide[0].endswith(": s2")
    assert split_units(speakers).tolist() == speakers.tolist()            # no groups: speakers as they were


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_no_podcast_of_unknown_speakers_is_in_train_and_test(tmp_path, seed):
    prepared = prepare_corpus(params(write_msp(tmp_path / "msp"), seed=seed), tmp_path / "cache", check_audio=False)
    m = prepared.manifest
    by_podcast = podcasts_in_splits(m)
    unknown_podcasts = [f"podcast:{k:04d}" for k in TRAIN if k % 2]
    assert all(len(by_podcast[p]) == 1 for p in unknown_podcasts)
    assert set(m["split"]) == {"train", "dev", "test"}
    # the known host of a podcast with Unknown rows goes with it; speaker 77 takes podcast 4's rows along
    split_of = m.set_index("utt_id")["split"]
    assert split_of["MSP-PODCAST_0004_0005"] == split_of["MSP-PODCAST_0003_0001"]
    assert m.loc[m["speaker"] == "77", "split"].nunique() == 1
    known = m[(m["speaker"] != "Unknown") & m["split"].isin(["train", "test"])]
    assert known.groupby("speaker")["split"].nunique().max() == 1
    summary = speaker_group_summary(m, prepared.split_units)
    assert summary.counts["groups_in_two_splits"]["train/test"] == 0
    assert summary.counts["units_in_two_splits"] == {"train/test": 0, "train/dev": 0, "dev/test": 0}
    assert "podcasts in both train and test: 0" in summary.check


def test_the_summary_counts_unknown_rows_groups_and_splits(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        prepared = prepare_corpus(params(write_msp(tmp_path / "msp")), tmp_path / "cache", check_audio=False)
    assert "1 rows with SpkrID Unknown have a file name not of the form" in caplog.text and UNNAMED in caplog.text
    summary = speaker_group_summary(prepared.manifest, prepared.split_units)
    n_unknown = sum(4 for k in [*TRAIN, *DEV] if k % 2) + 1
    c = summary.counts
    assert c["unknown_speaker_utterances"] == n_unknown and c["unknown_without_group"] == 1
    assert c["groups"] == 16                                             # the odd podcasts of Train and Development
    assert sum(c["groups_per_split"].values()) == 16 and c["known_speakers_in_groups"] == 16 + 1  # hosts and 77
    assert summary.table.loc["all", "unknown_speaker"] == n_unknown
    assert summary.table.loc["all", "unknown_in_a_group"] == n_unknown - 1
    # units: 12 + 4 podcast groups, the 16 hosts of podcasts without Unknown rows, the unnamed file
    assert c["split_units"] == 33 and 0 < c["largest_unit_share"] < 0.1
    assert list(summary.table.index) == ["train", "dev", "test", "all"]


def test_without_groups_the_same_corpus_splits_podcasts(tmp_path):
    """The rule is what keeps the podcasts whole: the same corpus as a CSV without its `group` column (each
    Unknown row then a speaker of its own) puts podcasts in train and test; with the column, it does not, and
    gives the splits of the folder."""
    root = write_msp(tmp_path / "msp")
    csv_path = write_manifest_csv(root, root / "manifest.csv")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    assert (table["group"] != "").sum() == sum(8 + 2 * (k == 3) for k in [*TRAIN, *DEV] if k % 2)
    table.drop(columns="group").to_csv(root / "ungrouped.csv", index=False)
    shared = 0
    for seed in range(3):
        folder = prepare_corpus(params(root, seed=seed), tmp_path / "cache", check_audio=False).manifest
        as_csv = prepare_corpus(params(csv_path, seed=seed), tmp_path / "cache", check_audio=False).manifest
        assert dict(zip(folder["utt_id"], folder["split"])) == dict(zip(as_csv["utt_id"], as_csv["split"]))
        ungrouped = prepare_corpus(params(root / "ungrouped.csv", seed=seed), tmp_path / "cache",
                                   check_audio=False).manifest
        shared += int((podcasts_in_splits(ungrouped).map(len) > 1).sum())
    assert shared > 0


def test_a_podcast_in_train_and_development_is_reported_not_hidden(tmp_path, caplog):
    rows = corpus_rows() + [("MSP-PODCAST_0001_0099.wav", "N", "Unknown", "Development")]
    with caplog.at_level(logging.WARNING):
        prepared = prepare_corpus(params(write_msp(tmp_path / "msp", rows)), tmp_path / "cache", check_audio=False)
    assert "share speakers or speaker groups" in caplog.text and "podcast:0001" in caplog.text
    counts = speaker_group_summary(prepared.manifest, prepared.split_units).counts
    assert counts["groups_in_two_splits"]["train/test"] == 0
    assert counts["groups_in_two_splits"]["train/dev"] + counts["groups_in_two_splits"]["dev/test"] == 1


def test_the_demo_layout_without_unknown_speakers_splits_as_before(tmp_path):
    """No Unknown row: no group, every unit is its speaker, and the splits are those of the speakers alone."""
    rows = [r for r in corpus_rows() if r[2] != "Unknown"]
    prepared = prepare_corpus(params(write_msp(tmp_path / "msp", rows)), tmp_path / "cache", check_audio=False)
    units = prepared.split_units
    assert units["group"].isna().all()
    assert (units["unit"].to_numpy() == prepared.manifest["speaker"].to_numpy()).all()


def write_group_csv(root: Path, group_of) -> Path:
    """12 speakers x 8 rows (A S H N twice), no split given; `group_of(speaker, k)` gives the group cell."""
    (root / "wav").mkdir(parents=True)
    tone = (0.1 * np.sin(np.arange(3200) / 5)).astype(np.float32)
    with (root / "corpus.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "speaker", "group"])
        for s in range(12):
            for k in range(8):
                name = f"wav/s{s:02d}_{k}.wav"
                sf.write(root / name, tone, 16000, subtype="PCM_16")
                w.writerow([name, LABELS[k % 4], "" if s >= 10 else f"spk{s}", group_of(s, k)])
    return root / "corpus.csv"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_csv_group_keeps_its_rows_and_speakers_in_one_split(tmp_path, seed):
    # spk0 and spk1 share session "a" on two rows each; the unknown speakers' (s10, s11) rows are session "b"
    path = write_group_csv(tmp_path, lambda s, k: "a" if s in (0, 1) and k < 2 else "b" if s >= 10 else "")
    prepared = prepare_corpus(params(path, seed=seed), tmp_path / "cache", check_audio=False)
    m = prepared.manifest
    assert m.loc[m["speaker"].isin(["spk0", "spk1"]), "split"].nunique() == 1
    assert m.loc[m["speaker"] == "Unknown", "split"].nunique() == 1
    assert set(m["split"]) == {"train", "dev", "test"}
    summary = speaker_group_summary(m, prepared.split_units)
    assert summary.counts["groups"] == 2 and "groups in both train and test: 0" in summary.check


def test_a_csv_group_follows_its_given_split(tmp_path):
    path = write_group_csv(tmp_path, lambda s, k: "a" if s in (0, 1) else "")
    rows = list(csv.reader(path.read_text().splitlines()))
    rows[0].append("split")
    for r in rows[1:]:
        r.append("")
    rows[1][-1] = "test"                                   # one row of group a is given: the group follows it
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    m = prepare_corpus(params(path), tmp_path / "cache", check_audio=False).manifest
    assert set(m.loc[m["speaker"].isin(["spk0", "spk1"]), "split"]) == {"test"}
    rows[2][-1] = "train"                                  # group a now given in two splits, more rows left empty
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(CorpusError, match=r"group 'a' \(joined with speaker\(s\) spk0, spk1 by the `group` column\) "
                                          "has rows in test and train and rows without a split"):
        prepare_corpus(params(path), tmp_path / "cache", check_audio=False)


@pytest.mark.parametrize("value, message", [
    ("NA", r"corpus\.csv:2: group 'NA' would put every row with it in one group"),
    ("unknown", r"corpus\.csv:2: group 'unknown' would put every row with it in one group"),
    ("a\nb", r"corpus\.csv:2: group 'a\\nb' holds a line break"),
])
def test_a_placeholder_group_is_refused_naming_line_and_value(tmp_path, value, message):
    path = write_group_csv(tmp_path, lambda s, k: value if (s, k) == (0, 0) else "")
    with pytest.raises(CorpusError, match=message):
        prepare_corpus(params(path), tmp_path / "cache", check_audio=False)


def test_the_group_column_with_audio_checked_and_long_files_segmented(tmp_path):
    """The full path (audio checked, a long Unknown-speaker file cut into pieces): the pieces keep the podcast's
    group, and the podcast stays in one split."""
    rows = corpus_rows()
    root = write_msp(tmp_path / "msp", rows)
    sf.write(root / "Audios" / "MSP-PODCAST_0005_0005.wav", np.zeros(16000 * 31, np.float32) + 0.01, 16000,
             subtype="PCM_16")
    prepared = prepare_corpus(params(root, long_audio="segment"), tmp_path / "cache")
    units = prepared.split_units.set_index("utt_id")
    pieces = units[units.index.str.startswith("MSP-PODCAST_0005_0005_seg")]
    assert len(pieces) == 2 and (pieces["group"] == "podcast:0005").all() and (pieces["unit"] == "podcast:0005").all()
    assert all(len(s) == 1 for p, s in podcasts_in_splits(prepared.manifest).items() if p == "podcast:0005")
