"""Our pipeline on the benchmark data, one timed stage at a time, in one SparkSession
built by ``custseg.spark.get_spark``.

Consolidation is ``ingest.run`` and RFM is ``features.run``, as the jobs call them. The
segment job (``model.run``) does scaling and PCA, the k sweep, the final fit and the
label write in one call, so they are timed here by calling, in the same order, the
functions ``model.fit`` and ``model.run`` call (``prepare``, ``finish`` and
``write_labels`` below mirror them; keep them in step with lib/custseg/model.py).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from benchmarks import common
from custseg import columns as c
from custseg import features, history, ingest, io, model
from custseg.config import Config, load_config
from custseg.evaluate import SweepPoint, choose_k
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


@dataclass(frozen=True)
class Prepared:
    """The fitted preprocessing and the persisted model input vectors (see model.fit)."""

    features: DataFrame
    as_of: dt.date
    prep: PipelineModel
    stages: list
    vectors: DataFrame
    customers: int
    caps: dict[str, float]
    explained_variance: list[float]


def prepare(spark: SparkSession, cfg: Config) -> Prepared:
    """Read the features, fit caps, scaler and PCA, and persist the vectors the k sweep
    iterates over: model.fit up to its sweep."""
    seg = cfg.segment
    feats, as_of = model.read_features(spark, cfg)
    inputs = model.fit_inputs(feats, cfg)
    numeric = model.numeric_features(cfg)
    caps = model.quantile_caps(inputs, numeric, cfg.features.cap_quantile)
    prep = model.preprocessing(seg, cfg.features.log1p, caps, model.categorical_features(cfg)).fit(inputs)
    prepared = prep.transform(inputs)
    pca = model.principal_components(prepared, seg, len(prep.stages[-1].std))
    in_cols = [model.input_column(f) for f in numeric]
    vectors = (
        (pca.transform(prepared) if pca else prepared)
        .select(c.CUSTOMER_ID, *in_cols, model.VECTOR)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    customers = vectors.count()
    return Prepared(
        feats, as_of, prep, [*prep.stages, *([pca] if pca else [])], vectors, customers, caps,
        [float(v) for v in pca.explainedVariance] if pca else [],
    )  # fmt: skip


def finish(
    spark: SparkSession, cfg: Config, prepared: Prepared, points: list[SweepPoint], models: dict
) -> tuple[PipelineModel, model.SegmentResult]:
    """Choose k, number the segments, save the PipelineModel and record the sweep and the
    model: model.fit after its sweep, and model.run up to the labels."""
    seg = cfg.segment
    numeric = model.numeric_features(cfg)
    k = seg.k or choose_k(points, seg.selection, seg.silhouette_tolerance)
    value = prepared.features.select(c.CUSTOMER_ID, F.col(seg.value_feature).alias("_value"))
    clustered = models[k].transform(prepared.vectors).join(value, on=c.CUSTOMER_ID, how="inner")
    stats = model.cluster_stats(clustered, numeric, "_value")
    prepared.vectors.unpersist()
    scale = list(prepared.prep.stages[-1].std)[: len(numeric)]
    mapping = model.segment_ids(stats, k, None, scale)  # a fresh lake: no previous model to match
    fitted = PipelineModel(stages=[*prepared.stages, models[k], model.relabel(mapping)])
    version = f"{seg.algorithm}-k{k}-{RUN_ID}"
    path = io.resolve(seg.model_dir, version)
    fitted.write().overwrite().save(path)
    result = model.SegmentResult(
        k=k, sweep=points, model_version=version, model_path=path, customers=prepared.customers,
        caps=prepared.caps, explained_variance=prepared.explained_variance,
        centres={mapping[s.cluster]: s.centre for s in stats},
    )  # fmt: skip
    fitted_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    io.append(
        model.sweep_frame(spark, result, cfg, RUN_ID, prepared.as_of), io.table_ref(cfg.storage, cfg.tables.k_sweep)
    )
    record = model.model_record(
        spark, result, cfg, RUN_ID, prepared.as_of, fitted_at, model.data_range(prepared.features)
    )
    io.append(record, io.table_ref(cfg.storage, cfg.tables.models))
    return fitted, result


def write_labels(
    spark: SparkSession, cfg: Config, fitted: PipelineModel, prepared: Prepared, k: int, version: str
) -> history.HistoryChange:
    """Label every customer and write the labels, their history and migrations."""
    labels = model.label(fitted, prepared.features, cfg, version, k, RUN_ID)
    return model.save_labels(spark, labels, cfg, RUN_ID)


def rfm_core(spark: SparkSession, cfg: Config, as_of: dt.date, out: Path) -> None:
    """Recency, frequency, monetary and average order value only, from our transactions
    table with our transform, written as Parquet: the work DuckDB's query does. Spark
    prunes the unused aggregates, so the gap between this and the RFM stage is the cost
    of the other features, the RFM scores and the Delta write."""
    txns = io.read(spark, io.table_ref(cfg.storage, cfg.tables.transactions))
    core = txns.transform(features.customer_features(as_of)).select(*RFM_CORE)
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
            ingested = ingest.run(spark, cfg, RUN_ID, now=INGEST_NOW)
        with rec.stage("rfm", rows=transactions):
            as_of = features.run(spark, cfg)
        with rec.stage("scale_pca") as stage:
            prepared = prepare(spark, cfg)
            stage["rows"] = prepared.customers
        with rec.stage("k_sweep", rows=prepared.customers):
            points, models = model.sweep(prepared.vectors.select(c.CUSTOMER_ID, model.VECTOR), cfg.segment)
        with rec.stage("final_fit", rows=prepared.customers):
            fitted, result = finish(spark, cfg, prepared, points, models)
        with rec.stage("write_labels", rows=prepared.customers):
            write_labels(spark, cfg, fitted, prepared, result.k, result.model_version)
    rec.set("ingest", [dataclasses.asdict(s) for s in ingested.counts])
    rec.set("as_of_date", str(as_of))
    rec.set("k", result.k)
    rec.set("sweep", [dataclasses.asdict(p) for p in points])
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
