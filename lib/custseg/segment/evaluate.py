"""Clustering evaluation: the sweep's indices, the plain k rules (elbow, silhouette; custseg.segment.selection
chooses with them), and agreement between labelings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


@dataclass(frozen=True)
class SweepPoint:
    k: int
    wcss: float
    silhouette: float
    calinski_harabasz: float | None = None
    davies_bouldin: float | None = None
    smallest_share: float | None = None  # the smallest segment's share of the customers (0: one is empty)


def elbow_k(points: Sequence[SweepPoint]) -> int:
    """The knee of the WCSS curve: the k farthest below the chord from the first to the
    last point, with both axes scaled to [0, 1] (the "kneedle" construction). Ties go
    to the smaller k. With fewer than three points there is no knee: the smallest k."""
    pts = sorted(points, key=lambda p: p.k)
    if len(pts) < 3:
        return pts[0].k
    k0, k1 = pts[0].k, pts[-1].k
    w0, w1 = pts[0].wcss, pts[-1].wcss
    span = (w0 - w1) or 1.0

    def gap(p: SweepPoint) -> float:
        x = (p.k - k0) / (k1 - k0)
        y = (p.wcss - w1) / span
        return (1.0 - x) - y  # the chord runs from (0, 1) to (1, 0)

    return max(pts, key=lambda p: (round(gap(p), 12), -p.k)).k


def silhouette_k(points: Sequence[SweepPoint], tolerance: float) -> int:
    """The smallest k whose silhouette is within ``tolerance`` of the best: simpler
    models win when the data cannot tell them apart."""
    finite = [p for p in points if math.isfinite(p.silhouette)]  # nan: fewer than two non-empty clusters
    best = max(p.silhouette for p in finite)
    return min(p.k for p in finite if p.silhouette >= best - tolerance)


def adjusted_rand_index(df: DataFrame, labels_a: str, labels_b: str) -> float:
    """Adjusted Rand index between two label columns of ``df`` (Hubert and Arabie),
    computed from the contingency table with DataFrame aggregates."""

    def pairs(col: F.Column) -> F.Column:
        return F.sum(col * (col - 1) / 2.0)

    cells = df.groupBy(labels_a, labels_b).agg(F.count(F.lit(1)).alias("_cell"))
    row_totals = cells.groupBy(labels_a).agg(F.sum("_cell").alias("_total"))
    col_totals = cells.groupBy(labels_b).agg(F.sum("_cell").alias("_total"))
    stats = (
        cells.agg(pairs(F.col("_cell")).alias("index"), F.sum("_cell").alias("n"))
        .crossJoin(row_totals.agg(pairs(F.col("_total")).alias("sum_a")))
        .crossJoin(col_totals.agg(pairs(F.col("_total")).alias("sum_b")))
        .first()
    )
    n = stats["n"] or 0
    if n < 2:
        return 1.0
    total = n * (n - 1) / 2.0
    expected = stats["sum_a"] * stats["sum_b"] / total
    maximum = (stats["sum_a"] + stats["sum_b"]) / 2.0
    if maximum == expected:  # both labelings are a single cluster, or all singletons
        return 1.0
    return (stats["index"] - expected) / (maximum - expected)


@dataclass(frozen=True)
class ClusterIndices:
    """Internal validity indices of one clustering, all from per-cluster statistics."""

    wcss: float  # within-cluster sum of squared Euclidean distances (the elbow's y)
    calinski_harabasz: float  # between / within dispersion ratio: higher is better
    davies_bouldin: float  # mean worst-case similarity of a cluster to another: lower is better
    clusters: int = 0  # non-empty clusters (a Gaussian mixture can leave components empty)
    silhouette: float = float("nan")  # mean squared-Euclidean silhouette, as MLlib's; nan below 2 clusters
    sizes: dict[int, int] = field(default_factory=dict)  # cluster -> points, non-empty clusters only

    def smallest_share(self, k: int) -> float:
        """The smallest of ``k`` clusters' share of the points (0 when one is empty)."""
        total = sum(self.sizes.values())
        return min(self.sizes.get(cluster, 0) for cluster in range(k)) / total if total else 0.0


