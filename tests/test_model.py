from __future__ import annotations

import dataclasses
import logging
import math

from chispa import assert_approx_df_equality, assert_df_equality
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import vector_to_array

from custseg.segment import job as segment_job
from custseg.segment import model, persist, preprocess, restarts
from tests.conftest import make_config


def test_model_inputs_cast_and_drop_incomplete(spark):
    df = spark.createDataFrame(
        [("a", 10, 0.0, -5.0), ("b", None, 1.0, 2.0)],
        "customer_id STRING, recency_days INT, frequency DOUBLE, monetary DOUBLE",
    )
    actual = df.transform(preprocess.model_inputs(["recency_days", "monetary"]))
    expected = spark.createDataFrame([("a", 10.0, -5.0)], "customer_id STRING, recency_days DOUBLE, monetary DOUBLE")
    assert_df_equality(actual, expected, ignore_nullable=True)


def test_input_transform_caps_then_log1p(spark):
    df = spark.createDataFrame([("a", 10.0, -5.0), ("b", 500.0, 99.0)], "customer_id STRING, r DOUBLE, m DOUBLE")
    stage = preprocess.input_transform(["r", "m"], log1p=["m"], caps={"r": 100.0, "m": 9.0})
    actual = stage.transform(df).select("customer_id", "in_r", "in_m")
    # r is capped at 100 and not logged; m is capped at 9 -> log1p(9) = log(10), and a
    # negative net monetary value (returns exceed purchases) enters as log1p(0) = 0
    expected = spark.createDataFrame(
        [("a", 10.0, 0.0), ("b", 100.0, math.log(10.0))], "customer_id STRING, in_r DOUBLE, in_m DOUBLE"
    )
    assert_approx_df_equality(actual, expected, 1e-12, ignore_nullable=True)


def test_quantile_caps_are_fitted_per_feature(spark):
    df = spark.range(1, 101).selectExpr("CAST(id AS DOUBLE) AS x", "CAST(id * 2 AS DOUBLE) AS y")
    assert preprocess.quantile_caps(df, ["x", "y"], 0.9) == {"x": 90.0, "y": 180.0}
    assert preprocess.quantile_caps(df, ["x", "y"], None) == {}


def test_components_for_share_keeps_the_fewest_reaching_it():
    assert preprocess.components_for_share([0.6, 0.25, 0.1, 0.05], 0.85) == 2
    assert preprocess.components_for_share([0.6, 0.25, 0.1, 0.05], 0.86) == 3
    assert preprocess.components_for_share([0.6, 0.25, 0.1, 0.05], 1.0) == 4


def test_preprocessing_centres_and_scales(spark, tmp_path):
    cfg = dataclasses.replace(make_config(tmp_path).segment, features=["recency_days"], pca_components=None)
    df = spark.createDataFrame([("a", 1.0), ("b", 3.0)], "customer_id STRING, recency_days DOUBLE")
    out = preprocess.preprocessing(cfg).fit(df).transform(df)
    actual = out.select("customer_id", vector_to_array(preprocess.VECTOR)[0].alias("z"))
    # mean 2, sample standard deviation sqrt(2): withMean=True centres, unlike Spark's default
    expected = spark.createDataFrame(
        [("a", -1 / math.sqrt(2)), ("b", 1 / math.sqrt(2))], "customer_id STRING, z DOUBLE"
    )
    assert_approx_df_equality(actual, expected, 1e-9, ignore_nullable=True)


def stats(*rows):
    return [model.ClusterStats(cluster, 10, value, centre) for cluster, value, centre in rows]


def test_segment_ids_without_previous_model_number_by_descending_value():
    clusters = stats((0, 11.0, [0.0]), (1, 100.0, [5.0]), (2, 50.0, [2.0]))
    assert model.segment_ids(clusters, 3, None, [1.0]) == {1: 0, 2: 1, 0: 2}


def test_segment_ids_keep_the_previous_models_ids_by_nearest_centre():
    # the new clusters 0, 1, 2 sit next to the old segments 2, 0, 1, whatever their value
    clusters = stats((0, 11.0, [0.1, 0.0]), (1, 100.0, [5.0, 5.0]), (2, 50.0, [2.0, 2.1]))
    previous = {0: [5.2, 5.0], 1: [2.0, 2.0], 2: [0.0, 0.0]}
    assert model.segment_ids(clusters, 3, previous, [1.0, 1.0]) == {0: 2, 1: 0, 2: 1}


