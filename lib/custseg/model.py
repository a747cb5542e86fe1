"""Segmentation: scale, reduce, cluster, choose k, and label every customer.

The model is a ``pyspark.ml`` pipeline: VectorAssembler -> StandardScaler (centred:
``withMean=True``, which is not Spark's default) -> PCA (optional) -> KMeans ->
a SQLTransformer that renumbers clusters into segment ids ordered by value (0 = the
highest mean monetary value). The fitted PipelineModel is saved, so scoring new
customers later needs no refit and yields the same segment ids.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.ml import Model, Pipeline, PipelineModel, Transformer
from pyspark.ml.feature import (
    PCA,
    OneHotEncoder,
    PCAModel,
    SQLTransformer,
    StandardScaler,
    StringIndexer,
    VectorAssembler,
)
from pyspark.sql import DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import history, io, progress, restarts, selection, stability, tracking
from custseg.config import Config, ConfigError, SegmentConfig
from custseg.evaluate import SweepPoint, cluster_indices
from custseg.matching import assign
from custseg.restarts import Restarted, clusterer

log = logging.getLogger(__name__)

UNSEGMENTED = -1  # customers with no purchase before the as-of date: nothing to place
PREDICTION = c.PREDICTION
VECTOR = c.VECTOR
SCALED = "scaled"
FIT_PARTITION_CUSTOMERS = 500_000  # customers per partition of the model input, unless configured

LABEL_COLUMNS = (c.CUSTOMER_ID, c.SEGMENT_ID, c.K, c.RUN_ID, c.AS_OF_DATE, c.MODEL_VERSION)
SWEEP_SCHEMA = (
    "run_id STRING, as_of_date DATE, algorithm STRING, k INT, wcss DOUBLE, silhouette DOUBLE, "
    "calinski_harabasz DOUBLE, davies_bouldin DOUBLE, chosen BOOLEAN, rule STRING, model_version STRING, "
    "customers LONG, smallest_share DOUBLE, stability DOUBLE, structure STRING, reason STRING"
)
SWEEP_STRATUM = "rfm_segment"  # the features' named RFM segment (features.rfm_segments)
HASH_STRATA = 16  # without RFM segments: strata of customers by hash, a uniform sample


@dataclass(frozen=True)
class SegmentResult:
    k: int
    sweep: list[SweepPoint]
    model_version: str
    model_path: str
    customers: int = 0  # customers the model was fitted on
    caps: dict[str, float] = field(default_factory=dict)  # fitted quantile caps per feature
    explained_variance: list[float] = field(default_factory=list)  # per kept principal component
    centres: dict[int, list[float]] = field(default_factory=dict)  # segment id -> centre in model-input units
    matched_to: str | None = None  # the previous model whose segment ids were kept
    sweep_customers: int = 0  # customers the k sweep fitted: all, or the stratified sample
    final: SweepPoint | None = None  # the chosen model's indices on every customer
    choice: selection.Choice | None = None  # how k was chosen, and why

    @property
    def chosen(self) -> SweepPoint:
        """The chosen model's indices, over every customer it was fitted on."""
        return self.final or next(p for p in self.sweep if p.k == self.k)


@dataclass(frozen=True)
class PreviousModel:
    """What a retrain needs of the last model to keep segment ids stable."""

    version: str
    features: list[str]
    centres: dict[int, list[float]]
    log1p: list[str] = field(default_factory=list)

    def comparable(self, features: Sequence[str], log1p: Sequence[str], numeric: int) -> bool:
        """Centres can be compared only in the same units: the same features, the same
        log1p transforms, and as many numeric dimensions."""
        return (
            self.features == list(features)
            and sorted(self.log1p) == sorted(f for f in log1p if f in features)
            and numeric > 0
            and all(len(centre) == numeric for centre in self.centres.values())
        )


def model_inputs(
    features: Sequence[str], categorical: Sequence[str] = (), keep: Sequence[str] = ()
) -> Callable[[DataFrame], DataFrame]:
    """Customer features -> customer_id plus the model features, numeric ones as doubles
    and ``categorical`` ones as text; rows with any feature missing are left out (see
    ``UNSEGMENTED``). The ``keep`` columns come along as they are.

    Input columns: customer_id and every name in ``features`` and ``keep``.
    Output columns: customer_id, then ``features`` in order, then ``keep``.
    """

    def transform(df: DataFrame) -> DataFrame:
        complete = F.lit(True)
        for f in features:
            complete = complete & F.col(f).isNotNull()
        typed = [F.col(f).cast("string" if f in categorical else "double").alias(f) for f in features]
        return df.where(complete).select(c.CUSTOMER_ID, *typed, *keep)

    return transform


def input_column(feature: str) -> str:
    """The model's own copy of a feature, after capping and log1p."""
    return f"in_{feature}"


