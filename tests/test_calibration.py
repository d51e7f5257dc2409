"""Posteriors against the annotators (medusa.scoring.calibration): JSD from the vote distributions, ECE, reliability,
the calibration table on test, and the report's pieces built on them."""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon

from medusa.ensemble.voting import soft_vote, stack
from medusa.labels import ATTRIBUTES
from medusa.reporting import plots, reports
from medusa.scoring import calibration

CLASSES = ("A", "S", "N")
COLUMNS = ["p_A", "p_S", "p_N"]


def test_jsd_is_0_for_the_same_distribution_and_1_for_disjoint_ones():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), 50)
    np.testing.assert_array_equal(calibration.vote_divergence(p, p), 0.0)
    # nearly identical rows: rounding makes the divergence a hair below 0, whose square root (scipy's distance) is NaN
    q = p * (1 + 1e-12 * rng.standard_normal(p.shape))
    near = calibration.vote_divergence(p, q / q.sum(1, keepdims=True))
    assert not np.isnan(near).any() and near.max() < 1e-9
    np.testing.assert_allclose(calibration.vote_divergence(np.eye(3), np.eye(3)[[1, 2, 0]]), 1.0)
    # elsewhere: the square of scipy's Jensen-Shannon distance, base 2
    r = rng.dirichlet(np.ones(3), 50)
    np.testing.assert_allclose(calibration.vote_divergence(p, r), jensenshannon(p, r, base=2, axis=1) ** 2)
    votes = np.vstack([r[:1], np.full((1, 3), np.nan)])
    out = calibration.vote_divergence(p[:2], votes)
    assert np.isfinite(out[0]) and np.isnan(out[1])                 # a row without votes has no divergence


def _rows(top: float, rest: tuple[float, float], n: int, correct: int) -> tuple[np.ndarray, np.ndarray]:
    """n rows predicting class 0 with confidence `top`, `correct` of them labelled 0, the others 1."""
    probs = np.tile([top, *rest], (n, 1))
    return probs, np.array([0] * correct + [1] * (n - correct))


def test_ece_is_0_for_a_calibrated_construction():
    # confidence 0.9 right 9 times in 10, confidence 0.7 right 7 times in 10
    (p1, y1), (p2, y2) = _rows(0.9, (0.05, 0.05), 10, 9), _rows(0.7, (0.2, 0.1), 10, 7)
    probs, labels = np.vstack([p1, p2]), np.concatenate([y1, y2])
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    curve = calibration.reliability_curve(probs, labels)
    assert list(curve.columns) == ["bin", "lower", "upper", "confidence", "accuracy", "count"]
    assert curve["count"].tolist() == [10, 10] and curve["accuracy"].tolist() == pytest.approx([0.7, 0.9])
    assert curve["bin"].tolist() == [10, 13]                    # 15 equal-width bins: [0.667, 0.733), [0.867, 0.933)
    assert (curve["lower"] <= curve["confidence"]).all() and (curve["confidence"] < curve["upper"]).all()


def test_ece_of_an_overconfident_construction_is_the_hand_computed_value():
    # confidence 0.95 right half the time (gap 0.45), confidence 0.7 right 6 times in 10 (gap 0.1), equal halves
    (p1, y1), (p2, y2) = _rows(0.95, (0.03, 0.02), 10, 5), _rows(0.7, (0.2, 0.1), 10, 6)
    probs, labels = np.vstack([p1, p2]), np.concatenate([y1, y2])
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.45 + 0.5 * 0.1)
    # with weights: 30 rows at 0.95 (gap 0.45) against 10 at 0.7 (gap 0.1)
    probs = np.vstack([p1, p1, p1, p2])
    labels = np.concatenate([y1, y1, y1, y2])
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(0.75 * 0.45 + 0.25 * 0.1)
    assert np.isnan(calibration.expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=int)))


def _manifest() -> pd.DataFrame:
    """A 3-class run: 8 scored test rows (4 with 3 votes, 1 with a single vote, 3 from a corpus without votes),
    an X test row and train rows, which are not scored."""
    votes = np.array([[2, 1, 0], [0, 3, 0], [1, 1, 1], [0, 1, 2]]) / 3
    rows = [{"utt_id": f"t{i}", "split": "test", "label": "ASAN"[i], "n_votes": 3.0,
             **dict(zip(COLUMNS, votes[i]))} for i in range(4)]
    rows.append({"utt_id": "t4", "split": "test", "label": "S", "n_votes": 1.0, "p_A": 0.0, "p_S": 1.0, "p_N": 0.0})
    rows += [{"utt_id": f"t{i}", "split": "test", "label": label, "n_votes": np.nan,
              **dict(zip(COLUMNS, np.eye(3)[CLASSES.index(label)]))} for i, label in zip((5, 6, 7), "ANN")]
    rows.append({"utt_id": "t8", "split": "test", "label": "X", "n_votes": 4.0, "p_A": np.nan, "p_S": np.nan,
                 "p_N": np.nan})
    rows += [{"utt_id": f"r{i}", "split": "train", "label": "A", "n_votes": 3.0, "p_A": 1.0, "p_S": 0.0, "p_N": 0.0}
             for i in range(3)]
    return pd.DataFrame(rows)


