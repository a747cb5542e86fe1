"""Naming rules, worked by hand: skewed segments where the mean and the median disagree,
the revenue-majority guard, monotone tiers, and names told apart without numbers."""

from __future__ import annotations

from custseg.insights import naming
from custseg.insights.naming import SegmentSummary

RFM = ("recency_days", "frequency", "monetary")
BEHAVIOUR = ("avg_order_value", "tenure_days", "distinct_products", "return_rate")
FEATURES = [*RFM, "tenure_days", "avg_order_value", "distinct_products", "return_rate"]


def summary(sid, ranks, medians=None, customers=100, customer_share=0.25, revenue_share=0.25, revenue_index=100.0):
    """A segment as the job summarises it; medians default to 100 x the ranks (same order)."""
    medians = medians or {f: r * 100 for f, r in ranks.items()}
    return SegmentSummary(sid, customers, customer_share, revenue_share, revenue_index, medians, ranks)


def rfm_summary(sid, recency, frequency, monetary, ranks, revenue_share=0.25, customer_share=0.25, **others):
    """An RFM segment: the median customer's recency, frequency and spend, their ranks (in RFM
    order), and other features' ranks (equal by default, so they separate nothing)."""
    all_ranks = dict(zip(RFM, ranks, strict=True)) | {f: 0.5 for f in BEHAVIOUR} | others
    medians = {"recency_days": recency, "frequency": frequency, "monetary": monetary}
    medians |= {f: r * 100 for f, r in all_ranks.items() if f not in RFM}
    index = revenue_share / customer_share * 100
    return SegmentSummary(sid, 100, customer_share, revenue_share, index, medians, all_ranks)


def test_value_tier_thresholds():
    tiers = [naming.value_tier(r) for r in (0.95, 0.8, 0.79, 0.5, 0.49, 0.0)]
    assert tiers == ["High-value", "High-value", "Mid-value", "Mid-value", "Low-value", "Low-value"]


def test_value_tiers_a_whale_raises_the_mean_but_not_the_tier():
    # segment 0: mean spend 257.5 thanks to one customer of 1,000, median 10 (rank 0.1875);
    # with 40% of the revenue it is not a majority: the median decides
    whale = summary(0, {"monetary": 0.1875}, {"monetary": 10.0}, revenue_share=0.4)
    typical = summary(1, {"monetary": 0.5625}, {"monetary": 50.0}, revenue_share=0.25)
    big = summary(2, {"monetary": 0.9}, {"monetary": 900.0}, revenue_share=0.35)
    assert naming.value_tiers([whale, typical, big], "monetary") == {0: "Low-value", 1: "Mid-value", 2: "High-value"}


def test_value_tiers_a_segment_with_most_of_the_revenue_is_high_value():
    # median spend 1,684 is only at rank 0.75 (Mid-value by rank), but the segment holds 90% of the revenue
    top = summary(0, {"monetary": 0.75}, {"monetary": 1684.0}, customer_share=0.3, revenue_share=0.9,
                  revenue_index=300.0)  # fmt: skip
    rest = summary(1, {"monetary": 0.3}, {"monetary": 259.0}, customer_share=0.7, revenue_share=0.1,
                   revenue_index=14.3)  # fmt: skip
    assert naming.value_tiers([top, rest], "monetary") == {0: "High-value", 1: "Low-value"}


def test_value_tiers_a_mass_segment_with_most_of_the_revenue_only_by_its_size_is_not_high_value():
    # 80% of the customers, 55% of the revenue: each brings less than the average (index 69)
    mass = summary(0, {"monetary": 0.3}, {"monetary": 40.0}, customer_share=0.8, revenue_share=0.55,
                   revenue_index=68.75)  # fmt: skip
    few = summary(1, {"monetary": 0.95}, {"monetary": 900.0}, customer_share=0.2, revenue_share=0.45,
                  revenue_index=225.0)  # fmt: skip
    assert naming.value_tiers([mass, few], "monetary") == {0: "Low-value", 1: "High-value"}


