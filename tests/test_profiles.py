from __future__ import annotations

from chispa import assert_approx_df_equality, assert_column_equality, assert_df_equality
from pyspark.sql import functions as F

from custseg.insights import profiles

LABELLED = "customer_id STRING, segment_id INT, monetary DOUBLE, frequency LONG, rfm_segment STRING"


def labelled(spark):
    # Placed customers: monetary 10, 20, 30, 100 (mean 40; squared deviations 900 + 400 + 100 + 3600,
    # population std sqrt(5000 / 4) = 35.3553);
    # frequency 1, 1, 2, 4 (mean 2, std 1.2247). c5 has no purchase: segment -1.
    return spark.createDataFrame(
        [
            ("c1", 1, 10.0, 1, "Hibernating"),
            ("c2", 1, 20.0, 1, "At Risk"),
            ("c3", 1, 30.0, 2, "At Risk"),
            ("c4", 0, 100.0, 4, "Champions"),
            ("c5", -1, None, 0, "Other"),
        ],
        LABELLED,
    )


def test_feature_profiles_means_medians_z_scores_and_percentile_ranks(spark):
    actual = labelled(spark).transform(profiles.feature_profiles(["monetary", "frequency"]))
    # segment 1 monetary: mean 20, z = (20 - 40) / 35.3553 = -0.5657; frequency mean 4/3,
    # z = (1.3333 - 2) / 1.2247 = -0.5443. Segment 0: z = 60 / 35.3553 = 1.6971, 2 / 1.2247.
    # The unsegmented row has no monetary values (mean null) and frequency 0.
    # Percentile ranks among the 4 placed customers, (below + half the ties) / 4: segment 1's
    # median spend 20 has 10 below and itself tied, (1 + 0.5) / 4; its median frequency 1 ties
    # with two customers, (0 + 1) / 4; segment 0's 100 and 4: (3 + 0.5) / 4; segment -1's
    # frequency 0 is below everyone placed: 0.
    expected = spark.createDataFrame(
        [
            (1, "monetary", 3, 20.0, 20.0, -0.5657, 0.375),
            (1, "frequency", 3, 1.3333, 1.0, -0.5443, 0.25),
            (0, "monetary", 1, 100.0, 100.0, 1.6971, 0.875),
            (0, "frequency", 1, 4.0, 4.0, 1.633, 0.875),
            (-1, "monetary", 0, None, None, None, None),
            (-1, "frequency", 1, 0.0, 0.0, -1.633, 0.0),
        ],
        "segment_id INT, feature STRING, customers LONG, mean DOUBLE, median DOUBLE, z_score DOUBLE, "
        "percentile_rank DOUBLE",
    )
    assert_approx_df_equality(actual, expected, 1e-4, ignore_row_order=True, ignore_nullable=True)


