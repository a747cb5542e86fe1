"""Segment profiles and names: what each segment is, in the words and numbers a
marketer reads.

Two tables per run: ``segment_profiles`` (one row per segment: size, shares of
customers and revenue, the dominant RFM segment, a descriptive name) and
``segment_feature_profiles`` (per segment and feature: mean, median, and the z-score of
the segment's mean against all placed customers). Names are built from the z-scores by
fixed rules, so the same profile always gets the same name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io
from custseg.config import Config
from custseg.features import FEATURE_COLUMNS

log = logging.getLogger(__name__)

FEATURE = "feature"
MEAN = "mean"
MEDIAN = "median"
Z_SCORE = "z_score"
SEGMENT_NAME = "segment_name"
RFM_SEGMENT = "rfm_segment"
UNSEGMENTED_NAME = "Unsegmented"

# A segment's mean this many population standard deviations from the population mean
# is "high" or "low"; in between it is typical.
NOTABLE_Z = 0.5


def feature_profiles(features: Sequence[str]) -> Callable[[DataFrame], DataFrame]:
    """Labelled customers -> per segment and feature: customers with a value, mean,
    median and z-score ((segment mean - population mean) / population standard
    deviation, over placed customers, segment_id >= 0; 0 when the feature does not vary).

    Input columns: segment_id and every name in ``features``.
    Output columns: segment_id, feature, customers, mean, median, z_score.
    """

    def transform(labelled: DataFrame) -> DataFrame:
        long = labelled.select(
            c.SEGMENT_ID,
            F.explode(
                F.array(*[F.struct(F.lit(f).alias(FEATURE), F.col(f).cast("double").alias("value")) for f in features])
            ).alias("kv"),
        ).select(c.SEGMENT_ID, "kv.*")
        per_segment = long.groupBy(c.SEGMENT_ID, FEATURE).agg(
            F.count("value").alias("customers"),
            F.avg("value").alias(MEAN),
            F.percentile_approx("value", 0.5, 10_000).alias(MEDIAN),
        )
        population = (
            long.where(F.col(c.SEGMENT_ID) >= 0)
            .groupBy(FEATURE)
            .agg(F.avg("value").alias("_mu"), F.stddev_pop("value").alias("_sigma"))
        )
        z = F.when(F.col("_sigma") > 0, (F.col(MEAN) - F.col("_mu")) / F.col("_sigma")).when(
            F.col(MEAN).isNotNull(), F.lit(0.0)
        )
        return per_segment.join(population, on=FEATURE, how="left").select(
            c.SEGMENT_ID,
            FEATURE,
            "customers",
            F.round(MEAN, 4).alias(MEAN),
            F.round(MEDIAN, 4).alias(MEDIAN),
            F.round(z, 4).alias(Z_SCORE),
        )

    return transform


def segment_sizes(value_feature: str) -> Callable[[DataFrame], DataFrame]:
    """Labelled customers -> per segment: customers, share of customers, revenue (the
    sum of ``value_feature``), share of revenue, and the most common RFM segment with
    its share (ties: the name first in alphabetical order; null without RFM scores).

    Input columns: segment_id, ``value_feature``, and rfm_segment when there is one.
    Output columns: segment_id, customers, customer_share, revenue, revenue_share,
    dominant_rfm_segment, dominant_rfm_share.
    """

    def transform(labelled: DataFrame) -> DataFrame:
        sizes = labelled.groupBy(c.SEGMENT_ID).agg(
            F.count(F.lit(1)).alias("customers"), F.sum(F.col(value_feature).cast("double")).alias("revenue")
        )
        totals = sizes.agg(F.sum("customers").alias("_all"), F.sum("revenue").alias("_revenue"))
        if RFM_SEGMENT in labelled.columns:
            ranked = Window.partitionBy(c.SEGMENT_ID).orderBy(F.col("_n").desc(), F.col(RFM_SEGMENT))
            dominant = (
                labelled.groupBy(c.SEGMENT_ID, RFM_SEGMENT)
                .agg(F.count(F.lit(1)).alias("_n"))
                .withColumn("_rank", F.row_number().over(ranked))
                .where(F.col("_rank") == 1)
                .select(c.SEGMENT_ID, F.col(RFM_SEGMENT).alias("dominant_rfm_segment"), "_n")
            )
        else:
            dominant = sizes.select(
                c.SEGMENT_ID, F.lit(None).cast("string").alias("dominant_rfm_segment"), F.lit(None).alias("_n")
            )
        return (
            sizes.crossJoin(totals)
            .join(dominant, on=c.SEGMENT_ID, how="left")
            .select(
                c.SEGMENT_ID,
                "customers",
                F.round(F.col("customers") / F.col("_all"), 4).alias("customer_share"),
                F.round("revenue", 2).alias("revenue"),
                F.round(F.col("revenue") / F.nullif(F.col("_revenue"), F.lit(0.0)), 4).alias("revenue_share"),
                "dominant_rfm_segment",
                F.round(F.col("_n") / F.col("customers"), 4).alias("dominant_rfm_share"),
            )
        )

    return transform


def segment_name(z: Mapping[str, float | None]) -> str:
    """A short descriptive name from a segment's z-scores.

    With recency, frequency and monetary: a value word from monetary (High-value,
    Mid-value, Low-value) and a behaviour word: "lapsed" when purchases are long ago,
    else "loyal" when frequent, else "recent" when the last purchase is recent, else
    "occasional". Otherwise (e.g. a customer table alone): the two features furthest
    from typical, as "High income, low spending score", or "Typical customers".
    """

    def level(name: str) -> int:
        value = z.get(name)
        if value is None:
            return 0
        return 1 if value >= NOTABLE_Z else -1 if value <= -NOTABLE_Z else 0

    if all(z.get(f) is not None for f in (c.RECENCY_DAYS, c.FREQUENCY, c.MONETARY)):
        value = {1: "High-value", 0: "Mid-value", -1: "Low-value"}[level(c.MONETARY)]
        if level(c.RECENCY_DAYS) > 0:
            behaviour = "lapsed"
        elif level(c.FREQUENCY) > 0:
            behaviour = "loyal"
        elif level(c.RECENCY_DAYS) < 0:
            behaviour = "recent"
        else:
            behaviour = "occasional"
        return f"{value} {behaviour}"
    notable = sorted(
        ((name, v) for name, v in z.items() if v is not None and abs(v) >= NOTABLE_Z),
        key=lambda kv: (-abs(kv[1]), kv[0]),
    )[:2]
    if not notable:
        return "Typical customers"
    words = [f"{'high' if v > 0 else 'low'} {name.replace('_', ' ')}" for name, v in notable]
    return ", ".join(words).capitalize()


def segment_names(z_scores: Mapping[int, Mapping[str, float | None]]) -> dict[int, str]:
    """Names for every segment; segments that would share a name get their id appended,
    so each name identifies one segment."""
    names = {sid: (UNSEGMENTED_NAME if sid < 0 else segment_name(z)) for sid, z in z_scores.items()}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {sid: f"{name} #{sid}" if counts[name] > 1 else name for sid, name in names.items()}


def profile_features(cfg: Config, available: Sequence[str]) -> list[str]:
    """The model's numeric features first, then every other numeric feature and
    attribute present (categorical attributes are described by the RFM-style mix)."""
    numeric = [f for f in FEATURE_COLUMNS if f not in (c.CUSTOMER_ID, c.AS_OF_DATE, c.FIRST_PURCHASE, c.LAST_PURCHASE)]
    attributes = [name for name, kind in cfg.attributes.items() if kind == "numeric"]
    wanted = [*cfg.segment.features, *numeric, *attributes]
    return list(dict.fromkeys(f for f in wanted if f in available and cfg.attributes.get(f) != "categorical"))


def run(spark: SparkSession, cfg: Config) -> DataFrame:
    """Profile the current labels against the features; write both profile tables and
    return the per-segment one (k + 1 rows at most)."""
    tables = cfg.tables
    labels = io.read_required(spark, io.table_ref(cfg.storage, tables.labels), "segment labels", "the segment job")
    features = io.read_required(spark, io.table_ref(cfg.storage, tables.features), "customer features",
                                "the features job")  # fmt: skip
    labelled = labels.select(c.CUSTOMER_ID, c.SEGMENT_ID).join(features, on=c.CUSTOMER_ID, how="inner")
    names_of = profile_features(cfg, features.columns)
    if not names_of:
        raise ValueError("nothing to profile: no numeric feature or attribute in the features table")
    per_feature = labelled.transform(feature_profiles(names_of)).persist()
    try:
        z_rows = per_feature.select(c.SEGMENT_ID, FEATURE, Z_SCORE).collect()  # k x features rows
        z_scores: dict[int, dict[str, float | None]] = {}
        for r in z_rows:
            z_scores.setdefault(r[c.SEGMENT_ID], {})[r[FEATURE]] = r[Z_SCORE]
        names = segment_names(z_scores)
        run_info = labels.select(c.RUN_ID, c.MODEL_VERSION, c.AS_OF_DATE).limit(1)
        name_rows = spark.createDataFrame(list(names.items()), f"{c.SEGMENT_ID} INT, {SEGMENT_NAME} STRING")
        sizes = labelled.transform(segment_sizes(cfg.segment.value_feature))
        profiles = (
            sizes.join(name_rows, on=c.SEGMENT_ID, how="left")
            .crossJoin(run_info)
            .select(c.RUN_ID, c.MODEL_VERSION, c.AS_OF_DATE, c.SEGMENT_ID, SEGMENT_NAME, *sizes.columns[1:])
        )
        io.overwrite(profiles, io.table_ref(cfg.storage, tables.segment_profiles))
        io.overwrite(
            per_feature.crossJoin(run_info).select(c.RUN_ID, c.MODEL_VERSION, c.AS_OF_DATE, *per_feature.columns),
            io.table_ref(cfg.storage, tables.feature_profiles),
        )
    finally:
        per_feature.unpersist()
    log.info("segment names: %s", names)
    return io.read(spark, io.table_ref(cfg.storage, tables.segment_profiles))
