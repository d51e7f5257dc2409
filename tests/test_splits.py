"""Derived splits that hold every class (medusa.data.corpora.splits): on a corpus whose speakers mostly speak one
emotion, a single StratifiedGroupKFold draw leaves a class out of dev or test; the search finds speaker-disjoint
splits holding all of them, stops where none can exist, and prepare records how it found them."""
import logging

import numpy as np
import pandas as pd
import pytest
from test_csv_manifest import HEADER, prepare_params, tone, write_csv

from medusa.data.corpora.manifest import prepare_corpus
from medusa.data.corpora.msp_podcast import CorpusError
from medusa.data.corpora.splits import (
    _one_fold,
    class_table,
    search_splits,
    speaker_disjoint_cut,
    stratified_speaker_split,
)

FRACTIONS = {"train": 0.7, "dev": 0.15, "test": 0.15}


def one_emotion_corpus(sad=(6, 5, 4)) -> tuple[np.ndarray, pd.Series]:
    """Labels and speakers: 26 speakers of one emotion each (A, H, N), Sad spoken only by len(sad) small
    speakers, and 3 speakers of two emotions; 528 rows with sad=(6, 5, 4)."""
    plan = ([("A", n) for n in (40, 34, 30, 26, 22, 18, 15, 12)] + [("H", n) for n in (30, 25, 20, 16, 12, 9, 7)]
            + [("N", n) for n in (38, 30, 24, 20, 16, 14, 11, 8)] + [("S", n) for n in sad])
    labels, speakers = [], []
    for i, (code, n) in enumerate(plan):
        labels += [code] * n
        speakers += [f"{code.lower()}{i:02d}"] * n
    for i, pair in enumerate(("AH", "HN", "AN")):
        for code in pair:
            labels += [code] * 6
            speakers += [f"mix{i}"] * 6
    return np.array(labels), pd.Series(speakers)


def single_draw(labels: np.ndarray, speakers: pd.Series, seed: int) -> np.ndarray:
    """The rule before the search: one StratifiedGroupKFold fold as test, then one of the rest as dev."""
    groups = speakers.to_numpy()
    out = np.full(len(labels), "train", dtype=object)
    out[_one_fold(labels, groups, FRACTIONS["test"], seed, "test_fraction")] = "test"
    rest = np.flatnonzero(out == "train")
    out[rest[_one_fold(labels[rest], groups[rest], FRACTIONS["dev"] / (1 - FRACTIONS["test"]), seed + 1,
                       "dev_fraction")]] = "dev"
    return out


