"""Segment label history: a type-2 slowly changing dimension in Delta.

Each customer has at most one current row. A run that moves a customer to another segment
closes the current row and opens a new one; a run that leaves the segment alone writes
nothing for that customer, so the table's versions record real changes only.

History table columns: customer_id, segment_id, model_version, as_of_date, run_id,
valid_from (run_ts of the run that opened the row), valid_to (null while current),
is_current.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import TimestampType

from custseg.columns import AS_OF_DATE, CUSTOMER_ID, MODEL_VERSION, RUN_ID, SEGMENT_ID

log = logging.getLogger(__name__)

VALID_FROM = "valid_from"
VALID_TO = "valid_to"
IS_CURRENT = "is_current"
FROM_SEGMENT = "from_segment"
TO_SEGMENT = "to_segment"
CUSTOMERS = "customers"
SHARE_OF_FROM = "share_of_from"

LABEL_COLUMNS = (CUSTOMER_ID, SEGMENT_ID, MODEL_VERSION, AS_OF_DATE)
HISTORY_SCHEMA = (
    f"{CUSTOMER_ID} STRING, {SEGMENT_ID} INT, {MODEL_VERSION} STRING, {AS_OF_DATE} DATE, {RUN_ID} STRING, "
    f"{VALID_FROM} TIMESTAMP, {VALID_TO} TIMESTAMP, {IS_CURRENT} BOOLEAN"
)
_MERGE_KEY = "_merge_key"
_PREVIOUS_SEGMENT = "_previous_segment"


@dataclass(frozen=True)
class HistoryChange:
    """What one run did to the history, per customer: ``opened`` rows = new + changed,
    ``closed`` rows = changed + gone (current in history, absent from the labels)."""

    new: int
    changed: int
    unchanged: int
    gone: int

    @property
    def opened(self) -> int:
        return self.new + self.changed

    @property
    def closed(self) -> int:
        return self.changed + self.gone


@dataclass(frozen=True)
class HistoryUpdate:
    """What one run does to the history table: the counts, and the one write that
    applies it (none when nothing changed): ``first`` rows for a new table, or a MERGE
    of ``staged`` ``on`` a condition with its ``clauses``."""

    change: HistoryChange
    first: DataFrame | None = None
    staged: DataFrame | None = None
    on: str = ""
    clauses: tuple[str, ...] = ()


def history_update(
    labels: DataFrame, current: DataFrame | None, run_id: str, run_ts: datetime, where: str
) -> HistoryUpdate:
    """How to record one run's labels in the history table whose current rows are
    ``current`` (None: there is no table yet; ``where`` names it in messages).

    ``labels`` needs customer_id, segment_id, model_version, as_of_date, one row per
    customer. Changed, new and vanished customers are applied in one MERGE; when there are
    none (including a rerun of the same run) nothing is written and the table keeps its
    version.
    """
    labels = labels.select(*LABEL_COLUMNS)
    _require_unique_ids(labels)
    table_exists = current is not None
    current = (current if table_exists else labels.sparkSession.createDataFrame([], HISTORY_SCHEMA)).select(
        CUSTOMER_ID, F.col(SEGMENT_ID).alias(_PREVIOUS_SEGMENT), VALID_FROM
    )
    change, ts_not_after_latest = _classify(labels, current, run_ts)
    log.info("history %s, run %s at %s: %s", where, run_id, run_ts, change)

    if table_exists and change.opened == change.closed == 0:
        return HistoryUpdate(change)
    if ts_not_after_latest:
        # Closing a row at or before it opened would leave an empty or inverted validity interval.
        raise ValueError(f"run_ts {run_ts} is not after the latest run recorded in {where}")
    opened = _opened_row(F.col, run_id, run_ts)
    if not table_exists:
        return HistoryUpdate(change, first=labels.select(*(v.alias(k) for k, v in opened.items())))

    changed = (
        labels.join(current, on=CUSTOMER_ID, how="inner")
        .where(~_same_segment(F.col(SEGMENT_ID), F.col(_PREVIOUS_SEGMENT)))
        .select(F.lit(None).cast("string").alias(_MERGE_KEY), *LABEL_COLUMNS)
    )
    # The standard SCD2 staging: every label keyed by its customer (matches, and so closes,
    # a changed current row), plus each changed customer again with a null key, which never
    # matches and so inserts the new current row in the same MERGE.
    staged = (
        labels.select(F.col(CUSTOMER_ID).alias(_MERGE_KEY), *LABEL_COLUMNS)
        .unionByName(changed)
        .select(_MERGE_KEY, *(v.alias(k) for k, v in opened.items()))
    )
    close = f"UPDATE SET {VALID_TO} = {_timestamp_sql(run_ts)}, {IS_CURRENT} = false"
    return HistoryUpdate(
        change,
        staged=staged,
        on=f"t.{CUSTOMER_ID} = s.{_MERGE_KEY} AND t.{IS_CURRENT}",
        clauses=(
            f"WHEN MATCHED AND NOT (t.{SEGMENT_ID} <=> s.{SEGMENT_ID}) THEN {close}",
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(opened)}) VALUES ({', '.join(f's.{k}' for k in opened)})",
            f"WHEN NOT MATCHED BY SOURCE AND t.{IS_CURRENT} THEN {close}",
        ),
    )


def labels_as_of(ts: datetime) -> Callable[[DataFrame], DataFrame]:
    """Each customer's segment as it was at ``ts`` (valid_from <= ts < valid_to, open-ended
    while current). Customers with no row valid at ``ts`` are left out.

    Input columns: the history table's. Output columns: customer_id, segment_id, model_version.
    """

    def transform(history: DataFrame) -> DataFrame:
        at = F.lit(ts).cast("timestamp")
        valid_at_ts = (F.col(VALID_FROM) <= at) & (F.col(VALID_TO).isNull() | (at < F.col(VALID_TO)))
        return history.where(valid_at_ts).select(CUSTOMER_ID, SEGMENT_ID, MODEL_VERSION)

    return transform


def current_labels(history: DataFrame) -> DataFrame:
    """The latest labels: the current row of each customer still present.

    Input columns: the history table's. Output columns: customer_id, segment_id,
    model_version, as_of_date.
    """
    return history.where(F.col(IS_CURRENT)).select(*LABEL_COLUMNS)


def migration_matrix(previous: DataFrame, current: DataFrame) -> DataFrame:
    """How customers moved between segments, one row per (from, to) pair that occurs.

    Input columns: previous and current, each customer_id, segment_id (one row per customer).
    Output columns: from_segment (null: customer new since previous), to_segment (null:
    customer gone), customers (long), share_of_from (customers / all customers of
    from_segment; null when from_segment is null).
    """
    moves = previous.select(CUSTOMER_ID, F.col(SEGMENT_ID).alias(FROM_SEGMENT)).join(
        current.select(CUSTOMER_ID, F.col(SEGMENT_ID).alias(TO_SEGMENT)), on=CUSTOMER_ID, how="full"
    )
    from_segment = Window.partitionBy(FROM_SEGMENT).rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    return (
        moves.groupBy(FROM_SEGMENT, TO_SEGMENT)
        .agg(F.count(F.lit(1)).alias(CUSTOMERS))
        .select(
            FROM_SEGMENT,
            TO_SEGMENT,
            CUSTOMERS,
            F.when(F.col(FROM_SEGMENT).isNotNull(), F.col(CUSTOMERS) / F.sum(CUSTOMERS).over(from_segment)).alias(
                SHARE_OF_FROM
            ),
        )
    )


def migration_between_runs(history: DataFrame, previous_ts: datetime, current_ts: datetime) -> DataFrame:
    """The migration matrix between the labels valid at ``previous_ts`` and at ``current_ts``.

    Input columns: the history table's. Output columns: as ``migration_matrix``.
    """
    return migration_matrix(history.transform(labels_as_of(previous_ts)), history.transform(labels_as_of(current_ts)))


def _same_segment(a: Column, b: Column) -> Column:
    return a.eqNullSafe(b)


def _opened_row(col: Callable[[str], Column], run_id: str, run_ts: datetime) -> dict[str, Column]:
    """The columns of a newly opened current row, the label values taken through ``col``."""
    return {
        **{name: col(name) for name in LABEL_COLUMNS},
        RUN_ID: F.lit(run_id),
        VALID_FROM: F.lit(run_ts).cast("timestamp"),
        VALID_TO: F.lit(None).cast("timestamp"),
        IS_CURRENT: F.lit(True),
    }


def _timestamp_sql(ts: datetime) -> str:
    """``ts`` as a SQL TIMESTAMP, the same instant ``F.lit(ts)`` gives (a naive datetime is
    this process's local time). Delta's MERGE leaves SQL parameters unbound, so it is
    written out, as microseconds since the epoch."""
    return f"timestamp_micros({TimestampType().toInternal(ts)})"


def _require_unique_ids(labels: DataFrame) -> None:
    """Raise ValueError if a customer_id is null or repeated: either would break the MERGE's
    one-row-per-customer matching (a null id would be re-inserted on every run)."""
    per_id = labels.groupBy(CUSTOMER_ID).agg(F.count(F.lit(1)).alias("n"))
    found = per_id.agg(
        F.count(F.when(F.col(CUSTOMER_ID).isNotNull() & (F.col("n") > 1), 1)).alias("duplicated"),
        F.count(F.when(F.col(CUSTOMER_ID).isNull(), 1)).alias("has_null"),
    ).first()
    if found["duplicated"]:
        raise ValueError(f"labels must have one row per {CUSTOMER_ID}: {found['duplicated']} ids appear more than once")
    if found["has_null"]:
        raise ValueError(f"labels have rows with a null {CUSTOMER_ID}")


def _classify(labels: DataFrame, current: DataFrame, run_ts: datetime) -> tuple[HistoryChange, bool]:
    """Count customers by what this run does to them, and whether a current row opened at or
    after ``run_ts`` (one aggregate)."""
    joined = labels.withColumn("_in_labels", F.lit(True)).join(
        current.withColumn("_in_history", F.lit(True)), on=CUSTOMER_ID, how="full"
    )
    in_labels, in_history = F.col("_in_labels").isNotNull(), F.col("_in_history").isNotNull()
    same = _same_segment(F.col(SEGMENT_ID), F.col(_PREVIOUS_SEGMENT))
    row = joined.agg(
        F.count(F.when(in_labels & ~in_history, 1)).alias("new"),
        F.count(F.when(in_labels & in_history & ~same, 1)).alias("changed"),
        F.count(F.when(in_labels & in_history & same, 1)).alias("unchanged"),
        F.count(F.when(~in_labels & in_history, 1)).alias("gone"),
        F.count(F.when(F.col(VALID_FROM) >= F.lit(run_ts).cast("timestamp"), 1)).alias("not_after"),
    ).first()
    return HistoryChange(row["new"], row["changed"], row["unchanged"], row["gone"]), row["not_after"] > 0