def cluster_indices(predictions: DataFrame, features_col: str, prediction_col: str) -> ClusterIndices:
    """WCSS, Calinski-Harabasz, Davies-Bouldin and the silhouette, computed distributed
    in two passes over ``predictions`` (neither of the first three is in MLlib).

    The first pass sums each vector component and its square per cluster (sizes,
    centroids, mean squared norms). The second gives each row its squared distance to
    its centroid and its mean squared distance to every cluster, from those sums, and
    adds them up per cluster. Only k x dim numbers reach the driver, and they go back
    into the second pass as literals: no join, no second shuffle.

    Definitions follow scikit-learn's ``calinski_harabasz_score`` and
    ``davies_bouldin_score`` (Euclidean), and MLlib's ``ClusteringEvaluator`` for the
    silhouette (squared Euclidean: a point's mean squared distance to the rest of its
    cluster against the nearest other cluster's; 0 for a point alone in its cluster),
    which it replaces in the sweep: it costs no passes of its own.
    """
    rows = predictions.select(F.col(prediction_col).alias("_cluster"), vector_to_array(F.col(features_col)).alias("_x"))
    sums = (
        rows.select("_cluster", F.posexplode("_x").alias("_dim", "_v"))
        .groupBy("_cluster", "_dim")
        .agg(F.sum("_v").alias("_sum"), F.sum(F.col("_v") * F.col("_v")).alias("_sq"), F.count(F.lit(1)).alias("_n"))
        .collect()
    )  # k x dim rows
    sizes: dict[int, int] = {}
    totals: dict[int, dict[int, float]] = {}
    squares: dict[int, float] = {}
    for r in sums:
        sizes[r["_cluster"]] = r["_n"]
        totals.setdefault(r["_cluster"], {})[r["_dim"]] = r["_sum"]
        squares[r["_cluster"]] = squares.get(r["_cluster"], 0.0) + r["_sq"]
    clusters = sorted(sizes)
    dim = 1 + max(d for t in totals.values() for d in t)
    centroids = {cl: [totals[cl][d] / sizes[cl] for d in range(dim)] for cl in clusters}
    n = sum(sizes.values())
    k = len(clusters)

    # The second pass is SQL text, numbers inlined exactly (repr round-trips): built as
    # Columns it took a thousand or more calls into the JVM per k (a third of a second).
    x = [f"_x[{d}]" for d in range(dim)]
    norm = " + ".join(f"{v} * {v}" for v in x)

    def own(values: dict[int, str]) -> str:
        """The value of the row's own cluster."""
        return "CASE _cluster " + " ".join(f"WHEN {cl} THEN {values[cl]}" for cl in clusters) + " END"

    def dot(centroid: Sequence[float]) -> str:
        return " + ".join(f"{v} * {_double(m)}" for v, m in zip(x, centroid, strict=True))

    def squared_distance(centroid: Sequence[float]) -> str:
        return " + ".join(f"({v} - {_double(m)}) * ({v} - {_double(m)})" for v, m in zip(x, centroid, strict=True))

    # Mean squared distance from the row to the points of each cluster (itself included
    # in its own), from the cluster's sums alone, as MLlib computes it.
    to_cluster = {cl: f"{norm} - 2.0D * ({dot(centroids[cl])}) + {_double(squares[cl] / sizes[cl])}" for cl in clusters}
    distances = rows.select(
        "_cluster",
        F.expr(own({cl: squared_distance(centroids[cl]) for cl in clusters})).alias("_e"),
        *[F.expr(to_cluster[cl]).alias(f"_d{cl}") for cl in clusters],
    )
    # a: mean squared distance to the rest of its own cluster; b: to the nearest other.
    # try_divide: ANSI mode fails a division by zero even in a branch that is not taken
    others = ", ".join(f"CASE WHEN _cluster != {cl} THEN _d{cl} END" for cl in clusters)
    silhouettes = distances.select(
        "_cluster",
        "_e",
        F.expr(own({cl: _double(sizes[cl]) for cl in clusters})).alias("_size"),
        F.expr(own({cl: f"_d{cl}" for cl in clusters})).alias("_own"),
        F.expr(f"least({others})" if k > 1 else "CAST(NULL AS DOUBLE)").alias("_b"),
    ).withColumn("_a", F.expr("try_divide(_own * _size, _size - 1.0D)"))
    point_silhouette = (
        "CASE WHEN _size = 1.0D THEN 0.0D WHEN _a < _b THEN 1.0D - try_divide(_a, _b) "
        "WHEN _a > _b THEN try_divide(_b, _a) - 1.0D ELSE 0.0D END"
    )
    spread = {
        r["_cluster"]: r
        for r in silhouettes.groupBy("_cluster")
        .agg(
            F.sum("_e").alias("_w"),
            F.avg(F.sqrt("_e")).alias("_s"),
            F.sum(F.expr(point_silhouette)).alias("_silhouette"),
        )
        .collect()
    }  # k rows

    wcss = sum(spread[cl]["_w"] for cl in clusters)
    mean = [sum(sizes[cl] * centroids[cl][d] for cl in clusters) / n for d in range(dim)]

    def dist2(a: Sequence[float], b: Sequence[float]) -> float:
        return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))

    between = sum(sizes[cl] * dist2(centroids[cl], mean) for cl in clusters)
    undefined = k < 2 or n <= k  # scikit-learn refuses these; the sweep never asks
    ch = float("nan") if undefined else 1.0 if wcss == 0 else between * (n - k) / (wcss * (k - 1))
    davies_bouldin = _davies_bouldin(centroids, {cl: (spread[cl]["_w"], spread[cl]["_s"]) for cl in clusters})
    return ClusterIndices(
        wcss=wcss,
        calinski_harabasz=ch,
        davies_bouldin=davies_bouldin,
        clusters=k,
        silhouette=sum(spread[cl]["_silhouette"] for cl in clusters) / n if k >= 2 else float("nan"),
        sizes=dict(sizes),
    )


def _double(value: float) -> str:
    """``value`` as an exact SQL double literal."""
    if not math.isfinite(value):
        raise ValueError(f"cluster statistics must be finite, got {value}")
    return f"({value!r}D)"


def _davies_bouldin(centroids: dict[int, list[float]], spread: dict[int, tuple[float, float]]) -> float:
    clusters = sorted(centroids)
    if len(clusters) < 2:
        return float("nan")
    scatter = {cl: spread[cl][1] for cl in clusters}  # mean distance to the centroid
    gaps = {
        (a, b): sum((x - y) ** 2 for x, y in zip(centroids[a], centroids[b], strict=True)) ** 0.5
        for a in clusters
        for b in clusters
        if a != b
    }
    if all(v == 0 for v in scatter.values()) or all(v == 0 for v in gaps.values()):
        return 0.0
    # As scikit-learn: coincident centroids count as infinitely far apart (ratio 0).
    worst = [
        max((scatter[a] + scatter[b]) / gaps[a, b] if gaps[a, b] > 0 else 0.0 for b in clusters if b != a)
        for a in clusters
    ]
    return sum(worst) / len(worst)
