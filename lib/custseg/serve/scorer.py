"""The segmentation pipeline in plain numpy: the same segment id as Spark's PipelineModel,
in microseconds per customer and without a JVM.

Every stage is reproduced as MLlib 4.2 computes it, operation for operation, because a
customer near the boundary between two segments is placed by the last bits of a
distance: the caps (``LEAST``) and ``LOG1P(GREATEST(x, 0))`` of the input transform,
StringIndexer and OneHotEncoder, the VectorAssembler (whose ``compressed`` output is
sparse when most entries are zero, which changes how MLlib measures distances), the
StandardScaler (multiplying by the reciprocal of the standard deviation, 0 where it is
0), PCA (a sum over the inputs in order), and the clusterer's own assignment rule:
k-means' ``findClosest`` with its triangle-inequality shortcuts, bisecting k-means'
walk down its tree of centres, a Gaussian mixture's most probable component. Sums run
over the vector's entries in order, as the JVM's loops do; what cannot be matched bit
for bit (libm against StrictMath for log1p, LAPACK's eigendecomposition of a mixture's
covariances) is documented in docs/serving.md.

This module imports nothing from Spark or from the rest of custseg: it is copied as it
is into the exported mlflow model (``custseg.serve.pyfunc``), whose only requirements
are numpy and pandas.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FORMAT = "custseg-scorer"
FORMAT_VERSION = 1
UNPLACED = -1  # the batch rule: a customer missing any model feature cannot be placed
# MLlib's machine epsilon (MLUtils.EPSILON, ml.impl.Utils.EPSILON): the largest power of
# two whose half added to 1.0 still changes it, 2 ** -52.
EPSILON = 2.0**-52
FAST_DISTANCE_PRECISION = 1e-6  # MLUtils.fastSquaredDistance's default precision
# KMeansModel keeps the centres' pairwise statistics only below these sizes
# (DistanceMeasure.shouldComputeStatistics / shouldComputeStatisticsLocally).
STATISTICS_MAX_K = 1000
STATISTICS_MAX_CELLS = 1_000_000

Features = pd.DataFrame | Mapping[str, Any] | Sequence[Mapping[str, Any]]


def load(path: str | Path) -> Scorer:
    """The scorer of an artefact JSON file written by ``custseg.serve.artefact.save``."""
    return Scorer(json.loads(Path(path).read_text(encoding="utf-8")))


def frame(features: Features) -> pd.DataFrame:
    """Customers as a DataFrame: a DataFrame as it is, a list of records, a dict of
    columns, or one customer's record (a dict of scalars)."""
    if isinstance(features, pd.DataFrame):
        return features
    if isinstance(features, Mapping):
        if all(np.ndim(v) == 0 for v in features.values()):
            return pd.DataFrame([dict(features)])
        return pd.DataFrame(dict(features))
    return pd.DataFrame.from_records(list(features))


def sequential_sum(terms: np.ndarray) -> np.ndarray:
    """Row sums of an (n, d) array, adding column after column as a JVM loop does
    (numpy's pairwise summation rounds differently)."""
    total = np.zeros(terms.shape[0])
    for j in range(terms.shape[1]):
        total = total + terms[:, j]
    return total


def norms(vectors: np.ndarray) -> np.ndarray:
    """``Vectors.norm(v, 2)`` per row."""
    return np.sqrt(sequential_sum(vectors * vectors))


def squared_distances(centre: np.ndarray, centre_norm: float, points: np.ndarray, point_norms: np.ndarray,
                      sparse: np.ndarray) -> np.ndarray:  # fmt: skip
    """``MLUtils.fastSquaredDistance(centre, point)`` per row: between two dense vectors
    the plain sum of squared differences; with a sparse point, ``|c|^2 + |x|^2 - 2 c.x``
    unless MLlib's precision bounds say that loses too much, then the plain sum."""
    exact = sequential_sum((points - centre) ** 2)
    if not sparse.any():
        return exact
    sum_squared_norm = centre_norm * centre_norm + point_norms * point_norms
    norm_diff = centre_norm - point_norms
    bound1 = 2.0 * EPSILON * sum_squared_norm / (norm_diff * norm_diff + EPSILON)
    dot = sequential_sum(points * centre)
    expanded = sum_squared_norm - 2.0 * dot
    clipped = np.maximum(expanded, 0.0)
    bound2 = EPSILON * (sum_squared_norm + 2.0 * np.abs(dot)) / (clipped + EPSILON)
    fast = np.where(bound1 < FAST_DISTANCE_PRECISION, expanded,
                    np.where(bound2 > FAST_DISTANCE_PRECISION, exact, clipped))  # fmt: skip
    return np.where(sparse, fast, exact)


