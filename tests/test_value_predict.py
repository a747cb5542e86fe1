"""Customer value from the two models: the columns against the formulas in
docs/customer-value.md, computed with scipy."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_df_equality

from custseg.value.predict import DAYS_PER_MONTH, customer_value, with_value
from tests.value_reference import reference_expected

BG = [0.243, 4.414, 0.793, 2.426]
GG = [6.25, 3.74, 15.44]
SUMMARY = "customer_id string, as_of_date date, x long, t_x double, T double, mean_spend double"


def test_customer_value_discounts_each_month_and_applies_the_margin(spark):
    as_of = dt.date(1997, 10, 1)
    rows = [("a", as_of, 2, 30.43, 38.86, 22.35), ("b", as_of, 0, 0.0, 38.86, None), ("c", as_of, 2, 30.43, 38.86, 5.0)]
    got = spark.createDataFrame(rows, SUMMARY).transform(customer_value(BG, GG, "weeks", 3, 0.01, 0.3))
    got = {r["customer_id"]: r for r in got.collect()}
    month = DAYS_PER_MONTH / 7
    p, q, g = GG
    for name, x, t_x, z in (("a", 2, 30.43, 22.35), ("b", 0, 0.0, 0.0)):
        cumulative = [0.0] + [reference_expected(k * month, x, t_x, 38.86, *BG) for k in (1, 2, 3)]
        discounted = sum((cumulative[k] - cumulative[k - 1]) / 1.01**k for k in (1, 2, 3))
        spend = p * (g + x * z) / (p * x + q - 1)
        row = got[name]
        assert row["expected_purchases"] == pytest.approx(cumulative[3], rel=1e-9)
        assert row["expected_spend"] == pytest.approx(spend, rel=1e-12)
        assert row["clv"] == pytest.approx(0.3 * spend * discounted, rel=1e-9)
    assert got["b"]["p_alive"] == 1.0
    assert got["a"]["p_alive"] == got["c"]["p_alive"] < 1
    assert got["c"]["clv"] < got["a"]["clv"]  # same purchases, lower spend


def test_with_value_joins_clv_and_p_alive_by_customer_and_as_of_date(spark):
    as_of, before = dt.date(2025, 1, 1), dt.date(2024, 12, 1)
    features = spark.createDataFrame(
        [("a", as_of, 3), ("b", as_of, 1), ("c", as_of, 0)], "customer_id string, as_of_date date, frequency long"
    )
    values = spark.createDataFrame(
        # b's value is of another as-of date: not these features' value; c has none (no purchase)
        [("a", as_of, 120.5, 0.8, "r1"), ("b", before, 9.0, 0.3, "r1")],
        "customer_id string, as_of_date date, clv double, p_alive double, run_id string",
    )
    actual = features.transform(with_value(values))
    expected = spark.createDataFrame(
        [("a", as_of, 3, 120.5, 0.8), ("b", as_of, 1, None, None), ("c", as_of, 0, None, None)],
        "customer_id string, as_of_date date, frequency long, clv double, p_alive double",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