def quantile_caps(inputs: DataFrame, features: Sequence[str], quantile: float | None) -> dict[str, float]:
    """The ``quantile`` of each feature over the customers (one aggregate), or {} when
    capping is off. Fitted once and stored in the model, so scoring caps the same way."""
    if quantile is None or not features:
        return {}
    row = inputs.agg(*[F.percentile_approx(f, quantile, 10_000).alias(f) for f in features]).first()
    return {f: float(row[f]) for f in features if row[f] is not None}


def input_transform(features: Sequence[str], log1p: Sequence[str], caps: dict[str, float]) -> SQLTransformer:
    """A stage adding ``in_<feature>`` for every feature: capped at its fitted quantile
    (if any), then, for skewed features, log1p(max(x, 0)) (a negative net monetary
    value, where returns exceed purchases, enters as 0)."""
    exprs = []
    for f in features:
        expr = f"CAST(`{f}` AS DOUBLE)"
        if f in caps:
            expr = f"LEAST({expr}, {caps[f]!r})"
        if f in log1p:
            expr = f"LOG1P(GREATEST({expr}, 0.0D))"
        exprs.append(f"{expr} AS `{input_column(f)}`")
    return SQLTransformer(statement=f"SELECT {', '.join(['*', *exprs])} FROM __THIS__")


def numeric_features(cfg: Config) -> list[str]:
    return [f for f in cfg.segment.features if cfg.attributes.get(f) != "categorical"]


def categorical_features(cfg: Config) -> list[str]:
    return [f for f in cfg.segment.features if cfg.attributes.get(f) == "categorical"]


def preprocessing(
    cfg: SegmentConfig,
    log1p: Sequence[str] = (),
    caps: dict[str, float] | None = None,
    categorical: Sequence[str] = (),
) -> Pipeline:
    """Transform skewed features, one-hot encode categorical ones, assemble (numeric
    first), then centre and scale. PCA is fitted separately (``principal_components``),
    as it may choose its own dimension."""
    numeric = [f for f in cfg.features if f not in categorical]
    indexed = [f"idx_{f}" for f in categorical]
    encoding = []
    if categorical:
        encoding = [
            # alphabetical, so the encoding does not depend on which value is commonest;
            # a value unseen at fit time scores as all zeros
            StringIndexer(inputCols=list(categorical), outputCols=indexed, handleInvalid="keep",
                          stringOrderType="alphabetAsc"),
            OneHotEncoder(inputCols=indexed, outputCols=[input_column(f) for f in categorical], dropLast=True),
        ]  # fmt: skip
    return Pipeline(
        stages=[
            input_transform(numeric, log1p, caps or {}),
            *encoding,
            VectorAssembler(
                inputCols=[input_column(f) for f in [*numeric, *categorical]],
                outputCol="assembled",
                handleInvalid="error",
            ),
            StandardScaler(
                inputCol="assembled",
                outputCol=SCALED if _uses_pca(cfg) else VECTOR,
                # Centre (not Spark's default) so PCA and k-means see the data as a
                # statistician would. Bisecting k-means is the exception: it splits a
                # cluster by nudging its centre by 1e-4 of the centre's norm, so on centred
                # data the first split never happens. Distances ignore the offset.
                withMean=cfg.algorithm != "bisecting_kmeans",
                withStd=True,
            ),
        ]
    )


def _uses_pca(cfg: SegmentConfig) -> bool:
    return bool(cfg.pca_components or cfg.pca_variance)


def principal_components(scaled: DataFrame, cfg: SegmentConfig, dims: int) -> PCAModel | None:
    """PCA on the scaled features: ``pca_components`` components, or the fewest whose
    cumulative explained variance reaches ``pca_variance``; None when PCA is off."""
    if not _uses_pca(cfg):
        return None
    if cfg.pca_components:
        return PCA(k=cfg.pca_components, inputCol=SCALED, outputCol=VECTOR).fit(scaled)
    full = PCA(k=dims, inputCol=SCALED, outputCol=VECTOR).fit(scaled)
    components = components_for_share(list(full.explainedVariance), cfg.pca_variance)
    log.info("PCA: %d of %d components explain %.1f%% of the variance", components, dims,
             100 * sum(list(full.explainedVariance)[:components]))  # fmt: skip
    return PCA(k=components, inputCol=SCALED, outputCol=VECTOR).fit(scaled)


def components_for_share(explained: Sequence[float], share: float) -> int:
    """The fewest leading components whose explained variance adds up to ``share``."""
    total = 0.0
    for i, value in enumerate(explained, start=1):
        total += value
        if total >= share - 1e-12:
            return i
    return len(explained)


