"""What a segment run records beside its labels, as rows for the lake's tables: the k
sweep with the reason for each k, the model's record, and the migration counts."""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from custseg import columns as c
from custseg.config import Config
from custseg.segment import selection
from custseg.segment.model import SegmentResult

log = logging.getLogger(__name__)


SWEEP_SCHEMA = (
    "run_id STRING, as_of_date DATE, algorithm STRING, k INT, wcss DOUBLE, silhouette DOUBLE, "
    "calinski_harabasz DOUBLE, davies_bouldin DOUBLE, chosen BOOLEAN, rule STRING, model_version STRING, "
    "customers LONG, smallest_share DOUBLE, stability DOUBLE, structure STRING, reason STRING"
)


def sweep_frame(spark: SparkSession, result: SegmentResult, cfg: Config, run_id: str, as_of) -> DataFrame:
    """One row per k of the sweep, with why it was chosen or not (``reason``)."""
    choice = result.choice or selection.fixed(result.k)
    rows = [
        (run_id, as_of, cfg.segment.algorithm, p.k, p.wcss, p.silhouette, p.calinski_harabasz, p.davies_bouldin,
         p.k == result.k, choice.rule, result.model_version, result.sweep_customers or result.customers,
         p.smallest_share, choice.stability.get(p.k), choice.structure,
         choice.reason if p.k == result.k else choice.verdicts.get(p.k))
        for p in result.sweep
    ]  # fmt: skip
    return spark.createDataFrame(rows, SWEEP_SCHEMA)


MODEL_SCHEMA = (
    "run_id STRING, model_version STRING, model_path STRING, algorithm STRING, as_of_date DATE, "
    "fitted_at TIMESTAMP, k INT, selection STRING, features ARRAY<STRING>, log1p ARRAY<STRING>, "
    "caps MAP<STRING, DOUBLE>, pca_components INT, explained_variance ARRAY<DOUBLE>, customers LONG, "
    "wcss DOUBLE, silhouette DOUBLE, calinski_harabasz DOUBLE, davies_bouldin DOUBLE, "
    "first_purchase_date DATE, last_purchase_date DATE, "
    "centres ARRAY<STRUCT<segment_id: INT, centre: ARRAY<DOUBLE>>>, matched_to STRING, selection_reason STRING, "
    "restarts INT"
)


def model_record(
    spark: SparkSession, result: SegmentResult, cfg: Config, run_id: str, as_of, fitted_at, data_range
) -> DataFrame:
    """One row describing a fitted model: what it was fitted on, how, and how well;
    the centres let the next retrain keep its segment ids."""
    chosen = result.chosen
    seg = cfg.segment
    row = (
        run_id, result.model_version, result.model_path, seg.algorithm, as_of, fitted_at, result.k,
        result.choice.rule if result.choice else "config", list(seg.features),
        [f for f in cfg.features.log1p if f in seg.features],
        result.caps, len(result.explained_variance) or None, result.explained_variance, result.customers,
        chosen.wcss, chosen.silhouette, chosen.calinski_harabasz, chosen.davies_bouldin, *data_range,
        [(sid, centre) for sid, centre in sorted(result.centres.items())], result.matched_to,
        result.choice.reason if result.choice else None, seg.restarts,
    )  # fmt: skip
    return spark.createDataFrame([row], MODEL_SCHEMA)


def data_range(features: DataFrame) -> tuple:
    """The first and last purchase the features cover (None for customer tables)."""
    if c.FIRST_PURCHASE not in features.columns:
        return (None, None)
    row = features.agg(F.min(c.FIRST_PURCHASE).alias("a"), F.max(c.LAST_PURCHASE).alias("b")).first()
    return (row["a"], row["b"])


MIGRATION_SCHEMA = (
    "run_id STRING, previous_run_id STRING, from_segment INT, to_segment INT, customers LONG, share_of_from DOUBLE"
)
