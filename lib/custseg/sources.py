"""Reading a raw source and mapping it onto the canonical transaction schema.

A source is described by a mapping file in ``conf/sources/`` (see ``SourceConfig``);
no code changes to onboard one. Every input row comes out of ``canonicalize`` with
either ``reason`` null (accepted) or a reason code (to be quarantined), together with
the original row as JSON, so nothing is ever dropped silently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from custseg import columns as c
from custseg.config import SourceConfig
from custseg.io import resolve

RAW = "raw"  # the original source row, as JSON text
SOURCE_FILE = "source_file"  # the file a row was read from
REASON = "reason"  # why a row is quarantined; null when it is accepted

# Reason codes, in the order they are checked: a row gets the first that applies.
MISSING_CUSTOMER_ID = "missing_customer_id"
MISSING_INVOICE_ID = "missing_invoice_id"
BAD_QUANTITY = "unparseable_quantity"
BAD_UNIT_PRICE = "unparseable_unit_price"
BAD_TIMESTAMP = "unparseable_timestamp"
NON_FINITE_NUMBER = "non_finite_number"
NON_POSITIVE_PRICE = "non_positive_price"
ZERO_QUANTITY = "zero_quantity"
FUTURE_TIMESTAMP = "future_timestamp"

_ITEM = "item"


class SourceError(RuntimeError):
    """A source cannot be read as configured; the message names the source and its file."""


def read_source(spark: SparkSession, src: SourceConfig) -> DataFrame:
    """The raw rows, with every primitive read as text so bad values reach validation."""
    reader = spark.read.format(src.format).options(**src.options)
    if src.format == "json":
        reader = reader.option("primitivesAsString", "true")
    try:
        df = reader.load(resolve(src.path))
        df.schema  # noqa: B018 - resolve the schema now, so a bad path fails here
    except AnalysisException as exc:
        raise SourceError(
            f"source '{src.name}' ({src.file}): cannot read {src.path}: {str(exc).splitlines()[0]}"
        ) from None
    text = [
        F.col(f"`{name}`").cast("string").alias(name) if src.format == "csv" else F.col(f"`{name}`")
        for name in df.columns
    ]
    return df.select(*text, F.col("_metadata.file_path").alias(SOURCE_FILE))


def canonicalize(src: SourceConfig, now: dt.datetime) -> Callable[[DataFrame], DataFrame]:
    """Raw source rows -> canonical rows with a quarantine reason.

    Output columns: txn_id, source, customer_id, invoice_id, line_id, product_id,
    quantity, unit_price, amount, event_ts, store, channel, txn_type, source_file, raw,
    reason.
    ``txn_id`` hashes the source and the whole original row, so an exact duplicate
    line gets the same id and a rerun of the same file inserts nothing new.
    ``now`` bounds timestamps: a transaction after it is quarantined.
    """

    def transform(df: DataFrame) -> DataFrame:
        original = [F.col(f"`{name}`") for name in df.columns if name not in (src.explode, SOURCE_FILE)]
        if src.explode:
            rows = df.select(*original, SOURCE_FILE, F.explode_outer(F.col(f"`{src.explode}`")).alias(_ITEM))
            original = [*original, F.col(_ITEM)]
        else:
            rows = df
        raw = F.to_json(F.struct(*original))
        cols = src.columns
        text = {name: _text(expr) for name, expr in vars(cols).items()}
        quantity = text["quantity"].try_cast("double")
        unit_price = text["unit_price"].try_cast("double")
        event_ts = _parse_timestamp(text["event_ts"], src)
        is_void = F.coalesce(F.expr(src.void_when), F.lit(False))
        is_return = F.coalesce(F.expr(src.return_when), F.lit(False)) | (quantity < 0)
        txn_type = F.when(is_void, c.VOID).when(is_return, c.RETURN).otherwise(c.PURCHASE)
        line_value = F.abs(quantity * unit_price)
        amount = (
            F.when(txn_type == c.PURCHASE, line_value).when(txn_type == c.RETURN, -line_value).otherwise(F.lit(0.0))
        )
        reason = (
            F.when(text["customer_id"].isNull(), MISSING_CUSTOMER_ID)
            .when(text["invoice_id"].isNull(), MISSING_INVOICE_ID)
            .when(quantity.isNull(), BAD_QUANTITY)
            .when(unit_price.isNull(), BAD_UNIT_PRICE)
            .when(event_ts.isNull(), BAD_TIMESTAMP)
            .when(~_finite(quantity) | ~_finite(unit_price), NON_FINITE_NUMBER)
            .when(unit_price <= 0, NON_POSITIVE_PRICE)
            .when(quantity == 0, ZERO_QUANTITY)
            .when(event_ts > F.lit(now), FUTURE_TIMESTAMP)
        )
        return rows.select(
            F.sha2(F.concat_ws("\u0001", F.lit(src.name), raw), 256).alias(c.TXN_ID),
            F.lit(src.name).alias(c.SOURCE),
            text["customer_id"].alias(c.CUSTOMER_ID),
            text["invoice_id"].alias(c.INVOICE_ID),
            text["line_id"].alias(c.LINE_ID),
            text["product_id"].alias(c.PRODUCT_ID),
            F.when(txn_type == c.RETURN, -F.abs(quantity)).otherwise(quantity).alias(c.QUANTITY),
            unit_price.alias(c.UNIT_PRICE),
            F.round(amount, 2).alias(c.AMOUNT),
            event_ts.alias(c.EVENT_TS),
            text["store"].alias(c.STORE),
            F.lit(src.channel).alias(c.CHANNEL),
            txn_type.alias(c.TXN_TYPE),
            F.col(SOURCE_FILE),
            raw.alias(RAW),
            reason.alias(REASON),
        )

    return transform


def _text(expr: str | None) -> Column:
    """A mapped value as trimmed text; blank is null. ``expr`` is a column path or SQL."""
    if expr is None:
        return F.lit(None).cast("string")
    value = F.trim(F.expr(expr).cast("string"))
    return F.when(value != "", value)


def _finite(x: Column) -> Column:
    """ "NaN" and "Infinity" parse as doubles; as money they are errors."""
    return ~F.isnan(x) & (F.abs(x) != F.lit(float("inf")))


def _parse_timestamp(text: Column, src: SourceConfig) -> Column:
    if src.timestamp_format is None:
        # ISO 8601: an explicit offset or zone wins; a bare local time is in the source's zone.
        iso = F.upper(text)  # RFC 3339 allows a lower-case t and z; Spark reads upper case
        has_offset = iso.rlike(r"(Z|[+-]\d\d(:?\d\d)?|\s?(UTC|GMT))$")
        parsed = F.try_to_timestamp(iso)
        return F.when(has_offset, parsed).otherwise(F.to_utc_timestamp(parsed, src.timezone))
    return F.to_utc_timestamp(F.try_to_timestamp(text, F.lit(src.timestamp_format)), src.timezone)


def check_mapping(df: DataFrame, src: SourceConfig) -> None:
    """Resolve every mapped expression against the source's schema before any data is
    processed; a wrong column name fails here, naming the mapping file and key."""
    if src.explode and src.explode not in df.columns:
        raise SourceError(f"{src.file}: explode: no column '{src.explode}' in {sorted(df.columns)}")
    rows = df.select("*", F.explode_outer(F.col(f"`{src.explode}`")).alias(_ITEM)) if src.explode else df
    checks = {f"columns.{k}": v for k, v in vars(src.columns).items() if v is not None}
    checks |= {"return_when": src.return_when, "void_when": src.void_when}
    for key, expr in checks.items():
        try:
            rows.select(F.expr(expr)).schema  # noqa: B018 - analysis only, reads no data
        except AnalysisException as exc:
            raise SourceError(
                f"{src.file}: {key}: cannot resolve '{expr}' against the columns "
                f"{sorted(df.columns)}: {str(exc).splitlines()[0]}"
            ) from None