def scored(model: Model, vectors: DataFrame, k: int) -> SweepPoint:
    """The fitted model's indices over ``vectors``: WCSS, silhouette (nan with fewer
    than two non-empty clusters), Calinski-Harabasz, Davies-Bouldin and the smallest
    segment's share of the customers."""
    indices = cluster_indices(model.transform(vectors), VECTOR, PREDICTION)
    return SweepPoint(
        k=k,
        wcss=indices.wcss,
        silhouette=indices.silhouette,
        calinski_harabasz=indices.calinski_harabasz,
        davies_bouldin=indices.davies_bouldin,
        smallest_share=indices.smallest_share(k),
    )


def sweep(vectors: DataFrame, cfg: SegmentConfig) -> tuple[list[SweepPoint], dict[int, Model]]:
    """Fit the clusterer for every k in [k_min, k_max] (or just the fixed k) from
    ``cfg.restarts`` seeds, keep each k's best fit (``Restarted``), and score it: WCSS,
    silhouette, Calinski-Harabasz, Davies-Bouldin and the smallest segment's share
    (same definitions for every algorithm).

    ``cfg.sweep_parallelism`` fits run at once, each from its own driver thread, as
    ``CrossValidator``'s ``parallelism`` does: what the sweep fits is one partition up
    to 500,000 customers, so each fit keeps one core busy. Each fit is seeded and reads
    the same input, so its model does not depend on what runs beside it."""
    ks = [cfg.k] if cfg.k else list(range(cfg.k_min, cfg.k_max + 1))
    seeds = restarts.restart_seeds(cfg.seed, cfg.restarts)
    steps = progress.Steps("k sweep", len(ks) * len(seeds))

    def fit_one(k: int, restart: int) -> tuple[int, int, Model]:
        return k, restart, clusterer(dataclasses.replace(cfg, seed=seeds[restart]), k).fit(vectors)

    def score(k: int, model: Model) -> SweepPoint:
        point = scored(model, vectors, k)
        log.info("k=%d wcss=%.2f silhouette=%.4f calinski_harabasz=%.1f davies_bouldin=%.4f smallest segment %.1f%%",
                 k, point.wcss, point.silhouette, point.calinski_harabasz, point.davies_bouldin,
                 100 * point.smallest_share)  # fmt: skip
        return point

    fits: dict[int, list[restarts.Fit]] = {k: [] for k in ks}
    workers = min(cfg.sweep_parallelism, len(ks) * len(seeds))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="k-sweep") as pool:
        tasks = [pool.submit(fit_one, k, restart) for k in ks for restart in range(len(seeds))]
        for done in as_completed(tasks):
            k, restart, model = done.result()
            fitted = restarts.Fit.of(restart, model)  # here, in the thread that holds the session
            fits[k].append(fitted)
            steps.step(f"k={k} seed={seeds[fitted.restart]} objective={fitted.objective:.2f}")
        models = {k: restarts.best(fits[k]) for k in ks}
        points = dict(zip(ks, pool.map(lambda k: score(k, models[k]), ks), strict=True))
    return [points[k] for k in ks], models


def stability_of_k(
    vectors: DataFrame, models: dict[int, Model], seg: SegmentConfig, bootstrap: int, threshold: float
) -> Callable[[int], float]:
    """``k -> the lowest mean best-match Jaccard over k's segments``: the sweep's model of
    k against ``bootstrap`` refits of k (with restarts) on resamples of ``vectors``, each
    from other seeds: a k whose segments depend on the sample or on where the restarts
    happened to land is not one to act on (on realistic data, k = 6 with three restarts
    agreed across seeds at ARI 0.62 to 0.93). The resamples and seeds are the same for
    every k, so ks are compared on the same draws."""

    def measure(k: int) -> float:
        reference = models[k].transform(vectors).select(c.CUSTOMER_ID, F.col(PREDICTION).alias(c.SEGMENT_ID))
        report = stability.stability(
            vectors,
            reference,
            lambda seed: Restarted(dataclasses.replace(seg, seed=seed), k),
            seeds=[],
            bootstrap=bootstrap,
            bootstrap_seed=seg.seed,
            threshold=threshold,
            fit_seed=seg.seed,
            what=f"k={k} stability",
            reseed=True,
        )
        return min((s.mean_jaccard for s in report.segments), default=0.0)

    return measure


def selection_rules(cfg: Config) -> selection.Rules:
    seg = cfg.segment
    return selection.Rules(
        rule=seg.selection,
        tolerance=seg.silhouette_tolerance,
        min_segment_share=seg.min_segment_share,
        business_k=(seg.business_k[0], seg.business_k[1]),
        structure_silhouette=seg.structure_silhouette,
        stability_threshold=cfg.stability.threshold,
    )