def test_segment_ids_give_a_new_cluster_the_lowest_free_id():
    # k grew from 2 to 3: the clusters near the old ones keep 0 and 1; the new one gets 2
    clusters = stats((0, 11.0, [0.0]), (1, 100.0, [10.0]), (2, 500.0, [20.0]))
    assert model.segment_ids(clusters, 3, {0: [10.0], 1: [0.0]}, [1.0]) == {1: 0, 0: 1, 2: 2}


def test_segment_ids_distances_are_in_standard_deviations():
    # on raw units cluster 0 is nearer old 1 in x; scaled by std (100, 1) it is nearer old 0
    clusters = stats((0, 1.0, [0.0, 0.0]), (1, 2.0, [150.0, 5.0]))
    previous = {0: [100.0, 0.0], 1: [10.0, 5.0]}
    assert model.segment_ids(clusters, 2, previous, [100.0, 1.0]) == {0: 0, 1: 1}


def test_relabel_maps_raw_clusters_to_segment_ids(spark):
    raw = spark.createDataFrame([(0,), (1,), (2,)], "cluster INT")
    actual = model.relabel({0: 2, 1: 0, 2: 1}).transform(raw)
    expected = spark.createDataFrame([(0, 2), (1, 0), (2, 1)], "cluster INT, segment_id INT")
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
    labels = model.label(fitted, feats, cfg, result.model_version, result.k, "r1")
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
    inputs = feats.transform(preprocess.model_inputs(cfg.segment.features))
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


def _fit(spark, feats, cfg, run_id, previous=None):
    fitted, result = model.fit(spark, feats, cfg, run_id, previous)
    return fitted, feats, cfg, result.model_version, result.k


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


def test_auto_fit_partitions_is_one_per_500k_customers_and_at_least_the_minimum():
    assert [preprocess.auto_fit_partitions(n) for n in (0, 300, 1_000_000, 1_000_001, 5_000_000)] == [2, 2, 2, 3, 10]
    assert [preprocess.auto_fit_partitions(n, minimum=1) for n in (300, 500_000, 500_001)] == [1, 1, 2]


def test_fit_inputs_use_configured_partitions_else_the_customer_count_and_the_sweep(spark, tmp_path):
    feats = spark.range(300).selectExpr(
        "CAST(id AS STRING) AS customer_id", "1 AS recency_days", "2L AS frequency", "3D AS monetary",
        "4D AS avg_order_value",
    )  # fmt: skip

    def partitions(*settings: str) -> int:
        return preprocess.fit_inputs(feats, make_config(tmp_path, *settings)).rdd.getNumPartitions()

    assert partitions("segment.fit_partitions=5") == 5
    assert partitions() == 1  # the sweep fits all 300: one task per iteration, fits at once
    assert partitions("segment.k=3") == 2  # one fit, alone
    assert partitions("segment.sweep_sample=100") == 2  # the sweep fits a sample; the final fit runs alone
    assert partitions("segment.sweep_sample=null") == 1
    assert partitions("segment.sweep_sample=null", "segment.k=3") == 2


def test_fit_inputs_count_only_customers_the_model_can_place(spark, tmp_path):
    # 300 rows, 100 of them without a purchase (no recency): 200 customers to fit, so a
    # sample of 250 is not needed, the sweep fits everyone, and in one partition.
    feats = spark.range(300).selectExpr(
        "CAST(id AS STRING) AS customer_id", "IF(id < 100, NULL, 1) AS recency_days", "2L AS frequency",
        "3D AS monetary", "4D AS avg_order_value",
    )  # fmt: skip
    inputs = preprocess.fit_inputs(feats, make_config(tmp_path, "segment.sweep_sample=250"))
    assert (inputs.count(), inputs.rdd.getNumPartitions()) == (200, 1)


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
    labels = model.label(fitted, feats, cfg, result.model_version, result.k, "r1")
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


def test_retrain_with_another_seed_keeps_every_customers_segment_id(spark, tmp_path):
    cfg = make_config(tmp_path, "segment.k=3", "segment.value_feature=recency_days")
    feats = blobs(spark)
    fitted, first = model.fit(spark, feats, cfg, "a")
    before = model.label(fitted, feats, cfg, first.model_version, 3, "a").select("customer_id", "segment_id")
    log1p = [f for f in cfg.features.log1p if f in cfg.segment.features]
    previous = model.PreviousModel(first.model_version, list(cfg.segment.features), first.centres, log1p)
    reseeded = dataclasses.replace(cfg, segment=dataclasses.replace(cfg.segment, seed=99, value_feature="monetary"))
    after = model.label(*_fit(spark, feats, reseeded, "b", previous), "b").select("customer_id", "segment_id")
    # value order alone would renumber (monetary ranks the groups the other way round
    # from recency); matching the centres keeps the first model's ids
    assert_df_equality(after, before, ignore_row_order=True)


