"""Typed, frozen configuration, loaded from layered YAML and validated once.

``load_config(["conf/base.yaml", "conf/local.yaml"], ["segment.k_max=6"])`` merges the
files in order (a later file overrides an earlier one), then applies the ``--set``
overrides, then builds the dataclasses below. Every error names the offending key and
the file (or ``--set``) it came from. Source mappings (``ingest.sources``) are YAML files
of their own, loaded and validated the same way. Secrets never live here: a value
written as ``${ENV_VAR}`` is read from the environment at load time, and masked
wherever config is shown (``custseg.redaction``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import logging
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from custseg import columns as c
from custseg import redaction

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration file, key or value is wrong; the message says which and where."""


@dataclass(frozen=True)
class SparkConfig:
    app_name: str
    master: str | None  # None: whatever spark-submit or the platform decides
    delta_jars_dir: str | None  # None: Delta is already on the classpath (cluster, Databricks)
    ui_enabled: bool
    shuffle_partitions: int | None  # None: two per core of a local master, else Spark's
    log_level: str | None  # Spark's own log level (spark.log.level); None: Spark's default
    conf: dict[str, str]
    remote: str | None = None  # Spark Connect: sc://host:port, or local[N] for a local Connect server


@dataclass(frozen=True)
class StorageConfig:
    mode: Literal["path", "catalog"]
    root: str  # path mode: tables live at <root>/<table name>
    database: str | None  # catalog mode: tables are <database>.<table name>


@dataclass(frozen=True)
class TablesConfig:
    transactions: str
    quarantine: str
    run_log: str
    features: str
    labels: str
    k_sweep: str
    profile: str
    customer_attributes: str  # one row per customer of the customer table
    customer_quarantine: str  # customer-table rows that could not be used, with a reason
    models: str  # one row per fitted model: metadata, metrics, centres
    label_history: str  # segment labels over time (valid_from / valid_to)
    migrations: str  # per run: customers moved from each segment to each other one
    segment_profiles: str  # one row per segment of a run: size, shares, name
    feature_profiles: str  # per segment and feature: mean, median, z-score
    stability: str  # per refit: adjusted Rand index against the labels
    segment_stability: str  # per segment: best-match Jaccard, stable or not
    customer_value: str = "customer_value"  # per customer: P(alive), expected purchases and spend, CLV
    value_fits: str = "customer_value_fits"  # per run and model: parameters, standard errors, holdout metrics
    value_evaluation: str = "customer_value_evaluation"  # per run: the holdout's frequency groups and curve
    crm_exports: str = "crm_exports"  # per export run and target: the watermark, rows sent, when it finished


@dataclass(frozen=True)
class DemoConfig:
    raw_dir: str
    customers: int
    seed: int
    start_date: dt.date
    end_date: dt.date
    # archetypes: four planted groups for the recovery tests; realistic: retail-like
    # customers with no planted groups (see custseg.demo.datagen)
    scenario: Literal["archetypes", "realistic"] = "archetypes"


@dataclass(frozen=True)
class IngestConfig:
    sources: list[str]  # paths of source mapping files (conf/sources/*.yaml)
    drop_duplicates: bool  # exact duplicate lines count once; false keeps every copy
    quarantine_future: bool  # a transaction after the run's start is quarantined
    extreme_iqr_factor: float | None  # flag amounts beyond Q3 + f * IQR of log1p|amount|; None: no flags
    customers: str | None = None  # a customer-attribute mapping (conf/sources/*.yaml); None: none


@dataclass(frozen=True)
class FeaturesConfig:
    as_of_date: dt.date | None  # None: the day after the newest accepted transaction
    log1p: list[str]  # skewed features that enter the model as log1p(max(x, 0))
    cap_quantile: float | None  # cap model features at this quantile before log1p; None: no cap
    # An as-of date before every transaction: false refuses (the table stays as it was),
    # true writes an empty features table on purpose.
    allow_empty: bool = False