@dataclass(frozen=True)
class ClusterStats:
    """One raw cluster of a fit: its size, mean value, and centre in model-input units
    (after capping and log1p, before scaling), comparable across retrains."""

    cluster: int
    customers: int
    value: float | None
    centre: list[float]


def cluster_stats(clustered: DataFrame, features: Sequence[str], value_column: str) -> list[ClusterStats]:
    """Per raw cluster (one aggregate, k rows): size, mean ``value_column``, and the
    mean of every ``in_<feature>`` column."""
    rows = (
        clustered.groupBy(PREDICTION)
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.avg(value_column).alias("value"),
            *[F.avg(input_column(f)).alias(f) for f in features],
        )
        .collect()
    )  # k rows
    return sorted(
        (ClusterStats(r[PREDICTION], r["n"], r["value"], [r[f] for f in features]) for r in rows),
        key=lambda s: s.cluster,
    )


def segment_ids(
    stats: Sequence[ClusterStats], k: int, previous: dict[int, list[float]] | None, scale: Sequence[float]
) -> dict[int, int]:
    """Raw cluster -> segment id.

    Without a previous model, segments are numbered by descending mean value (ties:
    the lower raw cluster first), so 0 is the most valuable. With one, each new cluster
    takes the id of the previous segment whose centre is nearest (a minimum-cost
    matching on distances in standard deviations of the features); clusters left over
    (k grew) take the lowest free ids in value order. So retraining on the same data
    keeps every id, and a segment keeps its id while it keeps its place.
    """
    by_cluster = {s.cluster: s for s in stats}

    def value_rank(cluster: int) -> tuple[float, int]:
        value = by_cluster[cluster].value if cluster in by_cluster else None
        return (-(value if value is not None else -math.inf), cluster)

    ranked = sorted(range(k), key=value_rank)
    if not previous:
        return {cluster: segment for segment, cluster in enumerate(ranked)}
    placed = [cl for cl in range(k) if cl in by_cluster]
    old_ids = sorted(previous)
    cost = [[_distance(by_cluster[cl].centre, previous[sid], scale) for sid in old_ids] for cl in placed]
    mapping = {placed[i]: old_ids[j] for i, j in assign(cost)}
    free = (sid for sid in range(k + len(old_ids)) if sid not in set(mapping.values()))
    for cluster in ranked:
        if cluster not in mapping:
            mapping[cluster] = next(free)
    return mapping


def _distance(a: Sequence[float], b: Sequence[float], scale: Sequence[float]) -> float:
    return math.sqrt(sum(((x - y) / (s or 1.0)) ** 2 for x, y, s in zip(a, b, scale, strict=True)))


def relabel(mapping: dict[int, int]) -> Transformer:
    """A stage turning raw cluster numbers into segment ids (saved with the model)."""
    cases = " ".join(f"WHEN {cluster} THEN {segment}" for cluster, segment in sorted(mapping.items()))
    return SQLTransformer(
        statement=f"SELECT *, CAST(CASE {PREDICTION} {cases} END AS INT) AS {c.SEGMENT_ID} FROM __THIS__"
    )


def auto_fit_partitions(customers: int, minimum: int = 2) -> int:
    """The model input's partitions when ``segment.fit_partitions`` is not set: one per
    ``FIT_PARTITION_CUSTOMERS`` customers, at least ``minimum``; a function of the data
    alone, never of the cluster. Each KMeans iteration is a Spark job with a task per
    partition: below about a million customers its cost is scheduling, not arithmetic,
    so fewer partitions make the sweep faster (2 against 8: 2-3x per fit at 25,000).
    What the sweep fits takes ``minimum=1``: one task per iteration, and the fits that
    run at once (``segment.sweep_parallelism``) share the cores. A fit that runs alone
    (a fixed k, or the chosen k refitted on everyone after a sampled sweep) takes 2."""
    return max(minimum, math.ceil(customers / FIT_PARTITION_CUSTOMERS))


def sweeps_a_sample(customers: int, seg: SegmentConfig) -> bool:
    """Whether the k sweep fits a sample of ``customers`` (then the chosen k is refitted
    on all of them): k is not fixed, and there are more customers than the sample."""
    return bool(not seg.k and seg.sweep_sample and customers > seg.sweep_sample)


def fit_inputs(features: DataFrame, cfg: Config, stratum: str | None = None) -> DataFrame:
    """The model inputs laid out the same way whatever the cluster: k-means|| samples
    per partition, so the same seed gives the same labels only on the same layout.
    Without ``segment.fit_partitions`` the layout depends on how many customers have
    every model feature (one count, the one ``prepare`` decides to sample by), and on
    whether the sweep fits them all. A ``stratum`` column of ``features`` comes along
    as it is."""
    seg = cfg.segment
    inputs = features.transform(model_inputs(seg.features, categorical_features(cfg), [stratum] if stratum else []))
    partitions = seg.fit_partitions
    if not partitions:
        customers = inputs.count()
        runs_alone = seg.k or sweeps_a_sample(customers, seg)  # else the sweep fits them all, fits at once
        partitions = auto_fit_partitions(customers, minimum=2 if runs_alone else 1)
    return inputs.repartition(partitions, c.CUSTOMER_ID).sortWithinPartitions(c.CUSTOMER_ID)


