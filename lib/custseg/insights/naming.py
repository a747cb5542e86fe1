"""Segment names and descriptions from robust statistics, by fixed rules: pure Python
on each segment's summary (its shares, and per feature the median customer's value and
percentile rank among all placed customers), so every rule is testable without Spark.

Names come from the medians' percentile ranks, not from means: spend is skewed (the top
1% of a retailer's customers can spend 26 times the median), so a few whales move a
segment's mean, and z-scores of means, without saying anything about its typical
customer. With recency, frequency and monetary a name is a value tier, a recency word
and a frequency word, e.g. "High-value active loyal"; with a customer table alone, the
two most distinctive attributes, e.g. "High annual income, high spending score". Names
that would be shared get qualifiers from the next feature that separates the segments
(", bigger baskets"), never a number, and the same profile always gets the same name.
With a customer value, a High- or Mid-value segment whose median customer's P(alive) is
below 1/2 is "at-risk" instead of its recency word, and descriptions give the median
customer's expected CLV and P(alive) (docs/segments-for-use.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby

from custseg import columns as c

UNSEGMENTED_NAME = "Unsegmented"
RFM_FEATURES = (c.RECENCY_DAYS, c.FREQUENCY, c.MONETARY)

# Value tiers by the percentile rank of a segment's median spend: the top 20% of
# customers are High-value, the middle 30% Mid-value, the bottom half Low-value.
HIGH_VALUE, MID_VALUE, LOW_VALUE = "High-value", "Mid-value", "Low-value"
TIERS = (LOW_VALUE, MID_VALUE, HIGH_VALUE)  # lowest first
HIGH_VALUE_RANK = 0.8
MID_VALUE_RANK = 0.5
REVENUE_MAJORITY = 0.5  # more of the revenue than this, at a revenue index above 100: High-value whatever its median
# Recency by terciles of the population: the most recent third active, the least recent lapsed.
ACTIVE_RANK = 1 / 3
LAPSED_RANK = 2 / 3
# Loyal: the median customer orders as often as the top 20%, and at least 3 times.
LOYAL_RANK = 0.8
LOYAL_MIN_ORDERS = 3
# At risk: a segment of high past value (High- or Mid-value: its median customer spent
# more than half the customers) whose median customer is more likely gone than alive
# (P(alive) below 1/2, from the BG/NBD fit of the customer-value stage). P(alive) is a
# probability of its own, so the cut is on it, not on its rank among customers.
AT_RISK_P_ALIVE = 0.5
AT_RISK = "at-risk"
# Attribute words (a customer table alone): the top and the bottom third are "high" and "low".
HIGH_RANK = 2 / 3
LOW_RANK = 1 / 3
DESCRIBED_ATTRIBUTES = 3  # medians in an attribute-only description

# Qualifiers that tell apart segments that would share a name, (lower side, higher side),
# tried in this order when two features separate them equally; other features follow in
# profile order as "lower x" / "higher x".
QUALIFIERS: dict[str, tuple[str, str]] = {
    c.AVG_ORDER_VALUE: ("smaller baskets", "bigger baskets"),
    c.TENURE_DAYS: ("newer", "longer-standing"),
    c.DISTINCT_PRODUCTS: ("narrower range", "wider range"),
    c.RETURN_RATE: ("fewer returns", "more returns"),
    c.MONETARY: ("lower spend", "higher spend"),
    c.RECENCY_DAYS: ("more recent", "less recent"),
    c.FREQUENCY: ("fewer orders", "more orders"),
    c.MEAN_DAYS_BETWEEN: ("shorter gaps between orders", "longer gaps between orders"),
    c.PURCHASES_PER_MONTH: ("fewer orders a month", "more orders a month"),
}
# The last resort when no feature's rank separates them: the median itself.
MEDIAN_PHRASES = {
    c.MONETARY: "median spend {}",
    c.AVG_ORDER_VALUE: "median basket {}",
    c.RECENCY_DAYS: "median recency {} days",
    c.FREQUENCY: "median {} orders",
    c.TENURE_DAYS: "median tenure {} days",
    c.DISTINCT_PRODUCTS: "median {} distinct products",
    c.RETURN_RATE: "median return rate {}",
    c.MEAN_DAYS_BETWEEN: "median {} days between orders",
    c.PURCHASES_PER_MONTH: "median {} orders a month",
}


@dataclass(frozen=True)
class SegmentSummary:
    """What a segment's name and description are made of: its size and shares, and per
    profiled feature the median and the median's percentile rank among placed customers."""

    segment_id: int
    customers: int
    customer_share: float | None
    revenue_share: float | None
    revenue_index: float | None
    medians: Mapping[str, float | None]
    ranks: Mapping[str, float | None]


