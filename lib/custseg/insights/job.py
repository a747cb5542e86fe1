"""The insights stage: segment profiles and names from the labels and the features, and
the report, one self-contained HTML page per run with its plots beside it, in
``<report.dir>/<run_id>/``. The stage's only reader and writer of tables."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io
from custseg.config import Config
from custseg.insights import profiles
from custseg.insights.naming import name_segments
from custseg.insights.page import PLOT_TITLES, render_html
from custseg.insights.plots import sample_plots, table_plots
from custseg.insights.profiles import (
    DESCRIPTION,
    FEATURE,
    MEDIAN,
    MEDIAN_COLUMNS,
    NAMING_SCHEMA,
    PERCENTILE_RANK,
    SEGMENT_NAME,
    VALUE_PROFILE_COLUMNS,
    VALUE_TIER,
    feature_profiles,
    profile_features,
    segment_sizes,
    summaries,
    value_profile,
)
from custseg.insights.report import (
    RFM_SEGMENT,
    SWEEP_METRICS,
    ReportContent,
    ReportResult,
    migration_matrix,
    rank_matrix,
    rfm_cross_table,
    rfm_matrix,
    run_info,
    sample_vectors,
    stratified_sample,
)
from custseg.segment import job as segment_job
from custseg.segment import preprocess
from custseg.value.predict import with_value

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- profiles and names


def read_features(spark: SparkSession, cfg: Config) -> DataFrame:
    """The features table, with each customer's clv and p_alive joined in when the
    customer_value table is of the same as-of date (the value stage ran on these features)."""
    features = io.read_required(spark, io.table_ref(cfg.storage, cfg.tables.features), "customer features",
                                "the features job")  # fmt: skip
    value_ref = io.table_ref(cfg.storage, cfg.tables.customer_value)
    if not io.exists(spark, value_ref):
        return features
    values = io.read(spark, value_ref)
    value_as_of = values.select(c.AS_OF_DATE).first()  # one date: the table is overwritten per run
    features_as_of = features.select(c.AS_OF_DATE).first()
    if value_as_of is None or features_as_of is None or value_as_of[0] != features_as_of[0]:
        log.info("%s is not of the features' as-of date: profiles without customer value", value_ref)
        return features
    log.info("customer value from %s, as of %s", value_ref, value_as_of[0])
    return features.transform(with_value(values))


def run_profiles(spark: SparkSession, cfg: Config) -> DataFrame:
    """Profile the current labels against the features (and the customer value, when
    there is one of the same as-of date); write both profile tables and return the
    per-segment one (k + 1 rows at most)."""
    tables = cfg.tables
    labels = io.read_required(spark, io.table_ref(cfg.storage, tables.labels), "segment labels", "the segment job")
    features = read_features(spark, cfg)
    labelled = labels.select(c.CUSTOMER_ID, c.SEGMENT_ID).join(features, on=c.CUSTOMER_ID, how="inner")
    names_of = profile_features(cfg, features.columns)
    if not names_of:
        raise ValueError("nothing to profile: no numeric feature or attribute in the features table")
    per_feature = labelled.transform(feature_profiles(names_of)).persist()
    try:
        feature_rows = per_feature.select(c.SEGMENT_ID, FEATURE, MEDIAN, PERCENTILE_RANK).collect()  # k x features
        sizes = labelled.transform(segment_sizes(cfg.segment.value_feature))
        size_rows = sizes.collect()  # k + 1 rows
        segments = summaries(size_rows, feature_rows)
        namings = name_segments(segments, names_of, cfg.segment.value_feature)
        named = spark.createDataFrame(
            [
                (s.segment_id, namings[s.segment_id].name, namings[s.segment_id].description,
                 namings[s.segment_id].value_tier, *(s.medians.get(f) for f in MEDIAN_COLUMNS))
                for s in segments
            ],
            NAMING_SCHEMA,
        )  # fmt: skip
        run_info = labels.select(c.RUN_ID, c.MODEL_VERSION, c.AS_OF_DATE).limit(1)
        profiles = (
            spark.createDataFrame(size_rows, sizes.schema)
            .join(named, on=c.SEGMENT_ID, how="left")
            .join(value_profile(per_feature), on=c.SEGMENT_ID, how="left")
            .crossJoin(run_info)
            .select(
                c.RUN_ID, c.MODEL_VERSION, c.AS_OF_DATE, c.SEGMENT_ID, SEGMENT_NAME, DESCRIPTION, VALUE_TIER,
                *sizes.columns[1:], *MEDIAN_COLUMNS.values(), *VALUE_PROFILE_COLUMNS,
            )
        )  # fmt: skip
        io.overwrite(profiles, io.table_ref(cfg.storage, tables.segment_profiles))
        io.overwrite(
            per_feature.crossJoin(run_info).select(c.RUN_ID, c.MODEL_VERSION, c.AS_OF_DATE, *per_feature.columns),
            io.table_ref(cfg.storage, tables.feature_profiles),
        )
    finally:
        per_feature.unpersist()
    log.info("segment names: %s", {sid: n.name for sid, n in namings.items()})
    return io.read(spark, io.table_ref(cfg.storage, tables.segment_profiles))


# --------------------------------------------------------------------------- the report


def report_folder(directory: str, run_id: str) -> Path:
    """``<report.dir>/<run_id>`` as a local path (a mounted path such as /dbfs/... works;
    object-store URIs do not, as the files are written by this Python process)."""
    folder = io.resolve(directory, run_id)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/", folder):
        if not folder.startswith("file:"):
            raise ValueError(f"report.dir {directory!r}: the report is written locally; use a local or mounted path")
        folder = re.sub(r"^file:(//)?", "", folder)
    return Path(folder)


def _read(spark: SparkSession, cfg: Config, table: str) -> DataFrame:
    ref = io.table_ref(cfg.storage, table)
    if not io.exists(spark, ref):
        raise io.PrerequisiteError(f"no table at {ref}: run the jobs before the report")
    log.info("reading %s", ref)
    return io.read(spark, ref)


def _current_run(labels: DataFrame, run_id: str | None) -> Row:
    current = labels.select(c.RUN_ID, c.MODEL_VERSION, c.AS_OF_DATE).first()
    if current is None:
        raise io.PrerequisiteError("the segment labels table is empty: run the segment job first")
    if run_id is not None and run_id != current[c.RUN_ID]:
        raise ValueError(
            f"run {run_id!r} is not the run of the current labels ({current[c.RUN_ID]!r}); the labels table keeps "
            "only the latest run, so only it can be reported"
        )
    return current


def _this_run(frame: pd.DataFrame, table: str, run_id: str) -> pd.DataFrame:
    stale = sorted(set(frame[c.RUN_ID]) - {run_id})
    if stale:
        raise ValueError(f"{table} describes run(s) {stale}, not the labels' run {run_id!r}: run the profile job first")
    return frame


def read_sweep(spark: SparkSession, cfg: Config, version: str) -> pd.DataFrame:
    """The k sweep that fitted model ``version``: one row per k, ascending."""
    sweep = _read(spark, cfg, cfg.tables.k_sweep)
    # a k_sweep written before the guard rails has no such columns: shown as "–"
    guards = [F.col(g) if g in sweep.columns else F.lit(None).alias(g) for g in ("smallest_share", "stability")]
    reason = F.col("reason") if "reason" in sweep.columns else F.lit(None).cast("string").alias("reason")
    return (
        sweep.where(F.col(c.MODEL_VERSION) == version)
        .select(c.K, *SWEEP_METRICS, *guards, "chosen", reason)
        .toPandas()  # one row per k
        .sort_values(c.K)
        .drop_duplicates(c.K, keep="last")  # a rerun of the same run id appends its sweep again
        .reset_index(drop=True)
    )


def read_profiles(spark: SparkSession, cfg: Config, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """segment_profiles (one row per segment) and segment_feature_profiles (segments x
    features) of ``run_id``; they must describe that run."""
    tables = cfg.tables
    segments = _this_run(_read(spark, cfg, tables.segment_profiles).toPandas(), tables.segment_profiles, run_id)
    per_feature = _this_run(_read(spark, cfg, tables.feature_profiles).toPandas(), tables.feature_profiles, run_id)
    return segments, per_feature


def read_rfm(labels: DataFrame, features: DataFrame, cfg: Config) -> pd.DataFrame | None:
    """The RFM segment x segment matrix, or None when the features have no RFM segment."""
    if RFM_SEGMENT not in features.columns:
        return None
    labelled = labels.select(c.CUSTOMER_ID, c.SEGMENT_ID).join(features, on=c.CUSTOMER_ID, how="inner")
    rule_order = [r.name for r in cfg.rfm.segments] + [cfg.rfm.default_segment]
    return rfm_matrix(labelled.transform(rfm_cross_table).toPandas(), rule_order)  # RFM segments x segments


def read_migrations(spark: SparkSession, cfg: Config, run_id: str) -> tuple[pd.DataFrame | None, str | None]:
    """The migration matrix of ``run_id`` and the run it compares with; (None, None)
    when the run had no previous labels."""
    ref = io.table_ref(cfg.storage, cfg.tables.migrations)
    if not io.exists(spark, ref):
        return None, None
    moves = io.read(spark, ref).where(F.col(c.RUN_ID) == run_id).toPandas()  # one row per move
    if moves.empty:
        return None, None
    return migration_matrix(moves), str(moves["previous_run_id"].iloc[0])


def read_sample(
    fitted: PipelineModel, model_features: Sequence[str], labels: DataFrame, features: DataFrame, cfg: Config
) -> pd.DataFrame:
    """The bounded, stratified sample of placed customers with their model-space
    vectors, sorted by segment and customer (at most k x sample_per_segment rows)."""
    per_segment, seed = cfg.report.sample_per_segment, cfg.segment.seed
    categorical = [f for f in model_features if cfg.attributes.get(f) == "categorical"]
    sampled = labels.where(F.col(c.SEGMENT_ID) >= 0).transform(stratified_sample(per_segment, seed))
    sample = (
        sample_vectors(fitted, features, sampled, preprocess.model_inputs(model_features, categorical))
        .toPandas()  # the bounded sample
        .sort_values([c.SEGMENT_ID, c.CUSTOMER_ID])
        .reset_index(drop=True)
    )
    log.info("sample: %d customers in %d segments (at most %d per segment, seed %d)", len(sample),
             sample[c.SEGMENT_ID].nunique(), per_segment, seed)  # fmt: skip
    return sample


def run_report(spark: SparkSession, cfg: Config, run_id: str | None = None) -> ReportResult:
    """Render the report of the current labels' run (``run_id``, when given, must be it)."""
    started = time.perf_counter()
    labels = _read(spark, cfg, cfg.tables.labels)
    info_row = _current_run(labels, run_id)
    fitted, record = segment_job.latest_model(spark, cfg, info_row[c.MODEL_VERSION])
    info = run_info(info_row, record)
    log.info("report of run %s, model %s", info.run_id, info.model_version)
    features = read_features(spark, cfg)  # clv and p_alive may be model features

    sweep = read_sweep(spark, cfg, info.model_version)
    segments, per_feature = read_profiles(spark, cfg, info.run_id)
    migrations, previous_run_id = read_migrations(spark, cfg, info.run_id)
    sample = read_sample(fitted, info.features, labels, features, cfg)

    names = {int(r[c.SEGMENT_ID]): str(r["segment_name"]) for r in segments.to_dict("records")}
    chosen = sweep[sweep[c.K] == info.k]["silhouette"]
    spark_silhouette = float(chosen.iloc[0]) if len(chosen) else None
    plots, notes = sample_plots(sample, names, spark_silhouette, cfg.report.tsne, cfg.segment.seed)
    z = rank_matrix(per_feature, profiles.profile_features(cfg, sorted(set(per_feature["feature"]))))
    more_plots, more_notes = table_plots(sweep, info.k, z, segments, names)
    content = ReportContent(
        info=info,
        segments=segments,
        sweep=sweep,
        rfm=read_rfm(labels, features, cfg),
        migrations=migrations,
        previous_run_id=previous_run_id,
        sample_size=len(sample),
        sample_per_segment=cfg.report.sample_per_segment,
        notes={**notes, **more_notes},
    )
    result = write(report_folder(cfg.report.dir, info.run_id), content, {**plots, **more_plots})
    log.info("report of run %s written in %.1fs: %s", info.run_id, time.perf_counter() - started, result.path)
    return result