def test_value_tiers_never_fall_as_median_spend_rises():
    # segment 0 is High-value by its revenue majority; segment 1 spends more at the median (rank 0.7,
    # Mid-value by rank), so it is raised to High-value; segment 2 spends less and stays Low-value
    majority = summary(0, {"monetary": 0.6}, {"monetary": 300.0}, revenue_share=0.55, revenue_index=220.0)
    higher = summary(1, {"monetary": 0.7}, {"monetary": 400.0}, revenue_share=0.3)
    lower = summary(2, {"monetary": 0.2}, {"monetary": 20.0}, revenue_share=0.15)
    unplaced = summary(-1, {"monetary": None}, {"monetary": None}, revenue_share=None)
    tiers = naming.value_tiers([majority, higher, lower, unplaced], "monetary")
    assert tiers == {0: "High-value", 1: "High-value", 2: "Low-value"}


def test_recency_word_by_terciles():
    words = [naming.recency_word(r) for r in (0.1, 0.33, 0.34, 0.66, 0.67, 0.9)]
    assert words == ["active", "active", "cooling", "cooling", "lapsed", "lapsed"]


def test_frequency_word_one_time_loyal_or_repeat():
    assert naming.frequency_word(1.0, 0.3) == "one-time"
    assert naming.frequency_word(1.0, 0.9) == "one-time"  # one order is never loyal
    assert naming.frequency_word(2.0, 0.9) == "repeat"  # top 20%, but fewer than 3 orders
    assert naming.frequency_word(3.0, 0.8) == "loyal"
    assert naming.frequency_word(8.0, 0.7) == "repeat"


def test_name_segments_names_and_describes_the_median_customer():
    # k = 2 on a real retailer: segment 0 (5 orders, 23 days, 1,684) holds 90% of the revenue
    segments = [
        rfm_summary(0, 23.0, 5.0, 1684.0, (0.25, 0.85, 0.75), revenue_share=0.9, customer_share=0.3),
        rfm_summary(1, 200.0, 1.0, 259.0, (0.7, 0.3, 0.35), revenue_share=0.1, customer_share=0.6),
        summary(-1, dict.fromkeys(FEATURES), dict.fromkeys(FEATURES), customer_share=0.1, revenue_share=None),
    ]
    namings = naming.name_segments(segments, FEATURES)
    assert namings == {
        0: naming.Naming(
            "High-value active loyal",
            "Bought 5 times, last 23 days ago, median spend 1,684; 30% of customers, 90% of revenue (index 300)",
            "High-value",
        ),
        1: naming.Naming(
            "Low-value lapsed one-time",
            "Bought once, last 200 days ago, median spend 259; 60% of customers, 10% of revenue (index 17)",
            "Low-value",
        ),
        -1: naming.Naming(
            "Unsegmented", "No purchase before the as-of date: the model cannot place them; 10% of customers", None
        ),
    }


def test_rfm_description_formats_numbers_for_reading():
    s = rfm_summary(3, 1.0, 8.0, 12761.4, (0.1, 0.9, 0.95), revenue_share=0.72, customer_share=0.004)
    assert naming.rfm_description(s) == (
        "Bought 8 times, last 1 day ago, median spend 12,761; 0.4% of customers, 72% of revenue (index 18,000)"
    )


def test_fmt_amount_and_fmt_share_round_for_reading():
    amounts = [naming.fmt_amount(v) for v in (2761.4, 1_234_567.0, 12.5, 0.054, 7.0)]
    assert amounts == ["2,761", "1,234,567", "12.5", "0.05", "7"]
    assert [naming.fmt_share(v) for v in (0.234, 0.004, 0.996, 0.0, 1.0)] == ["23%", "0.4%", "99.6%", "0%", "100%"]


def test_name_segments_two_colliding_names_get_the_feature_that_separates_them():
    # same tier, recency and frequency words; avg_order_value separates them most (0.2 vs 0.7)
    a = rfm_summary(0, 300.0, 1.0, 100.0, (0.8, 0.3, 0.2), avg_order_value=0.7, tenure_days=0.4)
    b = rfm_summary(1, 310.0, 1.0, 120.0, (0.82, 0.3, 0.25), avg_order_value=0.2, tenure_days=0.6)
    names = {sid: n.name for sid, n in naming.name_segments([a, b], FEATURES).items()}
    assert names == {0: "Low-value lapsed one-time, bigger baskets", 1: "Low-value lapsed one-time, smaller baskets"}