@dataclass(frozen=True)
class Naming:
    name: str
    description: str
    value_tier: str | None


def value_tier(rank: float) -> str:
    """High-value when the median spend is in the top 20% of customers (rank >= 0.8),
    Mid-value in the middle 30% (rank >= 0.5), else Low-value."""
    if rank >= HIGH_VALUE_RANK:
        return HIGH_VALUE
    return MID_VALUE if rank >= MID_VALUE_RANK else LOW_VALUE


def value_tiers(segments: Sequence[SegmentSummary], value_feature: str) -> dict[int, str]:
    """The tier of every placed segment with a median of ``value_feature``: by its rank
    (``value_tier``), except that a segment with more than half the revenue, at a
    revenue index above 100, is High-value; then tiers never fall as the median rises:
    each segment takes the highest tier among the segments whose median is at most its
    own."""
    rated = [
        s
        for s in segments
        if s.segment_id >= 0 and s.medians.get(value_feature) is not None and s.ranks.get(value_feature) is not None
    ]

    def own(s: SegmentSummary) -> str:
        # Most of the revenue from customers who each bring more than the average one: a
        # mass segment that holds most of the revenue only by its size is not High-value.
        above_average = s.revenue_index is None or s.revenue_index > 100
        majority = s.revenue_share is not None and s.revenue_share > REVENUE_MAJORITY and above_average
        return HIGH_VALUE if majority else value_tier(s.ranks[value_feature])

    tiers = {s.segment_id: own(s) for s in rated}
    return {
        s.segment_id: max(
            (tiers[o.segment_id] for o in rated if o.medians[value_feature] <= s.medians[value_feature]),
            key=TIERS.index,
        )
        for s in rated
    }


def recency_word(rank: float) -> str:
    """By terciles of the population: "active" when the median customer bought more
    recently than two thirds of customers (rank < 1/3), "lapsed" when less recently than
    two thirds (rank > 2/3), else "cooling"."""
    if rank < ACTIVE_RANK:
        return "active"
    return "lapsed" if rank > LAPSED_RANK else "cooling"


def at_risk(tier: str | None, p_alive: float | None) -> bool:
    """High past value, low P(alive): a High- or Mid-value segment whose median
    customer's P(alive) is below 1/2. False without a P(alive) (no customer value)."""
    return tier in (HIGH_VALUE, MID_VALUE) and p_alive is not None and p_alive < AT_RISK_P_ALIVE


def activity_word(s: SegmentSummary, tier: str | None) -> str:
    """The word "at-risk" for a segment of high past value and low P(alive) (``at_risk``), else
    the recency word (``recency_word``)."""
    return AT_RISK if at_risk(tier, s.medians.get(c.P_ALIVE)) else recency_word(s.ranks[c.RECENCY_DAYS])


def frequency_word(median: float, rank: float) -> str:
    """The frequency word: "one-time" when the median customer ordered at most once;
    "loyal" when as often as the top 20% (rank >= 0.8) and at least 3 times; else "repeat"."""
    if median <= 1:
        return "one-time"
    return "loyal" if rank >= LOYAL_RANK and median >= LOYAL_MIN_ORDERS else "repeat"


def _words(feature: str) -> str:
    return feature.replace("_", " ")


def attribute_name(ranks: Mapping[str, float | None], features: Sequence[str]) -> str:
    """A customer-table name: the (at most) two features whose median ranks are furthest
    from the middle, among those in the top third ("high", rank >= 2/3) or the bottom
    third ("low", rank <= 1/3), ties in ``features`` order; "Typical customers" when none is."""
    notable = [(f, r) for f in features if (r := ranks.get(f)) is not None and (r >= HIGH_RANK or r <= LOW_RANK)]
    notable = sorted(notable, key=lambda fr: -round(abs(fr[1] - 0.5), 6))[:2]  # stable: features order
    if not notable:
        return "Typical customers"
    name = ", ".join(f"{'high' if r > 0.5 else 'low'} {_words(f)}" for f, r in notable)
    return name[0].upper() + name[1:]


def qualifier_order(features: Sequence[str]) -> list[str]:
    """The features that may tell segments apart, in the order that breaks ties."""
    # The customer value is not a qualifier: it shows in the at-risk word and the
    # description, and the names of a run stay the names they were without it.
    others = [f for f in features if f not in QUALIFIERS and f not in c.VALUE_FEATURES]
    return [*(f for f in QUALIFIERS if f in features), *others]


def _comparable(group: Sequence[SegmentSummary], feature: str) -> bool:
    return all(s.ranks.get(feature) is not None and s.medians.get(feature) is not None for s in group)


