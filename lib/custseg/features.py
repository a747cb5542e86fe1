"""Customer features from canonical transactions: recency, frequency, monetary and more.

Everything is relative to an explicit as-of date: only transactions before it count,
and recency and tenure are measured to it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io
from custseg.config import Config

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
)


def _is_purchase() -> Column:
    return F.col(c.TXN_TYPE) == c.PURCHASE


def _is_revenue() -> Column:
    """Purchases and returns move revenue; voids are 0 and adjustments (postage,
    fees, bad-debt write-offs) are not customer spend."""
    return F.col(c.TXN_TYPE).isin(c.PURCHASE, c.RETURN)


def customer_features(as_of: dt.date) -> Callable[[DataFrame], DataFrame]:
    """Transactions -> one row per customer, as of ``as_of`` (exclusive).

    Input columns: customer_id, source, invoice_id, amount, event_ts, txn_type.
    Output columns: customer_id, as_of_date, first_purchase_date, last_purchase_date,
    recency_days, frequency, monetary, tenure_days, avg_order_value.

    * frequency: distinct purchase invoices (per source); returns and voids are not
      purchases.
    * monetary: purchases net of returns (a return's amount is negative); voids and
      non-product adjustments do not count.
    * avg_order_value: gross purchase value per purchase invoice.
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
        )

    return transform


def default_as_of(txns: DataFrame) -> dt.date:
    """The day after the newest transaction: the usual snapshot date for RFM."""
    newest = txns.agg(F.max(F.to_date(c.EVENT_TS)).alias("d")).first()["d"]
    if newest is None:
        raise ValueError("the transactions table is empty: run ingest first, or check its quarantine")
    return newest + dt.timedelta(days=1)


def run(spark: SparkSession, cfg: Config) -> dt.date:
    """Compute and overwrite the features table; return the as-of date used."""
    source = io.table_ref(cfg.storage, cfg.tables.transactions)
    txns = io.read(spark, source)
    as_of = cfg.features.as_of_date or default_as_of(txns)
    log.info("features as of %s from %s", as_of, source)
    io.overwrite(txns.transform(customer_features(as_of)), io.table_ref(cfg.storage, cfg.tables.features))
    return as_of
