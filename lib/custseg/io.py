"""Every read and write of a Delta table, behind a few functions.

A table is addressed by a ``TableRef``: a path (``storage.mode: path``, the default) or
a catalog name (``storage.mode: catalog``). Callers never branch on which.

MERGEs and existence checks are SQL, not Delta's Python ``DeltaTable`` API: over Spark
Connect (Databricks serverless and shared clusters) that API needs Delta's Connect
plugin on the server, while SQL works on any session with Delta.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, Row, SparkSession

from custseg.config import StorageConfig

log = logging.getLogger(__name__)

T = TypeVar("T")


class PrerequisiteError(ValueError):
    """What a job needs is missing or empty: a table an earlier job writes, a model,
    any data to ingest. The message says which, and what to run or fix first."""


class ConcurrentWriteError(RuntimeError):
    """Another writer kept committing to the table first, past every retry."""


@dataclass(frozen=True)
class TableRef:
    name: str
    path: str | None = None  # path mode
    identifier: str | None = None  # catalog mode

    def __str__(self) -> str:
        return self.path or self.identifier or self.name


def resolve(path: str, *parts: str) -> str:
    """A path as Spark should see it: URIs (s3://, dbfs:/, ...) as they are, local paths
    made absolute against this process's working directory (the JVM's may differ)."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/", path):
        return "/".join([path.rstrip("/"), *parts])
    return str(Path(path, *parts).resolve())


def table_ref(storage: StorageConfig, name: str) -> TableRef:
    if storage.mode == "catalog":
        return TableRef(name=name, identifier=f"{storage.database}.{name}")
    return TableRef(name=name, path=resolve(storage.root, name))


def exists(spark: SparkSession, ref: TableRef) -> bool:
    if ref.identifier:
        return spark.catalog.tableExists(ref.identifier)
    # As DeltaTable.isDeltaTable: true only at the root of a Delta table.
    try:
        spark.sql(f"DESCRIBE DETAIL {sql_name(ref)}")
    except AnalysisException as exc:
        if exc.getCondition() == "DELTA_MISSING_DELTA_TABLE":
            return False
        raise
    return True


def read_required(spark: SparkSession, ref: TableRef, what: str, first: str) -> DataFrame:
    """The table, or PrerequisiteError naming ``what`` it holds and the job to run ``first``."""
    if not exists(spark, ref):
        raise PrerequisiteError(f"no {what} table at {ref}: run {first} first")
    return read(spark, ref)


def read(spark: SparkSession, ref: TableRef) -> DataFrame:
    if ref.identifier:
        return spark.read.table(ref.identifier)
    return spark.read.format("delta").load(ref.path)


def sql_name(ref: TableRef) -> str:
    """The table as SQL names it: the catalog identifier, or delta.`<path>`."""
    if ref.identifier:
        return ref.identifier
    return "delta.`{}`".format(ref.path.replace("`", "``"))


def merge(
    spark: SparkSession,
    source: DataFrame,
    ref: TableRef,
    on: str,
    clauses: Sequence[str],
    schema_evolution: bool = False,
) -> None:
    """``MERGE INTO`` the table at ``ref`` (alias ``t``) ``USING source`` (alias ``s``)
    ``ON`` the condition ``on``, with ``clauses`` (``WHEN ... THEN ...``) in order."""
    evolution = " WITH SCHEMA EVOLUTION" if schema_evolution else ""
    target, condition, actions = (_escape_braces(t) for t in (sql_name(ref), on, " ".join(clauses)))
    # spark.sql(..., source=df) puts the DataFrame in with str.format, on classic and Connect alike.
    spark.sql(f"MERGE{evolution} INTO {target} AS t USING {{source}} AS s ON {condition} {actions}", source=source)


def _escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


# Test hook for tests/test_faults.py and tests/test_ingest_concurrency.py, off unless set:
# CUSTSEG_SLOW_WRITE=<table>[:<seconds>] makes the first row of partition 0 of the first
# write or load (MERGE) of that table in the process wait (default 120 s) inside the write
# task, so the other data files land while the Delta commit waits: a test can kill the
# driver between the two, or let another writer commit first. Filtering on an always-true
# condition keeps the data.
SLOW_WRITE_ENV = "CUSTSEG_SLOW_WRITE"
_slowed: set[str] = set()  # the tables whose first write waited: a retry does not wait again


def _slowed_for_tests(df: DataFrame, ref: TableRef) -> DataFrame:
    table, _, seconds = os.environ.get(SLOW_WRITE_ENV, "").partition(":")
    if table != ref.name or table in _slowed:
        return df
    _slowed.add(table)
    millis = int(float(seconds or 120) * 1000)
    log.warning("%s is set: the write of %s waits %d ms in one task", SLOW_WRITE_ENV, ref, millis)
    wait = f"reflect('java.lang.Thread', 'sleep', CAST({millis} AS BIGINT)) IS NOT NULL"  # void: the string 'null'
    return df.where(f"monotonically_increasing_id() != 0 OR {wait}")