def test_previous_model_with_other_transforms_is_not_matched():
    previous = model.PreviousModel("v1", ["recency_days", "monetary"], {0: [1.0, 2.0]}, ["monetary"])
    assert previous.comparable(["recency_days", "monetary"], ["monetary", "frequency"], 2)
    assert not previous.comparable(["recency_days", "monetary"], [], 2)  # raw vs log units
    assert not previous.comparable(["monetary", "recency_days"], ["monetary"], 2)
    assert not previous.comparable(["recency_days", "monetary"], ["monetary"], 1)


def test_pca_variance_share_chooses_components_and_records_them(spark, tmp_path):
    cfg = make_config(tmp_path, "segment.k=3", "segment.pca_components=null", "segment.pca_variance=0.9")
    _, result = model.fit(spark, blobs(spark), cfg, "r1")
    explained = result.explained_variance
    assert 1 <= len(explained) < len(cfg.segment.features)
    assert sum(explained) >= 0.9 and sum(explained[:-1]) < 0.9


def test_stability_skips_the_production_seed_which_would_only_flatter_it(spark, tmp_path):
    cfg = make_config(tmp_path, "segment.k=3", "segment.seed=42", "stability.seeds=[42, 5]", "stability.bootstrap=1")
    feats = blobs(spark)
    fitted, result = model.fit(spark, feats, cfg, "r1")
    labels = model.label(fitted, feats, cfg, result.model_version, 3, "r1")
    report = segment_job.check_stability(spark, fitted, feats, labels, cfg, 3, "r1")
    assert [(r.kind, r.seed) for r in report.replicates] == [("seed", 5), ("bootstrap", 43)]  # resampled and reseeded
    assert report.min_ari > 0.9 and not report.unstable_segments


