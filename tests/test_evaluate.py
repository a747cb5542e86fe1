from __future__ import annotations

import pytest

from custseg.evaluate import SweepPoint, adjusted_rand_index, choose_k, elbow_k, silhouette_k


def test_adjusted_rand_index_worked_example(spark):
    # Contingency (a, b): (0,0)=2 (0,1)=1 (1,1)=1 (1,2)=2 -> index 2, row pairs 6, column
    # pairs 3, total 15 -> expected 1.2, max 4.5 -> ARI = 0.8 / 3.3.
    df = spark.createDataFrame([(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (1, 2)], "a INT, b INT")
    assert adjusted_rand_index(df, "a", "b") == pytest.approx(0.8 / 3.3, rel=1e-12)


def test_adjusted_rand_index_is_one_for_relabelled_partition(spark):
    df = spark.createDataFrame([(0, "x"), (0, "x"), (1, "y"), (2, "z"), (2, "z")], "a INT, b STRING")
    assert adjusted_rand_index(df, "a", "b") == pytest.approx(1.0)


CURVE = [
    SweepPoint(2, 100.0, 0.5),
    SweepPoint(3, 40.0, 0.61),
    SweepPoint(4, 20.0, 0.62),
    SweepPoint(5, 15.0, 0.3),
    SweepPoint(6, 12.0, 0.2),
]


def test_elbow_k_is_farthest_below_the_chord():
    # scaled gaps below the chord: k=3 0.432, k=4 0.409, k=5 0.216
    assert elbow_k(CURVE) == 3


def test_silhouette_k_prefers_smallest_k_within_tolerance():
    assert silhouette_k(CURVE, tolerance=0.02) == 3
    assert silhouette_k(CURVE, tolerance=0.0) == 4


def test_choose_k_rejects_unknown_rule():
    with pytest.raises(ValueError, match="unknown k selection rule"):
        choose_k(CURVE, "gap", 0.0)