def _posteriors(manifest: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """A posteriors frame over every manifest row (the given probs on the scored test rows, in utt_id order)."""
    frame = manifest[["utt_id", "split", "label"]].copy()
    frame[COLUMNS] = 1 / 3
    scored = (frame["split"] == "test") & frame["label"].isin(CLASSES)
    frame.loc[scored, COLUMNS] = probs
    return frame


def test_calibration_table_scores_votes_only_where_there_are_several():
    manifest = _manifest()
    rows = calibration.scored_rows(manifest)
    assert rows.classes == CLASSES and list(rows.utt_ids) == [f"t{i}" for i in range(8)]
    assert rows.voted.tolist() == [True] * 4 + [False] * 4       # 1 vote or none: no vote distribution
    rng = np.random.default_rng(1)
    other = rng.dirichlet(np.ones(3), 8)
    truth = manifest.set_index("utt_id").loc[rows.utt_ids, COLUMNS].to_numpy()
    systems = {"votes": _posteriors(manifest, truth), "other": _posteriors(manifest, other)}
    table = calibration.calibration_table(systems, manifest)
    assert list(table.index) == ["votes", "other"]
    assert table["n"].tolist() == [8, 8] and table["n_votes"].tolist() == [4, 4]
    assert table.loc["votes", "jsd_votes"] == pytest.approx(0.0)
    assert table.loc["votes", "brier_votes"] == pytest.approx(0.0)
    assert table.loc["other", "jsd_votes"] == pytest.approx(calibration.vote_divergence(other[:4], truth[:4]).mean())
    assert table.loc["other", "brier_votes"] == pytest.approx(((other[:4] - truth[:4]) ** 2).sum(1).mean())
    labels_idx = np.array([CLASSES.index(c) for c in "ASANSANN"])
    assert table.loc["other", "ece"] == pytest.approx(calibration.expected_calibration_error(other, labels_idx))
    assert table.loc["other", "accuracy"] == pytest.approx(np.mean(other.argmax(1) == labels_idx))
    assert table.loc["other", "confidence"] == pytest.approx(other.max(1).mean())
    curves = calibration.reliability_curves(systems, manifest)
    assert curves["other"]["count"].sum() == 8
    # a corpus without votes: JSD and Brier are not measured, ECE still is
    silent = calibration.calibration_table(systems, manifest.assign(n_votes=np.nan))
    assert silent["n_votes"].tolist() == [0, 0] and silent["jsd_votes"].isna().all()
    assert silent["ece"].tolist() == pytest.approx(table["ece"].tolist())
    assert calibration.divergence_change(systems, manifest.drop(columns="n_votes"), ["other"], ["votes"], 100, 0) is None


def test_calibration_table_wants_every_scored_row_over_the_run_classes():
    manifest = _manifest()
    frame = _posteriors(manifest, np.full((8, 3), 1 / 3))
    with pytest.raises(ValueError, match="no test posteriors for 1 scored utterances"):
        calibration.calibration_table({"m": frame[frame["utt_id"] != "t3"]}, manifest)
    with pytest.raises(ValueError, match="not the run's classes"):
        calibration.calibration_table({"m": frame.drop(columns="p_S")}, manifest)


def test_divergence_change_is_paired_and_signed():
    manifest = _manifest()
    truth = manifest.set_index("utt_id").loc[[f"t{i}" for i in range(8)], COLUMNS].to_numpy()
    systems = {"votes": _posteriors(manifest, truth), "flat": _posteriors(manifest, np.full((8, 3), 1 / 3))}
    change, low, high = calibration.divergence_change(systems, manifest, ["votes"], ["flat"], bootstrap=200, seed=3)
    flat = calibration.vote_divergence(np.full((4, 3), 1 / 3), truth[:4]).mean()
    assert change == pytest.approx(-flat) and low <= change <= high < 0
    assert calibration.divergence_change(systems, manifest, ["flat"], ["flat"], bootstrap=50, seed=0) == (0.0, 0.0, 0.0)


def test_reliability_diagram_draws_the_highlighted_systems_bold():
    curve = calibration.reliability_curve(*_rows(0.8, (0.1, 0.1), 10, 6))
    curves = {name: curve for name in ("MEDUSA", "soft voting", "a", "b", "c")}
    fig = plots.reliability_diagram(curves, highlight=["MEDUSA", "a", "missing"])
    assert isinstance(fig, plt.Figure)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 1 + 5                                    # the diagonal and one line per system
    widths = {line.get_label(): line.get_linewidth() for line in lines}
    assert widths["MEDUSA"] > widths["other systems (3)"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "perfect calibration", "other systems (3)", "MEDUSA", "a"]
    plt.close("all")


def test_soft_voting_is_the_members_mean_posterior():
    rng = np.random.default_rng(2)
    frames = {}
    for m in ("a", "b"):
        frame = pd.DataFrame({"utt_id": [f"u{i}" for i in range(20)], "split": "test", "label": "A"})
        frame[COLUMNS] = rng.dirichlet(np.ones(3), 20)
        frame[list(ATTRIBUTES)] = 4.0
        frames[m] = frame
    vote = reports.soft_voting_frame(frames, ["a", "b"]).set_index("utt_id")
    stacked = stack(frames, "test")
    np.testing.assert_allclose(vote.loc[stacked.utt_ids, COLUMNS].to_numpy(), stacked.probs.mean(1), rtol=1e-6)
    np.testing.assert_array_equal(vote.loc[stacked.utt_ids, COLUMNS].to_numpy().argmax(1),
                                  soft_vote(stacked.probs))


def test_calibration_systems_put_each_one_hot_run_beside_its_reference(tmp_path):
    manifest = _manifest()
    rng = np.random.default_rng(4)
    def make():
        return _posteriors(manifest, rng.dirichlet(np.ones(3), 8)).assign(**{a: 4.0 for a in ATTRIBUTES})
    posteriors = {"a": make(), "b": make(), "MEDUSA": make()}
    for variant, model in (("one_hot", "a"), ("one_hot", "c"), ("reference", "c")):
        folder = tmp_path / "models" / model if variant == "reference" else tmp_path / "ablations" / variant / model
        folder.mkdir(parents=True)
        make().to_parquet(folder / "posteriors.parquet")
    pairs = reports.one_hot_pairs(["a", "c"])
    assert pairs == {"a w. one-hot targets": "a", "c w. one-hot targets": "c"}
    systems = reports.calibration_systems(posteriors, ["a", "b"], ["a", "c"], tmp_path / "ablations",
                                          tmp_path / "models")
    assert list(systems) == ["a", "a w. one-hot targets", "b", "c", "c w. one-hot targets", "soft voting", "MEDUSA"]
    table = calibration.calibration_table(systems, manifest)
    view = reports.calibration_view(table)
    assert list(view.columns) == ["n", "rows with votes", "JSD vs votes", "Brier vs votes", "ECE", "accuracy",
                                  "mean confidence"]
    assert view.loc["MEDUSA", "ECE"] == f"{table.loc['MEDUSA', 'ece']:.3f}" and view.loc["b", "rows with votes"] == "4"
    notes = reports.calibration_notes(table)
    assert "over the 4 of the 8 scored test utterances with 2 or more annotator votes" in notes[0]
    assert "15 equal-width confidence bins" in notes[1]
    assert "not measured" in reports.calibration_notes(table.assign(n_votes=0))[0]
    assert reports.reliability_highlight("b", pairs) == ["MEDUSA", "soft voting", "b", "a", "a w. one-hot targets"]
    assert reports.reliability_highlight("c", pairs) == ["MEDUSA", "soft voting", "c", "c w. one-hot targets"]
    assert reports.reliability_highlight("b", {}) == ["MEDUSA", "soft voting", "b"]


def test_soft_target_finding_judges_the_distance_to_the_votes_by_its_paired_interval():
    table = pd.DataFrame({"n": 8, "n_votes": 4, "jsd_votes": [0.10, 0.30], "ece": [0.05, 0.20]},
                         index=["a", "a w. one-hot targets"])
    pairs = {"a w. one-hot targets": "a"}
    line, = reports.soft_target_findings(table, pairs, (-0.2, -0.3, -0.1))
    assert "mean JSD vs votes 0.100 (soft) against 0.300 (one-hot) over 4 test utterances with votes" in line
    assert "a change of -0.200 [-0.300, -0.100] — **holds**;" in line
    assert line.endswith("ECE 0.050 (soft) against 0.200 (one-hot), point estimates: soft targets better calibrated.")
    assert "within noise" in reports.soft_target_findings(table, pairs, (-0.2, -0.3, 0.1))[0]
    assert "cannot be measured here" in reports.soft_target_findings(table, pairs, None)[0]
    assert reports.soft_target_findings(table, {}, None) == []