def most_separating(group: Sequence[SegmentSummary], features: Sequence[str]) -> str | None:
    """The feature whose median ranks differ most within ``group`` (the first in
    ``features`` among equals); None when no feature's ranks differ."""
    best, widest = None, 0.0
    for f in features:
        if _comparable(group, f):
            spread = round(max(s.ranks[f] for s in group) - min(s.ranks[f] for s in group), 6)
            if spread > widest:
                best, widest = f, spread
    return best


def split_at_largest_gap(
    group: Sequence[SegmentSummary], feature: str
) -> tuple[list[SegmentSummary], list[SegmentSummary]]:
    """``group`` in order of ``feature``'s rank (then id), cut at the largest gap between
    consecutive ranks (the lowest of equal gaps): (lower side, higher side)."""
    ordered = sorted(group, key=lambda s: (s.ranks[feature], s.segment_id))
    gaps = [round(b.ranks[feature] - a.ranks[feature], 6) for a, b in zip(ordered, ordered[1:], strict=False)]
    cut = gaps.index(max(gaps)) + 1
    return ordered[:cut], ordered[cut:]


def fmt_amount(value: float) -> str:
    """Thousands separators; whole from 100 on, else at most two decimals: 2,761, 12.5."""
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def fmt_share(share: float) -> str:
    """A whole percentage, with one decimal when that would round to 0% or 100%."""
    pct = share * 100
    return f"{pct:.1f}%" if 0 < pct < 1 or 99 < pct < 100 else f"{pct:.0f}%"


def median_phrase(feature: str, median: float) -> str:
    return MEDIAN_PHRASES.get(feature, f"median {_words(feature)} {{}}").format(fmt_amount(median))


def _by_median(group: Sequence[SegmentSummary], features: Sequence[str]) -> dict[int, list[str]]:
    """The last resort: the medians themselves of the most separating feature, then of
    the next; segments equal in every profiled median are told apart by their sizes
    (and segments equal in those too are the same segment twice: they keep one name)."""
    feature = most_separating(group, features)
    if feature is None:
        sizes_differ = len({s.customers for s in group}) > 1
        return {s.segment_id: [f"{s.customers:,} customers"] if sizes_differ else [] for s in group}
    rest = [f for f in features if f != feature]
    qualified: dict[int, list[str]] = {}
    ordered = sorted(group, key=lambda s: (s.medians[feature], s.segment_id))
    for median, same in groupby(ordered, key=lambda s: s.medians[feature]):
        members = list(same)
        more = _by_median(members, rest) if len(members) > 1 else {members[0].segment_id: []}
        qualified.update({sid: [median_phrase(feature, median), *words] for sid, words in more.items()})
    return qualified


def qualifiers(group: Sequence[SegmentSummary], features: Sequence[str]) -> dict[int, list[str]]:
    """Words that tell apart the segments of ``group`` (which share a name), per segment.

    The feature whose median ranks differ most within the group (``most_separating``)
    splits it at its largest gap (``split_at_largest_gap``); each side gets that
    feature's lower or higher word (``QUALIFIERS``; else "lower x" / "higher x"), and a
    side of several segments is split again with the remaining features. Segments no
    remaining feature separates are told apart by a median, e.g. "median spend 2,761".
    """

    def qualify(members: Sequence[SegmentSummary], remaining: Sequence[str]) -> dict[int, list[str]]:
        if len(members) < 2:
            return {s.segment_id: [] for s in members}
        feature = most_separating(members, remaining)
        if feature is None:
            return _by_median(members, features)
        lower, higher = QUALIFIERS.get(feature, (f"lower {_words(feature)}", f"higher {_words(feature)}"))
        rest = [f for f in remaining if f != feature]
        qualified: dict[int, list[str]] = {}
        for side, word in zip(split_at_largest_gap(members, feature), (lower, higher), strict=True):
            qualified.update({sid: [word, *more] for sid, more in qualify(side, rest).items()})
        return qualified

    return qualify(group, features)


def distinct_names(
    names: Mapping[int, str], segments: Sequence[SegmentSummary], features: Sequence[str]
) -> dict[int, str]:
    """``names`` (segment id -> name) with each name that several segments share
    qualified (``qualifiers``, over ``qualifier_order(features)``), e.g. "Low-value lapsed
    one-time, bigger baskets" and "Low-value lapsed one-time, smaller baskets"."""
    by_id = {s.segment_id: s for s in segments}
    order = qualifier_order(features)
    distinct = dict(names)
    for name in sorted(set(names.values())):
        sharing = [sid for sid in sorted(names) if names[sid] == name]
        if len(sharing) > 1:
            words = qualifiers([by_id[sid] for sid in sharing], order)
            distinct.update({sid: ", ".join([name, *more]) for sid, more in words.items()})
    return distinct


