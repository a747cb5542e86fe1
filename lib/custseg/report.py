"""The report job: one self-contained HTML page per run, with its plots beside it.

``run`` reads only the Delta tables the other jobs wrote (the k sweep, the model record,
the labels, the features, both segment profile tables and the migrations) plus the
saved PipelineModel, and writes ``<report.dir>/<run_id>/report.html`` and one PNG per
plot. The page embeds the PNGs as data URIs, so it can be mailed or archived alone.

Spark does the work on the full tables; the driver gets only small aggregates (one row
per k, per segment, per segment and feature, per RFM segment and segment, per move)
and one bounded sample: at most ``report.sample_per_segment`` customers per segment,
chosen by a seeded hash of the customer id, whose model-space vectors feed the
per-customer silhouettes and the 2-D scatters. The same tables give the same page.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from numbers import Number
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io, model, profiles
from custseg.config import Config

log = logging.getLogger(__name__)

RFM_SEGMENT = "rfm_segment"
CUSTOMERS = "customers"
VECTOR_ARRAY = "vector"
TOTAL = "Total"
SWEEP_METRICS = ("wcss", "silhouette", "calinski_harabasz", "davies_bouldin")
SILHOUETTE_METRIC: Literal["sqeuclidean", "euclidean"] = "sqeuclidean"  # as Spark's ClusteringEvaluator
MIN_TSNE_POINTS = 6  # t-SNE needs its perplexity (at least 5 here) below the number of points

RULES = {
    "guarded": "the sweep's silhouette, then a minimum segment share and per-k stability (see the reason)",
    "silhouette": "the smallest k whose silhouette is within segment.silhouette_tolerance of the best",
    "elbow": "the knee of the WCSS curve (the point farthest below the chord)",
    "config": "fixed in the configuration (segment.k)",
}


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


# --------------------------------------------------------------------------- Spark: small tables and the sample


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
        .select(c.CUSTOMER_ID, c.SEGMENT_ID, vector_to_array(F.col(model.VECTOR)).alias(VECTOR_ARRAY))
    )


# --------------------------------------------------------------------------- numpy: silhouettes and projections


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


# --------------------------------------------------------------------------- pandas: the tables on the page


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


# --------------------------------------------------------------------------- plots (bytes of PNG files)


def _colour(segment: int) -> tuple[float, float, float, float]:
    return (0.55, 0.55, 0.55, 1.0) if segment < 0 else colormaps["tab10"](segment % 10)


def png_bytes(fig: Figure) -> bytes:
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    fig.clear()
    return buffer.getvalue()


def plot_k_sweep(sweep: pd.DataFrame, chosen_k: int) -> bytes:
    """WCSS (the elbow curve), silhouette, Calinski-Harabasz and Davies-Bouldin against
    k, the chosen k marked on each."""
    titles = {
        "wcss": "WCSS (elbow curve)",
        "silhouette": "Silhouette (squared Euclidean; higher is better)",
        "calinski_harabasz": "Calinski-Harabasz (higher is better)",
        "davies_bouldin": "Davies-Bouldin (lower is better)",
    }
    fig = Figure(figsize=(10, 7), layout="constrained")
    fig.suptitle(f"k sweep: chosen k = {chosen_k}")
    for ax, metric in zip(fig.subplots(2, 2).flat, SWEEP_METRICS, strict=True):
        ax.plot(sweep["k"], sweep[metric], marker="o", color="tab:blue")
        ax.axvline(chosen_k, color="tab:red", linestyle="--", linewidth=1)
        chosen = sweep[sweep["k"] == chosen_k]
        ax.plot(chosen["k"], chosen[metric], marker="*", markersize=16, color="tab:red", linestyle="none",
                label=f"chosen k = {chosen_k}")  # fmt: skip
        ax.set_title(titles[metric])
        ax.set_xlabel("k")
        ax.set_xticks(sweep["k"].tolist())
        ax.legend(loc="best", fontsize="small")
    return png_bytes(fig)


def plot_silhouette(
    values: np.ndarray, labels: np.ndarray, names: Mapping[int, str], spark_mean: float | None
) -> bytes:
    """The classic silhouette plot: each segment's per-customer silhouettes, sorted, as
    one band; the sample's mean and Spark's mean over all customers as lines."""
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax = fig.subplots()
    bottom = 0
    for segment in segment_order(np.unique(labels).tolist()):
        band = np.sort(values[labels == segment])
        ax.fill_betweenx(np.arange(bottom, bottom + len(band)), 0, band, color=_colour(segment), alpha=0.8)
        ax.text(-0.02, bottom + len(band) / 2, f"{segment}: {names.get(segment, '')}", ha="right", va="center",
                fontsize="small")  # fmt: skip
        bottom += len(band) + 10
    ax.axvline(float(values.mean()), color="black", linestyle="--", label=f"sample mean {values.mean():.3f}")
    if spark_mean is not None and not math.isnan(spark_mean):
        ax.axvline(spark_mean, color="tab:red", linestyle=":", label=f"Spark, all customers at fit {spark_mean:.3f}")
    ax.set_yticks([])
    ax.set_xlim(min(-0.1, float(values.min()) - 0.05), 1.0)
    ax.set_xlabel("silhouette")
    ax.set_title(f"Silhouette per customer (squared Euclidean, as Spark computes it); sample of {len(values)}")
    ax.legend(loc="lower right", fontsize="small")
    return png_bytes(fig)


def plot_scatter(
    coords: np.ndarray, labels: np.ndarray, names: Mapping[int, str], title: str, axes: tuple[str, str]
) -> bytes:
    """A 2-D scatter of the sample, one colour per segment."""
    fig = Figure(figsize=(8, 6.5), layout="constrained")
    ax = fig.subplots()
    for segment in segment_order(np.unique(labels).tolist()):
        mine = coords[labels == segment]
        ax.scatter(mine[:, 0], mine[:, 1], s=12, alpha=0.7, color=_colour(segment),
                   label=f"{segment}: {names.get(segment, '')} ({len(mine)})")  # fmt: skip
    ax.set_title(title)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.legend(loc="best", fontsize="small", markerscale=2)
    return png_bytes(fig)


def plot_feature_heatmap(ranks: pd.DataFrame, names: Mapping[int, str]) -> bytes:
    """Segment x feature percentile ranks of the segments' medians (``rank_matrix``), on
    a diverging scale centred on the typical customer (50)."""
    fig = Figure(figsize=(max(6, 0.9 * ranks.shape[1] + 3), max(3, 0.6 * ranks.shape[0] + 2)), layout="constrained")
    ax = fig.subplots()
    values = ranks.to_numpy(dtype=float)
    image = ax.imshow(values, cmap="RdBu_r", vmin=0.0, vmax=100.0, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize="small",
                    color="white" if abs(v - 50) > 30 else "black")  # fmt: skip
    ax.set_xticks(range(ranks.shape[1]), [str(f).replace("_", " ") for f in ranks.columns], rotation=30, ha="right")
    ax.set_yticks(range(ranks.shape[0]), [f"{s}: {names.get(s, '')}" for s in ranks.index])
    ax.set_title("Where each segment's median customer sits among all customers (percentile)")
    fig.colorbar(image, ax=ax, label="percentile rank of the median")
    return png_bytes(fig)


def plot_segment_sizes(segments: pd.DataFrame) -> bytes:
    """Per segment: its share of customers and of revenue side by side, with the
    number of customers on top."""
    ordered = segments.set_index(c.SEGMENT_ID).loc[segment_order(segments[c.SEGMENT_ID].tolist())]
    x = np.arange(len(ordered))
    fig = Figure(figsize=(max(7, 1.3 * len(ordered) + 2), 5.5), layout="constrained")
    ax = fig.subplots()
    customers = ax.bar(x - 0.2, 100 * ordered["customer_share"].fillna(0.0), 0.4, label="share of customers",
                       color=[_colour(s) for s in ordered.index])  # fmt: skip
    ax.bar(x + 0.2, 100 * ordered["revenue_share"].fillna(0.0), 0.4, label="share of revenue", color="none",
           edgecolor=[_colour(s) for s in ordered.index], hatch="//")  # fmt: skip
    ax.bar_label(customers, labels=[f"{n:,}" for n in ordered[CUSTOMERS]], fontsize="small")
    ax.set_xticks(x, [f"{s}\n{name}" for s, name in zip(ordered.index, ordered["segment_name"], strict=True)],
                  fontsize="small")  # fmt: skip
    ax.set_ylabel("%")
    ax.set_title("Segment sizes (customers on top) and revenue shares")
    ax.legend(loc="best", fontsize="small")
    return png_bytes(fig)


# --------------------------------------------------------------------------- HTML


def fmt_text(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def fmt_count(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{int(value):,}"


def fmt_number(value: Any, digits: int = 2) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value):,.{digits}f}"


def fmt_share(value: Any) -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value):.1%}"


SEGMENT_COLUMNS: dict[str, tuple[str, Callable[[Any], str]]] = {
    c.SEGMENT_ID: ("Segment", str),
    "segment_name": ("Name", fmt_text),
    "description": ("Description", fmt_text),
    CUSTOMERS: ("Customers", fmt_count),
    "customer_share": ("Share of customers", fmt_share),
    "revenue": ("Revenue", fmt_number),
    "revenue_share": ("Share of revenue", fmt_share),
    "revenue_index": ("Revenue index", lambda v: fmt_number(v, 0)),
    "dominant_rfm_segment": ("Dominant RFM segment", fmt_text),
    "dominant_rfm_share": ("its share", fmt_share),
}
SWEEP_COLUMNS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "k": ("k", str),
    "wcss": ("WCSS", fmt_number),
    "silhouette": ("Silhouette", lambda v: fmt_number(v, 4)),
    "calinski_harabasz": ("Calinski-Harabasz", fmt_number),
    "davies_bouldin": ("Davies-Bouldin", lambda v: fmt_number(v, 4)),
    "smallest_share": ("Smallest segment", fmt_share),
    "stability": ("Bootstrap Jaccard (lowest)", lambda v: fmt_number(v, 2)),
    "chosen": ("Chosen", lambda v: "✔" if v else ""),
    "reason": ("Verdict", fmt_text),
}

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
thead th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody th { text-align: left; font-weight: normal; background: #fafafa; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
.note { color: #666; font-style: italic; }
"""


