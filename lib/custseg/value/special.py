"""Special functions as Spark column expressions: log-gamma, digamma and the Gauss
hypergeometric series the BG/NBD predictions need.

Spark SQL has none of them, and a Python UDF would serialise every row to a Python
worker, so they are built from ``log``, arithmetic and (for the series) the higher-order
``aggregate``. Each is accurate to about 1e-12 relative for the arguments the models use;
tests/test_value_special.py compares them with scipy.
"""

from __future__ import annotations

import math

from pyspark.sql import Column
from pyspark.sql import functions as F

# lgamma(z) = lgamma(z + SHIFT) - sum_{k<SHIFT} log(z + k): the Stirling series (to its
# z^-9 term; digamma's to z^-10) is then evaluated at z + SHIFT >= 8, where its first
# omitted term is below 3e-13.
SHIFT = 8
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _num(value: Column | float) -> Column:
    return value if isinstance(value, Column) else F.lit(float(value))


def lgamma(z: Column | float) -> Column:
    """log Gamma(z) for z > 0 (null or NaN elsewhere)."""
    z = _num(z)
    w = z + F.lit(float(SHIFT))
    w2 = w * w
    stirling = (
        (w - F.lit(0.5)) * F.log(w)
        - w
        + F.lit(_HALF_LOG_2PI)
        + (
            F.lit(1 / 12)
            - (F.lit(1 / 360) - (F.lit(1 / 1260) - (F.lit(1 / 1680) - F.lit(1 / 1188) / w2) / w2) / w2) / w2
        )
        / w
    )
    return stirling - sum((F.log(z + F.lit(float(k))) for k in range(SHIFT)), F.lit(0.0))


def digamma(z: Column | float) -> Column:
    """d/dz log Gamma(z) for z > 0, by the same shift and the asymptotic series."""
    z = _num(z)
    w = z + F.lit(float(SHIFT))
    w2 = w * w
    series = (
        F.log(w)
        - F.lit(0.5) / w
        - (F.lit(1 / 12) - (F.lit(1 / 120) - (F.lit(1 / 252) - (F.lit(1 / 240) - F.lit(1 / 132) / w2) / w2) / w2) / w2)
        / w2
    )
    return series - sum((F.lit(1.0) / (z + F.lit(float(k))) for k in range(SHIFT)), F.lit(0.0))


def log_sum_exp(u: Column, v: Column) -> Column:
    """log(exp(u) + exp(v)) without overflow or underflow; ``v`` may be -inf (or null:
    then the result is ``u``), as for the BG/NBD's second term when x = 0."""
    m = F.greatest(u, v)  # greatest skips nulls
    return m + F.log(F.exp(u - m) + F.coalesce(F.exp(v - m), F.lit(0.0)))


# The series stops when its terms are below this relative to the sum, or at MAX_TERMS.
SERIES_TOLERANCE = 1e-15
MAX_TERMS = 100_000


def hyp2f1_series(a: Column, b: Column, c: Column, z: Column) -> Column:
    """The Gauss hypergeometric function 2F1(a, b; c; z) for 0 <= z < 1 and c > 0, by its
    power series: t_0 = 1, t_{n+1} = t_n (a+n)(b+n) / ((c+n)(n+1)) z.

    The number of terms is set per row: the terms grow while (a+n)(b+n)z/((c+n)(n+1)) > 1,
    so the series runs past that peak (n about (|a| + |b|) z / (1 - z)) and then long enough
    for z^n to fall below the tolerance. A row with z close to 1 takes more terms; the
    callers put it in the form whose a and b do not grow with the customer's purchases
    (bgnbd.expected_purchases), so the peak stays early.
    """
    peak = (F.abs(a) + F.abs(b)) * z / (F.lit(1.0) - z)
    tail = F.lit(math.log(SERIES_TOLERANCE)) / F.log(F.greatest(z, F.lit(1e-300)))
    terms = F.least(F.ceil(peak + tail) + F.lit(2), F.lit(MAX_TERMS)).cast("int")
    start = F.struct(F.lit(1.0).alias("term"), F.lit(1.0).alias("total"))

    def step(acc: Column, n: Column) -> Column:
        k = n.cast("double")
        term = acc["term"] * (a + k) * (b + k) / ((c + k) * (k + F.lit(1.0))) * z
        return F.struct(term.alias("term"), (acc["total"] + term).alias("total"))

    summed = F.aggregate(F.sequence(F.lit(0), terms - F.lit(1)), start, step, lambda acc: acc["total"])
    return F.when(z == F.lit(0.0), F.lit(1.0)).otherwise(summed)