@dataclass(frozen=True)
class RfmRule:
    """A named RFM segment: the R and F scores (1..bins) whose customers it takes."""

    name: str
    r: list[int]
    f: list[int]


@dataclass(frozen=True)
class RfmConfig:
    bins: int  # scores run 1..bins, by quantiles of the customers
    cut_points: dict[str, list[float]]  # explicit bin edges per feature, instead of quantiles
    segments: list[RfmRule]  # first match wins
    default_segment: str  # customers no rule takes (and those with no purchase)


@dataclass(frozen=True)
class SegmentConfig:
    algorithm: Literal["kmeans", "bisecting_kmeans", "gaussian_mixture"]
    features: list[str]
    pca_components: int | None  # None: no PCA
    k_min: int
    k_max: int
    k: int | None  # fixed k; None: chosen from the sweep by `selection`
    selection: Literal["guarded", "silhouette", "elbow"]
    silhouette_tolerance: float
    seed: int
    max_iter: int
    # KMeans has converged when no centre moved more than this between two iterations,
    # in the model input's units (standard deviations of the scaled features).
    kmeans_tol: float
    # The model input is laid out in this many partitions, so labels do not depend on the
    # cluster; None: from the customer count (model.auto_fit_partitions).
    fit_partitions: int | None
    model_dir: str
    pca_variance: float | None = None  # keep the fewest components explaining this share; None: pca_components
    value_feature: str = "monetary"  # segments are numbered by its mean, highest first
    score_model: str | None = None  # the model version the score job uses; None: the latest
    # Above this many customers, k is chosen on a sample of about this size, stratified
    # by RFM segment; the model of the chosen k is then fitted on every customer.
    sweep_sample: int | None = None  # None: the sweep fits every customer
    sweep_parallelism: int = 2  # fits of the sweep that run at once, each from its own driver thread
    # Each k is fitted from this many seeds (segment.seed and seeds derived from it) and
    # the fit with the lowest objective is kept, as scikit-learn's n_init.
    restarts: int = 3
    # The guarded rule's guard rails (selection.py): no segment below this share of the
    # customers, and every segment's bootstrap Jaccard at least stability.threshold over
    # this many refits of the k (0: no stability guard).
    min_segment_share: float = 0.05
    selection_bootstrap: int = 3
    # Without clear cluster structure (the best silhouette below structure_silhouette),
    # the guarded rule takes the largest k of this range that passes the guard rails.
    business_k: list[int] = field(default_factory=lambda: [3, 6])
    structure_silhouette: float = 0.7


@dataclass(frozen=True)
class StabilityConfig:
    seeds: list[int]  # refit with each seed; [] or one seed: no multi-seed check
    bootstrap: int  # refits on bootstrap samples; 0: none
    threshold: float  # a segment whose mean best-match Jaccard is below this is unstable


@dataclass(frozen=True)
class ReportConfig:
    dir: str  # one folder per run: report.html plus the PNG plots
    sample_per_segment: int  # customers per segment in the plot samples (silhouette, PCA, t-SNE)
    tsne: bool  # add a t-SNE scatter when scikit-learn is installed


@dataclass(frozen=True)
class ValueConfig:
    """The customer-value stage (custseg.value): BG/NBD and Gamma-Gamma."""

    enabled: bool = True  # `custseg run` fits it after the features (the `custseg value` command runs it regardless)
    unit: Literal["days", "weeks"] = "weeks"  # the models' time unit
    horizon_months: int = 12  # expected purchases and CLV over the next this many months
    holdout_days: int = 0  # > 0: fit on the history before the last this many days, score on them; 0: no holdout
    monthly_discount_rate: float = 0.01  # CLV discounts each month's expected spend at this rate
    margin: float = 1.0  # the share of spend that is profit (1: CLV in revenue)
    frequency_groups: int = 7  # the holdout table's groups of calibration frequency: 0 .. 7+


