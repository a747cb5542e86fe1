"""Consolidate the configured raw sources into the canonical transactions table.

Each input row ends up in exactly one place: the transactions table (accepted), the
quarantine table (with a reason code), or counted as an exact duplicate. The counts
per source go to the run log, and the job fails when they do not add up, including
against what the tables hold after the write. Loads are idempotent: rows are keyed by
a hash of their content and MERGEd, so rerunning the same input adds nothing, a new
file adds only its rows, and a rerun after a crash part-way completes the load.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io, progress
from custseg.config import Config, ConfigError
from custseg.sources import (
    CONTENT_ID,
    RAW,
    REASON,
    SOURCE_FILE,
    canonicalize,
    check_mapping,
    csv_file_error,
    read_source,
)
from custseg.spark import shuffle_files_removed

log = logging.getLogger(__name__)

DUPLICATE = "is_duplicate"
ALL_SOURCES = c.ALL_SOURCES

TRANSACTION_COLUMNS = (
    c.TXN_ID, c.SOURCE, c.CUSTOMER_ID, c.INVOICE_ID, c.LINE_ID, c.PRODUCT_ID, c.QUANTITY, c.UNIT_PRICE, c.AMOUNT,
    c.EVENT_TS, c.STORE, c.CHANNEL, c.TXN_TYPE, c.IS_EXTREME, SOURCE_FILE, c.RUN_ID,
)  # fmt: skip
QUARANTINE_COLUMNS = (c.TXN_ID, c.SOURCE, SOURCE_FILE, REASON, RAW, c.RUN_ID)
# What ingest keeps of each row between parsing and writing, with the original row
# (for quarantined rows only) and the run id.
STAGED_COLUMNS = (*TRANSACTION_COLUMNS[: TRANSACTION_COLUMNS.index(c.IS_EXTREME)], SOURCE_FILE, REASON, DUPLICATE)
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
AMOUNT_QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)


class ReconciliationError(RuntimeError):
    """Rows read, accepted, quarantined, duplicates and rows stored do not agree."""


@dataclass(frozen=True)
class SourceCounts:
    source: str
    rows_read: int
    duplicates: int
    accepted: int
    quarantined: int
    inserted: int = 0  # accepted rows new to the table in this run (the rest were there)

    @property
    def balanced(self) -> bool:
        return self.rows_read == self.accepted + self.quarantined + self.duplicates


@dataclass(frozen=True)
class IngestResult:
    counts: list[SourceCounts]
    profile: list[dict]  # the data profile rows, per source and ALL


# --------------------------------------------------------------------------- transforms


def assign_ids(drop_duplicates: bool) -> Callable[[DataFrame], DataFrame]:
    """Replaces ``content_id`` by ``txn_id`` and adds ``is_duplicate``.

    With ``drop_duplicates``, copies of a line share one txn_id and every copy after the
    first (by file name) is a duplicate. Without it, the n-th copy gets its own id
    (content and n), so copies stay distinct lines yet a rerun still maps each copy
    to the same id.
    """

    def transform(df: DataFrame) -> DataFrame:
        by_content = Window.partitionBy(CONTENT_ID).orderBy(SOURCE_FILE)
        occurrence = F.row_number().over(by_content)
        if drop_duplicates:
            # Renamed after the window: an alias beside it would be computed below it, and
            # the shuffle would move the 64-character id twice.
            return df.select("*", (occurrence > 1).alias(DUPLICATE)).withColumnRenamed(CONTENT_ID, c.TXN_ID)
        # The first copy keeps the content id in both modes, so switching the policy
        # between runs does not load the same line twice.
        # The occurrence as a column first: used twice in one expression, the window
        # function would be computed twice.
        numbered = df.select("*", occurrence.alias("_occurrence"))
        nth = F.col("_occurrence")
        later_copy = F.sha2(F.concat_ws("#", F.col(CONTENT_ID), nth.cast("string")), 256)
        txn_id = F.when(nth == 1, F.col(CONTENT_ID)).otherwise(later_copy)
        return numbered.select("*", txn_id.alias(c.TXN_ID), F.lit(False).alias(DUPLICATE)).drop(
            CONTENT_ID, "_occurrence"
        )

    return transform


def _log_amount() -> F.Column:
    return F.log1p(F.abs(F.col(c.AMOUNT)))


def _accepted() -> F.Column:
    return ~F.col(DUPLICATE) & F.col(REASON).isNull()


def _quarantined() -> F.Column:
    return ~F.col(DUPLICATE) & F.col(REASON).isNotNull()


def _quarantined_only(col: str) -> F.Column:
    """The column on rows to be quarantined, null on the others: the original row is
    the longest text of every row and only the quarantine keeps it."""
    return F.when(F.col(REASON).isNotNull(), F.col(col)).alias(col)


def with_ranks(counted: DataFrame, by: F.Column, value: str, count: str) -> DataFrame:
    """``counted`` with a row per (group ``by``, ``value``) and how many rows hold that
    value, plus ``_n``, the rows of the group with a value, and ``_below``, those at or
    below this row's value. Null values sort first and count as none."""
    counts = F.when(F.col(value).isNotNull(), F.col(count)).otherwise(F.lit(0))
    at_or_below = Window.partitionBy(by).orderBy(value).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    return counted.select(
        "*", F.sum(counts).over(Window.partitionBy(by)).alias("_n"), F.sum(counts).over(at_or_below).alias("_below")
    )


