"""The segment stage: fit the model on the features table, label every customer, keep
their history; and score customers later with a saved model. The stage's only reader
and writer of tables."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io, tracking
from custseg.config import Config, ConfigError
from custseg.segment import history, stability
from custseg.segment.model import PreviousModel, SegmentResult, fit, label
from custseg.segment.persist import MIGRATION_SCHEMA, data_range, model_record, sweep_frame
from custseg.segment.preprocess import VECTOR, fit_inputs
from custseg.segment.restarts import Restarted
from custseg.value.predict import with_value

log = logging.getLogger(__name__)


def previous_model(spark: SparkSession, ref: io.TableRef) -> PreviousModel | None:
    """The most recently fitted model on record, or None."""
    if not io.exists(spark, ref):
        return None
    last = io.read(spark, ref).orderBy(F.col("fitted_at").desc(), F.col("run_id").desc()).first()
    if last is None:
        return None
    return PreviousModel(
        version=last["model_version"],
        features=list(last["features"]),
        centres={r["segment_id"]: list(r["centre"]) for r in last["centres"]},
        log1p=list(last["log1p"] or []),
    )


def check_stability(
    spark: SparkSession, model: PipelineModel, features: DataFrame, labels: DataFrame, cfg: Config, k: int, run_id: str
) -> stability.StabilityReport | None:
    """Refit the chosen k with other seeds and on bootstrap samples (same preprocessing)
    and record how well each refit agrees with ``labels``."""
    conf = cfg.stability
    if not conf.seeds and not conf.bootstrap:
        return None
    seg = cfg.segment
    # A refit with the production seed on the same data reproduces the labels exactly:
    # it would only flatter the scores.
    seeds = [s for s in conf.seeds if s != seg.seed]
    if not seeds and not conf.bootstrap:
        return None
    prep = PipelineModel(stages=model.stages[:-2])  # everything before the clusterer
    vectors = prep.transform(fit_inputs(features, cfg)).select(c.CUSTOMER_ID, VECTOR)
    report = stability.stability(
        vectors,
        labels.where(F.col(c.SEGMENT_ID) >= 0).select(c.CUSTOMER_ID, c.SEGMENT_ID),
        lambda seed: Restarted(dataclasses.replace(seg, seed=seed), k),
        seeds=seeds,
        bootstrap=conf.bootstrap,
        bootstrap_seed=seg.seed,
        threshold=conf.threshold,
        fit_seed=seg.seed,
        reseed=True,  # as the k choice's per-k stability: sample and seeding both vary
    )
    runs, segments = stability.stability_frames(spark, report, run_id)
    io.append(runs, io.table_ref(cfg.storage, cfg.tables.stability))
    io.append(segments, io.table_ref(cfg.storage, cfg.tables.segment_stability))
    return report


def save_labels(spark: SparkSession, labels: DataFrame, cfg: Config, run_id: str) -> history.HistoryChange:
    """The current labels (overwritten), their history (merged: only changes) and the
    migration matrix from the labels they replace (appended, one row per move)."""
    labels_ref = io.table_ref(cfg.storage, cfg.tables.labels)
    labels = labels.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        moves, previous_run = [], None
        if io.exists(spark, labels_ref):
            previous = io.read(spark, labels_ref)
            previous_run = previous.select(c.RUN_ID).first()
            previous_run = previous_run[c.RUN_ID] if previous_run else None
            moves = history.migration_matrix(previous, labels).collect()  # at most (k_old + 1) x (k_new + 1) rows
        io.overwrite(labels, labels_ref)
    finally:
        labels.unpersist()
    if moves:
        rows = [(run_id, previous_run, r["from_segment"], r["to_segment"], r["customers"], r["share_of_from"])
                for r in moves]  # fmt: skip
        io.append(spark.createDataFrame(rows, MIGRATION_SCHEMA), io.table_ref(cfg.storage, cfg.tables.migrations))
    run_ts = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    change = merge_history(
        spark, io.read(spark, labels_ref), io.table_ref(cfg.storage, cfg.tables.label_history), run_id, run_ts
    )
    log.info("label history: %d new, %d changed segment, %d unchanged, %d gone",
             change.new, change.changed, change.unchanged, change.gone)  # fmt: skip
    return change


def read_features(spark: SparkSession, cfg: Config) -> tuple[DataFrame, dt.date]:
    ref = io.table_ref(cfg.storage, cfg.tables.features)
    features = io.read_required(spark, ref, "customer features", "the features job")
    as_of = features.agg(F.max(c.AS_OF_DATE).alias("d")).first()["d"]
    if as_of is None:
        raise io.PrerequisiteError(f"the customer features table {ref} is empty: run the features job first")
    if set(cfg.segment.features) & set(c.VALUE_FEATURES):
        # clv and p_alive live in the customer_value table, as of the same date
        value_ref = io.table_ref(cfg.storage, cfg.tables.customer_value)
        values = io.read_required(spark, value_ref, "customer value", "the value job")
        features = features.transform(with_value(values))
        log.info("model features from %s: %s", value_ref, sorted(set(cfg.segment.features) & set(c.VALUE_FEATURES)))
    missing = sorted((set(cfg.segment.features) | {cfg.segment.value_feature}) - set(features.columns))
    if missing:
        raise ConfigError(
            f"segment.features / segment.value_feature: {missing} not in the features table {ref} "
            f"(it has {features.columns})"
        )
    return features, as_of


def run(spark: SparkSession, cfg: Config, run_id: str) -> SegmentResult:
    """Fit (keeping the last model's segment ids), label every customer, merge the label
    history, check stability, and record the sweep and the model."""
    features, as_of = read_features(spark, cfg)
    models_ref = io.table_ref(cfg.storage, cfg.tables.models)
    fitted_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    model, result = fit(spark, features, cfg, run_id, previous_model(spark, models_ref))
    # The model is on record before any label refers to it.
    io.append(sweep_frame(spark, result, cfg, run_id, as_of), io.table_ref(cfg.storage, cfg.tables.k_sweep))
    io.append(model_record(spark, result, cfg, run_id, as_of, fitted_at, data_range(features)), models_ref)
    save_labels(spark, label(model, features, cfg, result.model_version, result.k, run_id), cfg, run_id)
    labels = io.read(spark, io.table_ref(cfg.storage, cfg.tables.labels))
    report = check_stability(spark, model, features, labels, cfg, result.k, run_id)
    tracking.log_segment_run(cfg, run_id, result, as_of, model, report)
    return result


def latest_model(spark: SparkSession, cfg: Config, version: str | None = None) -> tuple[PipelineModel, Row]:
    """The saved model ``version``, or the most recently fitted one, with its record."""
    ref = io.table_ref(cfg.storage, cfg.tables.models)
    if not io.exists(spark, ref):
        raise io.PrerequisiteError(f"no model on record in {ref}: run the segment job first")
    records = io.read(spark, ref)
    if version:
        records = records.where(F.col(c.MODEL_VERSION) == version)
    record = records.orderBy(F.col("fitted_at").desc(), F.col(c.RUN_ID).desc()).first()
    if record is None:
        if version:
            raise io.PrerequisiteError(f"model {version!r} is not on record in {ref}")
        raise io.PrerequisiteError(f"no model on record in {ref}: run the segment job first")
    return PipelineModel.load(record["model_path"]), record


def score(spark: SparkSession, cfg: Config, run_id: str, version: str | None = None) -> history.HistoryChange:
    """Label the customers in the features table with a saved model, without refitting:
    new customers get a segment, changed ones may move, and the history records only
    the moves."""
    features, _ = read_features(spark, cfg)
    model, record = latest_model(spark, cfg, version)
    if list(record["features"]) != list(cfg.segment.features):
        raise ConfigError(
            f"segment.features is {list(cfg.segment.features)} but model {record['model_version']} was fitted on "
            f"{list(record['features'])}: refit with the segment job, or configure the model's features"
        )
    log.info("scoring with model %s (fitted %s on %d customers)", record["model_version"], record["fitted_at"],
             record["customers"])  # fmt: skip
    labels = label(model, features, cfg, record["model_version"], record["k"], run_id)
    return save_labels(spark, labels, cfg, run_id)


def merge_history(
    spark: SparkSession, labels: DataFrame, ref: io.TableRef, run_id: str, run_ts: dt.datetime
) -> history.HistoryChange:
    """Record one run's labels in the history table at ``ref`` (created on the first
    run): the update ``history.history_update`` works out, in one write."""
    current = io.read(spark, ref).where(F.col(history.IS_CURRENT)) if io.exists(spark, ref) else None
    update = history.history_update(labels, current, run_id, run_ts, str(ref))
    if update.first is not None:
        io.insert_new(spark, update.first, ref, [c.CUSTOMER_ID, history.VALID_FROM])
    elif update.staged is not None:
        io.merge(spark, update.staged, ref, on=update.on, clauses=list(update.clauses))
    return update.change


def current_labels(spark: SparkSession, cfg: Config) -> DataFrame:
    """The labels table: every customer's current segment."""
    return io.read(spark, io.table_ref(cfg.storage, cfg.tables.labels))