@dataclass(frozen=True)
class ExportConfig:  # the CRM export: a PostgreSQL table, or files (checked by serve.job; docs/crm-export.md)
    format: Literal["jdbc", "csv", "parquet"] = "jdbc"
    jdbc_url: str | None = None  # jdbc:postgresql://host:port/database, without credentials
    table: str = "customer_segments"  # the target table ([schema.]name); its staging table is <table>_staging
    user_env: str = "CUSTSEG_CRM_USER"  # the environment variables of the database credentials
    password_env: str = "CUSTSEG_CRM_PASSWORD"
    path: str = "exports/crm"  # csv, parquet: one folder per run, <path>/<run_id>/
    full: bool = False  # send every customer, whatever the last export sent
    connect_timeout: float = 5.0  # seconds for the database to accept a connection


@dataclass(frozen=True)
class MlflowConfig:
    enabled: bool  # log runs when mlflow is installed (pip install custseg[mlflow]); false: never
    tracking_uri: str | None  # None: a local store in ./mlruns (or $MLFLOW_TRACKING_URI when set)
    experiment: str


@dataclass(frozen=True)
class Config:
    spark: SparkConfig
    storage: StorageConfig
    tables: TablesConfig
    demo: DemoConfig
    ingest: IngestConfig
    features: FeaturesConfig
    rfm: RfmConfig
    segment: SegmentConfig
    stability: StabilityConfig
    report: ReportConfig = field(default_factory=lambda: ReportConfig("reports", 300, True))
    mlflow: MlflowConfig = field(default_factory=lambda: MlflowConfig(True, None, "custseg"))
    value: ValueConfig = field(default_factory=ValueConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    sources: tuple[SourceConfig, ...] = field(default=())
    customers: CustomerSourceConfig | None = None

    @property
    def attributes(self) -> dict[str, str]:
        """Customer attribute name -> "numeric" or "categorical" (none without a table)."""
        if self.customers is None:
            return {}
        return {
            **dict.fromkeys(self.customers.numeric, "numeric"),
            **dict.fromkeys(self.customers.categorical, "categorical"),
        }

    def validate(self, origins: Mapping[str, str] | None = None) -> Config:
        """Cross-field checks; ``origins`` maps keys to the file that set them, for messages."""

        def check(ok: bool, key: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{_origin(origins or {}, key)}: {key}: {message}")

        seg = self.segment
        check(seg.k_min >= 2, "segment.k_min", "must be at least 2")
        check(seg.k_max >= seg.k_min, "segment.k_max", "must be at least segment.k_min")
        check(seg.k is None or seg.k >= 2, "segment.k", "must be at least 2")
        check(seg.fit_partitions is None or seg.fit_partitions >= 1, "segment.fit_partitions", "must be at least 1")
        check(
            seg.sweep_sample is None or seg.sweep_sample >= 10 * seg.k_max,
            "segment.sweep_sample",
            f"must be at least 10 customers per segment of k_max ({10 * seg.k_max}), or null",
        )
        check(0 < seg.kmeans_tol < math.inf, "segment.kmeans_tol", "must be positive and finite")
        check(seg.sweep_parallelism >= 1, "segment.sweep_parallelism", "must be at least 1")
        check(seg.restarts >= 1, "segment.restarts", "must be at least 1")
        check(0 <= seg.min_segment_share < 0.5, "segment.min_segment_share", "must be in [0, 0.5)")
        check(seg.selection_bootstrap >= 0, "segment.selection_bootstrap", "must be 0 or more")
        check(-1 <= seg.structure_silhouette <= 1, "segment.structure_silhouette", "must be in [-1, 1]")
        lo_hi = seg.business_k
        check(len(lo_hi) == 2 and 2 <= lo_hi[0] <= lo_hi[1], "segment.business_k",
              f"must be [lowest, highest] with 2 <= lowest <= highest, got {lo_hi}")  # fmt: skip
        check(len(lo_hi) != 2 or (lo_hi[0] <= seg.k_max and lo_hi[1] >= seg.k_min), "segment.business_k",
              f"{lo_hi} does not overlap the sweep's range [{seg.k_min}, {seg.k_max}] (k_min, k_max)")  # fmt: skip
        check(bool(seg.features), "segment.features", "must name at least one feature")
        # clv and p_alive come from the customer_value table, joined into the features by customer
        value_features = list(c.VALUE_FEATURES) if self.value.enabled else []
        known = [*MODEL_FEATURES, *value_features, *self.attributes] if self.sources else list(self.attributes)
        unknown = sorted(set(seg.features) - set(known))
        check(not unknown, "segment.features", f"unknown features {unknown}; known: {known}")
        numeric = [*MODEL_FEATURES, *(n for n, kind in self.attributes.items() if kind == "numeric")]
        skewable = [*numeric, *value_features]  # CLV is as skewed as spend
        unknown = sorted(set(self.features.log1p) - set(skewable))
        check(not unknown, "features.log1p", f"unknown or non-numeric features {unknown}; numeric: {skewable}")
        check(seg.value_feature in numeric, "segment.value_feature", f"must be a numeric feature, one of {numeric}")
        check(bool(self.sources) or self.features.as_of_date is not None, "features.as_of_date",
              "is required when there are no transaction sources (ingest.sources is empty)")  # fmt: skip
        check(bool(self.sources) or self.customers is not None, "ingest.sources",
              "lists no source, and there is no customer table (ingest.customers) either")  # fmt: skip
        check(seg.pca_variance is None or 0 < seg.pca_variance <= 1, "segment.pca_variance", "must be in (0, 1]")
        check(
            not (seg.pca_variance and seg.pca_components),
            "segment.pca_variance",
            "set pca_variance or pca_components, not both",
        )
        q = self.features.cap_quantile
        check(q is None or 0.5 <= q < 1, "features.cap_quantile", "must be in [0.5, 1) (e.g. 0.99)")
        check(self.stability.bootstrap >= 0, "stability.bootstrap", "must be 0 or more")
        check(0 < self.stability.threshold <= 1, "stability.threshold", "must be in (0, 1]")
        n = seg.pca_components
        check(
            n is None or 1 <= n <= len(seg.features),
            "segment.pca_components",
            f"must be between 1 and the number of features ({len(seg.features)})",
        )
        check(self.demo.end_date > self.demo.start_date, "demo.end_date", "must be after demo.start_date")
        check(self.demo.customers >= 1, "demo.customers", "must be at least 1")
        check(
            self.storage.mode != "catalog" or bool(self.storage.database),
            "storage.database",
            "is required when storage.mode is 'catalog'",
        )
        rfm = self.rfm
        check(2 <= rfm.bins <= 10, "rfm.bins", "must be between 2 and 10")
        for key, edges in rfm.cut_points.items():
            check(key in RFM_FEATURES, f"rfm.cut_points.{key}", f"must be one of {RFM_FEATURES}")
            check(len(edges) == rfm.bins - 1 and edges == sorted(edges), f"rfm.cut_points.{key}",
                  f"needs {rfm.bins - 1} increasing edges for {rfm.bins} bins")  # fmt: skip
        for i, rule in enumerate(rfm.segments):
            scores = [*rule.r, *rule.f]
            check(all(1 <= v <= rfm.bins for v in scores), f"rfm.segments[{i}]", f"scores must be 1..{rfm.bins}")
        value = self.value
        check(value.horizon_months >= 1, "value.horizon_months", "must be at least 1")
        check(value.holdout_days >= 0, "value.holdout_days", "must be 0 (no holdout) or more")
        check(0 <= value.monthly_discount_rate < 1, "value.monthly_discount_rate", "must be in [0, 1)")
        check(0 < value.margin <= 1, "value.margin", "must be in (0, 1]")
        check(value.frequency_groups >= 1, "value.frequency_groups", "must be at least 1")
        names = [s.name for s in self.sources]
        check(len(names) == len(set(names)), "ingest.sources", f"source names must be unique, got {names}")
        check(c.ALL_SOURCES not in names, "ingest.sources",
              f"{c.ALL_SOURCES!r} names every source together in the data profile, not one source")  # fmt: skip
        return self


RFM_FEATURES = ("recency_days", "frequency", "monetary")

# Features the features job computes and the model may use; see features.py.
MODEL_FEATURES = (
    "recency_days", "frequency", "monetary", "tenure_days", "avg_order_value", "mean_days_between_purchases",
    "distinct_products", "return_rate", "purchases_per_month",
)  # fmt: skip


@dataclass(frozen=True)
class SourceColumns:
    """Canonical column <- source column: a column name as written in the source (spaces
    and all), or a SQL expression over the row (e.g. ``regexp_replace(CustomerID, '\\.0$', '')``)."""

    customer_id: str
    invoice_id: str
    product_id: str | None
    quantity: str
    event_ts: str
    line_id: str | None = None
    unit_price: str | None = None  # at least one of unit_price and line_amount
    line_amount: str | None = None  # quantity x unit price, as the source states it
    store: str | None = None  # a store, country or region


@dataclass(frozen=True)
class SourceConfig:
    name: str
    format: Literal["csv", "whitespace", "json", "parquet", "delta"]
    path: str  # a file, a folder or a glob
    columns: SourceColumns
    options: dict[str, str] = field(default_factory=dict)  # reader options: header, delimiter, encoding, quote...
    explode: str | None = None  # an array column whose elements become rows, as `item`
    channel: str | None = None  # a constant channel for every row; None: the source name
    timestamp_formats: list[str] = field(default_factory=list)  # Spark patterns, tried in order; []: ISO 8601
    timezone: str = "UTC"  # zone of timestamps that carry no offset
    return_when: str = "false"  # SQL predicate: the line is a return, refund or cancellation (negative quantity is too)
    void_when: str = "false"  # SQL predicate: the order never happened (cancelled before payment)
    non_product_when: str = "false"  # SQL predicate: postage, fees, manual adjustments: kept, not revenue
    names: list[str] = field(default_factory=list)  # a headerless whitespace file's column names, in order
    file: str = ""  # the mapping file, for messages

    def validate(self) -> SourceConfig:
        if self.columns.unit_price is None and self.columns.line_amount is None:
            raise ConfigError(f"{self.file}: columns: map unit_price, line_amount or both")
        _check_header_names(self.file, self.format, self.options, self.names)
        return self


def _check_header_names(file: str, fmt: str, options: dict[str, str], names: list[str]) -> None:
    """A whitespace file has a header line, or ``options.header: false`` and ``names``."""
    headerless = options.get("header", "true").lower() != "true"
    if names and (fmt != "whitespace" or not headerless):
        raise ConfigError(f"{file}: names: only for a whitespace source without a header line (options.header: false)")
    if fmt == "whitespace" and headerless and not names:
        raise ConfigError(f"{file}: options.header: false: a whitespace source without a header line needs names: "
                          "[its columns, in order]")  # fmt: skip
    if len(set(names)) != len(names):
        raise ConfigError(f"{file}: names: {names} repeats a name")


@dataclass(frozen=True)
class CustomerSourceConfig:
    """A customer-attribute table: one row per customer (demographics, a CRM export).
    Attributes map a name to a source column or SQL expression, as in SourceColumns.
    Numeric attributes can be model features; categorical ones are one-hot encoded when
    listed in segment.features, and otherwise only describe the segments."""

    name: str
    format: Literal["csv", "whitespace", "json", "parquet", "delta"]
    path: str
    customer_id: str
    numeric: dict[str, str] = field(default_factory=dict)
    categorical: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    explode: str | None = None  # not used for customer tables; read_source expects it
    names: list[str] = field(default_factory=list)  # a headerless whitespace file's column names, in order
    file: str = ""

    def validate(self) -> CustomerSourceConfig:
        names = [*self.numeric, *self.categorical]
        if not names:
            raise ConfigError(f"{self.file}: map at least one attribute under numeric or categorical")
        clash = sorted((set(self.numeric) & set(self.categorical)) | (set(names) & set(RESERVED_NAMES)))
        if clash:
            raise ConfigError(f"{self.file}: attribute names {clash} are taken (by a feature or twice here)")
        bad = [n for n in names if not re.fullmatch(r"[a-z][a-z0-9_]*", n)]
        if bad:
            raise ConfigError(f"{self.file}: attribute names must be snake_case identifiers, got {bad}")
        _check_header_names(self.file, self.format, self.options, self.names)
        return self


RESERVED_NAMES = (
    *MODEL_FEATURES, "customer_id", "as_of_date", "first_purchase_date", "last_purchase_date", "segment_id",
    "r_score", "f_score", "m_score", "rfm_segment", "source", "source_file", "run_id",
)  # fmt: skip


# --------------------------------------------------------------------------- loading

_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
# ${name} in another case: not read from the environment. Spark and Hadoop settings use
# ${...} for substitutions of their own (${spark.x}, ${env:X}, ${user.name}), which
# have a dot or a colon and are left alone.
_OTHER_CASE_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_EXPONENT_NUMBER = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")


def load_config(files: Sequence[str | Path], overrides: Sequence[str] = ()) -> Config:
    """Merge ``files`` in order, apply ``key=value`` overrides, build and validate."""
    if not files:
        raise ConfigError("no configuration file given (pass --config conf/base.yaml)")
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for file in files:
        _merge(merged, _read_yaml(Path(file)), str(file), origins, prefix="")
    for item in overrides:
        key, value = _parse_override(item)
        _merge(merged, _nest(key, value), "--set", origins, prefix="")
    cfg = _build(Config, merged, "", origins)
    sources = tuple(load_source(p) for p in cfg.ingest.sources)
    customers = load_customer_source(cfg.ingest.customers) if cfg.ingest.customers else None
    return dataclasses.replace(cfg, sources=sources, customers=customers).validate(origins)


def load_defaults(path: str | Path) -> Config:
    """The config of one file alone (conf/base.yaml, where the defaults live), without
    its source mappings and cross-field checks: what ``config_changes`` compares with."""
    data = _read_yaml(Path(path))
    origins: dict[str, str] = {}
    _merge({}, data, str(path), origins, prefix="")
    return _build(Config, data, "", origins)


def load_source(path: str | Path) -> SourceConfig:
    data = _read_yaml(Path(path))
    origins: dict[str, str] = {}
    _merge({}, data, str(path), origins, prefix="")
    data.setdefault("file", str(path))
    return _build(SourceConfig, data, "", origins).validate()


def load_customer_source(path: str | Path) -> CustomerSourceConfig:
    data = _read_yaml(Path(path))
    data.setdefault("file", str(path))
    return _build(CustomerSourceConfig, data, "", {}).validate()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. segment.k_max=6")
    if not raw.strip():
        return key.strip(), None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return key.strip(), raw
    # Flow collections ({...}, [...]) are YAML; anything else is one scalar, taken as
    # written when YAML would read it as a mapping or cut it at a comment.
    if not raw.lstrip().startswith(("{", "[")) and (isinstance(value, (dict, list)) or "#" in raw):
        value = raw
    return key.strip(), value


# Keys under these are free-form names that contain dots themselves (spark.sql.x).
_OPEN_MAPPINGS = ("spark.conf.",)


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    parts = dotted.split(".")
    for prefix in _OPEN_MAPPINGS:
        if dotted.startswith(prefix):
            parts = [*prefix.rstrip(".").split("."), dotted[len(prefix) :]]
    out: Any = value
    for part in reversed(parts):
        out = {part: out}
    return out


def _merge(into: dict[str, Any], new: Mapping[str, Any], origin: str, origins: dict[str, str], prefix: str) -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            origins.setdefault(dotted, origin)
            _merge(into[key], value, origin, origins, prefix=f"{dotted}.")
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
            origins[dotted] = origin
            if isinstance(value, Mapping):
                _record(value, origin, origins, f"{dotted}.")


def _record(value: Mapping[str, Any], origin: str, origins: dict[str, str], prefix: str) -> None:
    for key, sub in value.items():
        origins[f"{prefix}{key}"] = origin
        if isinstance(sub, Mapping):
            _record(sub, origin, origins, f"{prefix}{key}.")


def _origin(origins: Mapping[str, str], dotted: str) -> str:
    dotted = re.sub(r"\[\d+\]", "", dotted)  # a list item was set with its list
    while dotted:
        if dotted in origins:
            return origins[dotted]
        dotted = dotted.rpartition(".")[0]
    return "configuration"


def _build(cls: type, data: Any, prefix: str, origins: Mapping[str, str]) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_origin(origins, prefix.rstrip('.'))}: {where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            dotted = f"{prefix}{key}"
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{_origin(origins, dotted)}: unknown key '{dotted}'{hint}")
    values = {}
    for name, f in fields.items():
        dotted = f"{prefix}{name}"
        if name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise ConfigError(f"{_origin(origins, prefix.rstrip('.'))}: missing key '{dotted}'")
        values[name] = _coerce(hints[name], data[name], dotted, origins)
    return cls(**values)


def _coerce(tp: Any, value: Any, dotted: str, origins: Mapping[str, str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    written = value  # before ${ENV_VAR} is read: messages show the reference, not the secret

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{_origin(origins, dotted)}: {dotted}: expected {expected}, got {written!r}")

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, dotted, origins)
    if isinstance(value, str):
        _warn_other_case_refs(value, dotted, origins)
        value = _ENV_REF.sub(lambda m: _env(m.group(1), dotted, origins), value)
    if value is None:
        raise fail(_describe(tp))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise fail("a mapping")
        return _build(tp, value, f"{dotted}.", origins)
    if origin is Literal:
        if value not in args:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is list:
        if not isinstance(value, list):
            raise fail("a list")
        return [_coerce(args[0], v, f"{dotted}[{i}]", origins) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise fail("a mapping")
        return {str(k): _coerce(args[1], v, f"{dotted}.{k}", origins) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is float:
        # YAML 1.1 (PyYAML) reads 1e-4, with no dot, as a string; other strings stay errors
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()) and math.isfinite(float(value)):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise fail("a string")
        return str(value).lower() if isinstance(value, bool) else str(value)
    if tp is dt.date:
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            raise fail("a date YYYY-MM-DD") from None
    raise fail(_describe(tp))  # pragma: no cover - a type this loader does not know


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _env(name: str, dotted: str, origins: Mapping[str, str]) -> str:
    try:
        value = os.environ[name]
    except KeyError:
        raise ConfigError(f"{_origin(origins, dotted)}: {dotted}: environment variable {name} is not set") from None
    redaction.remember(value)
    return value


def _warn_other_case_refs(value: str, dotted: str, origins: Mapping[str, str]) -> None:
    """A warning, not an error, for ``${lower_case}``: it stays as written, and may be
    meant for Spark's or Hadoop's own substitution rather than for the environment."""
    for m in _OTHER_CASE_REF.finditer(value):
        if not _ENV_REF.fullmatch(m.group(0)):
            log.warning(
                "%s: %s: '%s' stays as written: only upper-case names (${%s}) are read from the environment",
                _origin(origins, dotted), dotted, m.group(0), m.group(1).upper(),
            )  # fmt: skip
