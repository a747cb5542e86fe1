"""The model's input: each customer's features as a vector, capped, log-transformed,
one-hot encoded, scaled (centred: ``withMean=True``, which is not Spark's default) and
optionally reduced by PCA; and the sample the k sweep runs on."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

from pyspark.ml import Pipeline
from pyspark.ml.feature import (
    PCA,
    OneHotEncoder,
    PCAModel,
    SQLTransformer,
    StandardScaler,
    StringIndexer,
    VectorAssembler,
)
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from custseg import columns as c
from custseg.config import Config, SegmentConfig

log = logging.getLogger(__name__)


VECTOR = c.VECTOR


SCALED = "scaled"


FIT_PARTITION_CUSTOMERS = 500_000  # customers per partition of the model input, unless configured


SWEEP_STRATUM = "rfm_segment"  # the features' named RFM segment (features.rfm_segments)


HASH_STRATA = 16  # without RFM segments: strata of customers by hash, a uniform sample


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
