"""The "buy till you die" summary of each customer, from canonical transactions.

The BG/NBD and Gamma-Gamma models see a customer only as (x, t_x, T) and the mean spend
of the repeat purchases:

* a purchase occasion is a day with a purchase: several purchases on one day are one
  transaction, their values summed (the CDNOW convention, under which the published fits
  are reproduced); returns, voids and adjustments make no occasion;
* x: repeat occasions, the occasions after the first;
* t_x: time from the first occasion to the last; T: from the first occasion to the last
  day observed (the day before the as-of date, which is exclusive as in the features), in
  the unit (days or weeks; a week is 7 days, so times in weeks are fractional);
* mean_spend: the mean value of the repeat occasions, net of returns: the customer's
  returns (negative amounts, as the features net them into ``monetary``) shrink every
  purchase by the same share, since a return does not say which purchase it undoes.

Compression: the likelihoods depend on a customer only through these numbers, so the
models are fitted on the distinct tuples with a count of customers each.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from custseg import columns as c

X = "x"
T_X = "t_x"
T_CAL = "T"
MEAN_SPEND = "mean_spend"
CUSTOMERS = "customers"  # the count of customers in a compressed tuple
DAY = "purchase_day"
DAY_VALUE = "day_value"
HOLDOUT_PURCHASES = "holdout_purchases"

UNIT_DAYS = {"days": 1.0, "weeks": 7.0}

SUMMARY_COLUMNS = (c.CUSTOMER_ID, c.AS_OF_DATE, c.FIRST_PURCHASE, c.LAST_PURCHASE, X, T_X, T_CAL, MEAN_SPEND)


def unit_days(unit: str) -> float:
    """Days per time unit; ValueError for a unit the models do not know."""
    try:
        return UNIT_DAYS[unit]
    except KeyError:
        raise ValueError(f"unknown time unit {unit!r}: one of {sorted(UNIT_DAYS)}") from None


def _is_purchase() -> Column:
    return F.col(c.TXN_TYPE) == c.PURCHASE


def _is_return() -> Column:
    return F.col(c.TXN_TYPE) == c.RETURN


def _in_window(start: dt.date | None, end: dt.date) -> Column:
    before_end = F.col(c.EVENT_TS) < F.lit(end).cast("timestamp")
    return before_end if start is None else before_end & (F.col(c.EVENT_TS) >= F.lit(start).cast("timestamp"))


def purchase_days(end: dt.date, start: dt.date | None = None) -> Callable[[DataFrame], DataFrame]:
    """Transactions -> one row per customer and day with a purchase or a return in
    [start, end) (no start: from the beginning).

    Input columns: customer_id, amount, event_ts, txn_type.
    Output columns: customer_id, purchase_day (the day), day_value (the day's purchases,
    gross; null on a day with returns only, which is kept so that every return is
    counted), returned (the day's returns, <= 0, or null).
    """

    def transform(txns: DataFrame) -> DataFrame:
        days = (
            # a line without a customer id (ingest quarantines them) is nobody's purchase
            txns.where(_in_window(start, end) & (_is_purchase() | _is_return()) & F.col(c.CUSTOMER_ID).isNotNull())
            .groupBy(c.CUSTOMER_ID, F.to_date(c.EVENT_TS).alias(DAY))
            .agg(
                F.sum(F.when(_is_purchase(), F.col(c.AMOUNT))).alias(DAY_VALUE),
                F.sum(F.when(_is_return(), F.col(c.AMOUNT))).alias("returned"),
            )
        )
        return days.select(c.CUSTOMER_ID, DAY, DAY_VALUE, "returned")

    return transform


def btyd_summary(as_of: dt.date, unit: str) -> Callable[[DataFrame], DataFrame]:
    """Transactions -> one row per customer with a purchase before ``as_of`` (exclusive).

    Input columns: customer_id, amount, event_ts, txn_type.
    Output columns: customer_id, as_of_date, first_purchase_date, last_purchase_date,
    x (long), t_x, T (doubles, in ``unit``), mean_spend (null when x = 0, >= 0).

    A customer with returns but no purchase before ``as_of`` has no first purchase to
    count from and is left out; one whose returns exceed the purchases has mean spend 0.
    """
    per_unit = F.lit(unit_days(unit))
    last_day = F.lit(as_of - dt.timedelta(days=1))

    def transform(txns: DataFrame) -> DataFrame:
        days = txns.transform(purchase_days(as_of))
        occasion = F.when(F.col(DAY_VALUE).isNotNull(), F.col(DAY))
        per_customer = (
            days.groupBy(c.CUSTOMER_ID)
            .agg(
                F.min(occasion).alias(c.FIRST_PURCHASE),
                F.max(occasion).alias(c.LAST_PURCHASE),
                F.count(occasion).alias("_occasions"),
                F.sum(DAY_VALUE).alias("_gross"),
                F.min_by(DAY_VALUE, occasion).alias("_first_value"),  # min_by skips null orderings
                F.coalesce(F.sum("returned"), F.lit(0.0)).alias("_returned"),
            )
            .where(F.col(c.FIRST_PURCHASE).isNotNull())
        )
        x = F.col("_occasions") - F.lit(1)
        # a guarded division: with ANSI SQL (Spark 4's default) a zero divisor is an error
        net_share = F.when(
            F.col("_gross") > 0, F.greatest(F.col("_gross") + F.col("_returned"), F.lit(0.0)) / F.col("_gross")
        ).otherwise(F.lit(0.0))
        mean_spend = (F.col("_gross") - F.col("_first_value")) / x * net_share
        return per_customer.select(
            c.CUSTOMER_ID,
            F.lit(as_of).alias(c.AS_OF_DATE),
            c.FIRST_PURCHASE,
            c.LAST_PURCHASE,
            x.cast("long").alias(X),
            (F.datediff(c.LAST_PURCHASE, c.FIRST_PURCHASE) / per_unit).alias(T_X),
            (F.datediff(last_day, c.FIRST_PURCHASE) / per_unit).alias(T_CAL),
            F.when(x > 0, mean_spend).alias(MEAN_SPEND),
        )

    return transform


def holdout_purchases(start: dt.date, days: int) -> Callable[[DataFrame], DataFrame]:
    """Transactions -> purchase occasions per customer in the holdout [start, start + days).

    Input columns: customer_id, amount, event_ts, txn_type.
    Output columns: customer_id, holdout_purchases (long, >= 1; customers without a
    holdout purchase have no row).
    """
    end = start + dt.timedelta(days=days)

    def transform(txns: DataFrame) -> DataFrame:
        occasions = txns.transform(purchase_days(end, start)).where(F.col(DAY_VALUE).isNotNull())
        counted = occasions.groupBy(c.CUSTOMER_ID).agg(F.count(F.lit(1)).alias(HOLDOUT_PURCHASES))
        return counted.select(c.CUSTOMER_ID, F.col(HOLDOUT_PURCHASES).cast("long").alias(HOLDOUT_PURCHASES))

    return transform


def compress_frequency(summary: DataFrame) -> DataFrame:
    """Customer summaries -> the distinct (x, t_x, T) with the count of customers each:
    what the BG/NBD likelihood needs, and few rows even for millions of customers.

    Input columns: x, t_x, T. Output columns: x, t_x, T, customers.
    """
    grouped = summary.groupBy(X, T_X, T_CAL).agg(F.count(F.lit(1)).alias(CUSTOMERS))
    return grouped.select(X, T_X, T_CAL, F.col(CUSTOMERS).cast("long").alias(CUSTOMERS))


def compress_spend(summary: DataFrame) -> DataFrame:
    """Customer summaries -> the distinct (x, mean_spend) of repeat customers with a
    positive mean spend (the Gamma-Gamma model's data) and the count of customers each.

    Input columns: x, mean_spend. Output columns: x, mean_spend, customers.
    """
    spenders = summary.where((F.col(X) > 0) & (F.col(MEAN_SPEND) > 0))
    grouped = spenders.groupBy(X, MEAN_SPEND).agg(F.count(F.lit(1)).alias(CUSTOMERS))
    return grouped.select(X, MEAN_SPEND, F.col(CUSTOMERS).cast("long").alias(CUSTOMERS))