class Scorer:
    """A fitted segmentation, read from its artefact (``custseg.serve.artefact``);
    ``score`` gives each customer's segment id, or -1 for one that cannot be placed."""

    def __init__(self, artefact: Mapping[str, Any]) -> None:
        if artefact.get("format") != FORMAT or artefact.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"not a {FORMAT} artefact of version {FORMAT_VERSION}: format {artefact.get('format')!r}, "
                f"version {artefact.get('format_version')!r}"
            )
        self.artefact = artefact
        self.model_version: str = artefact["model_version"]
        self.numeric: list[dict] = list(artefact["numeric"])
        self.categorical: list[dict] = list(artefact["categorical"])
        self.features: list[str] = [f["name"] for f in self.numeric] + [f["name"] for f in self.categorical]
        self._label_index = [{label: i for i, label in enumerate(f["labels"])} for f in self.categorical]
        scaler = artefact["scaler"]
        self.with_mean, self.with_std = bool(scaler["with_mean"]), bool(scaler["with_std"])
        self.mean = np.asarray(scaler["mean"], dtype=float)
        std = np.asarray(scaler["std"], dtype=float)
        self.scale = np.where(std != 0.0, 1.0 / np.where(std != 0.0, std, 1.0), 0.0)
        self.pca = None if artefact["pca"] is None else np.asarray(artefact["pca"]["components"], dtype=float)
        self.clusterer: dict = artefact["clusterer"]
        self._prepare_clusterer()
        mapping = {int(cluster): int(segment) for cluster, segment in artefact["segments"].items()}
        self.segments = np.full(max(self.k, max(mapping, default=-1) + 1), UNPLACED, dtype=np.int64)
        for cluster, segment in mapping.items():
            self.segments[cluster] = segment

    # ------------------------------------------------------------------ stages

    def assemble(self, customers: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The VectorAssembler's input, numeric features first (capped, log1p), then the
        one-hot blocks; and which customers have every model feature. A missing column,
        a null, NaN or a value that is not a number counts as missing."""
        n = len(customers)
        placed = np.ones(n, dtype=bool)
        blocks = []
        for spec in self.numeric:
            name = spec["name"]
            if name in customers:
                x = pd.to_numeric(customers[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            else:
                x = np.full(n, np.nan)
            placed &= ~np.isnan(x)
            if spec["cap"] is not None:
                x = np.fmin(x, spec["cap"])  # Spark's LEAST: NaN is above every number
            if spec["log1p"]:
                x = np.log1p(np.maximum(x, 0.0))
            blocks.append(x[:, None])
        for spec, index in zip(self.categorical, self._label_index, strict=True):
            one_hot, known = self._one_hot(customers, spec, index, n)
            placed &= known
            blocks.append(one_hot)
        assembled = np.hstack(blocks) if blocks else np.zeros((n, 0))
        return np.where(placed[:, None], assembled, 0.0), placed

    def _one_hot(self, customers: pd.DataFrame, spec: Mapping, index: Mapping[str, int], n: int
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """StringIndexer then OneHotEncoder for one categorical feature, whose values the
        batch path casts to text. An unseen value takes StringIndexer's extra index
        (``handleInvalid='keep'``), which ``dropLast`` encodes as all zeros."""
        name, labels = spec["name"], spec["labels"]
        values = customers[name] if name in customers else pd.Series([None] * n, dtype=object)
        present = values.notna().to_numpy()
        indices = np.empty(n, dtype=np.int64)
        for row, (value, ok) in enumerate(zip(values.tolist(), present, strict=True)):
            indices[row] = index.get(str(value), len(labels)) if ok else len(labels)
        unseen = present & (indices == len(labels))
        if unseen.any() and spec["indexer_invalid"] != "keep":
            if spec["indexer_invalid"] == "error":
                raise ValueError(f"{name}: values not seen at fit time: {sorted(set(values[unseen].map(str)))}")
            present = present & ~unseen  # 'skip': the batch path drops the row, so it cannot be placed
        sizes = spec["category_size"]  # the encoder's input categories, the indexer's extra one included
        invalid = indices >= sizes
        if invalid.any() and spec["encoder_invalid"] == "error":
            raise ValueError(f"{name}: category index beyond the encoder's {sizes} categories")
        if spec["encoder_invalid"] == "keep":
            indices = np.where(invalid, sizes, indices)
            sizes += 1
        width = sizes - 1 if spec["drop_last"] else sizes
        one_hot = np.zeros((n, width))
        hot = present & (indices < width)
        one_hot[np.flatnonzero(hot), indices[hot]] = 1.0
        return one_hot, present

    def model_vectors(self, assembled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scaled (and projected) vectors, and which of them MLlib holds as sparse."""
        size = assembled.shape[1]
        # VectorAssembler's output is ``compressed``: sparse when 1.5 (nnz + 1) < size.
        sparse = 1.5 * (np.count_nonzero(assembled, axis=1) + 1.0) < size
        x = assembled
        if self.with_mean:
            x = x - self.mean
            sparse = np.zeros_like(sparse)  # centring densifies
        if self.with_std:
            x = x * self.scale
        if self.pca is not None:
            projected = np.zeros((x.shape[0], self.pca.shape[1]))
            for i in range(self.pca.shape[0]):  # gemv: each output sums over the inputs in order
                projected = projected + x[:, i : i + 1] * self.pca[i]
            x, sparse = projected, np.zeros_like(sparse)
        return x, sparse

    # ------------------------------------------------------------------ clusterers

    @property
    def k(self) -> int:
        kind = self.clusterer["kind"]
        if kind == "bisecting_kmeans":
            return sum(1 for node in self.clusterer["nodes"] if not node["children"])
        return len(self.clusterer["centres"] if kind == "kmeans" else self.clusterer["weights"])

    def _prepare_clusterer(self) -> None:
        kind = self.clusterer["kind"]
        if kind == "kmeans":
            self.centres = np.asarray(self.clusterer["centres"], dtype=float)
            self.centre_norms = norms(self.centres)
            k, dims = self.centres.shape
            self.statistics = None
            if k < STATISTICS_MAX_K and k * k * dims < STATISTICS_MAX_CELLS:
                self.statistics = self._centre_statistics()
        elif kind == "bisecting_kmeans":
            self.nodes = {int(n["index"]): n for n in self.clusterer["nodes"]}
            self.node_centres = {i: np.asarray(n["centre"], dtype=float) for i, n in self.nodes.items()}
            self.root = int(self.clusterer["root"])
        elif kind == "gaussian_mixture":
            self.weights = np.asarray(self.clusterer["weights"], dtype=float)
            pairs = zip(self.clusterer["means"], self.clusterer["covariances"], strict=True)
            self.gaussians = [self._gaussian(np.asarray(m, dtype=float), np.asarray(c, dtype=float)) for m, c in pairs]
        else:
            raise ValueError(f"unknown clusterer {kind!r}")

    def _centre_statistics(self) -> np.ndarray:
        """DistanceMeasure.computeStatistics: a quarter of the squared distance between
        two centres, and on the diagonal each centre's smallest such value (NaN for k=1)."""
        k = len(self.centres)
        if k == 1:
            return np.full((1, 1), np.nan)
        stats = np.zeros((k, k))
        diagonal = np.full(k, np.inf)
        for i in range(k):
            for j in range(i + 1, k):
                d = math.sqrt(float(sequential_sum((self.centres[i] - self.centres[j])[None, :] ** 2)[0]))
                s = 0.25 * d * d
                stats[i, j] = stats[j, i] = s
                diagonal[i] = min(diagonal[i], s)
                diagonal[j] = min(diagonal[j], s)
        stats[np.arange(k), np.arange(k)] = diagonal
        return stats

    def _kmeans(self, x: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """EuclideanDistanceMeasure.findClosest, for all customers at once: centres in
        order, skipped when a bound proves them no closer, a strictly smaller distance
        wins (so ties go to the lower index), and with the centres' statistics an early
        stop once a point is within half the distance of its centre to any other."""
        n, k = len(x), len(self.centres)
        point_norms = norms(x)

        def dist(i: int) -> np.ndarray:
            return squared_distances(self.centres[i], self.centre_norms[i], x, point_norms, sparse)

        best, index = dist(0), np.zeros(n, dtype=np.int64)
        stats = self.statistics
        done = best < stats[0, 0] if stats is not None else np.zeros(n, dtype=bool)
        for i in range(1, k):
            bound = (self.centre_norms[i] - point_norms) ** 2
            candidate = ~done & (bound < best)
            if stats is not None:
                candidate &= stats[i, index] < best
            if not candidate.any():
                continue
            d = dist(i)
            early = candidate & (d < stats[i, i]) if stats is not None else np.zeros(n, dtype=bool)
            closer = candidate & (early | (d < best))
            best, index = np.where(closer, d, best), np.where(closer, i, index)
            done |= early
        return index

    def _bisecting(self, x: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """ClusteringTreeNode.predict: from the root, step to the child whose centre is
        nearest (the first on ties) until a leaf; the leaf's index is the cluster. Not the
        nearest leaf centre: a point can sit nearer a leaf under the other branch."""
        point_norms = norms(x)
        node = np.full(len(x), self.root, dtype=np.int64)
        while True:
            moved = False
            for index in np.unique(node):
                children = self.nodes[int(index)]["children"]
                if not children:
                    continue
                rows = np.flatnonzero(node == index)
                costs = np.stack([
                    squared_distances(self.node_centres[c], float(self.nodes[c]["norm"]), x[rows], point_norms[rows],
                                      sparse[rows])
                    for c in children
                ])  # fmt: skip
                node[rows] = np.asarray(children)[np.argmin(costs, axis=0)]  # argmin: the first on ties
                moved = True
            if not moved:
                return node

    @staticmethod
    def _gaussian(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """MultivariateGaussian's constants: the root of the pseudo-inverse of the
        covariance (eigenvalues at or below EPSILON x max x dims count as zero), its
        product with the mean, and the log of the normalising constant."""
        values, vectors = np.linalg.eigh(cov)
        tol = EPSILON * values.max() * len(values)
        kept = values > tol
        log_pdet = float(np.sum(np.log(values[kept])))
        root = np.where(kept, np.sqrt(1.0 / np.where(kept, values, 1.0)), 0.0)[:, None] * vectors.T
        return root, root @ mean, -0.5 * (len(mean) * math.log(2.0 * math.pi) + log_pdet)

    def _mixture(self, x: np.ndarray) -> np.ndarray:
        """GaussianMixtureModel.predict in MLlib 4.2: the argmax (the first on ties) of
        EPSILON + weight x pdf per component, normalised by their sum. In pdf space, not
        log space, as MLlib computes it: far from every component all pdfs underflow, the
        terms tie at EPSILON and the customer goes to component 0, as in Spark."""
        terms = []
        for weight, (root, root_mean, constant) in zip(self.weights, self.gaussians, strict=True):
            delta = root_mean - x @ root.T
            logpdf = constant - 0.5 * sequential_sum(delta * delta)
            terms.append(EPSILON + weight * np.exp(logpdf))
        probs = np.stack(terms, axis=1)
        return np.argmax(probs / sequential_sum(probs)[:, None], axis=1)

    # ------------------------------------------------------------------ scoring

    def clusters(self, x: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """The clusterer's raw cluster index per model vector."""
        kind = self.clusterer["kind"]
        if len(x) == 0:
            return np.zeros(0, dtype=np.int64)
        if kind == "kmeans":
            return self._kmeans(x, sparse)
        if kind == "bisecting_kmeans":
            return self._bisecting(x, sparse)
        return self._mixture(x)

    def score(self, features: Features) -> np.ndarray:
        """Each customer's segment id (int64, in input order), -1 for a customer missing
        a model feature, as the batch ``label`` does."""
        customers = frame(features)
        assembled, placed = self.assemble(customers)
        x, sparse = self.model_vectors(assembled)
        segments = self.segments[self.clusters(x, sparse)] if len(x) else np.zeros(0, dtype=np.int64)
        return np.where(placed, segments, UNPLACED).astype(np.int64)
