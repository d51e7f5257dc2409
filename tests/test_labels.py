import numpy as np
import pytest

from medusa.labels import CODES, EMOTIONS, OTHER, plurality, primary_code, soft_targets, vote_counts


def test_class_order_is_msp_podcast_order():
    assert CODES == ("A", "S", "H", "U", "F", "D", "C", "N")
    assert [e[0] for e in EMOTIONS] == ["A", "S", "H", "S", "F", "D", "C", "N"]


@pytest.mark.parametrize("word,code", [("Angry", "A"), ("neutral", "N"), ("Surprise", "U"), ("Contempt", "C"),
                                       ("Other-Concerned", OTHER), ("Other", OTHER), ("S", "S"), ("Bogus", None)])
def test_primary_code(word, code):
    assert primary_code(word) == code


def test_soft_targets_drop_other_votes_and_normalise():
    counts = vote_counts(["S", "S", "N", OTHER])
    assert counts.tolist() == [0, 2, 0, 0, 0, 0, 0, 1]
    p = soft_targets(counts)
    assert p[CODES.index("S")] == pytest.approx(2 / 3) and p[CODES.index("N")] == pytest.approx(1 / 3)
    assert p.sum() == pytest.approx(1.0)


def test_soft_targets_without_class_votes_are_nan():
    p = soft_targets(np.stack([vote_counts([OTHER, OTHER]), vote_counts(["A"])]))
    assert np.isnan(p[0]).all()
    assert p[1].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]


def test_plurality_ties_give_x_and_other_can_win():
    assert plurality(["A", "A", "N"]) == "A"
    assert plurality(["A", "N"]) == "X"
    assert plurality([OTHER, OTHER, "H"]) == OTHER
    assert plurality([]) == "X"