def test_stratified_sample_takes_each_strata_share_whatever_the_layout(spark):
    # 10 customers, a sample of 5: stratum A (6) keeps ceil(6 x 5 / 10) = 3, B (3) keeps
    # ceil(1.5) = 2, the null stratum (1) keeps ceil(0.5) = 1.
    rows = [(f"a{i}", "A") for i in range(6)] + [(f"b{i}", "B") for i in range(3)] + [("n0", None)]
    df = spark.createDataFrame(rows, "customer_id STRING, stratum STRING")
    sample = preprocess.stratified_sample(5, 10, "stratum", seed=42)
    picked = df.transform(sample)
    expected = spark.createDataFrame([("A", 3), ("B", 2), (None, 1)], "stratum STRING, count LONG")
    assert_df_equality(picked.groupBy("stratum").count(), expected, ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(df.repartition(3).transform(sample), picked, ignore_row_order=True)
    assert picked.exceptAll(df).count() == 0  # rows of the input, as they were


def test_fit_chooses_k_on_a_sample_then_fits_every_customer(spark, tmp_path):
    cfg = make_config(tmp_path, "segment.k_max=4", "segment.sweep_sample=45")
    feats = noisy_blobs(spark).withColumnRenamed("truth", preprocess.SWEEP_STRATUM).cache()
    fitted, result = model.fit(spark, feats, cfg, "r1")
    labels = model.label(fitted, feats, cfg, result.model_version, result.k, "r1")
    # three strata of 30: ceil(30 x 45 / 90) = 15 customers each
    assert (result.sweep_customers, result.customers, result.k) == (45, 90, 3)
    assert labels.where("segment_id BETWEEN 0 AND 2").count() == 90
    by_truth = labels.join(feats, "customer_id", "inner").select(preprocess.SWEEP_STRATUM, "segment_id").distinct()
    expected = spark.createDataFrame([("hi", 0), ("mid", 1), ("lo", 2)], "rfm_segment STRING, segment_id INT")
    assert_df_equality(by_truth, expected, ignore_row_order=True, ignore_nullable=True)
    # the model's record has its indices over all 90; the sweep's rows say they came from 45
    sample_point = next(p for p in result.sweep if p.k == 3)
    assert result.chosen == result.final and result.final.wcss > sample_point.wcss
    sweep = persist.sweep_frame(spark, result, cfg, "r1", None).where("k = 3").select("customers", "wcss")
    assert sweep.first() == (45, sample_point.wcss)
    record = persist.model_record(spark, result, cfg, "r1", None, None, (None, None)).select("customers", "wcss")
    assert record.first() == (90, result.final.wcss)


def test_fit_with_a_fixed_k_never_samples(spark, tmp_path):
    cfg = make_config(tmp_path, "segment.k=3", "segment.sweep_sample=60")
    _, result = model.fit(spark, noisy_blobs(spark), cfg, "r1")
    assert (result.sweep_customers, result.customers, result.final) == (90, 90, None)


def test_prepared_vectors_reach_kmeans_uncached_so_it_persists_its_own(spark, tmp_path):
    # KMeans persists its RDD of vectors only when its input is not a cached plan; on a
    # cached one it converts the cached rows again at every iteration.
    feats = noisy_blobs(spark).withColumnRenamed("truth", preprocess.SWEEP_STRATUM)
    for sample, swept in (("null", 90), ("60", 60)):
        prepared = model.prepare(feats, make_config(tmp_path, "segment.k_max=4", f"segment.sweep_sample={sample}"))
        try:
            assert prepared.vectors.storageLevel.useMemory and prepared.sweep_customers == swept
            assert (prepared.swept.storageLevel, prepared.everyone.storageLevel) == (StorageLevel.NONE,) * 2
        finally:
            prepared.unpersist()


def test_sweep_fits_at_once_give_the_same_points_and_models_in_k_order(spark, tmp_path, caplog):
    # Structureless data, so that any difference in seeding or input would show.
    vectors = VectorAssembler(inputCols=["x", "y"], outputCol=preprocess.VECTOR).transform(
        spark.range(400).selectExpr("rand(1) AS x", "rand(2) AS y").repartition(2)
    )
    one = make_config(tmp_path, "segment.k_min=2", "segment.k_max=6", "segment.sweep_parallelism=1").segment
    three = dataclasses.replace(one, sweep_parallelism=3)

    points_one, models_one = model.sweep(vectors, one)
    with caplog.at_level(logging.INFO, logger="custseg.progress"):
        points_three, models_three = model.sweep(vectors, three)

    assert [p.k for p in points_three] == [2, 3, 4, 5, 6]
    assert points_three == points_one
    for k, fitted in models_three.items():
        assert [list(c) for c in fitted.clusterCenters()] == [list(c) for c in models_one[k].clusterCenters()]
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("k sweep ")]
    assert [m.split(":")[0] for m in steps] == [f"k sweep {i}/15" for i in range(1, 16)]  # 5 ks x 3 restarts


def test_sweep_sample_is_laid_out_as_the_model_input(spark, tmp_path):
    # The window that draws the sample leaves it in a partition per stratum (here, the
    # two shuffle partitions); KMeans gets it hashed by customer like the full input.
    feats = noisy_blobs(spark).withColumnRenamed("truth", preprocess.SWEEP_STRATUM)
    cfg = make_config(tmp_path, "segment.k_max=4", "segment.sweep_sample=60", "segment.fit_partitions=3")
    prepared = model.prepare(feats, cfg)
    try:
        assert prepared.sweep_vectors.rdd.getNumPartitions() == 3
    finally:
        prepared.unpersist()
    # Unconfigured, a sample of up to 500,000 customers is one partition: one task per
    # iteration, so the fits that run at once each keep one core busy.
    prepared = model.prepare(feats, make_config(tmp_path, "segment.k_max=4", "segment.sweep_sample=60"))
    try:
        assert (prepared.sweep_vectors.rdd.getNumPartitions(), prepared.vectors.rdd.getNumPartitions()) == (1, 2)
    finally:
        prepared.unpersist()


def test_kmeans_stops_once_no_centre_moves_more_than_kmeans_tol(spark, tmp_path):
    vectors = VectorAssembler(inputCols=["x", "y"], outputCol=preprocess.VECTOR).transform(
        spark.range(400).selectExpr("rand(1) AS x", "rand(2) AS y").repartition(2)
    )
    strict = make_config(tmp_path, "segment.kmeans_tol=1e-12").segment
    loose = dataclasses.replace(strict, kmeans_tol=10.0)  # farther than any point lies from any other

    assert restarts.clusterer(loose, 4).fit(vectors).summary.numIter == 1
    assert restarts.clusterer(strict, 4).fit(vectors).summary.numIter > 1