def _save(
    df: DataFrame,
    ref: TableRef,
    mode: str,
    overwrite_schema: bool = False,
    merge_schema: bool = False,
    properties: dict[str, str] | None = None,
) -> None:
    writer = _slowed_for_tests(df, ref).write.format("delta").mode(mode).options(**(properties or {}))
    if overwrite_schema:
        writer = writer.option("overwriteSchema", "true")
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    if ref.identifier:
        writer.saveAsTable(ref.identifier)
    else:
        writer.save(ref.path)
    log.info("wrote %s (%s)", ref, "created" if mode == "error" else mode)  # "error": fail if it exists


# --------------------------------------------------------------------------- concurrent writers

# Delta's optimistic concurrency: a commit that conflicts with one another writer made
# since this one read the table fails with one of these, and changes nothing. Two first
# writes of a new table: ProtocolChangedException; two MERGEs into one table:
# ConcurrentAppendException. Every write here is safe to repeat (the loads are
# idempotent MERGEs, the others replace or append whole results), so it is retried.
_CONFLICTS = (
    "ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException", "ConcurrentWriteException", "MetadataChangedException",
    "ProtocolChangedException",
)  # fmt: skip
_CONFLICT_CONDITIONS = ("DELTA_CONCURRENT_", "DELTA_PROTOCOL_CHANGED", "DELTA_METADATA_CHANGED")
CONFLICT_ATTEMPTS = 6  # waits of about 1, 2, 4, 8 and 16 s between them: half a minute in all
CONFLICT_FIRST_WAIT = 1.0


def conflict_of(exc: Exception) -> str | None:
    """The Delta write conflict ``exc`` is (its exception's name), or None."""
    # Its message up to the first stack frame: py4j puts the Java exception on line 2.
    head = str(exc).split("\tat ", 1)[0]
    name = next((n for n in _CONFLICTS if n in head), None)
    if name is not None:
        return name
    try:
        condition = exc.getCondition() or ""  # type: ignore[attr-defined]
    except Exception:  # not a Spark error, or one without a condition
        return None
    return condition if condition.startswith(_CONFLICT_CONDITIONS) else None


def retried_on_conflict(ref: TableRef, write: Callable[[], T]) -> T:
    """``write()``, repeated with exponential backoff (and jitter, so that two writers
    part) while another writer's commit conflicts with it; ConcurrentWriteError after
    CONFLICT_ATTEMPTS tries."""
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return write()
        except Exception as exc:
            conflict = conflict_of(exc)
            if conflict is None:
                raise
            if attempt == CONFLICT_ATTEMPTS:
                raise ConcurrentWriteError(
                    f"{ref}: another writer committed first at each of {attempt} tries ({conflict}); "
                    "run again once the other job is done (the load adds nothing twice)"
                ) from None
            wait = CONFLICT_FIRST_WAIT * 2 ** (attempt - 1) * random.uniform(0.75, 1.25)
            log.warning("%s: another writer committed first (%s); writing again in %.1f s (try %d of %d)",
                        ref, conflict, wait, attempt + 1, CONFLICT_ATTEMPTS)  # fmt: skip
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def overwrite(df: DataFrame, ref: TableRef) -> None:
    """Replace the table's contents (and schema) atomically; history stays in the log."""
    retried_on_conflict(ref, lambda: _save(df, ref, "overwrite", overwrite_schema=True))


def append(df: DataFrame, ref: TableRef) -> None:
    """Append rows; columns new to the table are added (older rows read them as null)."""
    retried_on_conflict(ref, lambda: _save(df, ref, "append", merge_schema=True))


@dataclass(frozen=True)
class Loaded:
    """What one load's Delta commit says it did: the rows it read from its source and
    the rows it added to the table (the others were there already)."""

    source_rows: int
    inserted: int


# The operations a load commits as: a first path write, a first catalog write, a MERGE.
_CREATES = ("WRITE", "CREATE TABLE AS SELECT", "CREATE OR REPLACE TABLE AS SELECT")


def _last_commit(spark: SparkSession, ref: TableRef) -> Row:
    history = spark.sql(f"DESCRIBE HISTORY {sql_name(ref)} LIMIT 1")
    return history.select("version", "operation", "operationMetrics").first()