def nearest_rank(p: float, value: str) -> F.Column:
    """Aggregated over a group of ``with_ranks``' rows: the exact nearest-rank quantile
    p, the smallest value with at least ceil(p x n) of the group's n rows at or below
    it (what ``percentile_approx`` gives on data small enough to be exact)."""
    # p as a decimal: in doubles 0.07 x 100 is 7.000000000000001, a rank too far.
    return F.min(F.when(F.col("_below") >= F.ceil(F.col("_n") * F.lit(Decimal(str(p)))), F.col(value)))


def nearest_rank_quantiles(
    counted: DataFrame, by: str, value: str, count: str, probabilities: tuple[float, ...]
) -> DataFrame:
    """Exact quantiles from counted values: ``counted`` has a row per (``by``, ``value``)
    with how many rows hold that value; the result has a row per ``by`` with columns
    ``q0, q1, ...``, the ``nearest_rank`` of each probability. A group with no values
    has no row.

    Counting the distinct values first is a hash aggregate that combines rows before any
    shuffle, where ``percentile_approx`` keeps a sorted summary per group (and, a thread
    dump of Spark 4.2 showed, builds a SQL configuration for every row it adds). Amounts
    have few distinct values (29,198 at 10M generated lines); with a distinct value per
    row it stays exact, but each group's values are then sorted in one task."""
    ranked = with_ranks(counted.where(F.col(value).isNotNull()), F.col(by), value, count)
    return ranked.groupBy(by).agg(*[nearest_rank(p, value).alias(f"q{i}") for i, p in enumerate(probabilities)])


def flag_extremes(factor: float | None) -> Callable[[DataFrame], DataFrame]:
    """Adds ``is_extreme``: the amount is beyond Tukey's far fence on log1p|amount|
    (Q3 + factor x IQR) of the accepted rows of its source. A flag, not a filter:
    analysts decide; capping at a quantile is the features' business.

    The fences (one number per source) are computed at once and written into the
    expression, so the flag costs no join and no aggregate each time it is read."""

    def transform(df: DataFrame) -> DataFrame:
        if factor is None:
            return df.withColumn(c.IS_EXTREME, F.lit(False))
        counted = df.where(_accepted()).groupBy(c.SOURCE, _log_amount().alias("_v")).count()
        quartiles = nearest_rank_quantiles(counted, c.SOURCE, "_v", "count", (0.25, 0.75))
        fences = {
            row[c.SOURCE]: row["q1"] + factor * (row["q1"] - row["q0"])
            for row in quartiles.where(F.col("q0").isNotNull()).collect()
        }  # one row per source
        fence = F.lit(None).cast("double")
        for source, value in sorted(fences.items()):
            fence = F.when(F.col(c.SOURCE) == source, F.lit(value)).otherwise(fence)
        return df.withColumn(c.IS_EXTREME, F.coalesce(_log_amount() > fence, F.lit(False)))

    return transform


def source_counts(flagged: DataFrame) -> DataFrame:
    """Per source: rows_read, duplicates, accepted, quarantined."""
    return flagged.groupBy(c.SOURCE).agg(
        F.count(F.lit(1)).alias("rows_read"),
        F.count_if(F.col(DUPLICATE)).alias("duplicates"),
        F.count_if(_accepted()).alias("accepted"),
        F.count_if(_quarantined()).alias("quarantined"),
    )


