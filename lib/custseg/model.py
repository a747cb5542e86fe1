"""Segmentation: scale, reduce, cluster, choose k, and label every customer.

The model is a ``pyspark.ml`` pipeline: VectorAssembler -> StandardScaler (centred:
``withMean=True``, which is not Spark's default) -> PCA (optional) -> KMeans ->
a SQLTransformer that renumbers clusters into segment ids ordered by value (0 = the
highest mean monetary value). The fitted PipelineModel is saved, so scoring new
customers later needs no refit and yields the same segment ids.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.ml import Estimator, Model, Pipeline, PipelineModel, Transformer
from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import PCA, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io
from custseg.config import Config, SegmentConfig
from custseg.evaluate import SweepPoint, choose_k, cluster_indices

log = logging.getLogger(__name__)

UNSEGMENTED = -1  # customers with no purchase before the as-of date: nothing to place
PREDICTION = "cluster"
VECTOR = "features_vector"

LABEL_COLUMNS = (c.CUSTOMER_ID, c.SEGMENT_ID, c.K, c.RUN_ID, c.AS_OF_DATE, c.MODEL_VERSION)
SWEEP_SCHEMA = (
    "run_id STRING, as_of_date DATE, algorithm STRING, k INT, wcss DOUBLE, silhouette DOUBLE, "
    "calinski_harabasz DOUBLE, davies_bouldin DOUBLE, chosen BOOLEAN, rule STRING, model_version STRING"
)


@dataclass(frozen=True)
class SegmentResult:
    k: int
    sweep: list[SweepPoint]
    model_version: str
    model_path: str


def model_inputs(features: Sequence[str], log1p: Sequence[str]) -> Callable[[DataFrame], DataFrame]:
    """Customer features -> customer_id plus the model features, skewed ones as
    log1p(max(x, 0)); rows with any feature missing are left out (see ``UNSEGMENTED``).

    Input columns: customer_id and every name in ``features``.
    Output columns: customer_id, then ``features`` in order.
    """
    skewed = set(log1p)

    def transform(df: DataFrame) -> DataFrame:
        cols = [
            (
                F.log1p(F.greatest(F.col(f).cast("double"), F.lit(0.0))) if f in skewed else F.col(f).cast("double")
            ).alias(f)
            for f in features
        ]
        complete = F.lit(True)
        for f in features:
            complete = complete & F.col(f).isNotNull()
        return df.where(complete).select(c.CUSTOMER_ID, *cols)

    return transform


def preprocessing(cfg: SegmentConfig) -> Pipeline:
    """Assemble, centre and scale, then (optionally) project onto principal components."""
    stages: list = [
        VectorAssembler(inputCols=list(cfg.features), outputCol="assembled", handleInvalid="error"),
        StandardScaler(
            inputCol="assembled",
            outputCol="scaled" if cfg.pca_components else VECTOR,
            # Centre (not Spark's default) so PCA and k-means see the data as a statistician
            # would. Bisecting k-means is the exception: it splits a cluster by nudging its
            # centre by 1e-4 of the centre's norm, so on centred data the first split never
            # happens and everything stays in one cluster. Distances ignore the offset.
            withMean=cfg.algorithm != "bisecting_kmeans",
            withStd=True,
        ),
    ]
    if cfg.pca_components:
        stages.append(PCA(k=cfg.pca_components, inputCol="scaled", outputCol=VECTOR))
    return Pipeline(stages=stages)


def clusterer(cfg: SegmentConfig, k: int) -> Estimator:
    """The configured clustering estimator for ``k`` segments, seeded from config."""
    common = {"k": k, "seed": cfg.seed, "maxIter": cfg.max_iter, "featuresCol": VECTOR, "predictionCol": PREDICTION}
    if cfg.algorithm == "bisecting_kmeans":  # divisive and hierarchical: scales to many k
        return BisectingKMeans(**common)
    if cfg.algorithm == "gaussian_mixture":  # soft, elliptical clusters; labels are the most likely
        return GaussianMixture(**common, probabilityCol="segment_probability")
    return KMeans(**common, initMode="k-means||")


def silhouette(predictions: DataFrame) -> float:
    """Spark's silhouette: squared Euclidean distance, as MLlib computes it."""
    evaluator = ClusteringEvaluator(
        featuresCol=VECTOR, predictionCol=PREDICTION, metricName="silhouette", distanceMeasure="squaredEuclidean"
    )
    return evaluator.evaluate(predictions)


