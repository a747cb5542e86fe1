from __future__ import annotations

import dataclasses
import math

import pytest
from pyspark.ml.feature import VectorAssembler

from custseg import columns as c
from custseg.segment import model, restarts
from tests.conftest import make_config


def test_restart_seeds_start_with_the_fits_own_seed():
    stride = restarts.RESTART_STRIDE
    assert restarts.restart_seeds(42, 3) == [42, 42 + stride, 42 + 2 * stride]
    assert restarts.restart_seeds(7, 1) == [7]


def structureless(spark, rows: int = 400):
    return VectorAssembler(inputCols=["x", "y"], outputCol=c.VECTOR).transform(
        spark.range(rows).selectExpr("rand(1) AS x", "rand(2) AS y").repartition(1)
    )


def test_restarted_fit_keeps_the_restart_with_the_lowest_wcss(spark, tmp_path):
    # Structureless data: each seed's k-means|| lands in its own local optimum.
    vectors = structureless(spark).cache()
    seg = make_config(tmp_path, "segment.restarts=4", "segment.kmeans_tol=1e-9").segment
    seeds = restarts.restart_seeds(42, 4)
    singles = [restarts.clusterer(dataclasses.replace(seg, seed=s), 7).fit(vectors) for s in seeds]
    costs = [restarts.objective(m) for m in singles]
    assert len({round(cost, 9) for cost in costs}) > 1  # the restarts disagree, so the choice matters
    best = restarts.Restarted(seg, 7).fit(vectors)
    assert restarts.objective(best) == min(costs)
    winner = singles[costs.index(min(costs))]
    assert [list(x) for x in best.clusterCenters()] == [list(x) for x in winner.clusterCenters()]
    # at convergence (a tight tol) the objective is the WCSS of the fitted centres
    assert restarts.objective(best) == pytest.approx(model.scored(best, vectors, 7).wcss, rel=1e-9)
    vectors.unpersist()


def test_best_ties_go_to_the_earlier_restart_and_undefined_is_the_worst(spark, tmp_path):
    vectors = VectorAssembler(inputCols=["x"], outputCol=c.VECTOR).transform(
        spark.createDataFrame([(0.0,), (0.1,), (5.0,), (5.1,)], "x DOUBLE")
    )
    seg = make_config(tmp_path).segment
    first, second = (restarts.clusterer(dataclasses.replace(seg, seed=s), 2).fit(vectors) for s in (1, 2))
    tie = restarts.objective(first)
    assert restarts.best([restarts.Fit(1, tie, second), restarts.Fit(0, tie, first)]) is first
    assert restarts.best([restarts.Fit(0, math.inf, first), restarts.Fit(1, tie, second)]) is second
