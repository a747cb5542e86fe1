"""The clusterer, fitted from several seeds: each k is the best of ``segment.restarts``
fits, as scikit-learn's ``n_init``. k-means|| from one seed is one draw of a local
optimum, and can settle in a poor one even on data with obvious groups; the best of a
few is what the labels, and the stability check, should rest on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pyspark.ml import Estimator, Model
from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, GaussianMixtureModel, KMeans
from pyspark.sql import DataFrame

from custseg import columns as c
from custseg.config import SegmentConfig

# Restart i of a fit seeded s is seeded s + i x this: a large stride, so seeds closer
# together than it share no restart.
RESTART_STRIDE = 1_000_003


def clusterer(cfg: SegmentConfig, k: int) -> Estimator:
    """The configured clustering estimator for ``k`` segments, seeded from config."""
    common = {"k": k, "seed": cfg.seed, "maxIter": cfg.max_iter, "featuresCol": c.VECTOR,
              "predictionCol": c.PREDICTION}  # fmt: skip
    if cfg.algorithm == "bisecting_kmeans":  # divisive and hierarchical: scales to many k
        return BisectingKMeans(**common)
    if cfg.algorithm == "gaussian_mixture":  # soft, elliptical clusters; labels are the most likely
        return GaussianMixture(**common, probabilityCol="segment_probability")
    return KMeans(**common, initMode="k-means||", tol=cfg.kmeans_tol)


def restart_seeds(seed: int, restarts: int) -> list[int]:
    """The seeds of a fit's restarts: its own seed first, then seeds derived from it."""
    return [seed + RESTART_STRIDE * i for i in range(restarts)]


def objective(model: Model) -> float:
    """What a restart minimises, from the fit's own summary (no pass over the data):
    the cost k-means accumulated in its last iteration (the squared distances to the
    centres that iteration started from, so at convergence the WCSS up to the last
    move, at most ``kmeans_tol`` per centre), the bisecting k-means cost, or minus the
    log-likelihood of a Gaussian mixture. Undefined (nan) counts as the worst."""
    if isinstance(model, GaussianMixtureModel):
        value = -float(model.summary.logLikelihood)
    else:
        value = float(model.summary.trainingCost)
    return value if math.isfinite(value) else math.inf


@dataclass(frozen=True)
class Fit:
    """One restart's model and its objective, read once: over Spark Connect each read of
    a summary is a call to the server. Read it in the thread that holds the session:
    the fits run in pool threads, where Connect has no active session for a model's
    calls (the fit itself takes its session from its input)."""

    restart: int
    objective: float
    model: Model

    @classmethod
    def of(cls, restart: int, model: Model) -> Fit:
        return cls(restart=restart, objective=objective(model), model=model)


def best(fits: Sequence[Fit]) -> Model:
    """The lowest objective; ties go to the earlier restart, whatever order the fits ended in."""
    return min(fits, key=lambda f: (f.objective, f.restart)).model


@dataclass(frozen=True)
class Restarted:
    """The configured clusterer for ``k``, fitted from ``seg.restarts`` seeds derived from
    ``seg.seed`` (``seg.sweep_parallelism`` at a time); ``fit`` keeps the best."""

    seg: SegmentConfig
    k: int

    def fit(self, vectors: DataFrame) -> Model:
        seeds = restart_seeds(self.seg.seed, self.seg.restarts)

        def one(restart: int) -> Model:
            return clusterer(dataclasses.replace(self.seg, seed=seeds[restart]), self.k).fit(vectors)

        if len(seeds) == 1:
            return one(0)
        workers = min(self.seg.sweep_parallelism, len(seeds))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restart") as pool:
            models = list(pool.map(one, range(len(seeds))))
        return best([Fit.of(restart, model) for restart, model in enumerate(models)])