def stratified_sample(size: int, total: int, stratum: str, seed: int) -> Callable[[DataFrame], DataFrame]:
    """About ``size`` of the ``total`` rows, each stratum in its share: from a stratum
    of n rows, the ceil(n x size / total) whose seeded hash of customer_id is lowest
    (ties by id). At most ``size`` plus one row per stratum; the same rows for the same
    seed, whatever the layout.

    Input columns: customer_id, ``stratum`` (null is a stratum of its own), any others.
    Output columns: the input's.
    """

    def transform(df: DataFrame) -> DataFrame:
        whole = Window.partitionBy(stratum).rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
        by_hash = (
            Window.partitionBy(stratum)
            .orderBy(F.xxhash64(F.lit(seed), c.CUSTOMER_ID), c.CUSTOMER_ID)
            .rowsBetween(Window.unboundedPreceding, Window.currentRow)
        )
        quota = F.ceil(F.count(F.lit(1)).over(whole) * F.lit(size) / F.lit(total))
        return (
            df.select("*", F.row_number().over(by_hash).alias("_rank"), quota.alias("_quota"))
            .where(F.col("_rank") <= F.col("_quota"))
            .select(*df.columns)
        )

    return transform


@dataclass(frozen=True)
class Prepared:
    """The fitted preprocessing and the model input vectors it gives, persisted for the
    k sweep: ``fit`` up to the sweep. Whoever prepares unpersists ``vectors``."""

    stages: list  # the fitted preprocessing stages, then PCA when used
    scale: list[float]  # the scaler's standard deviations, numeric features first
    vectors: DataFrame  # customer_id, every model input, vector (and the sample's stratum)
    customers: int
    caps: dict[str, float]
    explained_variance: list[float]
    sweep_vectors: DataFrame | None = None  # customer_id, vector, stratum of the sweep's sample; None: all
    sweep_customers: int = 0

    @property
    def swept(self) -> DataFrame:
        """What the k sweep fits: the sample, or every customer.

        A projection of the persisted frame, never the persisted plan itself: MLlib's
        KMeans persists its own RDD of vectors (with their norms) only when its input
        is not cached, and otherwise converts the cached rows again at every iteration
        (twice the sweep's time at 100,000 customers)."""
        return (self.sweep_vectors if self.sweep_vectors is not None else self.vectors).select(c.CUSTOMER_ID, VECTOR)

    @property
    def everyone(self) -> DataFrame:
        """Every customer's vectors, for the final fit: a projection too."""
        return self.vectors.select(c.CUSTOMER_ID, VECTOR)

    def unpersist(self) -> None:
        self.vectors.unpersist()
        if self.sweep_vectors is not None:
            self.sweep_vectors.unpersist()


