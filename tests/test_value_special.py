"""The special functions as column expressions, against scipy."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F
from scipy.special import gammaln, hyp2f1, psi

from custseg.value.special import digamma, hyp2f1_series, lgamma, log_sum_exp

ARGUMENTS = [1e-3, 0.243, 0.5, 1.0, 2.426, 7.9, 8.0, 30.0, 500.243, 1e6]


def test_lgamma_and_digamma_match_scipy_from_near_zero_to_a_million(spark):
    rows = spark.createDataFrame([(z,) for z in ARGUMENTS], "z double")
    got = rows.select("z", lgamma(F.col("z")).alias("lg"), digamma(F.col("z")).alias("dg")).orderBy("z").collect()
    for row in got:
        assert row["lg"] == pytest.approx(gammaln(row["z"]), rel=1e-12, abs=1e-12), row["z"]
        assert row["dg"] == pytest.approx(psi(row["z"]), rel=1e-12, abs=1e-12), row["z"]


def test_hyp2f1_series_matches_scipy_up_to_z_near_one(spark):
    cases = [(1.98, -0.21, 2.2, 0.0), (1.98, -0.21, 2.2, 0.47), (1.98, -0.21, 502.2, 0.9), (0.5, 1.5, 3.0, 0.999),
             (40.0, 0.8, 45.0, 0.6)]  # fmt: skip
    rows = spark.createDataFrame(cases, "a double, b double, c double, z double")
    got = rows.select(hyp2f1_series(F.col("a"), F.col("b"), F.col("c"), F.col("z"))).collect()
    for (a, b, c, z), row in zip(cases, got, strict=True):
        assert row[0] == pytest.approx(hyp2f1(a, b, c, z), rel=1e-10), (a, b, c, z)


def test_log_sum_exp_does_not_underflow_and_takes_a_null_as_absent(spark):
    rows = spark.createDataFrame([(-2000.0, -2001.0), (-5.0, None)], "u double, v double")
    got = [r[0] for r in rows.select(log_sum_exp(F.col("u"), F.col("v"))).collect()]
    assert got == pytest.approx([-2000.0 + 0.31326168751822286, -5.0], rel=1e-15)
