"""Customer features from canonical transactions: recency, frequency, monetary and more,
and the RFM scores and named RFM segments.

Everything is relative to an explicit as-of date: only transactions before it count,
and recency and tenure are measured to it."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io
from custseg.config import RFM_FEATURES, RfmConfig, RfmRule

log = logging.getLogger(__name__)


FEATURE_COLUMNS = (
    c.CUSTOMER_ID,
    c.AS_OF_DATE,
    c.FIRST_PURCHASE,
    c.LAST_PURCHASE,
    c.RECENCY_DAYS,
    c.FREQUENCY,
    c.MONETARY,
    c.TENURE_DAYS,
    c.AVG_ORDER_VALUE,
    c.MEAN_DAYS_BETWEEN,
    c.DISTINCT_PRODUCTS,
    c.RETURN_RATE,
    c.PURCHASES_PER_MONTH,
)


DAYS_PER_MONTH = 365.25 / 12


def _is_purchase() -> Column:
    return F.col(c.TXN_TYPE) == c.PURCHASE


def _is_revenue() -> Column:
    """Purchases and returns move revenue; voids are 0 and adjustments (postage,
    fees, bad-debt write-offs) are not customer spend."""
    return F.col(c.TXN_TYPE).isin(c.PURCHASE, c.RETURN)


def _span_days() -> Column:
    return F.datediff(c.LAST_PURCHASE, c.FIRST_PURCHASE)


def _tenure_months(as_of: Column) -> Column:
    return F.greatest(F.datediff(as_of, c.FIRST_PURCHASE) / F.lit(DAYS_PER_MONTH), F.lit(1.0))


def customer_features(as_of: dt.date) -> Callable[[DataFrame], DataFrame]:
    """Transactions -> one row per customer, as of ``as_of`` (exclusive).

    Input columns: customer_id, source, invoice_id, amount, event_ts, txn_type.
    Output columns: customer_id, as_of_date, first_purchase_date, last_purchase_date,
    recency_days, frequency, monetary, tenure_days, avg_order_value,
    mean_days_between_purchases, distinct_products, return_rate, purchases_per_month.

    * frequency: distinct purchase invoices (per source); returns and voids are not
      purchases.
    * monetary: purchases net of returns (a return's amount is negative); voids and
      non-product adjustments do not count.
    * avg_order_value: gross purchase value per purchase invoice.
    * mean_days_between_purchases: days from the first to the last purchase over the
      gaps between distinct purchase days (repeat orders on one day are one visit);
      null with fewer than two purchase days.
    * distinct_products: distinct products bought (0 for sources without products).
    * return_rate: value returned over gross value bought, 0..1 and more for returns of
      goods bought before the data starts; null without purchases.
    * purchases_per_month: purchase invoices per month of tenure, counting a tenure
      shorter than a month as one month, so a first-week customer is not "30 a month".
    A customer with returns but no purchase before ``as_of`` has frequency 0 and null
    recency, tenure and average order value: there is no purchase to measure.
    """
    as_of_lit = F.lit(as_of)

    def transform(txns: DataFrame) -> DataFrame:
        purchase_day = F.when(_is_purchase(), F.to_date(c.EVENT_TS))
        per_customer = (
            txns.where(F.col(c.EVENT_TS) < as_of_lit.cast("timestamp"))
            .groupBy(c.CUSTOMER_ID)
            .agg(
                F.min(purchase_day).alias(c.FIRST_PURCHASE),
                F.max(purchase_day).alias(c.LAST_PURCHASE),
                # invoice numbers are only unique within a source system
                F.count_distinct(F.when(_is_purchase(), F.col(c.SOURCE)), F.col(c.INVOICE_ID)).alias(c.FREQUENCY),
                F.sum(F.when(_is_revenue(), F.col(c.AMOUNT)).otherwise(F.lit(0.0))).alias(c.MONETARY),
                F.sum(F.when(_is_purchase(), F.col(c.AMOUNT))).alias("_gross"),
                F.sum(F.when(F.col(c.TXN_TYPE) == c.RETURN, -F.col(c.AMOUNT))).alias("_returned"),
                F.count_distinct(purchase_day).alias("_days"),
                F.count_distinct(F.when(_is_purchase(), F.col(c.PRODUCT_ID))).alias(c.DISTINCT_PRODUCTS),
            )
        )
        return per_customer.select(
            c.CUSTOMER_ID,
            as_of_lit.alias(c.AS_OF_DATE),
            c.FIRST_PURCHASE,
            c.LAST_PURCHASE,
            F.datediff(as_of_lit, c.LAST_PURCHASE).alias(c.RECENCY_DAYS),
            F.col(c.FREQUENCY).cast("long").alias(c.FREQUENCY),
            F.round(c.MONETARY, 2).alias(c.MONETARY),
            F.datediff(as_of_lit, c.FIRST_PURCHASE).alias(c.TENURE_DAYS),
            F.round(F.col("_gross") / F.nullif(F.col(c.FREQUENCY), F.lit(0)), 2).alias(c.AVG_ORDER_VALUE),
            F.round(_span_days() / F.nullif(F.col("_days") - 1, F.lit(0)), 2).alias(c.MEAN_DAYS_BETWEEN),
            F.col(c.DISTINCT_PRODUCTS).cast("long").alias(c.DISTINCT_PRODUCTS),
            F.round(F.coalesce(F.col("_returned"), F.lit(0.0)) / F.nullif(F.col("_gross"), F.lit(0.0)), 4).alias(
                c.RETURN_RATE
            ),
            F.round(F.col(c.FREQUENCY) / _tenure_months(as_of_lit), 4).alias(c.PURCHASES_PER_MONTH),
        )

    return transform


def rfm_cut_points(features: DataFrame, cfg: RfmConfig) -> dict[str, list[float]]:
    """Bin edges per RFM feature: the configured ones, else the 1/bins ... (bins-1)/bins
    quantiles over customers with a purchase (one aggregate; bins - 1 numbers each)."""
    edges = {name: list(cuts) for name, cuts in cfg.cut_points.items()}
    missing = [name for name in RFM_FEATURES if name not in edges]
    if missing:
        probs = [i / cfg.bins for i in range(1, cfg.bins)]
        row = (
            features.where(F.col(c.FREQUENCY) > 0)
            .agg(*[F.percentile_approx(name, probs, 10_000).alias(name) for name in missing])
            .first()
        )
        for name in missing:
            edges[name] = [float(v) for v in (row[name] or [])]
    return edges


def _bucket(col: str, edges: list[float]) -> Column:
    """1 + the number of edges below the value: 1..len(edges)+1; a value on an edge goes
    to the lower bin, so equal values always share a score."""
    value = F.col(col).cast("double")
    return F.when(value.isNotNull(), F.lit(1) + sum((value > edge).cast("int") for edge in edges))


def rfm_segments(
    edges: dict[str, list[float]], bins: int, rules: list[RfmRule], default: str
) -> Callable[[DataFrame], DataFrame]:
    """Customer features -> the same plus r_score, f_score, m_score (1..bins; 5 is best:
    most recent, most frequent, highest spend) and rfm_segment, the name of the first
    rule whose R and F scores match, else ``default`` (also for customers with no
    purchase, who have no recency)."""

    def transform(features: DataFrame) -> DataFrame:
        r = F.lit(bins + 1) - _bucket(c.RECENCY_DAYS, edges[c.RECENCY_DAYS])
        f = F.least(_bucket(c.FREQUENCY, edges[c.FREQUENCY]), F.lit(bins))
        m = F.least(_bucket(c.MONETARY, edges[c.MONETARY]), F.lit(bins))
        scored = features.select("*", r.alias("r_score"), f.alias("f_score"), m.alias("m_score"))
        segment = F.lit(default)
        for rule in reversed(rules):  # built inside out, so the first rule is tested first
            matches = F.col("r_score").isin(*rule.r) & F.col("f_score").isin(*rule.f)
            segment = F.when(F.coalesce(matches, F.lit(False)), F.lit(rule.name)).otherwise(segment)
        return scored.select(*features.columns, "r_score", "f_score", "m_score", segment.alias("rfm_segment"))

    return transform


def default_as_of(txns: DataFrame, source: io.TableRef | str = "transactions") -> dt.date:
    """The day after the newest transaction: the usual snapshot date for RFM."""
    newest = txns.agg(F.max(F.to_date(c.EVENT_TS)).alias("d")).first()["d"]
    if newest is None:
        raise io.PrerequisiteError(
            f"the transactions table {source} is empty: run ingest first, or check its quarantine"
        )
    return newest + dt.timedelta(days=1)


def nothing_before(txns: DataFrame, as_of: dt.date) -> bool:
    """No transaction is before the as-of date. Reads at most one row: Delta skips the
    files whose event_ts statistics are all later."""
    return txns.where(F.col(c.EVENT_TS) < F.lit(as_of).cast("timestamp")).limit(1).count() == 0


def refuse_or_warn(txns: DataFrame, source: io.TableRef, as_of: dt.date, allow_empty: bool) -> None:
    """No transaction is before ``as_of``: every customer would have no history. Refuse,
    leaving the features table as it was, unless ``features.allow_empty``."""
    first = txns.agg(F.min(F.to_date(c.EVENT_TS)).alias("d")).first()["d"]
    if first is None:
        problem, fix = f"the transactions table {source} is empty", "run ingest first, or check its quarantine"
    else:
        problem = f"features.as_of_date {as_of} is before every transaction in {source} (the first is on {first})"
        fix = "choose a later date"
    if not allow_empty:
        raise io.PrerequisiteError(
            f"{problem}: no customer has any history. The features table is left as it was; {fix}, or set "
            "features.allow_empty: true to write an empty one on purpose"
        )
    log.warning("%s: writing an empty features table (features.allow_empty)", problem)


def with_attributes(attributes: DataFrame, names: Sequence[str], as_of: dt.date) -> Callable[[DataFrame], DataFrame]:
    """Customer features + customer attributes, by customer id. Customers on only one
    side are kept: a customer with attributes but no transaction has null transaction
    features (and is unsegmented if the model needs them).

    Input columns: customer features (customer_id, as_of_date, ...); ``attributes``:
    customer_id and ``names``.
    Output columns: the feature columns, then ``names``.
    """

    def transform(features: DataFrame) -> DataFrame:
        joined = features.join(attributes.select(c.CUSTOMER_ID, *names), on=c.CUSTOMER_ID, how="full")
        return joined.select(
            c.CUSTOMER_ID,
            *[F.lit(as_of).alias(col) if col == c.AS_OF_DATE else F.col(col) for col in features.columns[1:]],
            *names,
        )

    return transform
