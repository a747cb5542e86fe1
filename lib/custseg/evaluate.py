"""Clustering evaluation: choosing k from a sweep, and agreement between labelings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


@dataclass(frozen=True)
class SweepPoint:
    k: int
    wcss: float
    silhouette: float


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
    best = max(p.silhouette for p in points)
    return min(p.k for p in points if p.silhouette >= best - tolerance)


def choose_k(points: Sequence[SweepPoint], rule: str, tolerance: float) -> int:
    if not points:
        raise ValueError("the k sweep is empty")
    if rule == "elbow":
        return elbow_k(points)
    if rule == "silhouette":
        return silhouette_k(points, tolerance)
    raise ValueError(f"unknown k selection rule {rule!r}")


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
