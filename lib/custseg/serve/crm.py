"""The CRM export's contract and change set, and the SQL of its upsert.

Pure: DataFrame transforms and SQL text; ``serve.job`` reads the tables, sends the rows
and keeps the watermark (docs/crm-export.md).

The contract is one row per customer with a current segment: the columns of
``EXPORT_COLUMNS``. A run sends the customers whose segment changed after the last
successful export (their current label-history row opened after its watermark) and
every customer of a segment whose name or description is not the one that export sent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from custseg import columns as c
from custseg.insights.profiles import DESCRIPTION, RFM_SEGMENT, SEGMENT_NAME
from custseg.segment.history import IS_CURRENT, VALID_FROM
from custseg.value.predict import CLV

EXPORT_COLUMNS = (c.CUSTOMER_ID, c.SEGMENT_ID, SEGMENT_NAME, DESCRIPTION, RFM_SEGMENT, CLV, c.MODEL_VERSION, VALID_FROM)
EXPORT_SCHEMA = (
    f"{c.CUSTOMER_ID} STRING, {c.SEGMENT_ID} INT, {SEGMENT_NAME} STRING, {DESCRIPTION} STRING, {RFM_SEGMENT} STRING, "
    f"{CLV} DOUBLE, {c.MODEL_VERSION} STRING, {VALID_FROM} TIMESTAMP"
)
# What an export sent of each segment: a later export resends a segment's customers when it differs.
SEGMENT_COLUMNS = (c.SEGMENT_ID, SEGMENT_NAME, DESCRIPTION)
SEGMENTS_SCHEMA = f"{c.SEGMENT_ID} INT, {SEGMENT_NAME} STRING, {DESCRIPTION} STRING"

_RENAMED = "_renamed"
_SENT = "_sent_"


def current_records(
    profiles: DataFrame, features: DataFrame, value: DataFrame | None
) -> Callable[[DataFrame], DataFrame]:
    """Label history -> the contract: every customer's current row, with the segment's
    name and description, the customer's RFM segment and CLV (null without a
    ``value`` table, or for a customer it has no row for).

    Input columns: the history table's; ``profiles``: segment_id, segment_name,
    description; ``features``: customer_id, rfm_segment; ``value``: customer_id, clv.
    Output columns: ``EXPORT_COLUMNS``.
    """

    def transform(history: DataFrame) -> DataFrame:
        names = F.broadcast(profiles.select(*SEGMENT_COLUMNS))  # k + 1 rows
        with_clv = value.select(c.CUSTOMER_ID, CLV) if value is not None else None
        records = (
            history.where(F.col(IS_CURRENT))
            .select(c.CUSTOMER_ID, c.SEGMENT_ID, c.MODEL_VERSION, VALID_FROM)
            .join(names, on=c.SEGMENT_ID, how="left")
            .join(features.select(c.CUSTOMER_ID, RFM_SEGMENT), on=c.CUSTOMER_ID, how="left")
        )
        if with_clv is None:
            records = records.withColumn(CLV, F.lit(None).cast("double"))
        else:
            records = records.join(with_clv, on=c.CUSTOMER_ID, how="left")
        return records.select(
            c.CUSTOMER_ID,
            F.col(c.SEGMENT_ID).cast("int").alias(c.SEGMENT_ID),
            SEGMENT_NAME,
            DESCRIPTION,
            RFM_SEGMENT,
            F.col(CLV).cast("double").alias(CLV),
            c.MODEL_VERSION,
            VALID_FROM,
        )

    return transform


def renamed_segments(sent: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Segment profiles -> the segments whose name or description is not what the last
    export sent (``sent``), including segments it did not send at all: every segment
    when nothing was sent before.

    Input columns: segment_id, segment_name, description (both).
    Output columns: segment_id.
    """

    def transform(profiles: DataFrame) -> DataFrame:
        before = sent.select(*(F.col(col).alias(_SENT + col) for col in SEGMENT_COLUMNS))
        same_name = F.col(SEGMENT_NAME).eqNullSafe(F.col(_SENT + SEGMENT_NAME))
        same_description = F.col(DESCRIPTION).eqNullSafe(F.col(_SENT + DESCRIPTION))
        return (
            profiles.join(before, on=F.col(c.SEGMENT_ID) == F.col(_SENT + c.SEGMENT_ID), how="left")
            .where(~(same_name & same_description))
            .select(c.SEGMENT_ID)
        )

    return transform


def changed_since(watermark: dt.datetime | None, renamed: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Contract rows -> those to send: a segment entered after ``watermark`` (every row
    when it is None: a first or full export), or a segment in ``renamed``.

    Input columns: ``EXPORT_COLUMNS``; ``renamed``: segment_id.
    Output columns: ``EXPORT_COLUMNS``.
    """

    def transform(records: DataFrame) -> DataFrame:
        flagged = records.join(
            F.broadcast(renamed.select(c.SEGMENT_ID).distinct().withColumn(_RENAMED, F.lit(True))),
            on=c.SEGMENT_ID,
            how="left",
        )
        moved = F.lit(True) if watermark is None else F.col(VALID_FROM) > F.lit(watermark).cast("timestamp")
        return flagged.where(moved | F.col(_RENAMED).isNotNull()).select(*EXPORT_COLUMNS)

    return transform


# --------------------------------------------------------------------------- the database side


def staging_table(table: str) -> str:
    return f"{table}_staging"


def target_ddl(table: str) -> str:
    """The target table, created on the first export. valid_from is an instant
    (timestamptz), whatever the time zones of the JVM and the database."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        f"{c.CUSTOMER_ID} text PRIMARY KEY, {c.SEGMENT_ID} integer NOT NULL, {SEGMENT_NAME} text, "
        f"{DESCRIPTION} text, {RFM_SEGMENT} text, {CLV} double precision, {c.MODEL_VERSION} text, "
        f"{VALID_FROM} timestamptz NOT NULL)"
    )


def staging_ddl(table: str) -> str:
    """The staging table: the target's columns without its key (LIKE copies no index).
    Unlogged: its rows are written again by the next run if the database restarts."""
    return f"CREATE UNLOGGED TABLE IF NOT EXISTS {staging_table(table)} (LIKE {table})"


def upsert_sql(table: str) -> str:
    """Insert the staged customers the target does not hold and update those it holds,
    unless nothing differs: a row sent again (a rerun after a stop between the database's
    commit and the watermark's) changes nothing, and the row count is of real changes."""
    cols = ", ".join(EXPORT_COLUMNS)
    updated = [col for col in EXPORT_COLUMNS if col != c.CUSTOMER_ID]
    assignments = ", ".join(f"{col} = EXCLUDED.{col}" for col in updated)
    old = ", ".join(f"t.{col}" for col in updated)
    new = ", ".join(f"EXCLUDED.{col}" for col in updated)
    return (
        f"INSERT INTO {table} AS t ({cols}) SELECT {cols} FROM {staging_table(table)} "
        f"ON CONFLICT ({c.CUSTOMER_ID}) DO UPDATE SET {assignments} WHERE ({old}) IS DISTINCT FROM ({new})"
    )


def staged_count_sql(table: str) -> str:
    return f"SELECT count(*) FROM {staging_table(table)}"


def clear_staging_sql(table: str) -> str:
    return f"TRUNCATE {staging_table(table)}"
