from __future__ import annotations

import math

import numpy as np
import pytest

from custseg.segment.evaluate import SweepPoint, adjusted_rand_index, cluster_indices, elbow_k, silhouette_k


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


def _points():
    """60 points in three loose groups in 3-D, with labels that are not all correct."""
    import numpy as np

    rng = np.random.default_rng(7)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [1.0, 5.0, 3.0]])
    x = np.vstack([c + rng.normal(scale=1.2, size=(20, 3)) for c in centres])
    labels = np.repeat([0, 1, 2], 20)
    labels[[3, 27, 45]] = [1, 2, 0]  # a few misassigned points
    return x, labels


def test_cluster_indices_match_scikit_learn(spark):
    from pyspark.ml.functions import array_to_vector
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    x, labels = _points()
    df = spark.createDataFrame(
        [(int(label), [float(v) for v in row]) for row, label in zip(x, labels, strict=True)],
        "cluster INT, x ARRAY<DOUBLE>",
    ).select("cluster", array_to_vector("x").alias("features"))
    got = cluster_indices(df, "features", "cluster")
    wcss = sum(((x[labels == c] - x[labels == c].mean(axis=0)) ** 2).sum() for c in range(3))
    assert got.wcss == pytest.approx(wcss, rel=1e-6)
    assert got.calinski_harabasz == pytest.approx(calinski_harabasz_score(x, labels), rel=1e-6)
    assert got.davies_bouldin == pytest.approx(davies_bouldin_score(x, labels), rel=1e-6)


@pytest.mark.parametrize("scale", [1e-7, 1e6])
def test_cluster_indices_hold_at_scales_whose_centroids_print_in_exponent_form(spark, scale):
    # The second pass inlines the centroids as SQL literals: 1e-08D, 1.5e+06D, negative
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    x, labels = _points()
    x = (x - x.mean(axis=0)) * scale
    got = cluster_indices(_frame(spark, x, labels), "features", "cluster")
    assert got.calinski_harabasz == pytest.approx(calinski_harabasz_score(x, labels), rel=1e-6)
    assert got.davies_bouldin == pytest.approx(davies_bouldin_score(x, labels), rel=1e-6)
    assert got.silhouette == pytest.approx(silhouette_score(x, labels, metric="sqeuclidean"), abs=1e-9)


def test_sql_double_literal_is_exact_and_refuses_non_finite_values():
    from custseg.segment.evaluate import _double

    assert [_double(v) for v in (1e-05, -2.5, 3.0)] == ["(1e-05D)", "(-2.5D)", "(3.0D)"]
    with pytest.raises(ValueError, match="cluster statistics must be finite, got nan"):
        _double(float("nan"))


def _frame(spark, x, labels):
    from pyspark.ml.functions import array_to_vector

    return spark.createDataFrame(
        [(int(label), [float(v) for v in row]) for row, label in zip(x, labels, strict=True)],
        "cluster INT, x ARRAY<DOUBLE>",
    ).select("cluster", array_to_vector("x").alias("features"))


def test_cluster_indices_silhouette_matches_mllib_and_scikit_learn(spark):
    from pyspark.ml.evaluation import ClusteringEvaluator
    from sklearn.metrics import silhouette_score

    x, labels = _points()
    df = _frame(spark, x, labels)
    mllib = ClusteringEvaluator(
        featuresCol="features", predictionCol="cluster", metricName="silhouette", distanceMeasure="squaredEuclidean"
    ).evaluate(df)
    got = cluster_indices(df, "features", "cluster")
    assert got.silhouette == pytest.approx(mllib, abs=1e-9)
    assert got.silhouette == pytest.approx(silhouette_score(x, labels, metric="sqeuclidean"), abs=1e-9)


def test_cluster_indices_silhouette_of_a_point_alone_is_zero_and_ids_may_have_gaps(spark):
    """A cluster of one point counts 0 (as MLlib and scikit-learn); cluster ids need not
    run 0..k-1 (a Gaussian mixture can leave a component empty)."""
    from sklearn.metrics import silhouette_score

    x, labels = _points()
    labels = np.where(labels == 2, 5, labels)
    labels[0] = 9  # alone
    got = cluster_indices(_frame(spark, x, labels), "features", "cluster")
    assert got.clusters == 4
    assert got.silhouette == pytest.approx(silhouette_score(x, labels, metric="sqeuclidean"), abs=1e-9)


def test_cluster_indices_silhouette_is_nan_for_one_cluster(spark):
    x, _ = _points()
    got = cluster_indices(_frame(spark, x, np.zeros(len(x), dtype=int)), "features", "cluster")
    assert got.clusters == 1 and math.isnan(got.silhouette)