def counts(splits: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    return pd.crosstab(splits, labels).reindex(index=list(FRACTIONS), columns=list("AHNS"), fill_value=0)


def assert_speaker_disjoint(splits: np.ndarray, speakers: pd.Series) -> None:
    assert (pd.Series(splits).groupby(speakers.to_numpy()).nunique() == 1).all()


def test_every_derived_split_holds_every_class_where_a_single_draw_did_not():
    labels, speakers = one_emotion_corpus()
    assert speakers.nunique() == 29 and (labels == "S").sum() == 15
    for seed in range(5):  # the old rule leaves Sad (or another class) out of dev or test, whatever the seed
        assert (counts(single_draw(labels, speakers, seed), labels) == 0).any().any(), seed
    for seed in range(3):
        splits = stratified_speaker_split(labels, speakers, FRACTIONS["dev"], FRACTIONS["test"], seed, draws=200, classes="auto")
        table = counts(splits, labels)
        assert (table > 0).all().all(), (seed, table)
        assert_speaker_disjoint(splits, speakers)
        for name, fraction in FRACTIONS.items():
            assert abs((splits == name).mean() - fraction) < 0.03, (seed, name)
        again = stratified_speaker_split(labels, speakers, FRACTIONS["dev"], FRACTIONS["test"], seed, draws=200, classes="auto")
        assert np.array_equal(splits, again)


def test_the_record_names_the_winning_draw_and_its_score():
    labels, speakers = one_emotion_corpus()
    found = search_splits(labels, speakers, FRACTIONS, seed=7, draws=60, classes="auto")
    r = found.record
    assert r["draws"] == r["tried"] == 60 and r["empty_cells"] == 0 and r["uncovered"] == []
    assert r["seed"] == 7 + r["best_draw"] and r["generator"] in ("stratified_group_kfold", "class_greedy")
    assert r["classes"] == ["A", "S", "H", "N"] and r["speakers"] == 29 and r["rows"] == len(labels)
    assert 0 < r["distance"] < 0.5
    # the winner of 60 draws is among the first 60 of 200: more draws can only score as well or better
    more = search_splits(labels, speakers, FRACTIONS, seed=7, draws=200, classes="auto").record
    assert (more["empty_cells"], more["distance"]) <= (r["empty_cells"], r["distance"])


def test_the_test_cut_of_a_training_pool_holds_every_class():
    labels, speakers = one_emotion_corpus()
    speakers = speakers.where(np.arange(len(speakers)) % 50 != 0, "Unknown")  # unknown: a speaker per row
    for seed in range(3):
        cut = speaker_disjoint_cut(speakers, 0.3, seed, labels=labels, draws=200, classes="auto")
        splits = np.where(cut, "test", "train")
        assert (pd.crosstab(splits, labels) > 0).all().all(), seed
        known = (speakers != "Unknown").to_numpy()
        assert_speaker_disjoint(splits[known], speakers[known])
        assert abs(cut.mean() - 0.3) < 0.03


def test_a_class_with_fewer_speakers_than_splits_stops_or_is_kept_with_a_warning(caplog):
    labels, speakers = one_emotion_corpus(sad=(4, 3))
    with pytest.raises(CorpusError) as err:
        search_splits(labels, speakers, FRACTIONS, seed=0, draws=50, classes="auto", what="corpus.csv: the rows without a split")
    message = str(err.value)
    assert message.startswith("corpus.csv: the rows without a split: class S (Sad) is spoken by 2 speaker(s) "
                              "(s23: 4, s24: 3 utterances)")
    for way_out in ("`split`", "prepare.classes", "[A, H, N]", "prepare.allow_uncovered_classes: true"):
        assert way_out in message
    # restricting the classes to those every split can hold: Sad's rows are split as rows without a class
    found = search_splits(labels, speakers, FRACTIONS, seed=0, draws=50, classes=["A", "H", "N"])
    assert found.record["classes"] == ["A", "H", "N"] and found.record["empty_cells"] == 0

    with caplog.at_level(logging.WARNING, logger="medusa.data.corpora.splits"):
        found = search_splits(labels, speakers, FRACTIONS, seed=0, draws=50, classes="auto", allow_uncovered=True)
    assert "allow_uncovered_classes" in caplog.text and "lacks S" in caplog.text
    table = counts(found.splits, labels)
    assert table.loc["train", "S"] > 0  # a class short of speakers stays in train: without it, it leaves the run
    assert found.record["empty_cells"] == 1 and len(found.record["uncovered"]) == 1
    assert (table.drop(columns="S") > 0).all().all()


def test_a_search_that_finds_no_covering_assignment_says_after_how_many_draws():
    """Three speakers each speak two of A, S, H (every pair once): each class has the 2 speakers a train/test cut
    needs, but two of the three always share a side, and the class only they speak misses the other."""
    labels = ["A"] * 3 + ["S"] * 3 + ["A"] * 3 + ["H"] * 3 + ["S"] * 3 + ["H"] * 3 + ["N"] * 40
    speakers = ["p1"] * 6 + ["p2"] * 6 + ["p3"] * 6 + [f"n{i}" for i in range(40)]
    with pytest.raises(CorpusError, match=r"no assignment of the 43 speakers to train, test holding every class "
                                          r"in every split was found after 30 draws .*prepare.split_draws"):
        search_splits(labels, pd.Series(speakers), {"train": 0.7, "test": 0.3}, seed=0, draws=30, classes="auto")


def test_prepare_records_the_search_and_the_class_table_shows_it(tmp_path):
    (tmp_path / "wav").mkdir()
    labels, speakers = one_emotion_corpus()
    words = {"A": "angry", "H": "happy", "N": "neutral", "S": "sad"}
    keep = np.arange(len(labels)) % 3 == 0  # a third of the rows: 29 speakers still, fewer files to check
    rows = []
    for i in np.flatnonzero(keep | (labels == "S")):
        tone(tmp_path / "wav" / f"u{i:03d}.wav", seconds=0.2)
        rows.append([f"wav/u{i:03d}.wav", words[labels[i]], speakers[i]])
    prepared = prepare_corpus(prepare_params(write_csv(tmp_path, HEADER, rows), dev_fraction=0.15,
                                             test_fraction=0.15, split_draws=100), tmp_path / "cache")
    m = prepared.manifest
    record = prepared.split_search["derived"]
    assert set(prepared.split_search) == {"derived"} and record["draws"] == 100 and record["empty_cells"] == 0
    table = class_table(m, prepared.classes)
    assert list(table.index) == ["train", "dev", "test", "all"] and (table["utterances"] > 0).all().all()
    assert table.loc["all", ("utterances", "S")] == (m["label"] == "S").sum()
    assert np.allclose(table["share"].sum(axis=1), 1.0, atol=0.002)  # shares rounded to 3 places

    # train and dev given, no test rows: the test cut of train is searched, and recorded as such
    given = [r + ["dev" if s == "dev" else "train"] for r, s in zip(rows, m.set_index("utt_id").loc[
        [r[0][4:-4] for r in rows], "split"])]
    prepared = prepare_corpus(prepare_params(write_csv(tmp_path, HEADER + ["split"], given, name="given.csv"),
                                             split_draws=100), tmp_path / "cache")
    assert set(prepared.split_search) == {"test_cut"} and prepared.split_search["test_cut"]["splits"] == ["train",
                                                                                                        "test"]
    assert (class_table(prepared.manifest, prepared.classes).loc[["train", "test"], "utterances"] > 0).all().all()


def test_the_search_params_are_validated_and_named(repo_root):
    import yaml

    from medusa.config.params import ParamsError, validate_params

    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert validate_params(raw).prepare.split_draws >= 1
    raw["prepare"]["split_draws"] = 0
    del raw["prepare"]["allow_uncovered_classes"]
    with pytest.raises(ParamsError, match=r"(?s)prepare.split_draws: .*prepare.allow_uncovered_classes: missing key"):
        validate_params(raw)
