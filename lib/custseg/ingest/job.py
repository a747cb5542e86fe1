"""The ingest stage: consolidate the configured raw sources into the canonical
transactions table, and the customer table into customer attributes.

Each input row ends up in exactly one place: the transactions table (accepted), the
quarantine table (with a reason code), or counted as an exact duplicate. The counts
per source go to the run log, and the job fails when they do not add up, including
against what the tables hold after the write. Loads are idempotent: rows are keyed by
a hash of their content and MERGEd, so rerunning the same input adds nothing, a new
file adds only its rows, and a rerun after a crash part-way completes the load.
This module is the stage's only reader and writer of tables."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io, progress
from custseg.config import Config, ConfigError
from custseg.ingest.customers import CustomerCounts, canonical_customers, flag_count
from custseg.ingest.quality import (
    QUARANTINE_COLUMNS,
    STAGED_COLUMNS,
    TRANSACTION_COLUMNS,
    ReconciliationError,
    SourceCounts,
    assign_ids,
    data_profile,
    flag_extremes,
    is_accepted,
    is_quarantined,
    quarantined_only,
    source_counts,
    stored_counts,
    with_zero_rows,
)
from custseg.ingest.sources import (
    RAW,
    REASON,
    SOURCE_FILE,
    SourceError,
    canonicalize,
    check_columns,
    check_mapping,
    csv_file_error,
    read_source,
)
from custseg.spark import shuffle_files_removed

log = logging.getLogger(__name__)


# Delta collects min/max statistics of the first 32 columns of every file it writes by
# default: on the transactions table, only of those that reads filter on (features by
# date, the run log by run id). The 64-character hash ids skip nothing.
TRANSACTION_PROPERTIES = {
    "delta.dataSkippingStatsColumns": ",".join((c.CUSTOMER_ID, c.SOURCE, c.EVENT_TS, c.TXN_TYPE, c.RUN_ID))
}


RUN_LOG_SCHEMA = (
    "run_id STRING, job STRING, source STRING, rows_read LONG, duplicates LONG, accepted LONG, "
    "quarantined LONG, inserted LONG, logged_at TIMESTAMP, repaired_by STRING"
)


@dataclass(frozen=True)
class IngestResult:
    counts: list[SourceCounts]
    profile: list[dict]  # the data profile rows, per source and ALL


def run(spark: SparkSession, cfg: Config, run_id: str, now: dt.datetime | None = None) -> IngestResult:
    now = now or dt.datetime.now(dt.UTC)
    policy = cfg.ingest
    if not cfg.sources:
        raise ConfigError("ingest.sources: lists no source mapping files")
    canonical, empty = [], []
    for src in cfg.sources:
        raw = read_source(spark, src)
        if raw is None:
            empty.append(SourceCounts(src.name, 0, 0, 0, 0))
            continue
        check_mapping(raw, src)
        log.info("source %s: %s %s", src.name, src.format, src.path)
        canonical.append(raw.transform(canonicalize(src, now, policy.quarantine_future)))
    if not canonical:
        _write_run_log(spark, cfg, run_id, empty, now)
        where = ", ".join(f"{src.name} ({src.path})" for src in cfg.sources)
        raise io.PrerequisiteError(f"every configured source is empty, nothing to ingest: {where}")

    transactions = io.table_ref(cfg.storage, cfg.tables.transactions)
    quarantine = io.table_ref(cfg.storage, cfg.tables.quarantine)
    # The fences, counting, writing and profiling read the rows several times: they are
    # parsed and deduplicated once, into a local checkpoint on the executors' disks.
    # Against a persisted DataFrame (an in-memory columnar cache built from the wide rows)
    # this is a third less time in all, and memory stays flat whatever the size. A lost
    # executor fails the job instead of recomputing; the load is idempotent, so a rerun
    # completes it. The deduplication's shuffle files go as soon as the checkpoint is
    # written (as large as the checkpoint, nothing reads them again). It is most of the
    # job's time, so it logs its own start and end, as do the other steps that write
    # nothing for minutes at scale.
    with (
        shuffle_files_removed(spark),
        progress.stage("ingest: parsing, validating and deduplicating every line into a checkpoint"),
    ):
        try:
            rows = (
                functools.reduce(DataFrame.unionByName, canonical)
                .withColumn(RAW, quarantined_only(RAW))  # before the deduplication's shuffle, which moves every row
                .transform(assign_ids(policy.drop_duplicates))
                .select(*STAGED_COLUMNS, RAW, F.lit(run_id).alias(c.RUN_ID))
                .localCheckpoint(eager=True, storageLevel=StorageLevel.DISK_ONLY)
            )
        except Exception as exc:  # the first read of every file: a CSV file with another header fails here
            error = csv_file_error(spark, exc, cfg.sources)
            if error is None:
                raise
            raise error from None
    with progress.stage("ingest: outlier fences and counts") as found:
        flagged = rows.transform(flag_extremes(policy.extreme_iqr_factor))  # the fences are a pass
        counts = {row[c.SOURCE]: SourceCounts(**row.asDict()) for row in source_counts(flagged).collect()}
        # A source read but without a row (CSV files with a header only) has no group:
        # it is logged with zeros, as a source of empty files is.
        counted = {s.source for s in empty} | set(counts)
        counts |= {src.name: SourceCounts(src.name, 0, 0, 0, 0) for src in cfg.sources if src.name not in counted}
        for field in ("rows_read", "accepted", "quarantined", "duplicates"):
            found[field.replace("_", " ")] = sum(getattr(s, field) for s in counts.values())
    unbalanced = [s for s in counts.values() if not s.balanced]
    if unbalanced:
        raise ReconciliationError(f"rows read != accepted + quarantined + duplicates: {unbalanced}")
    accepted = flagged.where(is_accepted()).select(*TRANSACTION_COLUMNS)
    quarantined = flagged.where(is_quarantined()).select(*QUARANTINE_COLUMNS)
    # A load of rows the counts say are none is skipped on an existing table: a MERGE of
    # nothing would leave an empty, unreferenced file there.
    no_accepted = sum(s.accepted for s in counts.values()) == 0
    no_quarantined = sum(s.quarantined for s in counts.values()) == 0
    # The loads' commits carry the run id: should the run die before its run-log row is
    # written, the next run finds them and logs what they loaded (_unlogged_loads).
    with io.commits_tagged(spark, run_id):
        loaded = io.insert_new(spark, accepted, transactions, [c.TXN_ID], TRANSACTION_PROPERTIES, no_accepted)
        # A row quarantined before (say, as future-dated) and accepted now leaves
        # quarantine, so that no row is ever in both tables.
        io.delete_matching(spark, accepted.select(c.TXN_ID), quarantine, [c.TXN_ID], no_accepted)
        loaded_q = io.insert_new(spark, quarantined, quarantine, [c.TXN_ID], known_empty=no_quarantined)
    counts = _check_stored(spark, counts, flagged, (transactions, loaded), (quarantine, loaded_q), run_id)
    with progress.stage("ingest: data profile"):
        profile = data_profile(flagged).transform(with_zero_rows([src.name for src in cfg.sources]))
        io.overwrite(profile, io.table_ref(cfg.storage, cfg.tables.profile))

    all_counts = sorted([*counts.values(), *empty], key=lambda s: s.source)
    _write_run_log(spark, cfg, run_id, all_counts, now)
    for s in all_counts:
        log.info(
            "ingest %s: read %d, accepted %d (%d new), quarantined %d, duplicates %d",
            s.source, s.rows_read, s.accepted, s.inserted, s.quarantined, s.duplicates,
        )  # fmt: skip
    profile = io.read(spark, io.table_ref(cfg.storage, cfg.tables.profile)).orderBy(c.SOURCE).collect()
    return IngestResult(counts=all_counts, profile=[row.asDict() for row in profile])


def _check_stored(
    spark: SparkSession,
    counts: dict[str, SourceCounts],
    flagged: DataFrame,
    transactions: tuple[io.TableRef, io.Loaded | None],
    quarantine: tuple[io.TableRef, io.Loaded | None],
    run_id: str,
) -> dict[str, SourceCounts]:
    """After the writes: every accepted row is in transactions and every quarantined
    row in quarantine, or the job fails. Returns the counts with ``inserted`` set.

    Each load's commit says how many rows its MERGE read and inserted; a MERGE inserts
    every source row the table does not hold, so the check is that it read every row
    meant for it. Only when a commit cannot say (another writer's came after it) are
    the ids joined against the table, a pass over both."""
    (txn_ref, txn_loaded), (q_ref, q_loaded) = transactions, quarantine
    accepted = sum(s.accepted for s in counts.values())
    quarantined = sum(s.quarantined for s in counts.values())
    # A load of no rows commits nothing, and there is nothing it could have missed.
    txn_loaded = txn_loaded or (io.Loaded(0, 0) if accepted == 0 else None)
    q_loaded = q_loaded or (io.Loaded(0, 0) if quarantined == 0 else None)
    if txn_loaded is None or q_loaded is None:
        return _check_stored_by_join(spark, counts, flagged.select(c.TXN_ID, c.SOURCE), txn_ref, q_ref, run_id)
    if txn_loaded.source_rows != accepted or q_loaded.source_rows != quarantined:
        raise ReconciliationError(
            f"rows missing from the loads: accepted {accepted}, loaded into {txn_ref} {txn_loaded.source_rows}; "
            f"quarantined {quarantined}, loaded into {q_ref} {q_loaded.source_rows}"
        )
    # Only this run's files hold its run id: data skipping reads no others.
    inserted = {
        r[c.SOURCE]: r["count"]
        for r in io.read(spark, txn_ref).where(F.col(c.RUN_ID) == run_id).groupBy(c.SOURCE).count().collect()
    }
    return {name: dataclasses.replace(s, inserted=inserted.get(name, 0)) for name, s in counts.items()}


def _check_stored_by_join(
    spark: SparkSession,
    counts: dict[str, SourceCounts],
    ids: DataFrame,
    transactions: io.TableRef,
    quarantine: io.TableRef,
    run_id: str,
) -> dict[str, SourceCounts]:
    in_txns = {
        r[c.SOURCE]: r for r in stored_counts(ids.where(is_accepted()), io.read(spark, transactions), run_id).collect()
    }
    in_quarantine = {
        r[c.SOURCE]: r["stored"]
        for r in stored_counts(ids.where(is_quarantined()), io.read(spark, quarantine), run_id).collect()
    }
    result, missing = {}, []
    for name, s in counts.items():
        stored = in_txns[name]["stored"] if name in in_txns else 0
        if stored != s.accepted or in_quarantine.get(name, 0) != s.quarantined:
            missing.append(f"{name}: accepted {s.accepted}, stored {stored}; quarantined {s.quarantined}, "
                           f"stored {in_quarantine.get(name, 0)}")  # fmt: skip
        result[name] = dataclasses.replace(s, inserted=in_txns[name]["inserted"] if name in in_txns else 0)
    if missing:
        raise ReconciliationError("rows missing from the tables after the write: " + "; ".join(missing))
    return result


def log_artifact(spark: SparkSession, cfg: Config, run_id: str, job: str, path: str) -> None:
    """A run-log row that points at a file a job wrote for the run (e.g. the report)."""
    row = spark.createDataFrame(
        [(run_id, job, path, dt.datetime.now(dt.UTC).replace(tzinfo=None))],
        "run_id STRING, job STRING, artifact STRING, logged_at TIMESTAMP",
    )
    io.append(row, io.table_ref(cfg.storage, cfg.tables.run_log))


def log_export(
    spark: SparkSession, cfg: Config, run_id: str, target: str, changed: int, sent: int, applied: int
) -> None:
    """A CRM export's run-log row (job 'export'): the target, the customers whose segment
    or name changed (rows_read), the rows sent and the target rows inserted or updated."""
    row = spark.createDataFrame(
        [(run_id, "export", target, changed, sent, applied, dt.datetime.now(dt.UTC).replace(tzinfo=None))],
        "run_id STRING, job STRING, artifact STRING, rows_read LONG, rows_sent LONG, rows_applied LONG, "
        "logged_at TIMESTAMP",
    )
    io.append(row, io.table_ref(cfg.storage, cfg.tables.run_log))


def _write_run_log(spark: SparkSession, cfg: Config, run_id: str, counts: list[SourceCounts], now: dt.datetime) -> None:
    """This run's rows, and in the same commit those of earlier runs whose loads
    committed but whose run-log rows never did (so that ``sum(inserted)`` over the run
    log always equals the rows in transactions)."""
    rows = [
        (run_id, "ingest", s.source, s.rows_read, s.duplicates, s.accepted, s.quarantined, s.inserted, now, None)
        for s in counts
    ]
    rows += _unlogged_loads(spark, cfg, run_id, now)
    # Keyed, not appended: another ingest running at the same time may log this run's
    # loads as unlogged before this run logs them itself. Its rows are then replaced by
    # this run's, and a run logged already is never logged again.
    io.upsert(
        spark,
        spark.createDataFrame(rows, RUN_LOG_SCHEMA),
        io.table_ref(cfg.storage, cfg.tables.run_log),
        keys=(c.RUN_ID, "job", c.SOURCE),
        replace_when="s.repaired_by IS NULL",
    )


def _unlogged_loads(spark: SparkSession, cfg: Config, run_id: str, now: dt.datetime) -> list[tuple]:
    """Run-log rows for the runs whose loads committed without a run-log row (the run
    was killed in between): per source, the rows each holds in transactions (inserted)
    and in quarantine, read back from the tables; what it read and found duplicated died
    with it (null). Only the tags of the tables' commits and the files of those runs are
    read, which data skipping on run_id finds."""
    transactions = io.table_ref(cfg.storage, cfg.tables.transactions)
    quarantine = io.table_ref(cfg.storage, cfg.tables.quarantine)
    run_log = io.table_ref(cfg.storage, cfg.tables.run_log)
    loaded = (io.commit_tags(spark, transactions) | io.commit_tags(spark, quarantine)) - {run_id}
    if not loaded:
        return []
    logged = set()
    if io.exists(spark, run_log):
        ingests = io.read(spark, run_log).where(F.col("job") == "ingest")
        logged = {row[c.RUN_ID] for row in ingests.select(c.RUN_ID).distinct().collect()}
    unlogged = sorted(loaded - logged)
    if not unlogged:
        return []

    def held(ref: io.TableRef) -> dict[tuple[str, str], int]:
        if not io.exists(spark, ref):
            return {}
        rows = io.read(spark, ref).where(F.col(c.RUN_ID).isin(unlogged)).groupBy(c.RUN_ID, c.SOURCE).count()
        return {(r[c.RUN_ID], r[c.SOURCE]): r["count"] for r in rows.collect()}

    inserted, quarantined = held(transactions), held(quarantine)
    log.warning("run log: runs %s loaded rows but were stopped before logging them; logged now", ", ".join(unlogged))
    return [
        (run, "ingest", source, None, None, None, quarantined.get((run, source), 0), inserted.get((run, source), 0),
         now, run_id)
        for run, source in sorted(inserted.keys() | quarantined.keys())
    ]  # fmt: skip


# --------------------------------------------------------------------------- customer table


def run_customers(spark: SparkSession, cfg: Config, run_id: str) -> CustomerCounts:
    """Ingest the configured customer table: replace ``customer_attributes`` and its
    quarantine, and return the counts (read = accepted + quarantined + duplicates)."""
    src = cfg.customers
    if src is None:
        raise ValueError("no customer table is configured (ingest.customers)")
    raw = read_source(spark, src)
    if raw is None:
        raise SourceError(f"customer table '{src.name}' ({src.file}): no data in {src.path}")
    mapped = {"customer_id": src.customer_id, **{f"numeric.{k}": v for k, v in src.numeric.items()}}
    check_columns(raw, src.file, {**mapped, **{f"categorical.{k}": v for k, v in src.categorical.items()}})
    rows = raw.transform(canonical_customers(src)).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        accepted = rows.where(F.col(REASON).isNull() & ~F.col("duplicate"))
        attributes = [*src.numeric, *src.categorical]
        io.overwrite(
            accepted.select(c.CUSTOMER_ID, *attributes, F.lit(src.name).alias(c.SOURCE), SOURCE_FILE,
                            F.lit(run_id).alias(c.RUN_ID)),
            io.table_ref(cfg.storage, cfg.tables.customer_attributes),
        )  # fmt: skip
        io.overwrite(
            rows.where(F.col(REASON).isNotNull()).select(
                F.lit(src.name).alias(c.SOURCE), SOURCE_FILE, RAW, REASON, F.lit(run_id).alias(c.RUN_ID)
            ),
            io.table_ref(cfg.storage, cfg.tables.customer_quarantine),
        )
        counts = rows.agg(
            F.count(F.lit(1)).alias("rows_read"),
            F.sum(flag_count(F.col(REASON).isNull() & ~F.col("duplicate"))).alias("accepted"),
            F.sum(flag_count(F.col(REASON).isNotNull())).alias("quarantined"),
            F.sum(flag_count(F.col("duplicate"))).alias("duplicates"),
        ).first()
    finally:
        rows.unpersist()
    result = CustomerCounts(**{k: int(v or 0) for k, v in counts.asDict().items()})
    log.info("customer table %s: read %d, accepted %d, quarantined %d, duplicates %d", src.name,
             result.rows_read, result.accepted, result.quarantined, result.duplicates)  # fmt: skip
    return result
