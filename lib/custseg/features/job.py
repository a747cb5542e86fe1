"""The features stage: the features table from transactions (and customer attributes),
as of an explicit date. The stage's only reader and writer of tables."""

from __future__ import annotations

import datetime as dt
import logging

from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io
from custseg.config import Config, ConfigError
from custseg.features.rfm import (
    customer_features,
    default_as_of,
    nothing_before,
    refuse_or_warn,
    rfm_cut_points,
    rfm_segments,
    with_attributes,
)

log = logging.getLogger(__name__)


def run(spark: SparkSession, cfg: Config) -> dt.date:
    """Compute and overwrite the features table; return the as-of date used.

    With transaction sources: RFM and behavioural features plus RFM scores, and the
    customer attributes when a customer table is configured. Without: the customer
    attributes alone, as of ``features.as_of_date`` (which is then required).
    """
    names = list(cfg.attributes)
    attributes = (
        io.read_required(spark, io.table_ref(cfg.storage, cfg.tables.customer_attributes), "customer attributes",
                         "ingest (with ingest.customers)")
        if names else None
    )  # fmt: skip
    if not cfg.sources:
        if cfg.features.as_of_date is None:
            raise ConfigError("features.as_of_date: required when there are no transaction sources (ingest.sources)")
        as_of = cfg.features.as_of_date
        features = attributes.select(c.CUSTOMER_ID, F.lit(as_of).alias(c.AS_OF_DATE), *names)
        io.overwrite(features, io.table_ref(cfg.storage, cfg.tables.features))
        return as_of
    source = io.table_ref(cfg.storage, cfg.tables.transactions)
    txns = io.read_required(spark, source, "transactions", "ingest")
    as_of = cfg.features.as_of_date or default_as_of(txns, source)
    if cfg.features.as_of_date is not None and nothing_before(txns, as_of):
        refuse_or_warn(txns, source, as_of, cfg.features.allow_empty)
    log.info("features as of %s from %s", as_of, source)
    features = txns.transform(customer_features(as_of))
    if attributes is not None:
        features = features.transform(with_attributes(attributes, names, as_of))
    features = features.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        edges = rfm_cut_points(features, cfg.rfm)
        log.info("RFM bin edges: %s", edges)
        scored = features.transform(rfm_segments(edges, cfg.rfm.bins, cfg.rfm.segments, cfg.rfm.default_segment))
        io.overwrite(scored, io.table_ref(cfg.storage, cfg.tables.features))
    finally:
        features.unpersist()
    return as_of


def customers(spark: SparkSession, cfg: Config) -> int:
    """The customers in the features table."""
    return io.read(spark, io.table_ref(cfg.storage, cfg.tables.features)).count()