def write(folder: Path, content: ReportContent, plots: Mapping[str, bytes]) -> ReportResult:
    """report.html and one PNG per plot into ``folder`` (created; files replaced, and
    the PNG of a plot this rendering skipped removed, so none is left from an earlier one)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(set(PLOT_TITLES) - set(plots)):
        (folder / f"{name}.png").unlink(missing_ok=True)
    paths = {}
    for name, png in sorted(plots.items()):
        path = folder / f"{name}.png"
        path.write_bytes(png)
        paths[name] = str(path)
    page = folder / "report.html"
    page.write_text(render_html(content, plots), encoding="utf-8")
    log.info("wrote %s and %d plots", page, len(paths))
    return ReportResult(path=str(page), plots=paths, run_id=content.info.run_id)


# --------------------------------------------------------------------------- the run's summary


@dataclass(frozen=True)
class RunSummary:
    """What the command line prints at the end of a run: the segments (k + 1 rows), the
    chosen k's row of the sweep, and the stability refits' mean ARI per kind."""

    segments: pd.DataFrame
    chosen: Row | None
    stability: list[Row] | None


def run_summary(spark: SparkSession, cfg: Config, run_id: str, columns: Sequence[str]) -> RunSummary:
    profile = io.read(spark, io.table_ref(cfg.storage, cfg.tables.segment_profiles))
    segments = profile.select(*columns).orderBy(c.SEGMENT_ID).toPandas()  # k + 1 rows
    chosen = None
    sweep_ref = io.table_ref(cfg.storage, cfg.tables.k_sweep)
    if io.exists(spark, sweep_ref):
        chosen = io.read(spark, sweep_ref).where(F.col(c.RUN_ID) == run_id).where(F.col("chosen")).first()
    stability = None
    stability_ref = io.table_ref(cfg.storage, cfg.tables.stability)
    if io.exists(spark, stability_ref):
        stability = sorted(
            io.read(spark, stability_ref)
            .where(F.col(c.RUN_ID) == run_id)
            .groupBy("kind")
            .agg(F.avg("ari").alias("ari"), F.count(F.lit(1)).alias("n"))
            .collect()
        )
    return RunSummary(segments, chosen, stability)