def html_table(table_id: str, frame: pd.DataFrame, formats: Mapping[str, Callable[[Any], str]] | None = None) -> str:
    """``frame`` as an HTML table (every header and cell escaped); numbers right-aligned.
    ``formats`` maps a column to its formatter; the default is ``str``."""
    formats = formats or {}
    head = "".join(f"<th>{html.escape(str(col))}</th>" for col in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for col, value in zip(frame.columns, row, strict=True):
            text = html.escape(formats.get(col, str)(value))
            numeric = isinstance(value, Number) and not isinstance(value, bool)
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table id="{html.escape(table_id)}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def matrix_table(table_id: str, matrix: pd.DataFrame) -> str:
    """A count matrix (index: row labels) as an HTML table with counts formatted."""
    frame = matrix.reset_index()
    return html_table(table_id, frame, {col: fmt_count for col in matrix.columns})


def _renamed(frame: pd.DataFrame, columns: Mapping[str, tuple[str, Callable[[Any], str]]]) -> tuple[pd.DataFrame, dict]:
    present = [col for col in columns if col in frame.columns]
    shown = frame[present].rename(columns={col: columns[col][0] for col in present})
    return shown, {columns[col][0]: columns[col][1] for col in present}


def _image(name: str, png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="plot-{html.escape(name)}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _header(info: RunInfo) -> str:
    rule = RULES.get(info.rule, info.rule)
    variance = (
        f"{len(info.explained_variance)} principal components explaining {fmt_share(sum(info.explained_variance))}"
        if info.explained_variance
        else "no PCA"
    )
    rows = [
        ("Run", info.run_id),
        ("Model version", info.model_version),
        ("As-of date", info.as_of_date.isoformat() if info.as_of_date else "–"),
        ("Algorithm", info.algorithm),
        ("k", str(info.k)),
        ("k chosen by", f"{info.rule}: {rule}"),
        *([("Why this k", info.reason)] if info.reason else []),
        ("Customers in the fit", fmt_count(info.customers)),
        ("Model features", ", ".join(info.features)),
        ("Model space", variance),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table id="run"><tbody>{body}</tbody></table>'


PLOT_TITLES = {
    "segment_sizes": "Segment sizes and revenue shares",
    "k_sweep": "k sweep: WCSS, silhouette, Calinski-Harabasz and Davies-Bouldin against k",
    "silhouette": "Per-customer silhouettes by segment",
    "pca": "PCA scatter of the sample",
    "tsne": "t-SNE scatter of the sample",
    "feature_heatmap": "Segment medians as percentiles of all customers",
}


def render_html(content: ReportContent, plots: Mapping[str, bytes]) -> str:
    """The whole page: header, segment table, then each section with its plot (or a
    note saying why there is none) and table. Pure: the same content gives the same text."""
    info = content.info

    def plot(name: str) -> str:
        if name in plots:
            return _image(name, plots[name], PLOT_TITLES.get(name, name))
        return _note(content.notes.get(name, f"{PLOT_TITLES.get(name, name)}: not available."))

    segments, segment_formats = _renamed(
        content.segments.set_index(c.SEGMENT_ID, drop=False)
        .loc[segment_order(content.segments[c.SEGMENT_ID].tolist())]
        .reset_index(drop=True),
        SEGMENT_COLUMNS,
    )
    sweep, sweep_formats = _renamed(content.sweep, SWEEP_COLUMNS)
    if content.migrations is not None:
        since = (
            f"Customers by previous segment (rows) and current segment (columns), since run {content.previous_run_id}."
        )
        migrations = _note(since) + matrix_table("migrations", content.migrations)
    else:
        migrations = '<p id="first-run">This is the first run: there are no previous labels to compare with.</p>'
    rfm = (
        matrix_table("rfm-cross", content.rfm)
        if content.rfm is not None
        else _note("The features table has no RFM segments (no transaction sources).")
    )
    sample = (
        f"The silhouettes and the scatters below use a sample of {content.sample_size:,} customers, at most "
        f"{content.sample_per_segment:,} per segment, drawn by a seeded hash of the customer id."
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Customer segments: run {html.escape(info.run_id)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Customer segments: run {html.escape(info.run_id)}</h1>",
        _header(info),
        "<h2>Segments</h2>",
        html_table("segments", segments, segment_formats),
        "<h2>1. Choosing k</h2>",
        plot("k_sweep"),
        html_table("k-sweep", sweep, sweep_formats),
        "<h2>2. Silhouette per segment</h2>",
        _note(sample),
        plot("silhouette"),
        "<h2>3. The segments in two dimensions</h2>",
        plot("pca"),
        plot("tsne"),
        "<h2>4. Segment profiles</h2>",
        plot("feature_heatmap"),
        plot("segment_sizes"),
        "<h2>5. RFM segment × segment</h2>",
        _note("Customers per RFM segment (rows) and segment (columns); -1: not placed by the model."),
        rfm,
        "<h2>6. Migration since the previous run</h2>",
        migrations,
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- the job


def _timed(name: str, make: Callable[[], bytes]) -> bytes:
    started = time.perf_counter()
    png = make()
    log.info("plot %s: %d bytes in %.2fs", name, len(png), time.perf_counter() - started)
    return png


def sample_plots(
    sample: pd.DataFrame, names: Mapping[int, str], spark_silhouette: float | None, tsne: bool, seed: int
) -> tuple[dict[str, bytes], dict[str, str]]:
    """The silhouette, PCA and t-SNE plots of the sample (customer_id, segment_id,
    vector), or notes saying why one is missing."""
    plots: dict[str, bytes] = {}
    notes: dict[str, str] = {}
    if sample.empty:
        skipped = "skipped: no placed customer in the sample."
        return plots, {
            "silhouette": f"Silhouettes {skipped}",
            "pca": f"PCA scatter {skipped}",
            "tsne": f"t-SNE {skipped}",
        }
    labels = sample[c.SEGMENT_ID].to_numpy()
    vectors = np.array(sample[VECTOR_ARRAY].tolist(), dtype=float).reshape(len(sample), -1)
    if len(np.unique(labels)) >= 2:
        values = silhouette_samples(vectors, labels)
        plots["silhouette"] = _timed("silhouette", lambda: plot_silhouette(values, labels, names, spark_silhouette))
    else:
        notes["silhouette"] = "Silhouettes skipped: the sample has fewer than two segments."
    dims = vectors.shape[1]
    if dims >= 2 and len(vectors) >= 2:
        coords, shares = pca_2d(vectors)
        axes = (f"PC1 ({fmt_share(shares[0])} of the variance)", f"PC2 ({fmt_share(shares[1])})")
        title = f"First two principal components of the model space ({dims} dims); sample of {len(vectors)}"
        plots["pca"] = _timed("pca", lambda: plot_scatter(coords, labels, names, title, axes))
    else:
        notes["pca"] = f"PCA scatter skipped: the model space has {dims} dimension(s), fewer than 2."
    if not tsne:
        notes["tsne"] = "t-SNE skipped: report.tsne is false."
    elif len(vectors) < MIN_TSNE_POINTS:
        notes["tsne"] = f"t-SNE skipped: only {len(vectors)} customers in the sample."
    else:
        started = time.perf_counter()
        embedded = tsne_2d(vectors, seed)
        if embedded is None:
            notes["tsne"] = "t-SNE skipped: scikit-learn not installed."
        else:
            log.info("t-SNE of %d customers in %.1fs", len(vectors), time.perf_counter() - started)
            title = f"t-SNE of the model space (seed {seed}); sample of {len(vectors)}"
            plots["tsne"] = _timed("tsne", lambda: plot_scatter(embedded, labels, names, title, ("t-SNE 1", "t-SNE 2")))
    return plots, notes


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
        sample_vectors(fitted, features, sampled, model.model_inputs(model_features, categorical))
        .toPandas()  # the bounded sample
        .sort_values([c.SEGMENT_ID, c.CUSTOMER_ID])
        .reset_index(drop=True)
    )
    log.info("sample: %d customers in %d segments (at most %d per segment, seed %d)", len(sample),
             sample[c.SEGMENT_ID].nunique(), per_segment, seed)  # fmt: skip
    return sample


def table_plots(
    sweep: pd.DataFrame, k: int, z: pd.DataFrame, segments: pd.DataFrame, names: Mapping[int, str]
) -> tuple[dict[str, bytes], dict[str, str]]:
    """The k sweep, feature heatmap and segment size plots (from the small tables)."""
    plots, notes = {}, {}
    if sweep.empty:
        notes["k_sweep"] = "No k sweep on record for this model."
    else:
        plots["k_sweep"] = _timed("k_sweep", lambda: plot_k_sweep(sweep, k))
    plots["feature_heatmap"] = _timed("feature_heatmap", lambda: plot_feature_heatmap(z, names))
    plots["segment_sizes"] = _timed("segment_sizes", lambda: plot_segment_sizes(segments))
    return plots, notes


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


def run(spark: SparkSession, cfg: Config, run_id: str | None = None) -> ReportResult:
    """Render the report of the current labels' run (``run_id``, when given, must be it)."""
    started = time.perf_counter()
    labels = _read(spark, cfg, cfg.tables.labels)
    info_row = _current_run(labels, run_id)
    fitted, record = model.latest_model(spark, cfg, info_row[c.MODEL_VERSION])
    info = run_info(info_row, record)
    log.info("report of run %s, model %s", info.run_id, info.model_version)
    features = _read(spark, cfg, cfg.tables.features)

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
