"""Consolidate the configured raw sources into the canonical transactions table.

Each input row ends up in exactly one place: the transactions table (accepted), the
quarantine table (with a reason code), or counted as an exact duplicate. The counts
per source go to the run log, and the job fails when they do not add up. Loads are
idempotent: rows are keyed by a content hash and MERGEd, so rerunning the same input
adds nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io
from custseg.config import Config
from custseg.sources import RAW, REASON, SOURCE_FILE, canonicalize, check_mapping, read_source

log = logging.getLogger(__name__)

DUPLICATE = "is_duplicate"

TRANSACTION_COLUMNS = (
    c.TXN_ID,
    c.SOURCE,
    c.CUSTOMER_ID,
    c.INVOICE_ID,
    c.LINE_ID,
    c.PRODUCT_ID,
    c.QUANTITY,
    c.UNIT_PRICE,
    c.AMOUNT,
    c.EVENT_TS,
    c.STORE,
    c.CHANNEL,
    c.TXN_TYPE,
    SOURCE_FILE,
    c.RUN_ID,
)
QUARANTINE_COLUMNS = (c.TXN_ID, c.SOURCE, SOURCE_FILE, REASON, RAW, c.RUN_ID)


class ReconciliationError(RuntimeError):
    """Rows read != accepted + quarantined + duplicates for some source."""


@dataclass(frozen=True)
class SourceCounts:
    source: str
    rows_read: int
    duplicates: int
    accepted: int
    quarantined: int

    @property
    def balanced(self) -> bool:
        return self.rows_read == self.accepted + self.quarantined + self.duplicates


def flag_duplicates(df: DataFrame) -> DataFrame:
    """Adds ``is_duplicate``: true for every copy of a txn_id after the first.

    Copies share their content (the id is a content hash); the copy from the first
    file by name stays, so ``source_file`` is deterministic too.
    """
    by_id = Window.partitionBy(c.TXN_ID).orderBy(SOURCE_FILE)
    return df.select("*", (F.row_number().over(by_id) > 1).alias(DUPLICATE))


def source_counts(flagged: DataFrame) -> DataFrame:
    """Per source: rows_read, duplicates, accepted, quarantined."""
    first_copy = ~F.col(DUPLICATE)
    return flagged.groupBy(c.SOURCE).agg(
        F.count(F.lit(1)).alias("rows_read"),
        F.count_if(F.col(DUPLICATE)).alias("duplicates"),
        F.count_if(first_copy & F.col(REASON).isNull()).alias("accepted"),
        F.count_if(first_copy & F.col(REASON).isNotNull()).alias("quarantined"),
    )


def run(spark: SparkSession, cfg: Config, run_id: str, now: dt.datetime | None = None) -> list[SourceCounts]:
    now = now or dt.datetime.now(dt.UTC)
    if not cfg.sources:
        raise ValueError("ingest.sources lists no source mapping files")
    canonical = []
    for src in cfg.sources:
        raw = read_source(spark, src)
        check_mapping(raw, src)
        log.info("source %s: %s %s", src.name, src.format, src.path)
        canonical.append(raw.transform(canonicalize(src, now)))
    flagged = (
        functools.reduce(DataFrame.unionByName, canonical)
        .transform(flag_duplicates)
        .withColumn(c.RUN_ID, F.lit(run_id))
    )
    # Counting, then writing accepted and quarantined rows, reads the flagged rows three
    # times; persisting them reads and parses the raw files once.
    flagged.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = [SourceCounts(**row.asDict()) for row in source_counts(flagged).orderBy(c.SOURCE).collect()]
        unbalanced = [s for s in counts if not s.balanced]
        if unbalanced:
            raise ReconciliationError(f"counts do not add up: {unbalanced}")
        first_copy = ~F.col(DUPLICATE)
        accepted = flagged.where(first_copy & F.col(REASON).isNull()).select(*TRANSACTION_COLUMNS)
        quarantined = flagged.where(first_copy & F.col(REASON).isNotNull()).select(*QUARANTINE_COLUMNS)
        quarantine = io.table_ref(cfg.storage, cfg.tables.quarantine)
        io.insert_new(spark, accepted, io.table_ref(cfg.storage, cfg.tables.transactions), [c.TXN_ID])
        # A row quarantined before (say, as future-dated) and accepted now leaves quarantine,
        # so that no row is ever in both tables.
        io.delete_matching(spark, accepted.select(c.TXN_ID), quarantine, [c.TXN_ID])
        io.insert_new(spark, quarantined, quarantine, [c.TXN_ID])
    finally:
        flagged.unpersist()
    log_rows = [(run_id, "ingest", s.source, s.rows_read, s.duplicates, s.accepted, s.quarantined, now) for s in counts]
    run_log = spark.createDataFrame(log_rows, RUN_LOG_SCHEMA)
    io.append(run_log, io.table_ref(cfg.storage, cfg.tables.run_log))
    for s in counts:
        log.info(
            "ingest %s: read %d, accepted %d, quarantined %d, duplicates %d",
            s.source,
            s.rows_read,
            s.accepted,
            s.quarantined,
            s.duplicates,
        )
    return counts


RUN_LOG_SCHEMA = (
    "run_id STRING, job STRING, source STRING, rows_read LONG, duplicates LONG, "
    "accepted LONG, quarantined LONG, logged_at TIMESTAMP"
)
