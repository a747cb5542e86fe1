"""The BG/NBD fit on the calibration period, scored on the holdout that follows it.

Two views, as in Fader, Hardie & Lee (2005, figures 4 and 5):

* per customer, the expected repeat purchases in the holdout E[Y(t) | x, t_x, T] against
  the actual ones: their mean absolute error, the totals, and the means per calibration
  frequency group (0, 1, ..., max_group+);
* over time, the cumulative repeat purchases of the calibration's customers, actual
  against expected. A customer who first bought at d has E[X(s - d)] repeat purchases by
  time s (the model's unconditional expectation), so the expected curve is, per period s,
  the sum over cohorts of first-purchase days of n_d E[X(s - d)]: E[X] once per distinct
  lag s - d, summed over the (period x cohort) grid, a few thousand rows however many
  the customers are.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from custseg import columns as c
from custseg.value import bgnbd
from custseg.value.summary import (
    CUSTOMERS,
    DAY,
    DAY_VALUE,
    HOLDOUT_PURCHASES,
    X,
    purchase_days,
    unit_days,
)

ACTUAL = "actual"
EXPECTED = "expected"
GROUP = "group"
LABEL = "label"
PERIOD = "period"
PERIOD_END = "period_end"
IN_HOLDOUT = "in_holdout"
MAX_CURVE_POINTS = 520  # periods of the cumulative curve; a longer history is drawn in steps of several units


@dataclass(frozen=True)
class HoldoutMetrics:
    """The holdout in numbers: customers of the calibration, their repeat purchases in
    the holdout, what the model expected, and the mean absolute error per customer."""

    customers: int
    actual: float
    expected: float
    mae: float


def absolute_error(expected: Column, actual: Column) -> Column:
    return F.abs(expected - actual.cast("double"))


def holdout_comparison(holdout: DataFrame, params: Sequence[float], length: float) -> Callable[[DataFrame], DataFrame]:
    """Calibration summaries -> expected against actual repeat purchases in the holdout.

    Input columns: customer_id, x, t_x, T (the calibration summary); ``holdout``:
    customer_id, holdout_purchases (summary.holdout_purchases). ``length``: the holdout
    in the summary's unit.
    Output columns: customer_id, x, actual (long), expected (double).
    """

    def transform(summary: DataFrame) -> DataFrame:
        joined = summary.join(holdout, on=c.CUSTOMER_ID, how="left")
        scored = bgnbd.per_tuple(joined, {EXPECTED: bgnbd.expected_purchases(params, length)})
        return scored.select(
            c.CUSTOMER_ID,
            X,
            F.coalesce(F.col(HOLDOUT_PURCHASES), F.lit(0)).cast("long").alias(ACTUAL),
            F.col(EXPECTED),
        )

    return transform


def holdout_metrics(comparison: DataFrame) -> HoldoutMetrics:
    """One aggregate over the per-customer comparison; four numbers reach the driver."""
    row = comparison.agg(
        F.count(F.lit(1)).alias("customers"),
        F.sum(ACTUAL).alias(ACTUAL),
        F.sum(EXPECTED).alias(EXPECTED),
        F.avg(absolute_error(F.col(EXPECTED), F.col(ACTUAL))).alias("mae"),
    ).first()
    return HoldoutMetrics(int(row["customers"]), float(row[ACTUAL] or 0), float(row[EXPECTED] or 0),
                          math.nan if row["mae"] is None else float(row["mae"]))  # fmt: skip


def by_frequency(max_group: int) -> Callable[[DataFrame], DataFrame]:
    """Per-customer comparison -> one row per calibration frequency group 0 .. max_group
    (the last taking every x >= max_group).

    Input columns: x, actual, expected. Output columns: group (int), label ("0" ..
    "7+"), customers (long), actual, expected (the groups' mean holdout purchases).
    """

    def transform(comparison: DataFrame) -> DataFrame:
        group = F.least(F.col(X), F.lit(max_group)).cast("int")
        grouped = comparison.groupBy(group.alias(GROUP)).agg(
            F.count(F.lit(1)).alias(CUSTOMERS), F.avg(ACTUAL).alias(ACTUAL), F.avg(EXPECTED).alias(EXPECTED)
        )
        label = F.when(F.col(GROUP) == max_group, F.concat(F.col(GROUP).cast("string"), F.lit("+")))
        return grouped.select(
            GROUP,
            label.otherwise(F.col(GROUP).cast("string")).alias(LABEL),
            F.col(CUSTOMERS).cast("long").alias(CUSTOMERS),
            ACTUAL,
            EXPECTED,
        )

    return transform


def curve_step(periods: int) -> int:
    """Units per point of the cumulative curve: 1, or more for a history longer than
    MAX_CURVE_POINTS units."""
    return max(1, math.ceil(periods / MAX_CURVE_POINTS))


def cumulative_curve(
    txns: DataFrame,
    summary: DataFrame,
    params: Sequence[float],
    unit: str,
    origin: dt.date,
    holdout_start: dt.date,
    end: dt.date,
) -> DataFrame:
    """The cumulative repeat purchases of the calibration's customers, actual and expected,
    at the end of each period from ``origin`` (the first customer's first purchase) to
    ``end`` (exclusive). Times follow the summary's convention: a period ends on its last
    day, so the calibration's last period ends on the day before ``holdout_start``.

    Input: ``txns`` (customer_id, amount, event_ts, txn_type), ``summary`` (the calibration
    summary: customer_id, first_purchase_date).
    Output columns: period (int, in units from ``origin``), period_end (date), in_holdout
    (bool), actual (long), expected (double).
    """
    days_per_unit = int(unit_days(unit))
    periods = (end - origin).days // days_per_unit
    step = curve_step(periods)
    spark = summary.sparkSession
    origin_lit = F.lit(origin)
    grid = spark.range(step, periods + 1, step).select(
        F.col("id").cast("int").alias(PERIOD),
        (F.col("id") * days_per_unit - 1).cast("int").alias("_offset"),  # the period's last day, from origin
    )
    cohorts = summary.groupBy(F.datediff(c.FIRST_PURCHASE, origin_lit).alias("_cohort")).agg(
        F.count(F.lit(1)).alias(CUSTOMERS)
    )
    pairs = (
        grid.crossJoin(cohorts)
        .where(F.col("_cohort") <= F.col("_offset"))
        .select(PERIOD, (F.col("_offset") - F.col("_cohort")).alias("_lag"), CUSTOMERS)
    )
    # E[X] depends on the days since the first purchase alone: one series per distinct lag
    # (at most the history's days), not one per period and cohort
    since_first = F.col("_lag") / F.lit(float(days_per_unit))
    per_lag = (
        pairs.select("_lag").distinct().select("_lag", bgnbd.expected_purchases_new(params, since_first).alias("_e"))
    )
    expected = (
        pairs.join(per_lag, on="_lag", how="inner")
        .groupBy(PERIOD)
        .agg(F.sum(F.col(CUSTOMERS) * F.col("_e")).alias(EXPECTED))
    )
    repeats = (
        txns.transform(purchase_days(end))
        .where(F.col(DAY_VALUE).isNotNull())
        .join(summary.select(c.CUSTOMER_ID, c.FIRST_PURCHASE), on=c.CUSTOMER_ID, how="inner")
        .where(F.col(DAY) > F.col(c.FIRST_PURCHASE))
        .groupBy(F.datediff(DAY, origin_lit).alias("_day"))
        .agg(F.count(F.lit(1)).alias("_purchases"))
    )
    actual = (
        grid.join(repeats, F.col("_day") <= F.col("_offset"), how="left")
        .groupBy(PERIOD, "_offset")
        .agg(F.coalesce(F.sum("_purchases"), F.lit(0)).alias(ACTUAL))
    )
    curve = actual.join(expected, on=PERIOD, how="left")
    period_end = F.date_add(origin_lit, F.col("_offset"))
    return curve.select(
        PERIOD,
        period_end.alias(PERIOD_END),
        (period_end >= F.lit(holdout_start)).alias(IN_HOLDOUT),
        F.col(ACTUAL).cast("long").alias(ACTUAL),
        F.coalesce(F.col(EXPECTED), F.lit(0.0)).alias(EXPECTED),
    )