def test_distinct_names_three_colliding_segments_split_at_the_largest_gap_then_again():
    # avg_order_value (spread 0.6) beats tenure (0.5): cut between 0.3 and 0.8, then tenure splits 0 from 1
    segments = [
        summary(0, {"avg_order_value": 0.2, "tenure_days": 0.1, "monetary": 0.3}),
        summary(1, {"avg_order_value": 0.3, "tenure_days": 0.6, "monetary": 0.3}),
        summary(2, {"avg_order_value": 0.8, "tenure_days": 0.5, "monetary": 0.3}),
    ]
    names = naming.distinct_names({0: "X", 1: "X", 2: "X"}, segments, ["monetary", "tenure_days", "avg_order_value"])
    assert names == {0: "X, smaller baskets, newer", 1: "X, smaller baskets, longer-standing", 2: "X, bigger baskets"}


def test_distinct_names_last_resort_is_a_median_not_a_number_of_the_segment():
    # after avg_order_value parts 2 from 0 and 1, nothing else separates 0 and 1: their median baskets do
    segments = [
        summary(0, {"avg_order_value": 0.2, "tenure_days": 0.5}, {"avg_order_value": 20.0, "tenure_days": 90.0}),
        summary(1, {"avg_order_value": 0.25, "tenure_days": 0.5}, {"avg_order_value": 2500.0, "tenure_days": 90.0}),
        summary(2, {"avg_order_value": 0.8, "tenure_days": 0.5}, {"avg_order_value": 8000.0, "tenure_days": 90.0}),
    ]
    names = naming.distinct_names({0: "X", 1: "X", 2: "X", -1: "Unsegmented"}, segments, ["avg_order_value"])
    assert names == {
        0: "X, smaller baskets, median basket 20",
        1: "X, smaller baskets, median basket 2,500",
        2: "X, bigger baskets",
        -1: "Unsegmented",
    }


def test_distinct_names_ties_go_to_the_fixed_feature_order_and_the_lowest_gap():
    # avg_order_value and tenure separate equally: avg_order_value is tried first, whatever the order
    # given; its gaps are equal (0.2, 0.2): the cut is at the lower one, then tenure splits 0 from 1
    segments = [
        summary(0, {"tenure_days": 0.2, "avg_order_value": 0.6}),
        summary(1, {"tenure_days": 0.4, "avg_order_value": 0.4}),
        summary(2, {"tenure_days": 0.6, "avg_order_value": 0.2}),
    ]
    expected = {2: "X, smaller baskets", 0: "X, bigger baskets, newer", 1: "X, bigger baskets, longer-standing"}
    for order in (["tenure_days", "avg_order_value"], ["avg_order_value", "tenure_days"]):
        for shuffled in (segments, segments[::-1]):
            assert naming.distinct_names({2: "X", 0: "X", 1: "X"}, shuffled, order) == expected


def test_name_segments_are_unique_without_numbers_and_unsegmented_is_named():
    same = (0.8, 0.3, 0.2)
    segments = [
        rfm_summary(0, 5.0, 9.0, 5000.0, (0.1, 0.9, 0.95), revenue_share=0.6),
        rfm_summary(1, 300.0, 1.0, 50.0, same, tenure_days=0.2),
        rfm_summary(2, 300.0, 1.0, 50.0, same, tenure_days=0.7),
        rfm_summary(3, 300.0, 1.0, 50.0, same, tenure_days=0.75, return_rate=0.9),
        summary(-1, dict.fromkeys(FEATURES), dict.fromkeys(FEATURES), revenue_share=None),
    ]
    names = {sid: n.name for sid, n in naming.name_segments(segments, FEATURES).items()}
    assert names == {
        0: "High-value active loyal",
        1: "Low-value lapsed one-time, newer",
        2: "Low-value lapsed one-time, longer-standing, fewer returns",
        3: "Low-value lapsed one-time, longer-standing, more returns",
        -1: "Unsegmented",
    }
    assert len(set(names.values())) == len(names) and not any("#" in n for n in names.values())


