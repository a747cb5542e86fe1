"""Customer-attribute tables: demographics or CRM fields, one row per customer.

A customer table is mapped in ``conf/sources/`` like a transaction source (see
``CustomerSourceConfig``) and ingested into the ``customer_attributes`` table: the
customer id, numeric attributes as doubles and categorical ones as trimmed text. It is
a snapshot, so each ingest replaces it. Every input row is accepted, counted as an exact
duplicate, or quarantined with a reason; none is dropped in silence."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from custseg import columns as c
from custseg.config import CustomerSourceConfig
from custseg.ingest.sources import (
    INVALID_ENCODING,
    MALFORMED_ROW,
    MISSING_CUSTOMER_ID,
    NON_FINITE_NUMBER,
    RAW,
    REASON,
    REPLACEMENT_CHAR,
    SOURCE_FILE,
    finite,
    mapped_text,
    original_row,
)

log = logging.getLogger(__name__)


CONFLICTING_ROWS = "conflicting_customer_rows"  # one id, rows that disagree: which is right is unknowable


def unparseable(attribute: str) -> str:
    return f"unparseable_{attribute}"


@dataclass(frozen=True)
class CustomerCounts:
    rows_read: int
    accepted: int
    quarantined: int
    duplicates: int


def canonical_customers(src: CustomerSourceConfig) -> Callable[[DataFrame], DataFrame]:
    """Raw customer rows -> one row per input row with the mapped attributes and a
    quarantine reason (null: accepted).

    Input: the output of ``read_source``.
    Output columns: customer_id, the numeric attributes (double), the categorical ones
    (string), source_file, raw, reason, duplicate (a copy of an earlier row: the same id and mapped values).

    Reasons, first that applies: malformed_row, invalid_encoding, missing_customer_id,
    unparseable_<attribute> (text that is not a number), non_finite_number (NaN,
    Infinity), conflicting_customer_rows (the id appears on rows that differ).
    """

    def transform(df: DataFrame) -> DataFrame:
        raw, malformed = original_row(df)
        customer_id = mapped_text(src.customer_id, df.columns)
        texts = {name: mapped_text(expr, df.columns) for name, expr in src.numeric.items()}
        numbers = {name: text.try_cast("double") for name, text in texts.items()}
        categories = {name: mapped_text(expr, df.columns) for name, expr in src.categorical.items()}

        reason = F.when(malformed, MALFORMED_ROW).when(raw.contains(REPLACEMENT_CHAR), INVALID_ENCODING)
        reason = reason.when(customer_id.isNull(), MISSING_CUSTOMER_ID)
        for name, text in texts.items():
            reason = reason.when(text.isNotNull() & numbers[name].isNull(), unparseable(name))
        for number in numbers.values():
            reason = reason.when(F.coalesce(~finite(number), F.lit(False)), NON_FINITE_NUMBER)
        rows = df.select(
            customer_id.alias(c.CUSTOMER_ID),
            *[number.alias(name) for name, number in numbers.items()],
            *[category.alias(name) for name, category in categories.items()],
            F.col(SOURCE_FILE),
            raw.alias(RAW),
            reason.alias(REASON),
        )
        # Copies of a customer (the same mapped values, whatever unmapped columns say)
        # count once; an id on rows whose values differ is quarantined whole.
        rows = rows.withColumn("_values", F.to_json(F.struct(*[F.col(n) for n in [*src.numeric, *src.categorical]])))
        copies = (
            Window.partitionBy(c.CUSTOMER_ID, "_values")
            .orderBy(SOURCE_FILE, RAW)
            .rowsBetween(Window.unboundedPreceding, Window.currentRow)
        )
        per_id = Window.partitionBy(c.CUSTOMER_ID).rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
        valid = F.col(REASON).isNull()
        versions = F.size(F.collect_set(F.when(valid, F.col("_values"))).over(per_id))
        conflict = valid & (versions > 1)
        return rows.select(
            *[F.col(n) for n in rows.columns if n not in (REASON, "_values")],
            F.when(conflict, F.lit(CONFLICTING_ROWS)).otherwise(F.col(REASON)).alias(REASON),
            (valid & ~conflict & (F.row_number().over(copies) > 1)).alias("duplicate"),
        )

    return transform


def flag_count(predicate: Column) -> Column:
    return F.coalesce(predicate, F.lit(False)).cast("long")
