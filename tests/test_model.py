from __future__ import annotations

import dataclasses
import math

from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array

from custseg import model
from tests.conftest import make_config


def test_model_inputs_log1p_skewed_and_drop_incomplete(spark):
    df = spark.createDataFrame(
        [("a", 10, 0.0, -5.0), ("b", None, 1.0, 2.0)],
        "customer_id STRING, recency_days INT, frequency DOUBLE, monetary DOUBLE",
    )
    actual = df.transform(model.model_inputs(["recency_days", "monetary"], ["monetary", "frequency"]))
    # a negative net monetary value (returns exceed purchases) enters as log1p(0) = 0
    expected = spark.createDataFrame([("a", 10.0, 0.0)], "customer_id STRING, recency_days DOUBLE, monetary DOUBLE")
    assert_df_equality(actual, expected, ignore_nullable=True)


def test_preprocessing_centres_and_scales(spark, tmp_path):
    cfg = dataclasses.replace(make_config(tmp_path).segment, features=["recency_days"], pca_components=None)
    df = spark.createDataFrame([("a", 1.0), ("b", 3.0)], "customer_id STRING, recency_days DOUBLE")
    out = model.preprocessing(cfg).fit(df).transform(df)
    actual = out.select("customer_id", vector_to_array(model.VECTOR)[0].alias("z"))
    # mean 2, sample standard deviation sqrt(2): withMean=True centres, unlike Spark's default
    expected = spark.createDataFrame(
        [("a", -1 / math.sqrt(2)), ("b", 1 / math.sqrt(2))], "customer_id STRING, z DOUBLE"
    )
    assert_approx_df_equality(actual, expected, 1e-9, ignore_nullable=True)


def test_value_order_numbers_segments_by_descending_monetary(spark):
    scored = spark.createDataFrame([(0, 10.0), (0, 12.0), (1, 100.0), (2, 50.0)], "cluster INT, monetary DOUBLE")
    stage = model.value_order(scored, 3)
    actual = stage.transform(scored.select("cluster").distinct()).select("cluster", "segment_id")
    expected = spark.createDataFrame([(1, 0), (2, 1), (0, 2)], "cluster INT, segment_id INT")
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def blobs(spark):
    """Three obvious groups of customers in (recency, frequency, monetary, aov)."""
    rows = []
    centres = {"hi": (5, 30, 3000.0, 100.0), "mid": (100, 8, 800.0, 100.0), "lo": (300, 1, 20.0, 20.0)}
    for name, (r, f, m, a) in centres.items():
        for i in range(12):
            jitter = 1 + (i % 4 - 1.5) * 0.03
            rows.append((f"{name}{i:02d}", r + i % 3, int(f * jitter) or 1, m * jitter, a * jitter, name))
    rows.append(("nobuy", None, 0, -5.0, None, "none"))
    return spark.createDataFrame(
        rows,
        "customer_id STRING, recency_days INT, frequency LONG, monetary DOUBLE, avg_order_value DOUBLE, truth STRING",
    ).selectExpr("*", "DATE'2024-07-01' AS as_of_date")


def test_fit_and_label_every_customer_once_in_range(spark, tmp_path):
    cfg = make_config(tmp_path, "segment.k_max=4")
    feats = blobs(spark)
    fitted, result = model.fit(spark, feats, cfg, "r1")
    labels = model.label(fitted, feats, cfg, result, "r1")
    assert result.k == 3
    per_customer = labels.groupBy("customer_id").count().where("count != 1").count()
    assert per_customer == 0 and labels.count() == feats.count()
    assert labels.where("segment_id >= k OR segment_id < -1").count() == 0
    unplaced = labels.where("segment_id = -1").select("customer_id")
    assert_df_equality(unplaced, spark.createDataFrame([("nobuy",)], "customer_id STRING"), ignore_nullable=True)
    # ordered by value: the high spenders are segment 0, the low spenders segment 2
    by_truth = labels.join(feats.select("customer_id", "truth"), "customer_id", "inner").select("truth", "segment_id")
    expected = spark.createDataFrame([("hi", 0), ("mid", 1), ("lo", 2), ("none", -1)], "truth STRING, segment_id INT")
    assert_df_equality(by_truth.distinct(), expected, ignore_row_order=True, ignore_nullable=True)


def test_saved_model_reloads_and_scores_identically(spark, tmp_path):
    cfg = make_config(tmp_path, "segment.k=3")
    feats = blobs(spark)
    fitted, result = model.fit(spark, feats, cfg, "r1")
    reloaded = PipelineModel.load(result.model_path)
    inputs = feats.transform(model.model_inputs(cfg.segment.features, cfg.features.log1p))
    assert_df_equality(
        reloaded.transform(inputs).select("customer_id", "segment_id"),
        fitted.transform(inputs).select("customer_id", "segment_id"),
        ignore_row_order=True,
    )