def _shares(s: SegmentSummary, value_feature: str) -> str:
    parts = [f"{fmt_share(s.customer_share)} of customers"] if s.customer_share is not None else []
    if s.revenue_share is not None:
        revenue = "revenue" if value_feature == c.MONETARY else f"total {_words(value_feature)}"
        index = f" (index {s.revenue_index:,.0f})" if s.revenue_index is not None else ""
        parts.append(f"{fmt_share(s.revenue_share)} of {revenue}{index}")
    return ", ".join(parts)


def _joined(sentence: str, shares: str) -> str:
    return f"{sentence}; {shares}" if shares else sentence


def value_phrase(s: SegmentSummary) -> str:
    """The median customer's expected CLV and P(alive), when there are some: ", expected
    CLV 1,020, P(alive) 0.42"; else empty."""
    clv, p_alive = s.medians.get(c.CLV), s.medians.get(c.P_ALIVE)
    parts = [f"expected CLV {fmt_amount(clv)}"] if clv is not None else []
    parts += [f"P(alive) {p_alive:.2f}"] if p_alive is not None else []
    return "".join(f", {p}" for p in parts)


def rfm_description(s: SegmentSummary, value_feature: str = c.MONETARY) -> str:
    """The median customer's orders, recency and spend (and expected CLV and P(alive),
    with a customer value), then the segment's shares: "Bought 8 times, last 16 days
    ago, median spend 2,761, expected CLV 1,020, P(alive) 0.42; 23% of customers, 72%
    of revenue (index 313)"."""
    orders, days, spend = (s.medians[f] for f in (c.FREQUENCY, c.RECENCY_DAYS, c.MONETARY))
    times = "once" if orders == 1 else f"{fmt_amount(orders)} times"
    ago = "on the as-of date" if days == 0 else "1 day ago" if days == 1 else f"{fmt_amount(days)} days ago"
    bought = f"Bought {times}, last {ago}, median spend {fmt_amount(spend)}{value_phrase(s)}"
    return _joined(bought, _shares(s, value_feature))


def attribute_description(s: SegmentSummary, features: Sequence[str], value_feature: str) -> str:
    """The medians of the first profiled features, then the shares: "Median annual
    income 109, spending score 81, age 33; 20% of customers, 35% of total spending score
    (index 175)"."""
    shown = [f for f in features if s.medians.get(f) is not None][:DESCRIBED_ATTRIBUTES]
    medians = ", ".join(f"{_words(f)} {fmt_amount(s.medians[f])}" for f in shown)
    return _joined(f"Median {medians}" if medians else "No values", _shares(s, value_feature))


def unsegmented_description(s: SegmentSummary, rfm: bool, value_feature: str) -> str:
    why = "No purchase before the as-of date" if rfm else "A model feature is missing"
    return _joined(f"{why}: the model cannot place them", _shares(s, value_feature))


def name_segments(
    segments: Sequence[SegmentSummary], features: Sequence[str], value_feature: str = c.MONETARY
) -> dict[int, Naming]:
    """Name, description and value tier of every segment, by fixed rules.

    With recency_days, frequency and monetary ranked for every placed segment: the
    value tier (``value_tiers``), the recency word, or "at-risk" for high past value
    with low P(alive) (``activity_word``), and the frequency word, e.g. "High-value
    active loyal" or "High-value at-risk repeat". Otherwise ``attribute_name``. Segment -1 is
    "Unsegmented". Names several segments would share are qualified
    (``distinct_names``), so each name is one segment's. ``features``: the profiled
    features in profile order (it breaks ties).
    """
    placed = [s for s in segments if s.segment_id >= 0]
    rfm = bool(placed) and all(s.ranks.get(f) is not None for s in placed for f in RFM_FEATURES)
    tiers = value_tiers(segments, value_feature)
    if rfm:
        base = {
            s.segment_id: " ".join(
                w
                for w in (
                    tiers.get(s.segment_id),
                    activity_word(s, tiers.get(s.segment_id)),
                    frequency_word(s.medians[c.FREQUENCY], s.ranks[c.FREQUENCY]),
                )
                if w
            )
            for s in placed
        }
    else:
        base = {s.segment_id: attribute_name(s.ranks, features) for s in placed}
    names = distinct_names(base, placed, features)
    namings = {}
    for s in segments:
        if s.segment_id < 0:
            namings[s.segment_id] = Naming(UNSEGMENTED_NAME, unsegmented_description(s, rfm, value_feature), None)
        else:
            described = rfm_description(s, value_feature) if rfm else attribute_description(s, features, value_feature)
            namings[s.segment_id] = Naming(names[s.segment_id], described, tiers.get(s.segment_id))
    return namings