def data_profile(flagged: DataFrame) -> DataFrame:
    """Per source and for all sources together (``source = 'ALL'``), over the distinct
    rows read: counts, null rates of the mapped fields, distinct customers, the date
    range and quantiles of accepted amounts, and the share of returns.

    Output columns: source, rows, accepted, quarantined, null_rate_customer_id,
    null_rate_product_id, null_rate_quantity, null_rate_unit_price, null_rate_event_ts,
    distinct_customers, first_event_ts, last_event_ts, amount_p01, amount_p25,
    amount_p50, amount_p75, amount_p99, return_share, extreme_rows.
    """
    rows = flagged.where(~F.col(DUPLICATE))
    fields = (c.CUSTOMER_ID, c.PRODUCT_ID, c.QUANTITY, c.UNIT_PRICE, c.EVENT_TS)
    accepted = _accepted()
    # Two passes over the rows, each one chain of aggregates, so that neither relies on
    # Spark reusing a shuffle that two branches of the plan read.

    # Distinct customers: the distinct (source, customer) pairs, counted per source and,
    # each customer once, for ALL (a customer may buy through several sources). A
    # count_distinct beside the other aggregates would make Spark expand every row once
    # per distinct aggregate; collecting each customer's sources in a set was twice as
    # slow at 1M lines (3.7 s against 1.9 s).
    customers = (
        rows.where(accepted & F.col(c.CUSTOMER_ID).isNotNull())
        .select(c.SOURCE, c.CUSTOMER_ID)
        .distinct()
        .groupingSets([[c.SOURCE], []], c.SOURCE)
        .agg(F.count_distinct(c.CUSTOMER_ID).alias("distinct_customers"))
        .select(F.coalesce(F.col(c.SOURCE), F.lit(ALL_SOURCES)).alias(c.SOURCE), "distinct_customers")
    )

    # Everything else: counts per source and accepted purchase amount (null for the other
    # rows), and per amount for ALL, in one aggregate (grouping sets) that combines rows
    # before its shuffle; then, over those few rows, the amounts' ranks and the sums.
    amount = F.when(accepted & (F.col(c.TXN_TYPE) == c.PURCHASE), F.col(c.AMOUNT)).alias("_amount")
    counted = rows.groupingSets([[c.SOURCE, amount], [amount]], c.SOURCE, amount).agg(
        F.count(F.lit(1)).alias("rows"),
        F.count_if(accepted).alias("accepted"),
        F.count_if(_quarantined()).alias("quarantined"),
        *[F.count_if(F.col(col).isNull()).alias(f"_null_{col}") for col in fields],
        F.min(F.when(accepted, F.col(c.EVENT_TS))).alias("first_event_ts"),
        F.max(F.when(accepted, F.col(c.EVENT_TS))).alias("last_event_ts"),
        F.count_if(accepted & (F.col(c.TXN_TYPE) == c.RETURN)).alias("_returns"),
        F.count_if(accepted & F.col(c.IS_EXTREME)).alias("extreme_rows"),
    )
    source = F.coalesce(F.col(c.SOURCE), F.lit(ALL_SOURCES))  # the second grouping set's
    ranked = with_ranks(counted, source, "_amount", "rows")
    quantiles = [nearest_rank(q, "_amount").alias(f"amount_p{round(q * 100):02d}") for q in AMOUNT_QUANTILES]
    sums = ("rows", "accepted", "quarantined", *[f"_null_{col}" for col in fields], "_returns", "extreme_rows")
    profile = ranked.groupBy(source.alias(c.SOURCE)).agg(
        *[F.sum(col).alias(col) for col in sums],
        F.min("first_event_ts").alias("first_event_ts"),
        F.max("last_event_ts").alias("last_event_ts"),
        *quantiles,
    )
    return profile.join(customers, on=c.SOURCE, how="left").select(
        c.SOURCE,
        "rows", "accepted", "quarantined",
        *[F.round(F.col(f"_null_{col}") / F.col("rows"), 4).alias(f"null_rate_{col}") for col in fields],
        F.coalesce(F.col("distinct_customers"), F.lit(0)).alias("distinct_customers"),
        "first_event_ts", "last_event_ts", *[f"amount_p{round(q * 100):02d}" for q in AMOUNT_QUANTILES],
        F.round(F.col("_returns") / F.greatest(F.col("accepted"), F.lit(1)), 4).alias("return_share"),
        "extreme_rows",
    )  # fmt: skip


def with_zero_rows(sources: list[str]) -> Callable[[DataFrame], DataFrame]:
    """The data profile with a row for each of ``sources`` it lacks (a source of empty
    or header-only files has no rows to group): zero counts, and no rates, dates or
    quantiles, which would be made up."""

    def transform(profile: DataFrame) -> DataFrame:
        names = profile.sparkSession.createDataFrame([(name,) for name in sources], f"{c.SOURCE} STRING")
        counts = ("rows", "accepted", "quarantined", "distinct_customers", "extreme_rows")
        zeros = names.join(profile, on=c.SOURCE, how="left_anti").select(
            *[
                F.lit(0).cast(profile.schema[col].dataType).alias(col) if col in counts
                else F.col(col) if col == c.SOURCE
                else F.lit(None).cast(profile.schema[col].dataType).alias(col)
                for col in profile.columns
            ]
        )  # fmt: skip
        return profile.unionByName(zeros)

    return transform


def stored_counts(ids: DataFrame, table: DataFrame, run_id: str) -> DataFrame:
    """Per source: how many of ``ids`` (txn_id, source) the table holds, and how many of
    those this run inserted."""
    held = table.select(c.TXN_ID, F.col(c.RUN_ID).alias("_loaded_by"))
    return (
        ids.join(held, on=c.TXN_ID, how="left")
        .groupBy(c.SOURCE)
        .agg(
            F.count("_loaded_by").alias("stored"),
            F.count_if(F.col("_loaded_by") == run_id).alias("inserted"),
        )
    )


# --------------------------------------------------------------------------- job


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
                .withColumn(RAW, _quarantined_only(RAW))  # before the deduplication's shuffle, which moves every row
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
    accepted = flagged.where(_accepted()).select(*TRANSACTION_COLUMNS)
    quarantined = flagged.where(_quarantined()).select(*QUARANTINE_COLUMNS)
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
        r[c.SOURCE]: r for r in stored_counts(ids.where(_accepted()), io.read(spark, transactions), run_id).collect()
    }
    in_quarantine = {
        r[c.SOURCE]: r["stored"]
        for r in stored_counts(ids.where(_quarantined()), io.read(spark, quarantine), run_id).collect()
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
