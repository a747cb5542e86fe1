"""Our pipeline on the benchmark data, one timed stage at a time, in one SparkSession
built by ``custseg.spark.get_spark``.

Consolidation is ``ingest_job.run`` and RFM is ``features_job.run``, as the jobs call them. The
segment job (``segment_job.run``) does scaling and PCA, the k sweep, the final fit and the
label write in one call, so they are timed here by calling, in the same order, the
functions ``model.fit`` and ``segment_job.run`` call: ``model.prepare``, ``model.sweep``,
``model.finish``, then the records and ``segment_job.save_labels``.
The stability refits and mlflow are off (conf/bench.yaml): they are not stages of
issue 6.

After the run, outside the total: a diagnostic of where the RFM time goes (the four
features DuckDB computes, from our transactions table, with our transform), and the
checks the harness compares across tools.

``python -m benchmarks.tool_custseg --raw DIR --work DIR --out FILE [--set KEY=VALUE]``
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from benchmarks import common
from custseg import columns as c
from custseg import io
from custseg.config import Config, load_config
from custseg.features import job as features_job
from custseg.features import rfm
from custseg.ingest import job as ingest_job
from custseg.segment import history, model, persist
from custseg.segment import job as segment_job
from custseg.spark import get_spark

RUN_ID = "bench"
# Ingest quarantines rows dated after "now": the as-of date keeps the run independent of
# the clock (the generated data ends the day before; its bad rows are dated 2099).
INGEST_NOW = dt.datetime.combine(common.AS_OF, dt.time(), tzinfo=dt.UTC)
EVENT_CHARS = 240  # a log line kept in the results is cut here
RFM_CORE = (c.CUSTOMER_ID, c.RECENCY_DAYS, c.FREQUENCY, c.MONETARY, c.AVG_ORDER_VALUE)


class EventLog(logging.Handler):
    """Keeps the library's own INFO lines (tables written, k sweep steps) with the stage
    they fell in, so the results show where a stage's time goes without instrumenting
    lib/. Saved with the recorder's next write."""

    def __init__(self, rec: common.Recorder) -> None:
        super().__init__(logging.INFO)
        self.rec = rec
        rec.data["events"] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = {"at": record.created, "stage": self.rec.data.get("current_stage"), "logger": record.name,
                 "message": record.getMessage()[:EVENT_CHARS]}  # fmt: skip
        self.rec.data["events"].append(event)


def bench_config(raw: Path, work: Path, overrides: Sequence[str]) -> Config:
    """conf/base + local + bench, with the lake and models under ``work`` and the bench
    source pointed at ``raw`` (a source's path is in its mapping file, so it is replaced
    here, as tests/conftest.py does)."""
    cfg = load_config(
        [common.ROOT / f for f in common.BENCH_CONFIGS],
        [
            common.JARS_OVERRIDE,
            f"storage.root={work / 'lake'}",
            f"segment.model_dir={work / 'models'}",
            *overrides,
        ],
    )
    return dataclasses.replace(cfg, sources=tuple(dataclasses.replace(s, path=str(raw)) for s in cfg.sources))


def final_fit(
    spark: SparkSession, cfg: Config, feats: DataFrame, as_of: dt.date, prepared: model.Prepared, swept
) -> tuple[PipelineModel, model.SegmentResult]:
    """Choose k, number the segments and save the model (``model.finish``), then record
    the sweep and the model, as ``segment_job.run`` does before any label is written."""
    try:
        fitted, result = model.finish(feats, cfg, prepared, swept, RUN_ID)  # a fresh lake: no model to match
    finally:
        prepared.unpersist()
    fitted_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    io.append(persist.sweep_frame(spark, result, cfg, RUN_ID, as_of), io.table_ref(cfg.storage, cfg.tables.k_sweep))
    record = persist.model_record(spark, result, cfg, RUN_ID, as_of, fitted_at, persist.data_range(feats))
    io.append(record, io.table_ref(cfg.storage, cfg.tables.models))
    return fitted, result


def write_labels(
    spark: SparkSession, cfg: Config, fitted: PipelineModel, feats: DataFrame, k: int, version: str
) -> history.HistoryChange:
    """Label every customer and write the labels, their history and migrations."""
    labels = model.label(fitted, feats, cfg, version, k, RUN_ID)
    return segment_job.save_labels(spark, labels, cfg, RUN_ID)


