"""Segment profiles and names: what each segment is, in the words and numbers a
marketer reads.

Two tables per run. ``segment_feature_profiles``: per segment and feature, the mean, the
median, the z-score of the mean, and the percentile rank of the median among all placed
customers (where the segment's median customer sits in the population). And
``segment_profiles``: one row per segment with its size, shares of customers and
revenue, the revenue index, the dominant RFM segment, the median customer's recency,
frequency and spend, a value tier, a name and a one-sentence description.

The names and descriptions follow fixed rules on those medians, their percentile ranks
and the shares (``custseg.insights.naming``, pure Python): this module computes the numbers they
read, distributed, and writes the tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from custseg import columns as c
from custseg.config import Config
from custseg.features.rfm import FEATURE_COLUMNS
from custseg.insights.naming import RFM_FEATURES, SegmentSummary

log = logging.getLogger(__name__)

FEATURE = "feature"
VALUE = "value"
CUSTOMERS = "customers"
MEAN = "mean"
MEDIAN = "median"
Z_SCORE = "z_score"
PERCENTILE_RANK = "percentile_rank"
SEGMENT_NAME = "segment_name"
DESCRIPTION = "description"
VALUE_TIER = "value_tier"
CUSTOMER_SHARE = "customer_share"
REVENUE_SHARE = "revenue_share"
REVENUE_INDEX = "revenue_index"
RFM_SEGMENT = "rfm_segment"
MEDIAN_COLUMNS = {f: f"median_{f}" for f in RFM_FEATURES}  # segment_profiles: the median customer
# segment_profiles' customer-value columns, always there (null without a customer_value
# table of the run's as-of date): column -> (feature, statistic of feature_profiles)
MEDIAN_CLV, MEAN_P_ALIVE, MEDIAN_P_ALIVE = f"median_{c.CLV}", f"mean_{c.P_ALIVE}", f"median_{c.P_ALIVE}"
VALUE_PROFILE_COLUMNS = {
    MEDIAN_CLV: (c.CLV, MEDIAN),
    MEAN_P_ALIVE: (c.P_ALIVE, MEAN),
    MEDIAN_P_ALIVE: (c.P_ALIVE, MEDIAN),
}

# --------------------------------------------------------------------------- Spark aggregates


def rank_credit(value: Column, median: Column) -> Column:
    """A customer's part in the percentile rank of ``median``: 1 below it, 1/2 tied with
    it, 0 above it; null when either is null."""
    return F.when(value < median, 1.0).when(value == median, 0.5).when(value > median, 0.0)


def _long(labelled: DataFrame, features: Sequence[str]) -> DataFrame:
    """One row per customer and feature: segment_id, feature, value (double)."""
    values = [F.struct(F.lit(f).alias(FEATURE), F.col(f).cast("double").alias(VALUE)) for f in features]
    return labelled.select(c.SEGMENT_ID, F.explode(F.array(*values)).alias("kv")).select(c.SEGMENT_ID, "kv.*")


def feature_profiles(features: Sequence[str]) -> Callable[[DataFrame], DataFrame]:
    """Labelled customers -> per segment and feature: customers with a value, mean,
    median, z-score and the median's percentile rank.

    The median is percentile_approx's (accuracy 10,000): a value some customer has, the
    lower of the two middle ones in an even count. The z-score is (segment mean -
    population mean) / population standard deviation, 0 when the feature does not vary.
    The percentile rank is exact: among placed customers (segment_id >= 0) with a value,
    the share below the segment's median plus half the share equal to it (the mid-rank,
    so ties do not push a heavily tied value, e.g. one order or no returns, to the top:
    the rank of x is 1 minus the rank of -x). Null when the segment has no value. Each
    segment's median (k x features rows, broadcast) meets every placed customer's value
    in one aggregation, which also gives the population's mean and deviation.

    Input columns: segment_id and every name in ``features``.
    Output columns: segment_id, feature, customers, mean, median, z_score, percentile_rank.
    """

    def transform(labelled: DataFrame) -> DataFrame:
        long = _long(labelled, features)
        per_segment = long.groupBy(c.SEGMENT_ID, FEATURE).agg(
            F.count(VALUE).alias(CUSTOMERS),
            F.avg(VALUE).alias(MEAN),
            F.percentile_approx(VALUE, 0.5, 10_000).alias(MEDIAN),
        )
        medians = per_segment.select(c.SEGMENT_ID, FEATURE, MEDIAN)
        against_population = (
            long.where(F.col(c.SEGMENT_ID) >= 0)
            .select(FEATURE, F.col(VALUE).alias("_population_value"))
            .join(F.broadcast(medians), on=FEATURE, how="inner")
            .groupBy(c.SEGMENT_ID, FEATURE)
            .agg(
                F.avg("_population_value").alias("_mu"),
                F.stddev_pop("_population_value").alias("_sigma"),
                F.avg(rank_credit(F.col("_population_value"), F.col(MEDIAN))).alias("_rank"),
            )
        )
        z = F.when(F.col("_sigma") > 0, (F.col(MEAN) - F.col("_mu")) / F.col("_sigma")).when(
            F.col(MEAN).isNotNull(), F.lit(0.0)
        )
        return per_segment.join(against_population, on=[c.SEGMENT_ID, FEATURE], how="left").select(
            c.SEGMENT_ID,
            FEATURE,
            CUSTOMERS,
            F.round(MEAN, 4).alias(MEAN),
            F.round(MEDIAN, 4).alias(MEDIAN),
            F.round(z, 4).alias(Z_SCORE),
            F.round("_rank", 4).alias(PERCENTILE_RANK),
        )

    return transform


def segment_sizes(value_feature: str) -> Callable[[DataFrame], DataFrame]:
    """Labelled customers -> per segment: customers, share of customers, revenue (the
    sum of ``value_feature``), share of revenue, the revenue index (share of revenue /
    share of customers x 100: 100 is an average customer's spend), and the most common
    RFM segment with its share (ties: the name first in alphabetical order; null without
    RFM scores).

    Input columns: segment_id, ``value_feature``, and rfm_segment when there is one.
    Output columns: segment_id, customers, customer_share, revenue, revenue_share,
    revenue_index, dominant_rfm_segment, dominant_rfm_share.
    """

    def transform(labelled: DataFrame) -> DataFrame:
        sizes = labelled.groupBy(c.SEGMENT_ID).agg(
            F.count(F.lit(1)).alias(CUSTOMERS), F.sum(F.col(value_feature).cast("double")).alias("revenue")
        )
        totals = sizes.agg(F.sum(CUSTOMERS).alias("_all"), F.sum("revenue").alias("_revenue"))
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
        customer_share = F.col(CUSTOMERS) / F.col("_all")
        revenue_share = F.col("revenue") / F.nullif(F.col("_revenue"), F.lit(0.0))
        return (
            sizes.crossJoin(totals)
            .join(dominant, on=c.SEGMENT_ID, how="left")
            .select(
                c.SEGMENT_ID,
                CUSTOMERS,
                F.round(customer_share, 4).alias(CUSTOMER_SHARE),
                F.round("revenue", 2).alias("revenue"),
                F.round(revenue_share, 4).alias(REVENUE_SHARE),
                F.round(revenue_share / customer_share * 100, 1).alias(REVENUE_INDEX),
                "dominant_rfm_segment",
                F.round(F.col("_n") / F.col(CUSTOMERS), 4).alias("dominant_rfm_share"),
            )
        )

    return transform


def value_profile(per_feature: DataFrame) -> DataFrame:
    """feature_profiles rows -> per segment: the median customer's CLV, and the mean and
    median P(alive) (null for a segment, or a run, without them).

    Input columns: segment_id, feature, mean, median.
    Output columns: segment_id, median_clv, mean_p_alive, median_p_alive.
    """
    picked = [
        F.max(F.when(F.col(FEATURE) == feature, F.col(statistic))).cast("double").alias(column)
        for column, (feature, statistic) in VALUE_PROFILE_COLUMNS.items()
    ]
    return per_feature.groupBy(c.SEGMENT_ID).agg(*picked).select(c.SEGMENT_ID, *VALUE_PROFILE_COLUMNS)


# --------------------------------------------------------------------------- names


def summaries(sizes: Sequence[Mapping[str, Any]], per_feature: Sequence[Mapping[str, Any]]) -> list[SegmentSummary]:
    """segment_sizes rows and feature_profiles rows -> one summary per segment, by id."""
    medians: dict[int, dict[str, float | None]] = {}
    ranks: dict[int, dict[str, float | None]] = {}
    for r in per_feature:
        medians.setdefault(r[c.SEGMENT_ID], {})[r[FEATURE]] = r[MEDIAN]
        ranks.setdefault(r[c.SEGMENT_ID], {})[r[FEATURE]] = r[PERCENTILE_RANK]
    return [
        SegmentSummary(
            segment_id=r[c.SEGMENT_ID],
            customers=r[CUSTOMERS],
            customer_share=r[CUSTOMER_SHARE],
            revenue_share=r[REVENUE_SHARE],
            revenue_index=r[REVENUE_INDEX],
            medians=medians.get(r[c.SEGMENT_ID], {}),
            ranks=ranks.get(r[c.SEGMENT_ID], {}),
        )
        for r in sorted(sizes, key=lambda r: r[c.SEGMENT_ID])
    ]


# --------------------------------------------------------------------------- the job


def profile_features(cfg: Config, available: Sequence[str]) -> list[str]:
    """The model's numeric features first, then every other numeric feature, the
    customer value (clv, p_alive) and the attributes present (categorical attributes
    are described by the RFM-style mix)."""
    numeric = [f for f in FEATURE_COLUMNS if f not in (c.CUSTOMER_ID, c.AS_OF_DATE, c.FIRST_PURCHASE, c.LAST_PURCHASE)]
    attributes = [name for name, kind in cfg.attributes.items() if kind == "numeric"]
    wanted = [*cfg.segment.features, *numeric, *c.VALUE_FEATURES, *attributes]
    return list(dict.fromkeys(f for f in wanted if f in available and cfg.attributes.get(f) != "categorical"))


NAMING_SCHEMA = ", ".join(
    [f"{c.SEGMENT_ID} INT", f"{SEGMENT_NAME} STRING", f"{DESCRIPTION} STRING", f"{VALUE_TIER} STRING"]
    + [f"{column} DOUBLE" for column in MEDIAN_COLUMNS.values()]
)
