from __future__ import annotations

import datetime as dt

from chispa import assert_df_equality
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from custseg.config import RfmRule
from custseg.features.rfm import customer_features, default_as_of, rfm_cut_points, rfm_segments

TXN_SCHEMA = "customer_id STRING, source STRING, invoice_id STRING, amount DOUBLE, event_ts TIMESTAMP, txn_type STRING"
FEATURE_SCHEMA = (
    "customer_id STRING, as_of_date DATE, first_purchase_date DATE, last_purchase_date DATE, "
    "recency_days INT, frequency LONG, monetary DOUBLE, tenure_days INT, avg_order_value DOUBLE"
)
FEATURE_SCHEMA_COLUMNS = [field.split()[0] for field in FEATURE_SCHEMA.split(", ")]
AS_OF = dt.date(2024, 7, 1)


BEHAVIOUR_SCHEMA = (
    "customer_id STRING, mean_days_between_purchases DOUBLE, distinct_products LONG, return_rate DOUBLE, "
    "purchases_per_month DOUBLE"
)


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def rfm_features(txns: DataFrame) -> DataFrame:
    """The RFM part of the features, for transactions without products."""
    with_products = txns.withColumn("product_id", F.lit(None).cast("string"))
    return with_products.transform(customer_features(AS_OF)).select(*FEATURE_SCHEMA_COLUMNS)


def test_customer_features_rfm_worked_example(spark):
    # Customer a: invoice A1 has two lines (30 + 20), A2 is 100, then 15 of A1 comes back.
    # frequency 2, monetary 150 - 15 = 135, gross 150 over 2 orders = 75 per order,
    # last purchase 2024-06-21 -> recency 10, first 2024-01-02 -> tenure 181.
    # Customer b: one order of 40 on 2024-06-30 (the day before as-of): recency 1.
    txns = spark.createDataFrame(
        [
            ("a", "pos", "A1", 30.0, ts("2024-01-02 10:00:00"), "purchase"),
            ("a", "pos", "A1", 20.0, ts("2024-01-02 10:00:00"), "purchase"),
            ("a", "pos", "A2", 100.0, ts("2024-06-21 23:59:59"), "purchase"),
            ("a", "pos", "R1", -15.0, ts("2024-06-25 09:00:00"), "return"),
            ("b", "pos", "B1", 40.0, ts("2024-06-30 12:00:00"), "purchase"),
        ],
        TXN_SCHEMA,
    )
    expected = spark.createDataFrame(
        [
            ("a", AS_OF, dt.date(2024, 1, 2), dt.date(2024, 6, 21), 10, 2, 135.0, 181, 75.0),
            ("b", AS_OF, dt.date(2024, 6, 30), dt.date(2024, 6, 30), 1, 1, 40.0, 1, 40.0),
        ],
        FEATURE_SCHEMA,
    )
    actual = rfm_features(txns)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_customer_features_behaviour_worked_example(spark):
    # Customer a buys on 2024-01-01 (p1, p2), 2024-01-01 again (p1), 2024-01-31 (p3) and
    # 2024-03-31 (p1): 3 purchase days spanning 90 days -> 45 days between purchases;
    # products p1, p2, p3 -> 3; gross 100 + 50 + 25 + 25 = 200, 20 returned -> 0.1;
    # 4 invoices over a tenure of 182 days = 182 / 30.4375 = 5.9795 months -> 0.6690 a month.
    # Customer b: one purchase 10 days before as-of: no gap (null), a tenure under a month
    # counts as one month -> 1.0 a month; nothing returned -> 0.0.
    schema = TXN_SCHEMA + ", product_id STRING"
    txns = spark.createDataFrame(
        [
            ("a", "pos", "A1", 60.0, ts("2024-01-01 09:00:00"), "purchase", "p1"),
            ("a", "pos", "A1", 40.0, ts("2024-01-01 09:00:00"), "purchase", "p2"),
            ("a", "pos", "A2", 50.0, ts("2024-01-01 18:00:00"), "purchase", "p1"),
            ("a", "web", "W1", 25.0, ts("2024-01-31 12:00:00"), "purchase", "p3"),
            ("a", "web", "W2", 25.0, ts("2024-03-31 12:00:00"), "purchase", "p1"),
            ("a", "web", "WR", -20.0, ts("2024-04-02 12:00:00"), "return", "p9"),
            ("b", "pos", "B1", 5.0, ts("2024-06-21 12:00:00"), "purchase", "p1"),
        ],
        schema,
    )
    expected = spark.createDataFrame([("a", 45.0, 3, 0.1, 0.669), ("b", None, 1, 0.0, 1.0)], BEHAVIOUR_SCHEMA)
    actual = txns.transform(customer_features(AS_OF)).select(*[f.split()[0] for f in BEHAVIOUR_SCHEMA.split(", ")])
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_customer_features_zero_value_purchases_have_no_return_rate(spark):
    # a free sample (amount 0) is a purchase, but there is no value to return a share of
    schema = TXN_SCHEMA + ", product_id STRING"
    txns = spark.createDataFrame([("z", "pos", "Z1", 0.0, ts("2024-06-01 09:00:00"), "purchase", "p1")], schema)
    actual = txns.transform(customer_features(AS_OF)).select("customer_id", "return_rate", "distinct_products")
    expected = spark.createDataFrame([("z", None, 1)], "customer_id STRING, return_rate DOUBLE, distinct_products LONG")
    assert_df_equality(actual, expected, ignore_nullable=True)


