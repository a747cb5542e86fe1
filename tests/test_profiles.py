from __future__ import annotations

from chispa import assert_approx_df_equality, assert_df_equality

from custseg import profiles

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


def test_feature_profiles_means_medians_and_z_scores(spark):
    actual = labelled(spark).transform(profiles.feature_profiles(["monetary", "frequency"]))
    # segment 1 monetary: mean 20, z = (20 - 40) / 35.3553 = -0.5657; frequency mean 4/3,
    # z = (1.3333 - 2) / 1.2247 = -0.5443. Segment 0: z = 60 / 35.3553 = 1.6971, 2 / 1.2247.
    # The unsegmented row has no monetary values (mean null) and frequency 0.
    expected = spark.createDataFrame(
        [
            (1, "monetary", 3, 20.0, 20.0, -0.5657),
            (1, "frequency", 3, 1.3333, 1.0, -0.5443),
            (0, "monetary", 1, 100.0, 100.0, 1.6971),
            (0, "frequency", 1, 4.0, 4.0, 1.633),
            (-1, "monetary", 0, None, None, None),
            (-1, "frequency", 1, 0.0, 0.0, -1.633),
        ],
        "segment_id INT, feature STRING, customers LONG, mean DOUBLE, median DOUBLE, z_score DOUBLE",
    )
    assert_approx_df_equality(actual, expected, 1e-4, ignore_row_order=True, ignore_nullable=True)


def test_segment_sizes_shares_and_dominant_rfm_segment(spark):
    actual = labelled(spark).transform(profiles.segment_sizes("monetary"))
    # revenue 60 + 100 = 160; segment 1's RFM segments: At Risk twice, Hibernating once
    expected = spark.createDataFrame(
        [
            (1, 3, 0.6, 60.0, 0.375, "At Risk", 0.6667),
            (0, 1, 0.2, 100.0, 0.625, "Champions", 1.0),
            (-1, 1, 0.2, None, None, "Other", 1.0),
        ],
        "segment_id INT, customers LONG, customer_share DOUBLE, revenue DOUBLE, revenue_share DOUBLE, "
        "dominant_rfm_segment STRING, dominant_rfm_share DOUBLE",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_segment_sizes_dominant_rfm_tie_goes_to_the_first_name(spark):
    rows = [("a", 0, 1.0, 1, "Loyal Customers"), ("b", 0, 1.0, 1, "At Risk")]
    actual = spark.createDataFrame(rows, LABELLED).transform(profiles.segment_sizes("monetary"))
    assert actual.first()["dominant_rfm_segment"] == "At Risk"


def test_segment_name_from_rfm_z_scores():
    assert profiles.segment_name({"recency_days": -0.9, "frequency": 1.2, "monetary": 1.5}) == "High-value loyal"
    assert profiles.segment_name({"recency_days": 1.1, "frequency": -0.6, "monetary": -0.8}) == "Low-value lapsed"
    assert profiles.segment_name({"recency_days": -0.7, "frequency": 0.1, "monetary": 0.2}) == "Mid-value recent"
    assert profiles.segment_name({"recency_days": 0.2, "frequency": 0.3, "monetary": -0.2}) == "Mid-value occasional"


def test_segment_name_without_rfm_uses_the_two_most_distinctive_features():
    z = {"age": 0.1, "annual_income": 1.4, "spending_score": -1.1}
    assert profiles.segment_name(z) == "High annual income, low spending score"
    assert profiles.segment_name({"age": 0.2}) == "Typical customers"


def test_segment_names_are_unique_and_unsegmented_is_named():
    same = {"recency_days": 1.0, "frequency": 0.0, "monetary": -1.0}
    names = profiles.segment_names(
        {0: {"recency_days": -1.0, "frequency": 1.0, "monetary": 1.0}, 1: same, 2: same, -1: {}}
    )
    assert names == {0: "High-value loyal", 1: "Low-value lapsed #1", 2: "Low-value lapsed #2", -1: "Unsegmented"}
