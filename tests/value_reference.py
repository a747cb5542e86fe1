"""Independent references for the customer-value tests: the published formulas with
numpy and scipy, and the raw CDNOW sample as canonical transactions."""

from __future__ import annotations

import math

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from scipy.special import gammaln, hyp2f1

from tests.conftest import cdnow_file


def reference_ll(x: float, t_x: float, big_t: float, r: float, alpha: float, a: float, b: float) -> float:
    """The per-customer log-likelihood with scipy, in the same log-sum-exp form."""
    a12 = gammaln(r + x) - gammaln(r) + r * math.log(alpha) + gammaln(a + b) + gammaln(b + x) - gammaln(b)
    a12 -= gammaln(a + b + x)
    a3 = -(r + x) * math.log(alpha + big_t)
    a4 = math.log(a) - math.log(b + x - 1) - (r + x) * math.log(alpha + t_x) if x > 0 else -math.inf
    return a12 + np.logaddexp(a3, a4)


def reference_expected(t: float, x: float, t_x: float, big_t: float, r: float, alpha: float, a: float, b: float):
    """FHL 2005 eq. 10 as printed, with scipy's hyp2f1."""
    z = t / (alpha + big_t + t)
    bought = (a + b + x - 1) / (a - 1) * (1 - ((alpha + big_t) / (alpha + big_t + t)) ** (r + x)
                                          * hyp2f1(r + x, b + x, a + b + x - 1, z))  # fmt: skip
    return bought / (1 + (x > 0) * a / (b + x - 1) * ((alpha + big_t) / (alpha + t_x)) ** (r + x))


def cdnow_sample_transactions(spark: SparkSession) -> DataFrame:
    """CDNOW_sample.txt (whitespace, no header: master id, sample id, yyyyMMdd, CDs, dollars)
    as canonical purchases, the customer id being the sample's own id, as in the summaries."""
    fields = F.split(F.trim(F.col("value")), r"\s+")
    return spark.read.text(str(cdnow_file("CDNOW_sample.txt"))).select(
        fields[1].cast("int").cast("string").alias("customer_id"),
        fields[4].cast("double").alias("amount"),
        F.to_timestamp(fields[2], "yyyyMMdd").alias("event_ts"),
        F.lit("purchase").alias("txn_type"),
    )