def test_customer_features_returns_only_customer_has_no_recency(spark):
    txns = spark.createDataFrame([("r", "pos", "R9", -25.0, ts("2024-03-01 10:00:00"), "return")], TXN_SCHEMA)
    expected = spark.createDataFrame([("r", AS_OF, None, None, None, 0, -25.0, None, None)], FEATURE_SCHEMA)
    actual = rfm_features(txns)
    assert_df_equality(actual, expected, ignore_nullable=True)


def test_customer_features_repeat_orders_same_day_count_separately(spark):
    txns = spark.createDataFrame(
        [
            ("s", "pos", "S1", 10.0, ts("2024-06-01 09:00:00"), "purchase"),
            ("s", "pos", "S2", 30.0, ts("2024-06-01 17:00:00"), "purchase"),
        ],
        TXN_SCHEMA,
    )
    expected = spark.createDataFrame(
        [("s", AS_OF, dt.date(2024, 6, 1), dt.date(2024, 6, 1), 30, 2, 40.0, 30, 20.0)], FEATURE_SCHEMA
    )
    actual = rfm_features(txns)
    assert_df_equality(actual, expected, ignore_nullable=True)


def test_customer_features_void_orders_are_not_purchases(spark):
    txns = spark.createDataFrame(
        [
            ("v", "pos", "V1", 50.0, ts("2024-05-01 09:00:00"), "purchase"),
            ("v", "pos", "V2", 0.0, ts("2024-06-01 09:00:00"), "void"),
        ],
        TXN_SCHEMA,
    )
    expected = spark.createDataFrame(
        [("v", AS_OF, dt.date(2024, 5, 1), dt.date(2024, 5, 1), 61, 1, 50.0, 61, 50.0)], FEATURE_SCHEMA
    )
    assert_df_equality(rfm_features(txns), expected, ignore_nullable=True)


def test_customer_features_as_of_before_first_order_excludes_customer(spark):
    txns = spark.createDataFrame(
        [
            ("early", "pos", "E1", 10.0, ts("2024-06-30 23:59:59"), "purchase"),
            ("late", "pos", "L1", 10.0, ts("2024-07-01 00:00:00"), "purchase"),
        ],
        TXN_SCHEMA,
    )
    actual = rfm_features(txns).select("customer_id")
    expected = spark.createDataFrame([("early",)], "customer_id STRING")
    assert_df_equality(actual, expected, ignore_nullable=True)


def test_default_as_of_is_day_after_newest_transaction(spark):
    txns = spark.createDataFrame(
        [
            ("a", "pos", "A1", 1.0, ts("2024-03-01 10:00:00"), "purchase"),
            ("a", "pos", "A2", 1.0, ts("2024-04-30 23:00:00"), "return"),
        ],
        TXN_SCHEMA,
    )
    assert default_as_of(txns) == dt.date(2024, 5, 1)


