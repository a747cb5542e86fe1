"""Segmentation: cluster, sweep k, choose it, and number the segments.

The model is a ``pyspark.ml`` pipeline: the preprocessing stages (``preprocess``) ->
the clusterer (k-means, bisecting k-means or a Gaussian mixture, best of seeded
restarts) -> a SQLTransformer that renumbers clusters into segment ids ordered by value
(0 = the highest mean monetary value), or matched to the previous model's. The fitted
PipelineModel is saved, so scoring new customers later needs no refit and yields the
same segment ids."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.ml import Model, PipelineModel, Transformer
from pyspark.ml.feature import (
    SQLTransformer,
)
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io, progress
from custseg.config import Config, SegmentConfig
from custseg.segment import restarts, selection, stability
from custseg.segment.evaluate import SweepPoint, cluster_indices
from custseg.segment.matching import assign
from custseg.segment.preprocess import (
    HASH_STRATA,
    SWEEP_STRATUM,
    VECTOR,
    auto_fit_partitions,
    categorical_features,
    fit_inputs,
    input_column,
    model_inputs,
    numeric_features,
    preprocessing,
    principal_components,
    quantile_caps,
    stratified_sample,
    sweeps_a_sample,
)
from custseg.segment.restarts import Restarted, clusterer

log = logging.getLogger(__name__)


UNSEGMENTED = -1  # customers with no purchase before the as-of date: nothing to place


PREDICTION = c.PREDICTION


LABEL_COLUMNS = (c.CUSTOMER_ID, c.SEGMENT_ID, c.K, c.RUN_ID, c.AS_OF_DATE, c.MODEL_VERSION)


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
