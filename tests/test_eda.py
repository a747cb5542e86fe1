"""EDA aggregates on hand-worked data: only fixed-size results reach the driver."""

from __future__ import annotations

import datetime as dt

import pandas as pd
from chispa import assert_df_equality

from custseg.insights import eda

TXN_SCHEMA = "customer_id STRING, invoice_id STRING, txn_type STRING, event_ts TIMESTAMP, amount DOUBLE"


def test_monthly_activity_counts_invoices_customers_revenue_and_returns(spark):
    jan, feb = dt.datetime(2024, 1, 5, 10), dt.datetime(2024, 2, 20, 9)
    txns = spark.createDataFrame(
        [
            ("a", "i1", "purchase", jan, 10.0),
            ("a", "i1", "purchase", jan, 5.0),  # a second line of the same invoice
            ("b", "i2", "purchase", jan, 20.0),
            ("a", "r1", "return", feb, -4.0),
            ("b", "i3", "purchase", feb, 7.0),
            ("c", "v1", "void", feb, 0.0),
        ],
        TXN_SCHEMA,
    )
    expected = spark.createDataFrame(
        [(dt.date(2024, 1, 1), 2, 2, 35.0, 0.0), (dt.date(2024, 2, 1), 1, 1, 7.0, 4.0)],
        "month DATE, purchases LONG, customers LONG, revenue DOUBLE, returns DOUBLE",
    )
    assert_df_equality(eda.monthly_activity(txns), expected, ignore_nullable=True)


def test_histogram_bins_equal_width_with_the_maximum_in_the_last_bin(spark):
    df = spark.createDataFrame([(v,) for v in (0.0, 1.0, 2.5, 3.9, 4.0, None)], "x DOUBLE")
    # range 0..4 in 4 bins of width 1: [0,1) 0.0 | [1,2) 1.0 | [2,3) 2.5 | [3,4] 3.9 and 4.0
    expected = pd.DataFrame({"bin": [0, 1, 2, 3], "lower": [0.0, 1.0, 2.0, 3.0], "upper": [1.0, 2.0, 3.0, 4.0],
                             "count": [1, 1, 1, 2]})  # fmt: skip
    pd.testing.assert_frame_equal(eda.histogram(df, "x", bins=4), expected, check_dtype=False)


def test_histogram_on_the_log1p_scale_and_of_nothing(spark):
    df = spark.createDataFrame([(-5.0,), (0.0,), (99.0,)], "x DOUBLE")
    hist = eda.histogram(df, "x", bins=2, log1p=True)
    # negative values enter as log1p(0) = 0, like the model's transform; log1p(99) = log(100)
    assert hist["count"].tolist() == [2, 1]
    assert abs(hist["upper"].iloc[-1] - 4.605170185988092) < 1e-12
    assert eda.histogram(df.where("x > 1000"), "x").empty


def test_rfm_grid_counts_customers_per_cell_and_leaves_out_the_unscored(spark):
    features = spark.createDataFrame(
        [("a", 5, 5, 100.0, "Champions"), ("b", 5, 5, 50.0, "Champions"), ("c", 1, 1, 1.0, "Hibernating"),
         ("d", None, None, 0.0, "Other")],
        "customer_id STRING, r_score INT, f_score INT, monetary DOUBLE, rfm_segment STRING",
    )  # fmt: skip
    expected = spark.createDataFrame(
        [(1, 1, 1, 1.0, "Hibernating"), (5, 5, 2, 75.0, "Champions")],
        "r_score INT, f_score INT, customers LONG, mean_monetary DOUBLE, rfm_segment STRING",
    )
    assert_df_equality(eda.rfm_grid(features), expected, ignore_nullable=True)