def sweep(vectors: DataFrame, cfg: SegmentConfig) -> tuple[list[SweepPoint], dict[int, Model]]:
    """Fit the clusterer for every k in [k_min, k_max] (or just the fixed k) and score
    each: WCSS, silhouette, Calinski-Harabasz and Davies-Bouldin (same definitions
    for every algorithm)."""
    ks = [cfg.k] if cfg.k else list(range(cfg.k_min, cfg.k_max + 1))
    points, models = [], {}
    for i, k in enumerate(ks, start=1):
        started = time.perf_counter()
        model = clusterer(cfg, k).fit(vectors)
        predictions = model.transform(vectors)
        indices = cluster_indices(predictions, VECTOR, PREDICTION)
        point = SweepPoint(
            k=k,
            wcss=indices.wcss,
            # undefined with fewer than two non-empty clusters; Spark would fail the job
            silhouette=silhouette(predictions) if indices.clusters >= 2 else float("nan"),
            calinski_harabasz=indices.calinski_harabasz,
            davies_bouldin=indices.davies_bouldin,
        )
        points.append(point)
        models[k] = model
        log.info(
            "k sweep %d/%d: k=%d wcss=%.2f silhouette=%.4f calinski_harabasz=%.1f davies_bouldin=%.4f (%.1fs)",
            i, len(ks), k, point.wcss, point.silhouette, point.calinski_harabasz, point.davies_bouldin,
            time.perf_counter() - started,
        )  # fmt: skip
    return points, models


def value_order(scored: DataFrame, k: int) -> Transformer:
    """A stage that renumbers raw clusters into segment ids by descending mean
    monetary value (ties: the lower raw cluster first), so ids mean the same thing
    from run to run. ``scored`` needs ``cluster`` and ``monetary``."""
    means = scored.groupBy(PREDICTION).agg(F.avg(c.MONETARY).alias("m")).collect()  # k rows
    mean_of = {row[PREDICTION]: row["m"] for row in means}
    ranked = sorted(range(k), key=lambda cl: (-(mean_of.get(cl) if mean_of.get(cl) is not None else -math.inf), cl))
    cases = " ".join(f"WHEN {cluster} THEN {segment}" for segment, cluster in enumerate(ranked))
    return SQLTransformer(
        statement=f"SELECT *, CAST(CASE {PREDICTION} {cases} END AS INT) AS {c.SEGMENT_ID} FROM __THIS__"
    )


def fit(spark: SparkSession, features: DataFrame, cfg: Config, run_id: str) -> tuple[PipelineModel, SegmentResult]:
    """Fit the preprocessing once, sweep k, choose, and assemble the final PipelineModel."""
    seg = cfg.segment
    inputs = (
        features.transform(model_inputs(seg.features, cfg.features.log1p))
        .repartition(seg.fit_partitions, c.CUSTOMER_ID)
        .sortWithinPartitions(c.CUSTOMER_ID)
    )
    prep = preprocessing(seg).fit(inputs)
    # KMeans iterates over its input many times per k: materialise the vectors once.
    vectors = prep.transform(inputs).select(c.CUSTOMER_ID, VECTOR).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        points, models = sweep(vectors, seg)
        k = seg.k or choose_k(points, seg.selection, seg.silhouette_tolerance)
        clustered = (
            models[k].transform(vectors).join(features.select(c.CUSTOMER_ID, c.MONETARY), on=c.CUSTOMER_ID, how="inner")
        )
        ordering = value_order(clustered, k)
    finally:
        vectors.unpersist()
    model = PipelineModel(stages=[*prep.stages, models[k], ordering])
    version = f"{seg.algorithm}-k{k}-{run_id}"
    path = io.resolve(seg.model_dir, version)
    model.write().overwrite().save(path)
    log.info("chose k=%d by %s; model saved to %s", k, "config" if seg.k else seg.selection, path)
    return model, SegmentResult(k=k, sweep=points, model_version=version, model_path=path)