def _loaded(commit: Row, operations: Sequence[str], source_key: str, inserted_key: str) -> Loaded | None:
    """The load's counts from its commit's metrics; None when the newest commit is not
    the load's (another writer's came after it) or its metrics are off."""
    metrics = commit["operationMetrics"] or {}
    if commit["operation"] not in operations or source_key not in metrics or inserted_key not in metrics:
        return None
    return Loaded(source_rows=int(metrics[source_key]), inserted=int(metrics[inserted_key]))


def insert_new(
    spark: SparkSession,
    df: DataFrame,
    ref: TableRef,
    keys: Sequence[str],
    properties: dict[str, str] | None = None,
    known_empty: bool = False,
) -> Loaded | None:
    """Insert the rows whose ``keys`` the table does not hold yet (an idempotent load).

    ``known_empty``: the caller knows ``df`` has no rows; an existing table is then left
    alone. A MERGE of no new rows commits nothing, but Delta writes its empty result as
    a Parquet file first, which no version references (VACUUM removes it).

    The first load creates the table, with the Delta table ``properties`` given; later
    loads MERGE, so rerunning the same input, or resuming after a crash part-way, adds
    nothing twice. ``df`` must be unique on ``keys``.

    Returns the counts the load's commit records (no data is read for them), or None
    when there is no commit of its own to read them from: it inserted nothing, or
    another writer's commit came after it.

    A load that another writer's commit conflicts with is done again, from the existence
    check: what the other inserted is then matched, not inserted twice.
    """
    if known_empty and exists(spark, ref):
        return None
    return retried_on_conflict(ref, lambda: _insert_new(spark, df, ref, keys, properties))


def _insert_new(
    spark: SparkSession, df: DataFrame, ref: TableRef, keys: Sequence[str], properties: dict[str, str] | None
) -> Loaded | None:
    if not exists(spark, ref):
        _save(df, ref, "error", properties=properties)  # "errorifexists" is classic Spark's only; Connect knows "error"
        return _loaded(_last_commit(spark, ref), _CREATES, "numOutputRows", "numOutputRows")
    before = _last_commit(spark, ref)["version"]
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    # A table written by an older release gains the columns added since (older rows: null).
    merge(spark, _slowed_for_tests(df, ref), ref, condition, ["WHEN NOT MATCHED THEN INSERT *"], schema_evolution=True)
    log.info("merged into %s on %s", ref, ", ".join(keys))
    commit = _last_commit(spark, ref)
    if commit["version"] == before:  # a MERGE that inserts nothing commits nothing, and so records nothing
        return None
    return _loaded(commit, ("MERGE",), "numSourceRows", "numTargetRowsInserted")


def upsert(spark: SparkSession, df: DataFrame, ref: TableRef, keys: Sequence[str], replace_when: str) -> None:
    """Insert the rows whose ``keys`` the table does not hold, and replace those it holds
    where the SQL condition ``replace_when`` (on ``s``, the new row, and ``t``) holds; the
    first write creates the table. One commit: two writers of the same keys conflict,
    and the later one, done again, sees the other's rows."""

    def write() -> None:
        if not exists(spark, ref):
            _save(df, ref, "error")
            return
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        clauses = [f"WHEN MATCHED AND ({replace_when}) THEN UPDATE SET *", "WHEN NOT MATCHED THEN INSERT *"]
        merge(spark, df, ref, condition, clauses, schema_evolution=True)

    retried_on_conflict(ref, write)


def delete_matching(
    spark: SparkSession, df: DataFrame, ref: TableRef, keys: Sequence[str], known_empty: bool = False
) -> None:
    """Delete the table's rows whose ``keys`` appear in ``df`` (no-op if there is no
    table, or ``known_empty``: the caller knows ``df`` has no rows)."""
    if known_empty or not exists(spark, ref):
        return
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    retried_on_conflict(ref, lambda: merge(spark, df, ref, condition, ["WHEN MATCHED THEN DELETE"]))


# --------------------------------------------------------------------------- tagged commits

_USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


@contextlib.contextmanager
def commits_tagged(spark: SparkSession, tag: str) -> Iterator[None]:
    """Every Delta commit of the session inside the block records ``tag`` as its
    ``userMetadata`` (DESCRIBE HISTORY shows it), so that a later run can find the
    commits of a run that died before it logged them."""
    spark.conf.set(_USER_METADATA, tag)
    try:
        yield
    finally:
        spark.conf.unset(_USER_METADATA)


def commit_tags(spark: SparkSession, ref: TableRef) -> set[str]:
    """The tags of the table's commits still in its history (none if there is no table)."""
    if not exists(spark, ref):
        return set()
    history = spark.sql(f"DESCRIBE HISTORY {sql_name(ref)}").where("userMetadata IS NOT NULL")
    return {row["userMetadata"] for row in history.select("userMetadata").distinct().collect()}
