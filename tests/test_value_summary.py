"""The BTYD summary: hand-worked frames (same-day purchases, returns netted, units, the
holdout, compression), and the raw CDNOW sample reproducing the published summary."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from custseg.value.summary import btyd_summary, compress_frequency, compress_spend, holdout_purchases
from tests.conftest import cdnow_file
from tests.value_reference import cdnow_sample_transactions

TXNS = "customer_id string, amount double, event_ts timestamp, txn_type string"
SUMMARY = (
    "customer_id string, as_of_date date, first_purchase_date date, last_purchase_date date, x long, t_x double, "
    "T double, mean_spend double"
)


def ts(day: str, hour: int = 10) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(hour=hour)


@pytest.fixture(scope="module")
def txns(spark: SparkSession) -> DataFrame:
    rows = [
        # c1: two purchases on Jan 1 are one transaction of 15; a return of 10 later
        ("c1", 10.0, ts("2024-01-01", 9), "purchase"),
        ("c1", 5.0, ts("2024-01-01", 18), "purchase"),
        ("c1", 20.0, ts("2024-01-08"), "purchase"),
        ("c1", 30.0, ts("2024-01-15"), "purchase"),
        ("c1", -10.0, ts("2024-01-20"), "return"),
        # c2: one purchase before the as-of date; the one on it is not counted
        ("c2", 40.0, ts("2024-01-10"), "purchase"),
        ("c2", 99.0, ts("2024-01-29", 0), "purchase"),
        # c3: a return only: no first purchase to count from
        ("c3", -5.0, ts("2024-01-03"), "return"),
        # c4: a void and a fee on other days are not purchase occasions
        ("c4", 8.0, ts("2024-01-02"), "purchase"),
        ("c4", 0.0, ts("2024-01-05"), "void"),
        ("c4", 3.0, ts("2024-01-06"), "adjustment"),
        # no customer id: nobody's purchase
        (None, 9.0, ts("2024-01-04"), "purchase"),
        (None, 9.0, ts("2024-01-09"), "purchase"),
        # c5: returns worth more than the purchases (goods bought before the data): spend 0
        ("c5", 12.0, ts("2024-01-02"), "purchase"),
        ("c5", 6.0, ts("2024-01-09"), "purchase"),
        ("c5", -30.0, ts("2024-01-12"), "return"),
    ]
    return spark.createDataFrame(rows, TXNS)


def test_btyd_summary_counts_days_nets_returns_and_measures_in_weeks(spark, txns):
    as_of, d = dt.date(2024, 1, 29), dt.date.fromisoformat
    # T runs to Jan 28, the last day observed: c1 27 days, c2 18, c4 26, c5 26
    expected = spark.createDataFrame(
        [
            ("c1", as_of, d("2024-01-01"), d("2024-01-15"), 2, 14 / 7, 27 / 7, 50 / 2 * (65 - 10) / 65),
            ("c2", as_of, d("2024-01-10"), d("2024-01-10"), 0, 0.0, 18 / 7, None),
            ("c4", as_of, d("2024-01-02"), d("2024-01-02"), 0, 0.0, 26 / 7, None),
            ("c5", as_of, d("2024-01-02"), d("2024-01-09"), 1, 1.0, 26 / 7, 0.0),
        ],
        SUMMARY,
    )
    actual = txns.transform(btyd_summary(as_of, "weeks"))
    assert_approx_df_equality(actual, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)


def test_btyd_summary_in_days_and_before_the_first_purchase(txns):
    days = txns.transform(btyd_summary(dt.date(2024, 1, 29), "days")).where(F.col("customer_id") == "c1")
    assert [tuple(r) for r in days.select("x", "t_x", "T").collect()] == [(2, 14.0, 27.0)]
    assert txns.transform(btyd_summary(dt.date(2024, 1, 1), "days")).count() == 0


def test_holdout_purchases_counts_purchase_days_in_the_window(spark, txns):
    actual = txns.transform(holdout_purchases(dt.date(2024, 1, 8), 14))  # Jan 8 to 21
    expected = spark.createDataFrame([("c1", 2), ("c2", 1), ("c5", 1)], "customer_id string, holdout_purchases long")
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_compress_frequency_and_spend_count_customers_per_tuple(spark):
    summary = spark.createDataFrame(
        [(0, 0.0, 5.0, None), (0, 0.0, 5.0, None), (2, 3.0, 5.0, 10.0), (2, 3.0, 5.0, 10.0), (1, 1.0, 4.0, 0.0)],
        "x long, t_x double, T double, mean_spend double",
    )
    frequency = spark.createDataFrame(
        [(0, 0.0, 5.0, 2), (2, 3.0, 5.0, 2), (1, 1.0, 4.0, 1)], "x long, t_x double, T double, customers long"
    )
    spend = spark.createDataFrame([(2, 10.0, 2)], "x long, mean_spend double, customers long")
    assert_df_equality(summary.transform(compress_frequency), frequency, ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(summary.transform(compress_spend), spend, ignore_row_order=True, ignore_nullable=True)


def test_btyd_summary_of_the_raw_cdnow_sample_matches_the_published_summary(spark):
    # Calibration to 1997-09-30 inclusive (as-of 1997-10-01, exclusive): T = 272 days = 38.86
    # weeks for a customer first seen on 1997-01-01. Published to 2 decimals.
    ours = cdnow_sample_transactions(spark).transform(btyd_summary(dt.date(1997, 10, 1), "weeks"))
    published = spark.read.csv(
        str(cdnow_file("cdnow_customers_summary_with_transactions.csv")), header=True,
        schema="ID string, x long, t_x double, T double, zbar double",
    )  # fmt: skip
    joined = ours.join(published, ours["customer_id"] == published["ID"], how="full")
    close = (
        (ours["x"] == published["x"])
        & (F.abs(ours["t_x"] - published["t_x"]) <= 0.005 + 1e-9)
        & (F.abs(ours["T"] - published["T"]) <= 0.005 + 1e-9)
        & (F.abs(F.coalesce(ours["mean_spend"], F.lit(0.0)) - published["zbar"]) <= 0.005 + 1e-9)
    )
    counts = joined.agg(
        F.count(ours["customer_id"]).alias("ours"),
        F.count(published["ID"]).alias("published"),
        F.sum(F.when(F.coalesce(close, F.lit(False)), 0).otherwise(1)).alias("different"),
        F.sum(F.when(ours["x"] > 0, 1).otherwise(0)).alias("repeaters"),
    ).first()
    assert counts.asDict() == {"ours": 2357, "published": 2357, "different": 0, "repeaters": 946}
