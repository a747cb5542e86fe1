"""The serve stage's orchestrator: ``custseg export``, the CRM sync. The only module of
the stage that reads or writes tables.

1. Read the label history, the current labels' segment profiles (names and
   descriptions), the features (RFM segment), the customer values (CLV, when there are
   some), and the last successful export to the same target from ``crm_exports``.
2. The change set (``serve.crm``): the customers whose segment changed after that
   export's watermark, and those of every segment whose name or description changed.
3. Send it: over JDBC into a staging table, then in one database transaction check the
   staged count and upsert into the target (``INSERT ... ON CONFLICT``); or as CSV or
   Parquet files in ``<export.path>/<run_id>/``.
4. Only then record the export (its watermark, the segments' names it sent, the counts)
   in ``crm_exports``, and its counts in ``run_log``. A run stopped before this point
   leaves the target as it was or fully upserted, and the next run sends its rows again.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io, progress
from custseg.config import Config, ConfigError, ExportConfig
from custseg.ingest import job as ingest_job
from custseg.ingest.quality import ReconciliationError
from custseg.segment.history import VALID_FROM
from custseg.serve import crm, postgres

log = logging.getLogger(__name__)

EXPORTS_SCHEMA = (
    f"run_id STRING, target STRING, format STRING, full BOOLEAN, watermark TIMESTAMP, "
    f"segments ARRAY<STRUCT<{crm.SEGMENTS_SCHEMA}>>, customers_changed LONG, rows_sent LONG, rows_applied LONG, "
    "finished_at TIMESTAMP"
)

# Test hook (tests/test_crm_export.py), off unless set: the upsert waits this many
# seconds inside its transaction, before the commit, so that a test can kill the job there.
PAUSE_BEFORE_COMMIT_ENV = "CUSTSEG_EXPORT_PAUSE_BEFORE_COMMIT"


@dataclass(frozen=True)
class ExportResult:
    target: str
    changed: int  # customers whose segment or segment name changed since the last export
    sent: int  # rows staged (jdbc) or written (files): equal to changed, or the run fails
    applied: int  # target rows inserted or updated (jdbc: fewer when rows were sent before)
    watermark: dt.datetime | None


_SQL_TABLE = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_URL_CREDENTIALS = re.compile(r"(?i)[?&;](user|password)=|//[^/?#]*@")


def target_of(ex: ExportConfig) -> str:
    """The target as crm_exports keys its watermark: database and table, or format and
    folder. Never a credential: a URL with one is refused, as are a table name that
    would need quoting and credential variables that are not names."""

    def check(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"export.{key}: {message}")

    if ex.format != "jdbc":
        return f"{ex.format}:{io.resolve(ex.path)}"
    url = ex.jdbc_url or ""
    check(url.startswith("jdbc:postgresql://"), "jdbc_url",
          "must be jdbc:postgresql://host:port/database for export.format jdbc (a PostgreSQL upsert)")  # fmt: skip
    check(not _URL_CREDENTIALS.search(url), "jdbc_url", f"must hold no credentials: they come from ${ex.user_env} "
          f"and ${ex.password_env} (export.user_env, export.password_env)")  # fmt: skip
    check(bool(_SQL_TABLE.fullmatch(ex.table)), "table", f"must be a lower-case [schema.]table, got {ex.table!r}")
    for key in ("user_env", "password_env"):
        check(bool(_ENV_NAME.fullmatch(getattr(ex, key))), key, "must name an environment variable (upper case)")
    check(0 < ex.connect_timeout <= 60, "connect_timeout", "must be in (0, 60] seconds")
    return f"postgresql://{postgres.address(url)}#{ex.table}"


def check_target(cfg: Config) -> None:
    """Before the Spark session: a JDBC target's credentials are set and its database
    answers within export.connect_timeout (exit 2 in one line otherwise)."""
    ex = cfg.export
    target_of(ex)
    if ex.format != "jdbc":
        return
    creds = postgres.credentials(ex, dict(os.environ))
    with postgres.connect(postgres.address(ex.jdbc_url), creds, ex.connect_timeout):
        log.info("CRM database %s answers", postgres.address(ex.jdbc_url))


def run(spark: SparkSession, cfg: Config, run_id: str) -> ExportResult:
    ex = cfg.export
    target = target_of(ex)
    creds = postgres.credentials(ex, dict(os.environ)) if ex.format == "jdbc" else None
    history, profiles, features, value = _read_inputs(spark, cfg)
    last = None if ex.full else _last_export(spark, cfg, target)
    watermark = last["watermark"] if last is not None else None
    sent_segments = spark.createDataFrame(
        [tuple(s[col] for col in crm.SEGMENT_COLUMNS) for s in (last["segments"] or [])] if last is not None else [],
        crm.SEGMENTS_SCHEMA,
    )
    segments = [tuple(r) for r in profiles.collect()]  # k + 1 rows, in memory already
    log.info("export to %s: %s", target,
             "every customer (export.full)" if ex.full else
             f"changes after {watermark} (run {last['run_id']})" if last is not None else "a first export")  # fmt: skip

    with progress.stage("export: change set") as counts:
        renamed = profiles.transform(crm.renamed_segments(sent_segments))
        changes = (
            history.transform(crm.current_records(profiles, features, value))
            .transform(crm.changed_since(watermark, renamed))
            # One read of the tables for the count, the watermark and the rows sent.
            .localCheckpoint(eager=True, storageLevel=StorageLevel.MEMORY_AND_DISK)
        )
        stats = changes.agg(F.count(F.lit(1)).alias("n"), F.max(VALID_FROM).alias("latest")).first()
        changed = int(stats["n"])
        counts["customers changed"] = changed
    new_watermark = max((t for t in (watermark, stats["latest"]) if t is not None), default=None)

    if ex.format == "jdbc":
        sent, applied = _upsert(spark, changes, ex, creds, changed)
    else:
        sent = applied = _write_files(changes, ex, run_id, changed)
    if sent != changed:
        raise ReconciliationError(f"export to {target}: {changed} customers changed, {sent} rows sent")

    finished = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    record = [(run_id, target, ex.format, ex.full, new_watermark, segments, changed, sent,
               applied, finished)]  # fmt: skip
    io.append(spark.createDataFrame(record, EXPORTS_SCHEMA), io.table_ref(cfg.storage, cfg.tables.crm_exports))
    ingest_job.log_export(spark, cfg, run_id, target, changed, sent, applied)
    log.info("export to %s: %d customers changed, %d rows sent, %d target rows inserted or updated; watermark %s",
             target, changed, sent, applied, new_watermark)  # fmt: skip
    return ExportResult(target, changed, sent, applied, new_watermark)


def _read_inputs(spark: SparkSession, cfg: Config) -> tuple[DataFrame, DataFrame, DataFrame, DataFrame | None]:
    """The label history, the profiles of the current labels' run (checked first), the
    features and, when there is one, the customer-value table."""
    t = cfg.tables
    labels = io.read_required(spark, io.table_ref(cfg.storage, t.labels), "segment labels", "the segment job")
    profiles = io.read_required(spark, io.table_ref(cfg.storage, t.segment_profiles), "segment profiles",
                                "the profile job")  # fmt: skip
    labels_run = labels.select(c.RUN_ID).first()
    # k + 1 rows, read once: the names checked here are the names sent and recorded.
    named = profiles.select(c.RUN_ID, *crm.SEGMENT_COLUMNS).orderBy(c.SEGMENT_ID).collect()
    profiles_runs = sorted({r[c.RUN_ID] for r in named})
    if labels_run is None or profiles_runs != [labels_run[c.RUN_ID]]:
        # Names of another run's segments would go to the CRM under this run's segment ids.
        raise io.PrerequisiteError(
            f"segment profiles describe run(s) {profiles_runs}, the current labels run "
            f"{labels_run[c.RUN_ID] if labels_run else None!r}: run the profile job first"
        )
    profiles = spark.createDataFrame([tuple(r)[1:] for r in named], crm.SEGMENTS_SCHEMA)
    history = io.read_required(spark, io.table_ref(cfg.storage, t.label_history), "segment label history",
                               "the segment job")  # fmt: skip
    features = io.read_required(spark, io.table_ref(cfg.storage, t.features), "customer features", "the features job")
    value_ref = io.table_ref(cfg.storage, t.customer_value)
    value = io.read(spark, value_ref) if io.exists(spark, value_ref) else None
    if value is None:
        log.info("no customer value table at %s: clv is null", value_ref)
    return history, profiles, features, value


def _last_export(spark: SparkSession, cfg: Config, target: str) -> Row | None:
    ref = io.table_ref(cfg.storage, cfg.tables.crm_exports)
    if not io.exists(spark, ref):
        return None
    exports = io.read(spark, ref).where(F.col("target") == target)
    return exports.orderBy(F.col("finished_at").desc(), F.col(c.RUN_ID).desc()).first()


def _upsert(
    spark: SparkSession, changes: DataFrame, ex: ExportConfig, creds: postgres.Credentials, changed: int
) -> tuple[int, int]:
    """Stage the rows over JDBC, then check and upsert them in one transaction; returns
    (rows staged, target rows inserted or updated). The staging table is emptied in the
    same transaction. Nothing to send: no database work at all."""
    if changed == 0:
        return 0, 0
    where = postgres.address(ex.jdbc_url)
    with postgres.connect(where, creds, ex.connect_timeout) as connection:
        postgres.lock_table(connection, ex.table)  # until the connection closes
        connection.execute(crm.target_ddl(ex.table))
        connection.execute(crm.staging_ddl(ex.table))
        with progress.stage(f"export: staging {changed:,} rows in {crm.staging_table(ex.table)}"):
            (
                changes.write.format("jdbc")
                .mode("overwrite")
                .option("truncate", "true")  # keep our table and its types; Spark's would be its own
                .option("url", ex.jdbc_url)
                .option("dbtable", crm.staging_table(ex.table))
                .option("driver", postgres.DRIVER)
                .option("user", creds.user)
                .option("password", creds.password)
                .option("reWriteBatchedInserts", "true")
                .save()
            )
        with progress.stage(f"export: upsert into {ex.table}") as counts, connection.transaction():
            staged = connection.execute(crm.staged_count_sql(ex.table)).fetchone()[0]
            if staged != changed:
                raise ReconciliationError(f"{crm.staging_table(ex.table)} holds {staged} rows, {changed} were sent")
            applied = connection.execute(crm.upsert_sql(ex.table)).rowcount
            connection.execute(crm.clear_staging_sql(ex.table))
            pause = float(os.environ.get(PAUSE_BEFORE_COMMIT_ENV) or 0)
            if pause:
                log.warning("%s is set: waiting %g s before the commit", PAUSE_BEFORE_COMMIT_ENV, pause)
                time.sleep(pause)
            counts.update({"rows staged": staged, "target rows inserted or updated": applied})
    return staged, applied


def _write_files(changes: DataFrame, ex: ExportConfig, run_id: str, changed: int) -> int:
    """The change set as one CSV (with a header; timestamps with their offset) or
    Parquet file in ``<export.path>/<run_id>/``, complete when its _SUCCESS file is.
    Nothing to send: no folder."""
    if changed == 0:
        return 0
    folder = io.resolve(ex.path, run_id)
    with progress.stage(f"export: {changed:,} rows as {ex.format} in {folder}"):
        # One file: import tools take a file, and a change set is small (a first export
        # of millions of customers is one task's write of minutes).
        writer = changes.coalesce(1).write.mode("overwrite")
        if ex.format == "csv":
            writer = writer.option("header", "true").option("timestampFormat", "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX")
        writer.format(ex.format).save(folder)
    return changed