def rfm_core(spark: SparkSession, cfg: Config, as_of: dt.date, out: Path) -> None:
    """Recency, frequency, monetary and average order value only, from our transactions
    table with our transform, written as Parquet: the work DuckDB's query does. Spark
    prunes the unused aggregates, so the gap between this and the RFM stage is the cost
    of the other features, the RFM scores and the Delta write."""
    txns = io.read(spark, io.table_ref(cfg.storage, cfg.tables.transactions))
    core = txns.transform(rfm.customer_features(as_of)).select(*RFM_CORE)
    core.write.mode("overwrite").parquet(str(out))


def checks(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """The numbers every tool reports, for the harness to compare (one aggregate)."""
    feats = io.read(spark, io.table_ref(cfg.storage, cfg.tables.features))
    row = feats.agg(
        F.count(F.lit(1)).alias("customers"),
        F.count_if(F.col(c.FREQUENCY) > 0).alias("customers_with_purchase"),
        F.sum(c.FREQUENCY).alias("frequency_sum"),
        F.sum(c.RECENCY_DAYS).alias("recency_sum"),
        F.sum(c.MONETARY).alias("monetary_sum"),
    ).first()
    return {**row.asDict(), "monetary_sum": round(float(row["monetary_sum"] or 0.0), 2)}


def run(rec: common.Recorder, raw: Path, work: Path, transactions: int, overrides: Sequence[str]) -> None:
    shutil.rmtree(work, ignore_errors=True)  # ingest MERGEs: a fresh lake, or a rerun would load nothing
    with rec.stage("startup", kind=common.SETUP):
        cfg = bench_config(raw, work, overrides)
        spark = get_spark(cfg.spark)
    rec.set("spark", {"driver_memory": spark.conf.get("spark.driver.memory", None),
                      "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
                      "master": spark.conf.get("spark.master")})  # fmt: skip
    with rec.stage("total", rows=transactions, kind=common.TOTAL):
        with rec.stage("consolidate", rows=transactions):
            ingested = ingest_job.run(spark, cfg, RUN_ID, now=INGEST_NOW)
        with rec.stage("rfm", rows=transactions):
            as_of = features_job.run(spark, cfg)
        with rec.stage("scale_pca") as stage:
            feats, _ = segment_job.read_features(spark, cfg)
            prepared = model.prepare(feats, cfg)
            stage["rows"] = prepared.customers
        with rec.stage("k_sweep", rows=prepared.customers):
            swept = model.sweep(prepared.swept, cfg.segment)
        with rec.stage("final_fit", rows=prepared.customers):
            fitted, result = final_fit(spark, cfg, feats, as_of, prepared, swept)
        with rec.stage("write_labels", rows=prepared.customers):
            write_labels(spark, cfg, fitted, feats, result.k, result.model_version)
    rec.set("ingest", [dataclasses.asdict(s) for s in ingested.counts])
    rec.set("as_of_date", str(as_of))
    rec.set("k", result.k)
    rec.set("sweep", [dataclasses.asdict(p) for p in result.sweep])
    rec.set("sweep_customers", result.sweep_customers)
    rec.set("model_customers", result.customers)
    rec.set("final", dataclasses.asdict(result.chosen))
    with rec.stage("rfm_core", rows=transactions, kind=common.DIAGNOSTIC):
        rfm_core(spark, cfg, as_of, work / "rfm_core.parquet")
    rec.set("checks", checks(spark, cfg))
    spark.stop()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tool_custseg", description=__doc__.splitlines()[0])
    p.add_argument("--raw", type=Path, required=True, help="the raw Parquet folder")
    p.add_argument("--work", type=Path, required=True, help="a scratch folder for the lake and models (emptied)")
    p.add_argument("--out", type=Path, required=True, help="the result JSON")
    p.add_argument("--transactions", type=int, required=True)
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = p.parse_args(argv)
    common.configure_logging(common.CUSTSEG)
    rec = common.Recorder(common.CUSTSEG, args.out)
    logging.getLogger("custseg").addHandler(EventLog(rec))
    try:
        run(rec, args.raw.resolve(), args.work.resolve(), args.transactions, args.overrides)
    except BaseException as exc:  # recorded as the tool's outcome; the harness goes on
        return rec.fail(exc)
    rec.finish()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
