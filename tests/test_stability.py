from __future__ import annotations

from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.ml.clustering import KMeans
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import functions as F

from custseg.segment.model import PREDICTION
from custseg.segment.preprocess import VECTOR
from custseg.segment.stability import (
    Replicate,
    SegmentStability,
    StabilityReport,
    best_match_jaccard,
    stability,
    stability_frames,
)


def kmeans(k: int):
    return lambda seed: KMeans(k=k, seed=seed, maxIter=20, featuresCol=VECTOR, predictionCol=PREDICTION)


def test_best_match_jaccard_worked_example_with_tie(spark):
    df = spark.createDataFrame([(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3)], "a INT, b INT")
    # sizes a: 0->3, 1->2, 2->2; b: 0->2, 1->2, 2->2, 3->1
    # a=0: b=0 2/(3+2-2)=2/3, b=1 1/(3+2-1)=1/4 -> 2/3 via 0
    # a=1: b=1 1/(2+2-1)=1/3, b=2 1/(2+2-1)=1/3 -> a tie: 1/3 via the smaller id, 1
    # a=2: b=2 1/(2+2-1)=1/3, b=3 1/(2+1-1)=1/2 -> 1/2 via 3
    expected = spark.createDataFrame(
        [(0, 2 / 3, 0), (1, 1 / 3, 1), (2, 1 / 2, 3)], "segment_id INT, jaccard DOUBLE, matched INT"
    )
    actual = df.transform(best_match_jaccard("a", "b"))
    assert_approx_df_equality(actual, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)


def test_best_match_jaccard_is_one_for_the_same_partition(spark):
    df = spark.createDataFrame([(0, 7), (0, 7), (1, 5), (2, 9), (2, 9), (2, 9)], "a INT, b INT")
    expected = spark.createDataFrame(
        [(0, 1.0, 7), (1, 1.0, 5), (2, 1.0, 9)], "segment_id INT, jaccard DOUBLE, matched INT"
    )
    actual = df.transform(best_match_jaccard("a", "b"))
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_stability_frames_columns_and_rows(spark):
    report = StabilityReport(
        replicates=[Replicate("seed", 1, 42, 0.9), Replicate("bootstrap", 1, 42, 0.5)],
        segments=[SegmentStability(0, 0.8, 0.7, 2, True), SegmentStability(1, 0.4, 0.3, 2, False)],
        threshold=0.75,
    )
    replicates, segments = stability_frames(spark, report, "r1")
    assert_df_equality(
        replicates,
        spark.createDataFrame(
            [("r1", "seed", 1, 42, 0.9), ("r1", "bootstrap", 1, 42, 0.5)],
            "run_id STRING, kind STRING, replicate INT, seed BIGINT, ari DOUBLE",
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    assert_df_equality(
        segments,
        spark.createDataFrame(
            [("r1", 0, 0.8, 0.7, 2, True), ("r1", 1, 0.4, 0.3, 2, False)],
            "run_id STRING, segment_id INT, mean_jaccard DOUBLE, min_jaccard DOUBLE, replicates INT, stable BOOLEAN",
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )


def vectors_of(df, inputs):
    return VectorAssembler(inputCols=inputs, outputCol=VECTOR).transform(df).select("customer_id", VECTOR)


def test_stability_planted_blobs_are_stable(spark, report):
    # 300 customers in three blobs of sd 0.3 centred 10 apart: (0, 0), (10, 10), (20, 0)
    blob = F.col("id") % 3
    df = spark.range(300).select(
        F.col("id").cast("string").alias("customer_id"),
        blob.cast("int").alias("segment_id"),
        (blob * 10 + F.randn(1) * 0.3).alias("x"),
        (F.when(blob == 1, 10.0).otherwise(0.0) + F.randn(2) * 0.3).alias("y"),
    )
    result = stability(
        vectors_of(df, ["x", "y"]), df.select("customer_id", "segment_id"), kmeans(3), [1, 2], 2, 7, 0.75
    )
    report.append(f"stability blobs: min ARI {result.min_ari:.4f}")
    assert [(r.kind, r.replicate) for r in result.replicates] == [
        ("seed", 1),
        ("seed", 2),
        ("bootstrap", 1),
        ("bootstrap", 2),
    ]
    assert result.min_ari > 0.95
    assert [(s.segment_id, s.stable, s.replicates) for s in result.segments] == [
        (0, True, 4),
        (1, True, 4),
        (2, True, 4),
    ]


def test_stability_uniform_data_is_unstable(spark, report):
    # No structure: k-means still cuts the cube into 6 cells, but each refit cuts it
    # differently. Measured over 3 data seeds x 2-5 dimensions: ARI 0.20-0.80, and
    # at least 4 of 6 segments below 0.75 mean Jaccard every time.
    df = spark.range(300).select(
        F.col("id").cast("string").alias("customer_id"), *(F.rand(300 + d).alias(f"x{d}") for d in range(3))
    )
    vectors = vectors_of(df, ["x0", "x1", "x2"])
    labels = kmeans(6)(0).fit(vectors).transform(vectors).select("customer_id", F.col(PREDICTION).alias("segment_id"))
    result = stability(vectors, labels, kmeans(6), [1, 2], 2, 7, 0.75)
    report.append(f"stability uniform: min ARI {result.min_ari:.4f}, unstable {result.unstable_segments}")
    assert result.min_ari < 0.8
    assert result.unstable_segments
