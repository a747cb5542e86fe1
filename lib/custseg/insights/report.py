"""What the report shows, from the tables the other jobs wrote: the RFM cross-table,
the migration and percentile-rank matrices, and the bounded sample of customers whose
model-space vectors feed the per-customer silhouettes and the 2-D scatters.

Spark does the work on the full tables; the driver gets only small aggregates (one row
per k, per segment, per segment and feature, per RFM segment and segment, per move)
and one bounded sample: at most ``report.sample_per_segment`` customers per segment,
chosen by a seeded hash of the customer id. The same tables give the same page."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Number
from typing import Any, Literal

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, Row, Window
from pyspark.sql import functions as F

from custseg import columns as c
from custseg.segment import preprocess

log = logging.getLogger(__name__)


RFM_SEGMENT = "rfm_segment"


CUSTOMERS = "customers"


VECTOR_ARRAY = "vector"


TOTAL = "Total"


SWEEP_METRICS = ("wcss", "silhouette", "calinski_harabasz", "davies_bouldin")


SILHOUETTE_METRIC: Literal["sqeuclidean", "euclidean"] = "sqeuclidean"  # as Spark's ClusteringEvaluator


MIN_TSNE_POINTS = 6  # t-SNE needs its perplexity (at least 5 here) below the number of points


@dataclass(frozen=True)
class ReportResult:
    path: str  # the report.html
    plots: dict[str, str]  # plot name -> PNG path
    run_id: str  # the run reported on: the current labels' run


@dataclass(frozen=True)
class RunInfo:
    """The header of the report: which labels, which model, how k was chosen."""

    run_id: str
    model_version: str
    as_of_date: dt.date | None
    algorithm: str
    k: int
    rule: str
    features: list[str]
    customers: int | None  # customers the model was fitted on
    explained_variance: list[float] = field(default_factory=list)
    reason: str | None = None  # why this k, in words (segment_models.selection_reason)


@dataclass(frozen=True)
class ReportContent:
    """Everything the page shows besides the plots: small pandas frames and notes."""

    info: RunInfo
    segments: pd.DataFrame  # segment_profiles rows: segment_id, segment_name, customers, shares, ...
    sweep: pd.DataFrame  # k_sweep rows of the model: k, wcss, silhouette, ..., chosen
    rfm: pd.DataFrame | None  # rfm_matrix(): RFM segment x segment counts; None without RFM scores
    migrations: pd.DataFrame | None  # migration_matrix(); None on the first run
    previous_run_id: str | None
    sample_size: int
    sample_per_segment: int
    notes: dict[str, str] = field(default_factory=dict)  # plot name -> why it is missing


def rfm_cross_table(labelled: DataFrame) -> DataFrame:
    """Labelled customers -> customers per (RFM segment, segment) pair that occurs.

    Input columns: segment_id, rfm_segment.
    Output columns: rfm_segment, segment_id, customers (long).
    """
    return (
        labelled.groupBy(RFM_SEGMENT, c.SEGMENT_ID)
        .agg(F.count(F.lit(1)).alias(CUSTOMERS))
        .select(RFM_SEGMENT, c.SEGMENT_ID, CUSTOMERS)
    )


def _uniform(seed: int) -> F.Column:
    """A number in [0, 1) fixed by the customer id and the seed: the same customers are
    drawn whatever the partitioning, the run or the cluster."""
    modulus = 2_147_483_647
    return F.pmod(F.xxhash64(F.col(c.CUSTOMER_ID), F.lit(seed)), F.lit(modulus)) / F.lit(float(modulus))


def stratified_sample(per_segment: int, seed: int) -> Callable[[DataFrame], DataFrame]:
    """Labelled customers -> at most ``per_segment`` customers of every segment: those
    with the smallest seeded hash of their customer id (ties: the smaller id), so the
    same seed draws the same customers every time.

    A window over whole segments would sort every segment in one task; instead each
    segment is first thinned by the hash to a margin above the cap (the segment sizes
    are one small aggregate), and only the survivors are ranked. Because thinning and
    ranking use the same number, the result is the exact per-segment minimum unless
    fewer than ``per_segment`` survive the thinning (about five standard deviations
    below its mean), when the segment is merely a little short.

    Input columns: customer_id, segment_id, anything else.
    Output columns: the input's.
    """
    if per_segment < 1:
        raise ValueError(f"report.sample_per_segment must be at least 1, got {per_segment}")
    margin = per_segment + 5 * math.sqrt(per_segment) + 10

    def transform(labelled: DataFrame) -> DataFrame:
        sizes = labelled.groupBy(c.SEGMENT_ID).agg(F.count(F.lit(1)).alias("_n"))
        ranked = Window.partitionBy(c.SEGMENT_ID).orderBy("_u", c.CUSTOMER_ID)
        ranked = ranked.rowsBetween(Window.unboundedPreceding, Window.currentRow)
        return (
            labelled.join(F.broadcast(sizes), on=c.SEGMENT_ID, how="inner")
            .withColumn("_u", _uniform(seed))
            .where(F.col("_u") * F.col("_n") < F.lit(margin))
            .withColumn("_rank", F.row_number().over(ranked))
            .where(F.col("_rank") <= per_segment)
            .select(*labelled.columns)
        )

    return transform


def model_space(fitted: PipelineModel) -> PipelineModel:
    """The saved pipeline up to the clusterer: features in, the vectors it clusters out
    (the last two stages are the clusterer and the segment renumbering)."""
    return PipelineModel(stages=fitted.stages[:-2])


def sample_vectors(
    fitted: PipelineModel, features: DataFrame, sample: DataFrame, inputs: Callable[[DataFrame], DataFrame]
) -> DataFrame:
    """The sampled customers' model-space vectors, as arrays of doubles.

    Input columns: ``features``: the features table; ``sample``: customer_id, segment_id.
    Output columns: customer_id, segment_id, vector (array<double>).
    """
    prepared = features.transform(inputs).join(
        sample.select(c.CUSTOMER_ID, c.SEGMENT_ID), on=c.CUSTOMER_ID, how="inner"
    )
    return (
        model_space(fitted)
        .transform(prepared)
        .select(c.CUSTOMER_ID, c.SEGMENT_ID, vector_to_array(F.col(preprocess.VECTOR)).alias(VECTOR_ARRAY))
    )


def silhouette_samples(
    vectors: np.ndarray, labels: np.ndarray, metric: Literal["sqeuclidean", "euclidean"] = SILHOUETTE_METRIC
) -> np.ndarray:
    """Each point's silhouette (b - a) / max(a, b): a is its mean distance to the other
    points of its cluster, b the smallest mean distance to another cluster's points; 0
    for a point alone in its cluster. ``sqeuclidean`` (the default) is the definition
    Spark's ClusteringEvaluator averages; ``euclidean`` is scikit-learn's default.
    Distances are computed in row blocks, so memory stays bounded for large samples."""
    x = np.asarray(vectors, dtype=float)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError("vectors must be a 2-D array with one row per label")
    clusters, index = np.unique(np.asarray(labels), return_inverse=True)
    if len(clusters) < 2:
        raise ValueError("the silhouette needs at least two clusters")
    n = len(x)
    member = np.zeros((n, len(clusters)))
    member[np.arange(n), index] = 1.0
    sizes = member.sum(axis=0)
    block = max(1, 2_000_000 // max(1, n * x.shape[1]))
    sums = np.empty((n, len(clusters)))
    for start in range(0, n, block):
        diff = x[start : start + block, None, :] - x[None, :, :]
        distances = np.einsum("ijk,ijk->ij", diff, diff)
        if metric == "euclidean":
            distances = np.sqrt(distances)
        sums[start : start + block] = distances @ member
    own = sizes[index]
    a = sums[np.arange(n), index] / np.maximum(own - 1, 1)
    means = sums / sizes
    means[np.arange(n), index] = np.inf
    b = means.min(axis=1)
    largest = np.maximum(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(largest > 0, (b - a) / largest, 0.0)
    return np.where(own > 1, s, 0.0)


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """The first two principal components of ``vectors`` (centred here) and the share
    of the variance each explains. Signs are fixed (the largest loading positive), so
    the picture does not flip between runs."""
    centred = vectors - vectors.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    axes = axes[:2]
    axes = axes * np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    variance = singular**2
    total = variance.sum() or 1.0
    return centred @ axes.T, [float(v / total) for v in variance[:2]]


def tsne_2d(vectors: np.ndarray, seed: int) -> np.ndarray | None:
    """A seeded 2-D t-SNE embedding, or None when scikit-learn is not installed (it is
    an optional dependency of the report)."""
    try:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits  # a dependency of scikit-learn
    except ImportError:
        return None
    perplexity = min(30.0, max(5.0, (len(vectors) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # One thread: the driver shares its cores with the JVM, and t-SNE's OpenMP threads
    # spin while they wait, so on busy cores more threads were ten times slower.
    with threadpool_limits(limits=1):
        return tsne.fit_transform(vectors)


def segment_order(ids: Sequence[Any]) -> list[Any]:
    """Segment ids ascending, the unsegmented (-1) and any non-id label last."""

    def key(v: Any) -> tuple[int, float, str]:
        if isinstance(v, Number) and not pd.isna(v):
            return (1 if v < 0 else 0, float(v), "")
        return (2, 0.0, str(v))

    return sorted(dict.fromkeys(ids), key=key)


def _matrix(
    counts: pd.DataFrame, rows: str, cols: str, row_order: Sequence[str], col_order: Sequence[str], index_name: str
) -> pd.DataFrame:
    """Long counts (labels already strings) -> rows x cols with zeros for absent pairs,
    plus a Total column and row."""
    matrix = (
        counts.pivot_table(index=rows, columns=cols, values=CUSTOMERS, aggfunc="sum", fill_value=0)
        .reindex(index=list(row_order), columns=list(col_order), fill_value=0)
        .astype("int64")
    )
    matrix[TOTAL] = matrix.sum(axis=1)
    matrix.loc[TOTAL] = matrix.sum(axis=0)
    matrix.index.name = index_name
    matrix.columns.name = None
    return matrix


def _segment_text(value: Any, missing: str) -> str:
    return missing if value is None or pd.isna(value) else str(int(value))


def _segment_labels(values: Sequence[Any], missing: str) -> list[str]:
    """The distinct segment ids of ``values`` as text, in segment order, then
    ``missing`` when a value is null."""
    present = [int(v) for v in values if v is not None and not pd.isna(v)]
    has_missing = len(present) < len(values)
    return [str(s) for s in segment_order(present)] + ([missing] if has_missing else [])


def rfm_matrix(counts: pd.DataFrame, rfm_names: Sequence[str] = ()) -> pd.DataFrame:
    """``rfm_cross_table`` rows -> RFM segment x segment id. Rows follow ``rfm_names``
    (the configured rule order), then any other name alphabetically; columns are
    segment ids ascending with -1 last."""
    present = set(counts[RFM_SEGMENT].fillna("(none)"))
    rows = [n for n in rfm_names if n in present] + sorted(present - set(rfm_names))
    cols = _segment_labels(counts[c.SEGMENT_ID].tolist(), "?")
    long = counts.assign(
        **{
            RFM_SEGMENT: counts[RFM_SEGMENT].fillna("(none)"),
            c.SEGMENT_ID: [_segment_text(v, "?") for v in counts[c.SEGMENT_ID]],
        }
    )
    return _matrix(long, RFM_SEGMENT, c.SEGMENT_ID, rows, cols, "RFM segment")


def migration_matrix(moves: pd.DataFrame) -> pd.DataFrame:
    """segment_migrations rows of one run -> previous segment (rows; "new" for customers
    not labelled before) x current segment (columns; "gone" for customers no longer
    labelled)."""
    long = moves.assign(
        from_segment=[_segment_text(v, "new") for v in moves["from_segment"]],
        to_segment=[_segment_text(v, "gone") for v in moves["to_segment"]],
    )
    rows = _segment_labels(moves["from_segment"].tolist(), "new")
    cols = _segment_labels(moves["to_segment"].tolist(), "gone")
    return _matrix(long, "from_segment", "to_segment", rows, cols, "from \\ to")


def rank_matrix(feature_profiles: pd.DataFrame, feature_order: Sequence[str] = ()) -> pd.DataFrame:
    """segment_feature_profiles rows -> segment id (placed segments only) x feature: the
    percentile rank of the segment's median among all placed customers, from 0 to 100
    (50: the median customer is typical); features in ``feature_order`` first, then the
    rest alphabetically. Not the z-scores of means: on skewed spend a few big spenders
    move a mean without saying anything about the segment's typical customer."""
    placed = feature_profiles[feature_profiles[c.SEGMENT_ID] >= 0].assign(
        _rank=lambda df: 100 * df["percentile_rank"].astype(float)
    )
    matrix = placed.pivot_table(index=c.SEGMENT_ID, columns="feature", values="_rank", aggfunc="first", dropna=False)
    names = list(matrix.columns)
    order = [*dict.fromkeys(f for f in feature_order if f in names), *sorted(set(names) - set(feature_order))]
    return matrix.reindex(index=segment_order(matrix.index.tolist()), columns=order)


def run_info(current: Row, record: Row) -> RunInfo:
    """The header, from a labels row and the model's record."""
    return RunInfo(
        run_id=current[c.RUN_ID],
        model_version=current[c.MODEL_VERSION],
        as_of_date=current[c.AS_OF_DATE],
        algorithm=record["algorithm"],
        k=int(record[c.K]),
        rule=record["selection"],
        features=list(record["features"]),
        customers=record["customers"],
        explained_variance=list(record["explained_variance"] or []),
        reason=record.asDict().get("selection_reason"),  # absent from records of older versions
    )