def test_customer_features_same_invoice_number_in_two_sources_is_two_orders(spark):
    txns = spark.createDataFrame(
        [
            ("m", "pos", "1001", 10.0, ts("2024-06-01 09:00:00"), "purchase"),
            ("m", "web", "1001", 30.0, ts("2024-06-02 09:00:00"), "purchase"),
        ],
        TXN_SCHEMA,
    )
    expected = spark.createDataFrame(
        [("m", AS_OF, dt.date(2024, 6, 1), dt.date(2024, 6, 2), 29, 2, 40.0, 30, 20.0)], FEATURE_SCHEMA
    )
    assert_df_equality(rfm_features(txns), expected, ignore_nullable=True)


def _default_rfm(tmp_path):
    from tests.conftest import make_config

    return make_config(tmp_path).rfm


def test_rfm_default_rules_map_every_score_cell_to_exactly_one_segment(tmp_path):
    rfm = _default_rfm(tmp_path)
    for r in range(1, rfm.bins + 1):
        for f in range(1, rfm.bins + 1):
            matching = [rule.name for rule in rfm.segments if r in rule.r and f in rule.f]
            assert len(matching) == 1, (r, f, matching)


def test_rfm_segments_name_the_grid_with_explicit_cut_points(spark, tmp_path):
    rfm = _default_rfm(tmp_path)
    edges = {"recency_days": [10, 20, 30, 40], "frequency": [1, 2, 3, 4], "monetary": [10, 20, 30, 40]}
    # recency 5 -> r 5, 15 -> 4, 25 -> 3, 35 -> 2, 45 -> 1; frequency n -> f n (n <= 5)
    rows = [("c1", 5, 5, 50.0), ("c2", 5, 1, 5.0), ("c3", 45, 5, 40.0), ("c4", 25, 3, 10.0), ("c5", None, 0, -5.0)]
    feats = spark.createDataFrame(rows, "customer_id STRING, recency_days INT, frequency LONG, monetary DOUBLE")
    actual = feats.transform(rfm_segments(edges, rfm.bins, rfm.segments, rfm.default_segment)).select(
        "customer_id", "r_score", "f_score", "m_score", "rfm_segment"
    )
    expected = spark.createDataFrame(
        [
            ("c1", 5, 5, 5, "Champions"),
            ("c2", 5, 1, 1, "New Customers"),
            ("c3", 1, 5, 4, "Can't Lose Them"),  # 40 is on an edge: the lower bin
            ("c4", 3, 3, 1, "Need Attention"),
            ("c5", None, 1, 1, "Other"),  # no purchase: no recency, so no rule applies
        ],
        "customer_id STRING, r_score INT, f_score INT, m_score INT, rfm_segment STRING",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_rfm_overlapping_rules_first_match_wins_else_other(spark):
    rules = [RfmRule("Best", r=[2], f=[1, 2]), RfmRule("Recent", r=[2], f=[2]), RfmRule("Old", r=[1], f=[2])]
    edges = {"recency_days": [10.0], "frequency": [1.0], "monetary": [100.0]}
    feats = spark.createDataFrame(
        [("a", 5, 2, 1.0), ("b", 50, 1, 1.0)], "customer_id STRING, recency_days INT, frequency LONG, monetary DOUBLE"
    )
    actual = feats.transform(rfm_segments(edges, 2, rules, "Other")).select("customer_id", "rfm_segment")
    expected = spark.createDataFrame([("a", "Best"), ("b", "Other")], "customer_id STRING, rfm_segment STRING")
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_rfm_cut_points_are_quantiles_of_customers_with_a_purchase(spark, tmp_path):
    rfm = _default_rfm(tmp_path)
    rows = [(f"c{i}", i, 1, float(10 * i)) for i in range(1, 11)] + [("none", None, 0, 0.0)]
    feats = spark.createDataFrame(rows, "customer_id STRING, recency_days INT, frequency LONG, monetary DOUBLE")
    edges = rfm_cut_points(feats, rfm)
    # quintile edges of 1..10 are 2, 4, 6, 8; every frequency is 1, so its edges coincide
    assert edges == {"recency_days": [2.0, 4.0, 6.0, 8.0], "frequency": [1.0] * 4,
                     "monetary": [20.0, 40.0, 60.0, 80.0]}  # fmt: skip