def prepare(features: DataFrame, cfg: Config) -> Prepared:
    """Fit caps, the scaler and PCA once, and persist the vectors the sweep iterates
    over: every customer's, and above ``segment.sweep_sample`` customers also those of
    the stratified sample the sweep fits. Whoever prepares calls ``unpersist``."""
    seg = cfg.segment
    sampling = bool(seg.sweep_sample and not seg.k)  # a fixed k has nothing to choose
    stratum = SWEEP_STRATUM if sampling and SWEEP_STRATUM in features.columns else None
    inputs = fit_inputs(features, cfg, stratum)
    numeric = numeric_features(cfg)
    caps = quantile_caps(inputs, numeric, cfg.features.cap_quantile)
    prep = preprocessing(seg, cfg.features.log1p, caps, categorical_features(cfg)).fit(inputs)
    scaler = prep.stages[-1]
    prepared = prep.transform(inputs)
    pca = principal_components(prepared, seg, len(scaler.std))
    # KMeans iterates over its input many times per k: materialise the vectors once.
    vectors = (
        (pca.transform(prepared) if pca else prepared)
        .select(c.CUSTOMER_ID, *[input_column(f) for f in seg.features], VECTOR, *([stratum] if stratum else []))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    customers = vectors.count()
    if customers < seg.k_min:
        vectors.unpersist()
        raise io.PrerequisiteError(
            f"only {customers} customers have every model feature {list(seg.features)}; at least {seg.k_min} "
            "(segment.k_min) are needed"
        )
    sample, sampled = None, customers
    if sweeps_a_sample(customers, seg):
        strata = (
            vectors
            if stratum
            else vectors.withColumn(SWEEP_STRATUM, F.pmod(F.xxhash64(c.CUSTOMER_ID), F.lit(HASH_STRATA)))
        )
        # Laid out as the model input is (the window leaves it in a partition per
        # stratum, and KMeans would wait on the largest at every iteration).
        sample = (
            strata.transform(stratified_sample(seg.sweep_sample, customers, stratum or SWEEP_STRATUM, seg.seed))
            .select(c.CUSTOMER_ID, VECTOR, stratum or SWEEP_STRATUM)  # more than ``swept`` selects (see there)
            .repartition(seg.fit_partitions or auto_fit_partitions(seg.sweep_sample, minimum=1), c.CUSTOMER_ID)
            .sortWithinPartitions(c.CUSTOMER_ID)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        sampled = sample.count()
        log.info("k sweep on a sample of %d of %d customers, stratified by %s", sampled, customers,
                 stratum or f"{HASH_STRATA} hash buckets")  # fmt: skip
    return Prepared(
        stages=[*prep.stages, *([pca] if pca else [])],
        scale=list(scaler.std),
        vectors=vectors,
        customers=customers,
        caps=caps,
        explained_variance=[float(v) for v in pca.explainedVariance] if pca else [],
        sweep_vectors=sample,
        sweep_customers=sampled,
    )


def finish(
    features: DataFrame,
    cfg: Config,
    prepared: Prepared,
    sweep_result: tuple[list[SweepPoint], dict[int, Model]],
    run_id: str,
    previous: PreviousModel | None = None,
) -> tuple[PipelineModel, SegmentResult]:
    """Choose k from the sweep, number the segments (matching ``previous`` when given)
    and save the final PipelineModel: ``fit`` after the sweep."""
    seg = cfg.segment
    points, models = sweep_result
    numeric = numeric_features(cfg)
    if seg.k:
        choice = selection.fixed(seg.k)
    else:
        guard = seg.selection == selection.GUARDED and seg.selection_bootstrap > 0
        measure = stability_of_k(prepared.swept, models, seg, seg.selection_bootstrap, cfg.stability.threshold)
        choice = selection.choose(points, selection_rules(cfg), measure if guard else None)
    k = choice.k
    log.info("k=%d (%s): %s", k, choice.rule, choice.reason)
    clusters, final = models[k], None
    if prepared.sweep_vectors is not None:  # k was chosen on a sample: the model is fitted on everyone
        clusters = Restarted(seg, k).fit(prepared.everyone)
        final = scored(clusters, prepared.everyone, k)
        log.info("k=%d fitted on all %d customers: wcss=%.2f silhouette=%.4f (sample: %.4f)", k, prepared.customers,
                 final.wcss, final.silhouette, next(p.silhouette for p in points if p.k == k))  # fmt: skip
        if not seg.k and (final.smallest_share or 0.0) < max(seg.min_segment_share, 1e-12):
            # The guard rails were measured on the sample's model; say so when everyone's differs.
            note = (f"; fitted on all {prepared.customers} customers, the smallest segment is "
                    f"{100 * (final.smallest_share or 0.0):.1f}%, below the minimum share")  # fmt: skip
            log.warning("k=%d%s", k, note)
            choice = dataclasses.replace(choice, reason=choice.reason + note)
    value = features.select(c.CUSTOMER_ID, F.col(seg.value_feature).alias("_value"))
    clustered = clusters.transform(prepared.vectors).join(value, on=c.CUSTOMER_ID, how="inner")
    stats = cluster_stats(clustered, numeric, "_value")
    usable = previous if previous and previous.comparable(seg.features, cfg.features.log1p, len(numeric)) else None
    if previous and not usable:
        log.warning("segment ids: model %s was fitted on other features or transforms; numbering by value instead",
                    previous.version)  # fmt: skip
    mapping = segment_ids(stats, k, usable.centres if usable else None, prepared.scale[: len(numeric)])
    model = PipelineModel(stages=[*prepared.stages, clusters, relabel(mapping)])
    version = f"{seg.algorithm}-k{k}-{run_id}"
    path = io.resolve(seg.model_dir, version)
    model.write().overwrite().save(path)
    log.info("chose k=%d by %s; segment ids %s%s; model saved to %s", k, choice.rule, mapping,
             f" (matched to {usable.version})" if usable else "", path)  # fmt: skip
    return model, SegmentResult(
        k=k,
        sweep=points,
        model_version=version,
        model_path=path,
        customers=prepared.customers,
        caps=prepared.caps,
        explained_variance=prepared.explained_variance,
        centres={mapping[s.cluster]: s.centre for s in stats},
        matched_to=usable.version if usable else None,
        sweep_customers=prepared.sweep_customers,
        final=final,
        choice=choice,
    )


def fit(
    spark: SparkSession,
    features: DataFrame,
    cfg: Config,
    run_id: str,
    previous: PreviousModel | None = None,
) -> tuple[PipelineModel, SegmentResult]:
    """Fit the preprocessing once, sweep k, choose, number the segments (matching
    ``previous`` when given) and save the final PipelineModel."""
    prepared = prepare(features, cfg)
    try:
        swept = sweep(prepared.swept, cfg.segment)
        return finish(features, cfg, prepared, swept, run_id, previous)
    finally:
        prepared.unpersist()


def label(model: PipelineModel, features: DataFrame, cfg: Config, model_version: str, k: int, run_id: str) -> DataFrame:
    """Every customer in ``features`` gets exactly one label row; those the model
    cannot place (a model feature missing, e.g. no purchase before the as-of date)
    get segment -1.

    Output columns: customer_id, segment_id, k, run_id, as_of_date, model_version.
    """
    inputs = features.transform(model_inputs(cfg.segment.features, categorical_features(cfg)))
    placed = model.transform(inputs).select(c.CUSTOMER_ID, c.SEGMENT_ID)
    return (
        features.select(c.CUSTOMER_ID, c.AS_OF_DATE)
        .join(placed, on=c.CUSTOMER_ID, how="left")
        .select(
            c.CUSTOMER_ID,
            F.coalesce(F.col(c.SEGMENT_ID), F.lit(UNSEGMENTED)).alias(c.SEGMENT_ID),
            F.lit(k).alias(c.K),
            F.lit(run_id).alias(c.RUN_ID),
            c.AS_OF_DATE,
            F.lit(model_version).alias(c.MODEL_VERSION),
        )
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


def previous_model(spark: SparkSession, ref: io.TableRef) -> PreviousModel | None:
    """The most recently fitted model on record, or None."""
    if not io.exists(spark, ref):
        return None
    last = io.read(spark, ref).orderBy(F.col("fitted_at").desc(), F.col("run_id").desc()).first()
    if last is None:
        return None
    return PreviousModel(
        version=last["model_version"],
        features=list(last["features"]),
        centres={r["segment_id"]: list(r["centre"]) for r in last["centres"]},
        log1p=list(last["log1p"] or []),
    )


def data_range(features: DataFrame) -> tuple:
    """The first and last purchase the features cover (None for customer tables)."""
    if c.FIRST_PURCHASE not in features.columns:
        return (None, None)
    row = features.agg(F.min(c.FIRST_PURCHASE).alias("a"), F.max(c.LAST_PURCHASE).alias("b")).first()
    return (row["a"], row["b"])


def check_stability(
    spark: SparkSession, model: PipelineModel, features: DataFrame, labels: DataFrame, cfg: Config, k: int, run_id: str
) -> stability.StabilityReport | None:
    """Refit the chosen k with other seeds and on bootstrap samples (same preprocessing)
    and record how well each refit agrees with ``labels``."""
    conf = cfg.stability
    if not conf.seeds and not conf.bootstrap:
        return None
    seg = cfg.segment
    # A refit with the production seed on the same data reproduces the labels exactly:
    # it would only flatter the scores.
    seeds = [s for s in conf.seeds if s != seg.seed]
    if not seeds and not conf.bootstrap:
        return None
    prep = PipelineModel(stages=model.stages[:-2])  # everything before the clusterer
    vectors = prep.transform(fit_inputs(features, cfg)).select(c.CUSTOMER_ID, VECTOR)
    report = stability.stability(
        vectors,
        labels.where(F.col(c.SEGMENT_ID) >= 0).select(c.CUSTOMER_ID, c.SEGMENT_ID),
        lambda seed: Restarted(dataclasses.replace(seg, seed=seed), k),
        seeds=seeds,
        bootstrap=conf.bootstrap,
        bootstrap_seed=seg.seed,
        threshold=conf.threshold,
        fit_seed=seg.seed,
        reseed=True,  # as the k choice's per-k stability: sample and seeding both vary
    )
    runs, segments = stability.stability_frames(spark, report, run_id)
    io.append(runs, io.table_ref(cfg.storage, cfg.tables.stability))
    io.append(segments, io.table_ref(cfg.storage, cfg.tables.segment_stability))
    return report


MIGRATION_SCHEMA = (
    "run_id STRING, previous_run_id STRING, from_segment INT, to_segment INT, customers LONG, share_of_from DOUBLE"
)


def save_labels(spark: SparkSession, labels: DataFrame, cfg: Config, run_id: str) -> history.HistoryChange:
    """The current labels (overwritten), their history (merged: only changes) and the
    migration matrix from the labels they replace (appended, one row per move)."""
    labels_ref = io.table_ref(cfg.storage, cfg.tables.labels)
    labels = labels.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        moves, previous_run = [], None
        if io.exists(spark, labels_ref):
            previous = io.read(spark, labels_ref)
            previous_run = previous.select(c.RUN_ID).first()
            previous_run = previous_run[c.RUN_ID] if previous_run else None
            moves = history.migration_matrix(previous, labels).collect()  # at most (k_old + 1) x (k_new + 1) rows
        io.overwrite(labels, labels_ref)
    finally:
        labels.unpersist()
    if moves:
        rows = [(run_id, previous_run, r["from_segment"], r["to_segment"], r["customers"], r["share_of_from"])
                for r in moves]  # fmt: skip
        io.append(spark.createDataFrame(rows, MIGRATION_SCHEMA), io.table_ref(cfg.storage, cfg.tables.migrations))
    run_ts = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    change = history.merge_history(
        spark, io.read(spark, labels_ref), io.table_ref(cfg.storage, cfg.tables.label_history), run_id, run_ts
    )
    log.info("label history: %d new, %d changed segment, %d unchanged, %d gone",
             change.new, change.changed, change.unchanged, change.gone)  # fmt: skip
    return change


def read_features(spark: SparkSession, cfg: Config) -> tuple[DataFrame, dt.date]:
    ref = io.table_ref(cfg.storage, cfg.tables.features)
    features = io.read_required(spark, ref, "customer features", "the features job")
    as_of = features.agg(F.max(c.AS_OF_DATE).alias("d")).first()["d"]
    if as_of is None:
        raise io.PrerequisiteError(f"the customer features table {ref} is empty: run the features job first")
    missing = sorted((set(cfg.segment.features) | {cfg.segment.value_feature}) - set(features.columns))
    if missing:
        raise ConfigError(
            f"segment.features / segment.value_feature: {missing} not in the features table {ref} "
            f"(it has {features.columns})"
        )
    return features, as_of


def run(spark: SparkSession, cfg: Config, run_id: str) -> SegmentResult:
    """Fit (keeping the last model's segment ids), label every customer, merge the label
    history, check stability, and record the sweep and the model."""
    features, as_of = read_features(spark, cfg)
    models_ref = io.table_ref(cfg.storage, cfg.tables.models)
    fitted_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    model, result = fit(spark, features, cfg, run_id, previous_model(spark, models_ref))
    # The model is on record before any label refers to it.
    io.append(sweep_frame(spark, result, cfg, run_id, as_of), io.table_ref(cfg.storage, cfg.tables.k_sweep))
    io.append(model_record(spark, result, cfg, run_id, as_of, fitted_at, data_range(features)), models_ref)
    save_labels(spark, label(model, features, cfg, result.model_version, result.k, run_id), cfg, run_id)
    labels = io.read(spark, io.table_ref(cfg.storage, cfg.tables.labels))
    report = check_stability(spark, model, features, labels, cfg, result.k, run_id)
    tracking.log_segment_run(cfg, run_id, result, as_of, model, report)
    return result


def latest_model(spark: SparkSession, cfg: Config, version: str | None = None) -> tuple[PipelineModel, Row]:
    """The saved model ``version``, or the most recently fitted one, with its record."""
    ref = io.table_ref(cfg.storage, cfg.tables.models)
    if not io.exists(spark, ref):
        raise io.PrerequisiteError(f"no model on record in {ref}: run the segment job first")
    records = io.read(spark, ref)
    if version:
        records = records.where(F.col(c.MODEL_VERSION) == version)
    record = records.orderBy(F.col("fitted_at").desc(), F.col(c.RUN_ID).desc()).first()
    if record is None:
        if version:
            raise io.PrerequisiteError(f"model {version!r} is not on record in {ref}")
        raise io.PrerequisiteError(f"no model on record in {ref}: run the segment job first")
    return PipelineModel.load(record["model_path"]), record


def score(spark: SparkSession, cfg: Config, run_id: str, version: str | None = None) -> history.HistoryChange:
    """Label the customers in the features table with a saved model, without refitting:
    new customers get a segment, changed ones may move, and the history records only
    the moves."""
    features, _ = read_features(spark, cfg)
    model, record = latest_model(spark, cfg, version)
    if list(record["features"]) != list(cfg.segment.features):
        raise ConfigError(
            f"segment.features is {list(cfg.segment.features)} but model {record['model_version']} was fitted on "
            f"{list(record['features'])}: refit with the segment job, or configure the model's features"
        )
    log.info("scoring with model %s (fitted %s on %d customers)", record["model_version"], record["fitted_at"],
             record["customers"])  # fmt: skip
    labels = label(model, features, cfg, record["model_version"], record["k"], run_id)
    return save_labels(spark, labels, cfg, run_id)