def label(model: PipelineModel, features: DataFrame, cfg: Config, result: SegmentResult, run_id: str) -> DataFrame:
    """Every customer in ``features`` gets exactly one label row; those the model
    cannot place (no purchase before the as-of date) get segment -1."""
    inputs = features.transform(model_inputs(cfg.segment.features, cfg.features.log1p))
    placed = model.transform(inputs).select(c.CUSTOMER_ID, c.SEGMENT_ID)
    return (
        features.select(c.CUSTOMER_ID, c.AS_OF_DATE)
        .join(placed, on=c.CUSTOMER_ID, how="left")
        .select(
            c.CUSTOMER_ID,
            F.coalesce(F.col(c.SEGMENT_ID), F.lit(UNSEGMENTED)).alias(c.SEGMENT_ID),
            F.lit(result.k).alias(c.K),
            F.lit(run_id).alias(c.RUN_ID),
            c.AS_OF_DATE,
            F.lit(result.model_version).alias(c.MODEL_VERSION),
        )
    )


def sweep_frame(spark: SparkSession, result: SegmentResult, cfg: Config, run_id: str, as_of) -> DataFrame:
    rule = "config" if cfg.segment.k else cfg.segment.selection
    rows = [
        (run_id, as_of, cfg.segment.algorithm, p.k, p.wcss, p.silhouette, p.calinski_harabasz, p.davies_bouldin,
         p.k == result.k, rule, result.model_version)
        for p in result.sweep
    ]  # fmt: skip
    return spark.createDataFrame(rows, SWEEP_SCHEMA)


def segment_summary(labels: DataFrame, features: DataFrame) -> DataFrame:
    """Per segment: customers, share of customers, share of revenue, and mean RFM.

    Input columns: labels (customer_id, segment_id), features (customer_id, recency_days,
    frequency, monetary, avg_order_value).
    Output columns: segment_id, customers, customer_share, revenue_share,
    mean_recency_days, mean_frequency, mean_monetary, mean_avg_order_value.
    """
    joined = labels.select(c.CUSTOMER_ID, c.SEGMENT_ID).join(features, on=c.CUSTOMER_ID, how="inner")
    per_segment = joined.groupBy(c.SEGMENT_ID).agg(
        F.count(F.lit(1)).alias("customers"),
        F.sum(c.MONETARY).alias("revenue"),
        F.avg(c.RECENCY_DAYS).alias("mean_recency_days"),
        F.avg(c.FREQUENCY).alias("mean_frequency"),
        F.avg(c.MONETARY).alias("mean_monetary"),
        F.avg(c.AVG_ORDER_VALUE).alias("mean_avg_order_value"),
    )
    totals = per_segment.agg(F.sum("customers").alias("all_customers"), F.sum("revenue").alias("all_revenue"))
    return per_segment.crossJoin(totals).select(
        c.SEGMENT_ID,
        "customers",
        F.round(F.col("customers") / F.col("all_customers"), 4).alias("customer_share"),
        F.round(F.col("revenue") / F.col("all_revenue"), 4).alias("revenue_share"),
        F.round("mean_recency_days", 1).alias("mean_recency_days"),
        F.round("mean_frequency", 2).alias("mean_frequency"),
        F.round("mean_monetary", 2).alias("mean_monetary"),
        F.round("mean_avg_order_value", 2).alias("mean_avg_order_value"),
    )


def run(spark: SparkSession, cfg: Config, run_id: str) -> SegmentResult:
    features = io.read(spark, io.table_ref(cfg.storage, cfg.tables.features))
    as_of = features.agg(F.max(c.AS_OF_DATE).alias("d")).first()["d"]
    if as_of is None:
        raise ValueError("the customer features table is empty: run the features job first")
    model, result = fit(spark, features, cfg, run_id)
    io.overwrite(label(model, features, cfg, result, run_id), io.table_ref(cfg.storage, cfg.tables.labels))
    io.append(sweep_frame(spark, result, cfg, run_id, as_of), io.table_ref(cfg.storage, cfg.tables.k_sweep))
    return result