def test_attribute_name_uses_the_two_most_distinctive_features():
    ranks = {"age": 0.33, "annual_income": 0.83, "spending_score": 0.85}
    assert naming.attribute_name(ranks, ["annual_income", "spending_score", "age"]) == (
        "High spending score, high annual income"
    )
    assert naming.attribute_name({"age": 0.6, "annual_income": 0.4}, ["age", "annual_income"]) == "Typical customers"


def test_name_segments_of_a_customer_table_alone():
    features = ["annual_income", "spending_score", "age"]
    target = summary(0, {"annual_income": 0.83, "spending_score": 0.85, "age": 0.33},
                     {"annual_income": 109.0, "spending_score": 81.0, "age": 33.0},
                     customer_share=0.2, revenue_share=0.35, revenue_index=175.0)  # fmt: skip
    typical = summary(1, {"annual_income": 0.43, "spending_score": 0.49, "age": 0.56},
                      {"annual_income": 55.0, "spending_score": 49.0, "age": 43.0},
                      customer_share=0.4, revenue_share=0.4, revenue_index=100.0)  # fmt: skip
    other = summary(2, {"annual_income": 0.5, "spending_score": 0.52, "age": 0.7},
                    {"annual_income": 60.0, "spending_score": 50.0, "age": 60.0},
                    customer_share=0.4, revenue_share=0.25, revenue_index=62.5)  # fmt: skip
    namings = naming.name_segments([target, typical, other], features, "spending_score")
    assert namings[0] == naming.Naming(
        "High spending score, high annual income",
        "Median annual income 109, spending score 81, age 33; 20% of customers, "
        "35% of total spending score (index 175)",
        "High-value",
    )
    assert namings[1].name == "Typical customers" and namings[2].name == "High age"


# --------------------------------------------------------------------------- customer value


def test_at_risk_is_high_or_mid_value_with_p_alive_below_one_half():
    cases = [("High-value", 0.49), ("High-value", 0.5), ("Mid-value", 0.1), ("Low-value", 0.1), ("High-value", None)]
    assert [naming.at_risk(tier, p) for tier, p in cases] == [True, False, True, False, False]


def test_name_segments_high_past_value_low_p_alive_reads_at_risk_with_its_clv():
    # segment 0: High-value (90% of the revenue) whose median customer is 40% likely alive: at risk.
    # Segment 1: a low P(alive) too, but Low-value: lapsed, as without a customer value.
    # Segment 2: High-value and likely alive (0.9): active, as without.
    value = {"clv": 0.5, "p_alive": 0.5}  # ranks: not what the rule reads
    segments = [
        rfm_summary(0, 150.0, 6.0, 1684.0, (0.75, 0.85, 0.9), revenue_share=0.6, customer_share=0.2, **value),
        rfm_summary(1, 200.0, 1.0, 59.0, (0.8, 0.3, 0.2), revenue_share=0.1, customer_share=0.5, **value),
        rfm_summary(2, 20.0, 5.0, 1500.0, (0.2, 0.8, 0.85), revenue_share=0.3, customer_share=0.3, **value),
    ]
    medians = [{"clv": 412.35, "p_alive": 0.4}, {"clv": 3.2, "p_alive": 0.21}, {"clv": 2480.0, "p_alive": 0.9}]
    segments = [
        SegmentSummary(**{**vars(s), "medians": {**s.medians, **m}}) for s, m in zip(segments, medians, strict=True)
    ]
    namings = naming.name_segments(segments, [*FEATURES, "clv", "p_alive"])
    assert {sid: n.name for sid, n in namings.items()} == {
        0: "High-value at-risk loyal",
        1: "Low-value lapsed one-time",
        2: "High-value active loyal",
    }
    assert namings[0].description == (
        "Bought 6 times, last 150 days ago, median spend 1,684, expected CLV 412, P(alive) 0.40; 20% of customers, "
        "60% of revenue (index 300)"
    )
    assert namings[1].description.startswith("Bought once, last 200 days ago, median spend 59, expected CLV 3.2, "
                                             "P(alive) 0.21; ")  # fmt: skip


def test_qualifier_order_leaves_out_the_customer_value():
    # the names of a run do not change when it gains a customer value
    assert naming.qualifier_order(["recency_days", "clv", "p_alive", "age"]) == ["recency_days", "age"]
