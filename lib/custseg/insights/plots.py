"""The report's plots, each a PNG from a small pandas table or the bounded sample
(matplotlib's object API, no global state: safe in a notebook or a thread)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from io import BytesIO

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from custseg import columns as c
from custseg.insights.page import fmt_share
from custseg.insights.report import (
    CUSTOMERS,
    MIN_TSNE_POINTS,
    SWEEP_METRICS,
    VECTOR_ARRAY,
    pca_2d,
    segment_order,
    silhouette_samples,
    tsne_2d,
)

log = logging.getLogger(__name__)


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