def test_same_seed_gives_same_labels(spark, tmp_path):
    cfg = make_config(tmp_path, "segment.k=3")
    feats = blobs(spark)
    first = model.label(*_fit(spark, feats, cfg, "a"), "a").select("customer_id", "segment_id")
    second = model.label(*_fit(spark, feats, cfg, "b"), "b").select("customer_id", "segment_id")
    assert_df_equality(first, second, ignore_row_order=True)


def _fit(spark, feats, cfg, run_id):
    fitted, result = model.fit(spark, feats, cfg, run_id)
    return fitted, feats, cfg, result


def test_same_seed_gives_same_labels_whatever_the_input_partitioning(spark, tmp_path):
    # Structureless data: KMeans' answer depends on its seeding, which samples per partition.
    cfg = make_config(tmp_path, "segment.k=5")
    feats = spark.range(300).selectExpr(
        "CAST(id AS STRING) AS customer_id",
        "CAST(pmod(xxhash64(id, 'r'), 365) AS INT) AS recency_days",
        "1 + pmod(xxhash64(id, 'f'), 20) AS frequency",
        "CAST(pmod(xxhash64(id, 'm'), 5000) AS DOUBLE) AS monetary",
        "CAST(pmod(xxhash64(id, 'a'), 200) AS DOUBLE) AS avg_order_value",
        "DATE'2024-07-01' AS as_of_date",
    )
    one = feats.repartition(1)
    five = feats.repartition(5, "recency_days")
    first = model.label(*_fit(spark, one, cfg, "a"), "a").select("customer_id", "segment_id")
    second = model.label(*_fit(spark, five, cfg, "b"), "b").select("customer_id", "segment_id")
    assert_df_equality(first, second, ignore_row_order=True)


def noisy_blobs(spark):
    """90 customers in three groups with realistic spread (a mixture needs variance)."""
    centres = "array(array(5D, 30D, 3000D, 100D), array(100D, 8D, 800D, 100D), array(300D, 1D, 20D, 20D))"
    names = "array('hi', 'mid', 'lo')"
    return spark.range(0, 90, 1, 2).selectExpr(
        "CAST(id AS STRING) AS customer_id",
        f"{names}[CAST(id % 3 AS INT)] AS truth",
        f"{centres}[CAST(id % 3 AS INT)] AS c",
    ).selectExpr(
        "customer_id", "truth",
        "CAST(c[0] * exp(0.15 * randn(1)) AS INT) AS recency_days",
        "GREATEST(1, CAST(c[1] * exp(0.15 * randn(2)) AS LONG)) AS frequency",
        "c[2] * exp(0.15 * randn(3)) AS monetary",
        "c[3] * exp(0.15 * randn(4)) AS avg_order_value",
        "DATE'2024-07-01' AS as_of_date",
    )  # fmt: skip


def test_bisecting_kmeans_recovers_obvious_groups(spark, tmp_path):
    cfg = make_config(tmp_path, "segment.algorithm=bisecting_kmeans", "segment.k=3")
    feats = noisy_blobs(spark).cache()
    fitted, result = model.fit(spark, feats, cfg, "r1")
    labels = model.label(fitted, feats, cfg, result, "r1")
    assert result.model_version.startswith("bisecting_kmeans-k3-")
    by_truth = labels.join(feats.select("customer_id", "truth"), "customer_id", "inner").select("truth", "segment_id")
    expected = spark.createDataFrame([("hi", 0), ("mid", 1), ("lo", 2)], "truth STRING, segment_id INT")
    assert_df_equality(by_truth.distinct(), expected, ignore_row_order=True, ignore_nullable=True)
    point = result.sweep[0]
    assert point.calinski_harabasz > 10 and 0 <= point.davies_bouldin < 1


def test_gaussian_mixture_labels_every_customer_reproducibly(spark, tmp_path):
    cfg = make_config(tmp_path, "segment.algorithm=gaussian_mixture", "segment.k=3")
    feats = noisy_blobs(spark).cache()
    first = model.label(*_fit(spark, feats, cfg, "a"), "a").select("customer_id", "segment_id")
    second = model.label(*_fit(spark, feats, cfg, "b"), "b").select("customer_id", "segment_id")
    assert first.where("segment_id < 0 OR segment_id >= 3").count() == 0
    assert first.count() == feats.count()
    assert_df_equality(first, second, ignore_row_order=True)
