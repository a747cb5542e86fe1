"""Clustering stability (Hennig's clusterboot, distributed): refit the clusterer with
other seeds and on bootstrap resamples, and measure how well each production segment
is recovered. A segment whose mean best-match Jaccard is below 0.5 has dissolved;
at 0.75 or above it is stable (Hennig 2007, "Cluster-wise assessment of cluster
stability").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Protocol

from pyspark import StorageLevel
from pyspark.ml import Model
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import progress
from custseg.segment.evaluate import adjusted_rand_index

log = logging.getLogger(__name__)

SEED = "seed"
BOOTSTRAP = "bootstrap"
JACCARD = "jaccard"
MATCHED = "matched"

REPLICATE_SCHEMA = "run_id STRING, kind STRING, replicate INT, seed BIGINT, ari DOUBLE"
SEGMENT_SCHEMA = (
    "run_id STRING, segment_id INT, mean_jaccard DOUBLE, min_jaccard DOUBLE, replicates INT, stable BOOLEAN"
)


class Fits(Protocol):
    """An unfitted clusterer: a pyspark.ml Estimator, or one that fits from several seeds."""

    def fit(self, dataset: DataFrame) -> Model: ...


@dataclass(frozen=True)
class Replicate:
    kind: str  # SEED: refit on all customers; BOOTSTRAP: refit on a resample
    replicate: int  # 1-based within its kind
    seed: int  # the clusterer's seed
    ari: float  # against the reference labels, over every labelled customer


@dataclass(frozen=True)
class SegmentStability:
    segment_id: int
    mean_jaccard: float
    min_jaccard: float
    replicates: int
    stable: bool


@dataclass(frozen=True)
class StabilityReport:
    replicates: list[Replicate]
    segments: list[SegmentStability]
    threshold: float

    def _aris(self, kind: str) -> list[float]:
        return [r.ari for r in self.replicates if r.kind == kind]

    @property
    def mean_seed_ari(self) -> float:
        return fmean(self._aris(SEED)) if self._aris(SEED) else float("nan")

    @property
    def mean_bootstrap_ari(self) -> float:
        return fmean(self._aris(BOOTSTRAP)) if self._aris(BOOTSTRAP) else float("nan")

    @property
    def min_ari(self) -> float:
        return min(r.ari for r in self.replicates)

    @property
    def unstable_segments(self) -> list[int]:
        return [s.segment_id for s in self.segments if not s.stable]


def _jaccard(both: F.Column, size_a: F.Column, size_b: F.Column) -> F.Column:
    return both / (size_a + size_b - both)


def best_match_jaccard(reference: str, other: str) -> Callable[[DataFrame], DataFrame]:
    """For each cluster of ``reference``, the best Jaccard index |A∩B| / |A∪B| over the
    clusters of ``other``, from the contingency table.

    Input columns: ``reference`` and ``other`` (cluster ids, no nulls).
    Output columns: segment_id (the reference cluster), jaccard (double), matched (the
    ``other`` cluster achieving it; ties go to the smaller id).
    """
    if reference == other:
        raise ValueError(f"best_match_jaccard needs two different columns, got {reference!r} twice")

    def transform(df: DataFrame) -> DataFrame:
        cells = df.groupBy(reference, other).agg(F.count(F.lit(1)).alias("_both"))
        ref_sizes = cells.groupBy(reference).agg(F.sum("_both").alias("_ref_size"))
        other_sizes = cells.groupBy(other).agg(F.sum("_both").alias("_other_size"))
        scored = (
            cells.join(ref_sizes, on=reference, how="inner")
            .join(other_sizes, on=other, how="inner")
            .select(reference, other, _jaccard(F.col("_both"), F.col("_ref_size"), F.col("_other_size")).alias(JACCARD))
        )
        # Structs order field by field: the smallest (-jaccard, other) is the best match,
        # ties broken by the smaller id, with no window and no second pass.
        best = scored.groupBy(reference).agg(F.min(F.struct((-F.col(JACCARD)).alias("_neg"), other)).alias("_best"))
        return best.select(
            F.col(reference).alias(c.SEGMENT_ID),
            (-F.col("_best._neg")).alias(JACCARD),
            F.col(f"_best.{other}").alias(MATCHED),
        )

    return transform


def _compare(predictions: DataFrame, reference: DataFrame) -> tuple[float, dict[int, float]]:
    """ARI and per-segment best-match Jaccard of one refit against the reference."""
    compared = predictions.select(c.CUSTOMER_ID, c.PREDICTION).join(
        reference.select(c.CUSTOMER_ID, c.SEGMENT_ID), on=c.CUSTOMER_ID, how="inner"
    )
    ari = adjusted_rand_index(compared, c.SEGMENT_ID, c.PREDICTION)
    jaccards = compared.transform(best_match_jaccard(c.SEGMENT_ID, c.PREDICTION)).collect()  # k rows
    return ari, {r[c.SEGMENT_ID]: r[JACCARD] for r in jaccards}


def stability(
    vectors: DataFrame,
    reference: DataFrame,
    estimator_for: Callable[[int], Fits],
    seeds: Sequence[int],
    bootstrap: int,
    bootstrap_seed: int,
    threshold: float = 0.75,
    fit_seed: int | None = None,
    what: str = "stability",
    reseed: bool = False,
) -> StabilityReport:
    """Refit once per seed on all of ``vectors``, then ``bootstrap`` times with the first
    seed on resamples (with replacement, same size on average), predict every customer
    each time and compare with ``reference``. Bootstrap fits use ``fit_seed`` (default:
    the first of ``seeds``); ``seeds`` may be empty when ``fit_seed`` is given.

    ``vectors``: customer_id, features_vector. ``reference``: customer_id, segment_id
    (placed customers only). ``estimator_for(seed)``: an unfitted clusterer predicting
    into ``cluster``. ``what`` names the progress lines. With ``reseed``, bootstrap
    replicate i is fitted with ``fit_seed + i`` instead, so that it varies both the
    sample and the clusterer's seeding, as Hennig's clusterboot does.
    """
    if fit_seed is None and not seeds:
        raise ValueError("stability needs at least one seed")
    fit_seed = seeds[0] if fit_seed is None else fit_seed
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    plan = [(SEED, i, seed, None) for i, seed in enumerate(seeds, start=1)]
    plan += [(BOOTSTRAP, i, fit_seed + i if reseed else fit_seed, bootstrap_seed + i) for i in range(1, bootstrap + 1)]

    owned = not vectors.is_cached  # a caller's cache is the caller's to release
    if owned:
        vectors = vectors.persist(StorageLevel.MEMORY_AND_DISK)
    replicates: list[Replicate] = []
    jaccards: dict[int, list[float]] = {}
    steps = progress.Steps(what, len(plan))
    try:
        for kind, number, seed, sample_seed in plan:
            train = vectors if sample_seed is None else vectors.sample(True, 1.0, seed=sample_seed)
            model = estimator_for(seed).fit(train)
            ari, per_segment = _compare(model.transform(vectors), reference)
            replicates.append(Replicate(kind=kind, replicate=number, seed=seed, ari=ari))
            for segment, value in per_segment.items():
                jaccards.setdefault(segment, []).append(value)
            steps.step(f"{kind} {number} seed={seed} ARI={ari:.4f} "
                       f"min Jaccard={min(per_segment.values(), default=float('nan')):.3f}")  # fmt: skip
    finally:
        if owned:
            vectors.unpersist()

    segments = [
        SegmentStability(
            segment_id=segment,
            mean_jaccard=fmean(values),
            min_jaccard=min(values),
            replicates=len(values),
            stable=fmean(values) >= threshold,
        )
        for segment, values in sorted(jaccards.items())
    ]
    report = StabilityReport(replicates=replicates, segments=segments, threshold=threshold)
    log.info(
        "%s: mean ARI seeds=%.4f bootstraps=%.4f min=%.4f; unstable segments %s (threshold %.2f)",
        what, report.mean_seed_ari, report.mean_bootstrap_ari, report.min_ari, report.unstable_segments or "none",
        threshold,
    )  # fmt: skip
    return report


def stability_frames(spark: SparkSession, report: StabilityReport, run_id: str) -> tuple[DataFrame, DataFrame]:
    """The report as two small frames to append to Delta: per replicate
    (REPLICATE_SCHEMA) and per segment (SEGMENT_SCHEMA)."""
    replicates = spark.createDataFrame(
        [(run_id, r.kind, r.replicate, r.seed, float(r.ari)) for r in report.replicates], REPLICATE_SCHEMA
    )
    segments = spark.createDataFrame(
        [
            (run_id, s.segment_id, float(s.mean_jaccard), float(s.min_jaccard), s.replicates, s.stable)
            for s in report.segments
        ],
        SEGMENT_SCHEMA,
    )
    return replicates, segments