def test_feature_profiles_rank_the_median_customer_not_the_mean_on_skewed_spend(spark):
    rows = [
        ("w1", 0, 10.0), ("w2", 0, 10.0), ("w3", 0, 10.0), ("w4", 0, 1000.0),  # one whale: mean 257.5
        ("m1", 1, 40.0), ("m2", 1, 50.0), ("m3", 1, 60.0), ("m4", 1, 70.0),  # mean 55
        ("u1", -1, 5.0),  # not placed: not part of the population
    ]  # fmt: skip
    actual = (
        spark.createDataFrame(rows, "customer_id STRING, segment_id INT, monetary DOUBLE")
        .transform(profiles.feature_profiles(["monetary"]))
        .select("segment_id", "feature", "mean", "median", "percentile_rank")
    )
    # Among the 8 placed values: segment 0's median 10 has none below and 3 tied, 1.5 / 8; segment 1's
    # median is the lower middle value 50, with 10, 10, 10, 40 below and itself tied, 4.5 / 8;
    # segment -1's 5 is below every placed customer.
    expected = spark.createDataFrame(
        [(0, "monetary", 257.5, 10.0, 0.1875), (1, "monetary", 55.0, 50.0, 0.5625), (-1, "monetary", 5.0, 5.0, 0.0)],
        "segment_id INT, feature STRING, mean DOUBLE, median DOUBLE, percentile_rank DOUBLE",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_rank_credit_counts_ties_half_and_nulls_not_at_all(spark):
    rows = [(1.0, 2.0, 1.0), (2.0, 2.0, 0.5), (3.0, 2.0, 0.0), (None, 2.0, None), (1.0, None, None)]
    df = spark.createDataFrame(rows, "value DOUBLE, median DOUBLE, expected DOUBLE").withColumn(
        "credit", profiles.rank_credit(F.col("value"), F.col("median"))
    )
    assert_column_equality(df, "credit", "expected")


def test_segment_sizes_shares_revenue_index_and_dominant_rfm_segment(spark):
    actual = labelled(spark).transform(profiles.segment_sizes("monetary"))
    # revenue 60 + 100 = 160; segment 1's RFM segments: At Risk twice, Hibernating once;
    # revenue index: 0.375 / 0.6 x 100 = 62.5 and 0.625 / 0.2 x 100 = 312.5
    expected = spark.createDataFrame(
        [
            (1, 3, 0.6, 60.0, 0.375, 62.5, "At Risk", 0.6667),
            (0, 1, 0.2, 100.0, 0.625, 312.5, "Champions", 1.0),
            (-1, 1, 0.2, None, None, None, "Other", 1.0),
        ],
        "segment_id INT, customers LONG, customer_share DOUBLE, revenue DOUBLE, revenue_share DOUBLE, "
        "revenue_index DOUBLE, dominant_rfm_segment STRING, dominant_rfm_share DOUBLE",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_segment_sizes_dominant_rfm_tie_goes_to_the_first_name(spark):
    rows = [("a", 0, 1.0, 1, "Loyal Customers"), ("b", 0, 1.0, 1, "At Risk")]
    actual = spark.createDataFrame(rows, LABELLED).transform(profiles.segment_sizes("monetary"))
    assert actual.first()["dominant_rfm_segment"] == "At Risk"


# --------------------------------------------------------------------------- naming rules


# --------------------------------------------------------------------------- customer value


def test_value_profile_median_clv_and_mean_and_median_p_alive_per_segment(spark):
    labelled = spark.createDataFrame(
        [
            ("c1", 0, 100.0, 0.9),
            ("c2", 0, 300.0, 0.6),
            ("c3", 0, 200.0, 0.3),
            ("c4", 1, 10.0, 0.2),
            ("c5", 1, 30.0, 0.1),
            ("c6", -1, None, None),  # no purchase: no customer value
        ],
        "customer_id STRING, segment_id INT, clv DOUBLE, p_alive DOUBLE",
    )
    per_feature = labelled.transform(profiles.feature_profiles(["clv", "p_alive"]))
    actual = profiles.value_profile(per_feature)
    # segment 0: CLV 100, 200, 300, median 200; P(alive) mean (0.9 + 0.6 + 0.3) / 3 = 0.6, median 0.6.
    # Segment 1: an even count, the lower middle value: CLV 10, P(alive) 0.1; mean (0.2 + 0.1) / 2.
    expected = spark.createDataFrame(
        [(0, 200.0, 0.6, 0.6), (1, 10.0, 0.15, 0.1), (-1, None, None, None)],
        "segment_id INT, median_clv DOUBLE, mean_p_alive DOUBLE, median_p_alive DOUBLE",
    )
    assert_approx_df_equality(actual, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)


def test_value_profile_is_null_without_a_customer_value(spark):
    labelled = spark.createDataFrame(
        [("c1", 0, 10.0), ("c2", 1, 20.0)], "customer_id STRING, segment_id INT, monetary DOUBLE"
    )
    actual = profiles.value_profile(labelled.transform(profiles.feature_profiles(["monetary"])))
    expected = spark.createDataFrame(
        [(0, None, None, None), (1, None, None, None)],
        "segment_id INT, median_clv DOUBLE, mean_p_alive DOUBLE, median_p_alive DOUBLE",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
