"""The BG/NBD model of repeat purchases (Fader, Hardie & Lee 2005, "Counting your
customers the easy way"): while alive a customer buys at rate lambda ~ Gamma(r, alpha);
after each purchase they drop out with probability p ~ Beta(a, b).

The log-likelihood of a customer (x, t_x, T) is written in the stable form of Hardie's
note on Excel's #NUM! error:

    ln L = A1 + A2 + ln(exp(A3) + [x > 0] exp(A4))
    A1 = lnG(r + x) - lnG(r) + r ln(alpha)
    A2 = lnG(a + b) + lnG(b + x) - lnG(b) - lnG(a + b + x)
    A3 = -(r + x) ln(alpha + T)
    A4 = ln(a) - ln(b + x - 1) - (r + x) ln(alpha + t_x)

with the last logarithm by log-sum-exp: A3 and A4 are about -x ln(T), thousands below
zero for a customer with hundreds of purchases, where exp() underflows to 0 and the naive
likelihood's log is -inf (how lifetimes stalls at its starting values).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from scipy.special import gammaln, psi

from custseg.value.fitting import LL, Fit, Likelihood, ModelNotIdentifiedError, maximise, scored, working_set
from custseg.value.special import digamma, hyp2f1_series, lgamma, log_sum_exp
from custseg.value.summary import CUSTOMERS, T_CAL, T_X, X

MODEL = "bgnbd"
PARAMS = ("r", "alpha", "a", "b")
START = (1.0, 1.0, 1.0, 1.0)


def _x() -> Column:
    return F.col(X).cast("double")


def _is_repeat() -> Column:
    return F.col(X) > 0


def _literals(params: Sequence[float]) -> dict[str, float]:
    r, alpha, a, b = (float(v) for v in params)
    return {
        "_r": r, "_alpha": alpha, "_a": a, "_b": b, "_log_alpha": math.log(alpha), "_log_a": math.log(a),
        "_lg_r": float(gammaln(r)), "_lg_ab": float(gammaln(a + b)), "_lg_b": float(gammaln(b)),
        "_dg_r": float(psi(r)), "_dg_ab": float(psi(a + b)), "_dg_b": float(psi(b)),
    }  # fmt: skip


def _stages() -> list[list[Column]]:
    r, alpha, a, b = (F.col(n) for n in ("_r", "_alpha", "_a", "_b"))
    x, t_x, big_t = _x(), F.col(T_X), F.col(T_CAL)
    rx = r + x
    first = [
        rx.alias("_rx"),
        (-rx * F.log(alpha + big_t)).alias("_a3"),
        # null for x = 0: ln(b - 1) is not defined there, and the term is absent
        F.when(_is_repeat(), F.col("_log_a") - F.log(b + x - F.lit(1.0)) - rx * F.log(alpha + t_x)).alias("_a4"),
        (lgamma(rx) - F.col("_lg_r") + r * F.col("_log_alpha") + F.col("_lg_ab") + lgamma(b + x) - F.col("_lg_b")
         - lgamma(a + b + x)).alias("_a12"),
        (F.col("_dg_ab") - digamma(a + b + x)).alias("_d_ab"),
        (digamma(rx) - F.col("_dg_r")).alias("_d_rx"),
        (digamma(b + x) - F.col("_dg_b")).alias("_d_bx"),
    ]  # fmt: skip
    lse = [log_sum_exp(F.col("_a3"), F.col("_a4")).alias("_lse")]
    # the shares of the two terms in the likelihood
    shares = [F.exp(F.col("_a3") - F.col("_lse")).alias("_w3"),
              F.coalesce(F.exp(F.col("_a4") - F.col("_lse")), F.lit(0.0)).alias("_w4")]  # fmt: skip
    w3, w4, rx = F.col("_w3"), F.col("_w4"), F.col("_rx")
    repeat_b = F.when(_is_repeat(), w4 / (b + x - F.lit(1.0))).otherwise(F.lit(0.0))
    last = [
        (F.col("_a12") + F.col("_lse")).alias(LL),
        (F.col("_d_rx") + F.col("_log_alpha") - w3 * F.log(alpha + big_t) - w4 * F.log(alpha + t_x)).alias("d_r"),
        (r / alpha - w3 * rx / (alpha + big_t) - w4 * rx / (alpha + t_x)).alias("d_alpha"),
        (F.col("_d_ab") + w4 / a).alias("d_a"),
        (F.col("_d_ab") + F.col("_d_bx") - repeat_b).alias("d_b"),
    ]
    return [first, lse, shares, last]


LIKELIHOOD = Likelihood(PARAMS, _literals, _stages)


def log_likelihood(tuples: DataFrame, params: Sequence[float]) -> DataFrame:
    """Per row of (x, t_x, T): ``ll``, the log-likelihood at ``params``, and its
    derivatives ``d_r``, ``d_alpha``, ``d_a``, ``d_b`` (with intermediate ``_`` columns)."""
    return scored(tuples, LIKELIHOOD, [params])


def check_identified(tuples: DataFrame) -> tuple[int, int]:
    """(customers, tuples) of the compressed data, after one aggregate; refuses data the
    model cannot be fitted on: no customers, or no repeat purchase (x = 0 for everyone:
    the likelihood then rises without end as the purchase rate goes to 0)."""
    row = tuples.agg(
        F.sum(CUSTOMERS).alias("customers"),
        F.count(F.lit(1)).alias("tuples"),
        F.sum(F.when(_is_repeat(), F.col(CUSTOMERS))).alias("repeaters"),
    ).first()
    customers, repeaters = int(row["customers"] or 0), int(row["repeaters"] or 0)
    if customers == 0:
        raise ModelNotIdentifiedError("BG/NBD: no customer with a purchase before the as-of date to fit on")
    if repeaters == 0:
        raise ModelNotIdentifiedError(
            f"BG/NBD: none of the {customers} customers bought again after their first purchase day; "
            "the model needs repeat customers to estimate purchase rates and dropout"
        )
    return customers, int(row["tuples"])


def fit(tuples: DataFrame, start: Sequence[float] | None = None) -> Fit:
    """The maximum-likelihood BG/NBD fit on compressed (x, t_x, T, customers) tuples,
    from ``start`` (r, alpha, a, b; default all 1: the estimates of a related fit, such as
    the one before the holdout, save most of the optimiser's evaluations).

    After one aggregate that checks the data can identify the model, the tuples are
    cached for the fit's aggregates (one per optimiser evaluation) and released after it.
    """
    customers, n_tuples = check_identified(tuples)
    cached = working_set(tuples, n_tuples)
    try:
        return maximise(MODEL, cached, LIKELIHOOD, start or START, customers, n_tuples)
    finally:
        cached.unpersist()


# --------------------------------------------------------------------------- predictions


def _tuple(x: Column | None, t_x: Column | None, big_t: Column | None) -> tuple[Column, Column, Column]:
    """The customer's (x, t_x, T): the row's columns unless given."""
    return (
        _x() if x is None else x.cast("double"),
        F.col(T_X) if t_x is None else t_x,
        F.col(T_CAL) if big_t is None else big_t,
    )


def p_alive(
    params: Sequence[float], x: Column | None = None, t_x: Column | None = None, big_t: Column | None = None
) -> Column:
    """P(alive at T | x, t_x, T) = 1 / (1 + [x > 0] a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x)):
    1 for a customer with no repeat purchase (in the BG/NBD one can only drop out right
    after a purchase). A logistic of u, in the form that does not overflow for large x."""
    r, alpha, a, b = (F.lit(float(v)) for v in params)
    x, t_x, big_t = _tuple(x, t_x, big_t)
    u = F.log(a) - F.log(b + x - F.lit(1.0)) + (r + x) * (F.log(alpha + big_t) - F.log(alpha + t_x))
    logistic = F.when(u > 0, F.exp(-u) / (F.lit(1.0) + F.exp(-u))).otherwise(F.lit(1.0) / (F.lit(1.0) + F.exp(u)))
    return F.when(x > 0, logistic).otherwise(F.lit(1.0))


def expected_purchases(
    params: Sequence[float],
    t: Column | float,
    x: Column | None = None,
    t_x: Column | None = None,
    big_t: Column | None = None,
) -> Column:
    """E[Y(t) | x, t_x, T]: the expected purchases in the next ``t`` units (FHL 2005, eq. 10):

        (a + b + x - 1) / (a - 1) * [1 - ((alpha + T) / (alpha + T + t))^(r + x)
            * 2F1(r + x, b + x; a + b + x - 1; z)] * P(alive),   z = t / (alpha + T + t)

    with 2F1 by Euler's transformation, 2F1(A, B; C; z) = (1 - z)^(C - A - B)
    2F1(C - A, C - B; C; z), so that the power and the series become
    (1 - z)^(a - 1) * 2F1(a + b - 1 - r, a - 1; a + b + x - 1; z): nothing grows with x,
    no power overflows, and the series' terms do not climb with x first. Undefined at
    a = 1 exactly (a 0/0 there).
    """
    r, alpha, a, b = (F.lit(float(v)) for v in params)
    x, t_x, big_t = _tuple(x, t_x, big_t)
    t = t if isinstance(t, Column) else F.lit(float(t))
    c = a + b + x - F.lit(1.0)
    one_minus_z = (alpha + big_t) / (alpha + big_t + t)
    series = hyp2f1_series(a + b - F.lit(1.0) - r, a - F.lit(1.0), c, t / (alpha + big_t + t))
    bought = c / (a - F.lit(1.0)) * (F.lit(1.0) - F.pow(one_minus_z, a - F.lit(1.0)) * series)
    return bought * p_alive(params, x, t_x, big_t)


def expected_purchases_new(params: Sequence[float], t: Column | float) -> Column:
    """E[X(t)]: the expected repeat purchases in the first ``t`` units after a customer's
    first purchase (FHL 2005, eq. 9): the conditional expectation at x = t_x = T = 0."""
    zero = F.lit(0.0)
    return expected_purchases(params, t, zero, zero, zero)


def per_tuple(df: DataFrame, columns: dict[str, Column]) -> DataFrame:
    """``df`` with ``columns`` (expressions of x, t_x, T) added, each computed once per
    distinct (x, t_x, T) and joined back: the series in the predictions then run once per
    tuple, not once per customer.

    Input columns: x, t_x, T, any others. Output columns: those, then ``columns``.
    """
    keys = [X, T_X, T_CAL]
    scored = df.select(*keys).distinct().select(*keys, *[col.alias(name) for name, col in columns.items()])
    return df.join(scored, on=keys, how="left").select(*df.columns, *columns)
