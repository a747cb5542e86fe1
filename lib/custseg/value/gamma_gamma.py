"""The Gamma-Gamma model of spend per transaction (Fader & Hardie 2013, "The Gamma-Gamma
model of monetary value"; Colombo & Jiang 1999): a customer's transaction values are
Gamma(p, nu) with nu ~ Gamma(q, gamma) across customers, so the mean zbar of their x
repeat transactions has the density

    lnL = lnG(px + q) - lnG(px) - lnG(q) + q ln(gamma) + (px - 1) ln(zbar) + px ln(x)
          - (px + q) ln(gamma + x zbar)

It is fitted on repeat customers with a positive mean spend, and assumes spend does not
depend on how often a customer buys (check the correlation of x and zbar before use).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from scipy.special import gammaln, psi

from custseg.value.fitting import LL, Fit, Likelihood, ModelNotIdentifiedError, maximise, scored, working_set
from custseg.value.special import digamma, lgamma
from custseg.value.summary import CUSTOMERS, MEAN_SPEND, X

MODEL = "gamma_gamma"
PARAMS = ("p", "q", "gamma")
START = (1.0, 1.0, 1.0)
MIN_CUSTOMERS = 2


def _literals(params: Sequence[float]) -> dict[str, float]:
    p, q, gamma = (float(v) for v in params)
    return {"_p": p, "_q": q, "_gamma": gamma, "_log_gamma": math.log(gamma), "_lg_q": float(gammaln(q)),
            "_dg_q": float(psi(q))}  # fmt: skip


def _stages() -> list[list[Column]]:
    p, q, gamma = (F.col(n) for n in ("_p", "_q", "_gamma"))
    x, z = F.col(X).cast("double"), F.col(MEAN_SPEND)
    px = p * x
    first = [
        px.alias("_px"),
        F.log(gamma + x * z).alias("_log_spent"),
        F.log(z).alias("_log_z"),
        F.log(x).alias("_log_x"),
        (digamma(px + q) - digamma(px)).alias("_d_px"),
        digamma(px + q).alias("_dg_pxq"),
        (lgamma(px + q) - lgamma(px)).alias("_lg_px"),
    ]
    px, log_spent = F.col("_px"), F.col("_log_spent")
    last = [
        (F.col("_lg_px") - F.col("_lg_q") + q * F.col("_log_gamma") + (px - F.lit(1.0)) * F.col("_log_z")
         + px * F.col("_log_x") - (px + q) * log_spent).alias(LL),
        (x * (F.col("_d_px") + F.col("_log_z") + F.col("_log_x") - log_spent)).alias("d_p"),
        (F.col("_dg_pxq") - F.col("_dg_q") + F.col("_log_gamma") - log_spent).alias("d_q"),
        (q / gamma - (px + q) / (gamma + x * z)).alias("d_gamma"),
    ]  # fmt: skip
    return [first, last]


LIKELIHOOD = Likelihood(PARAMS, _literals, _stages)


def log_likelihood(tuples: DataFrame, params: Sequence[float]) -> DataFrame:
    """Per row of (x, mean_spend): ``ll``, the log-likelihood at ``params``, and its
    derivatives ``d_p``, ``d_q``, ``d_gamma`` (with intermediate ``_`` columns)."""
    return scored(tuples, LIKELIHOOD, [params])


def check_identified(tuples: DataFrame) -> tuple[int, int]:
    """(customers, tuples), after one aggregate; refuses fewer than two repeat customers
    with a positive spend, or spends that are all the same (no spread to estimate)."""
    row = tuples.agg(
        F.sum(CUSTOMERS).alias("customers"),
        F.count(F.lit(1)).alias("tuples"),
        F.min(MEAN_SPEND).alias("lowest"),
        F.max(MEAN_SPEND).alias("highest"),
    ).first()
    customers = int(row["customers"] or 0)
    if customers < MIN_CUSTOMERS:
        raise ModelNotIdentifiedError(
            f"Gamma-Gamma: {customers} repeat customers with a positive spend; the spend model needs at least "
            f"{MIN_CUSTOMERS}"
        )
    if row["lowest"] == row["highest"]:
        raise ModelNotIdentifiedError(
            f"Gamma-Gamma: every repeat customer's mean spend is {row['lowest']}: no spread to estimate"
        )
    return customers, int(row["tuples"])


def fit(tuples: DataFrame) -> Fit:
    """The maximum-likelihood Gamma-Gamma fit on compressed (x, mean_spend, customers)
    tuples (summary.compress_spend), checked, then cached for the fit and released after it."""
    customers, n_tuples = check_identified(tuples)
    cached = working_set(tuples, n_tuples)
    try:
        return maximise(MODEL, cached, LIKELIHOOD, START, customers, n_tuples)
    finally:
        cached.unpersist()


def expected_spend(params: Sequence[float], x: Column | None = None, mean_spend: Column | None = None) -> Column:
    """E[spend per transaction | x, zbar] = p (gamma + x zbar) / (p x + q - 1): a weighted
    mean of the population mean p gamma / (q - 1) and the customer's own zbar, the weight
    of zbar growing with x. For x = 0 it is the population mean; null when q <= 1 and the
    customer has no repeat purchase (the population mean is then infinite)."""
    p, q, gamma = (F.lit(float(v)) for v in params)
    x = F.col(X).cast("double") if x is None else x.cast("double")
    zbar = F.coalesce(F.col(MEAN_SPEND) if mean_spend is None else mean_spend, F.lit(0.0))
    denominator = p * x + q - F.lit(1.0)
    return F.when(denominator > 0, p * (gamma + x * zbar) / denominator)
