"""BG/NBD: the stable likelihood, the fit against Fader, Hardie & Lee (2005) on CDNOW, the
refusal without repeat customers, and the predictions against the published example and
scipy's hyp2f1."""

from __future__ import annotations

import math

import pytest
from pyspark.sql import functions as F

from custseg.value import bgnbd
from custseg.value.fitting import ModelNotIdentifiedError
from custseg.value.summary import compress_frequency
from tests.conftest import cdnow_file
from tests.value_reference import reference_expected, reference_ll

# FHL 2005, Table 1 / Hardie's spreadsheet; the fit's own digits (to 1e-4) for the
# per-customer log-likelihoods, which the spreadsheet shows at its unrounded estimates.
PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PUBLISHED_LL = -9582.4
SPREADSHEET = {"r": 0.2426, "alpha": 4.4136, "a": 0.7930, "b": 2.4259}
TUPLES = "x long, t_x double, T double"


@pytest.fixture(scope="module")
def cdnow_summary(spark):
    """cdnow_customers_summary.csv: ID, frequency (x), recency (t_x), T, in weeks."""
    schema = "ID int, frequency long, recency double, T double"
    raw = spark.read.csv(str(cdnow_file("cdnow_customers_summary.csv")), header=True, schema=schema)
    return raw.select(F.col("frequency").alias("x"), F.col("recency").alias("t_x"), "T")


@pytest.fixture(scope="module")
def cdnow_fit(cdnow_summary):
    return bgnbd.fit(cdnow_summary.transform(compress_frequency))


def test_fit_reproduces_fader_hardie_lee_on_cdnow(cdnow_fit, report):
    for name, value in PUBLISHED.items():
        assert cdnow_fit.params[name] == pytest.approx(value, rel=1e-3, abs=6e-4), name
    assert cdnow_fit.log_likelihood == pytest.approx(PUBLISHED_LL, abs=0.1)
    assert cdnow_fit.customers == 2357
    assert cdnow_fit.converged
    assert all(0 < e < v for e, v in zip(cdnow_fit.std_errors.values(), cdnow_fit.params.values(), strict=True))
    report.append(f"BG/NBD on CDNOW: {cdnow_fit.params}, LL {cdnow_fit.log_likelihood:.2f}, "
                  f"SE {cdnow_fit.std_errors}, {cdnow_fit.evaluations} evaluations")  # fmt: skip


def test_log_likelihood_matches_hardie_spreadsheet_per_customer(spark):
    rows = spark.createDataFrame([(2, 30.43, 38.86), (0, 0.0, 38.86)], TUPLES)
    values = bgnbd.log_likelihood(rows, list(SPREADSHEET.values())).select("ll").collect()
    assert [r["ll"] for r in values] == pytest.approx([-9.4596, -0.5538], abs=2e-4)


def test_log_likelihood_and_gradient_match_scipy_and_finite_differences(spark):
    params = [0.5, 3.0, 1.5, 4.0]
    data = [(0, 0.0, 10.0), (1, 2.5, 20.0), (7, 30.0, 31.0), (40, 12.0, 60.0)]
    got = bgnbd.log_likelihood(spark.createDataFrame(data, TUPLES), params).orderBy("x").collect()
    for (x, t_x, big_t), row in zip(data, got, strict=True):
        assert row["ll"] == pytest.approx(reference_ll(x, t_x, big_t, *params), rel=1e-10)
        for i, name in enumerate(bgnbd.PARAMS):
            h = 1e-6 * params[i]
            up, down = list(params), list(params)
            up[i] += h
            down[i] -= h
            numeric = (reference_ll(x, t_x, big_t, *up) - reference_ll(x, t_x, big_t, *down)) / (2 * h)
            assert row[f"d_{name}"] == pytest.approx(numeric, rel=1e-5, abs=1e-7), (x, name)


def test_log_likelihood_stays_finite_for_hundreds_of_purchases(spark):
    # exp(A3) and exp(A4) underflow to 0 here (about exp(-2300)): the naive form's log is -inf
    data = [(500, 700.0, 730.0), (2000, 3600.0, 3650.0)]
    p = list(PUBLISHED.values())
    scored = bgnbd.log_likelihood(spark.createDataFrame(data, TUPLES), p).orderBy("x")
    got = scored.select("ll", "d_r", "d_alpha", "d_a", "d_b", bgnbd.p_alive(p).alias("p_alive")).collect()
    for row, (x, t_x, big_t) in zip(got, data, strict=True):
        assert all(math.isfinite(v) for v in row), row
        assert row["ll"] == pytest.approx(reference_ll(x, t_x, big_t, *p), rel=1e-10)
        assert math.exp(-(0.243 + x) * math.log(4.414 + big_t)) == 0.0  # what the naive form would take the log of


def test_fit_refuses_data_without_repeat_customers(spark):
    tuples = spark.createDataFrame([(0, 0.0, 10.0, 5), (0, 0.0, 3.0, 2)], f"{TUPLES}, customers long")
    with pytest.raises(ModelNotIdentifiedError, match=r"none of the 7 customers bought again"):
        bgnbd.fit(tuples)


def test_p_alive_is_one_without_repeat_purchases_and_matches_the_formula(spark):
    p = list(PUBLISHED.values())
    rows = spark.createDataFrame([(0, 0.0, 38.86), (2, 30.43, 38.86), (1, 1.71, 38.86)], TUPLES)
    got = [r[0] for r in rows.select(bgnbd.p_alive(p)).collect()]
    r, alpha, a, b = p
    expected = [1.0, *(1 / (1 + a / (b + x - 1) * ((alpha + 38.86) / (alpha + tx)) ** (r + x))
                       for x, tx in ((2, 30.43), (1, 1.71)))]  # fmt: skip
    assert got == pytest.approx(expected, rel=1e-12)


def test_expected_purchases_reproduce_the_published_example(spark, cdnow_fit):
    # FHL 2005, section 5: E[Y(39) | x = 2, t_x = 30.43, T = 38.86] = 1.226
    rows = spark.createDataFrame([(2, 30.43, 38.86)], TUPLES)
    value = rows.select(bgnbd.expected_purchases(cdnow_fit.values(), 39.0)).first()[0]
    assert round(value, 3) == 1.226


@pytest.mark.parametrize("t", [1.0, 39.0, 520.0])
def test_expected_purchases_match_scipy_hyp2f1(spark, t):
    p = [0.243, 4.414, 0.793, 2.426]
    data = [(0, 0.0, 0.0), (0, 0.0, 38.86), (2, 30.43, 38.86), (25, 38.0, 38.86), (5, 3.0, 38.86)]
    got = spark.createDataFrame(data, TUPLES).select(bgnbd.expected_purchases(p, t)).collect()
    for (x, t_x, big_t), row in zip(data, got, strict=True):
        assert row[0] == pytest.approx(reference_expected(t, x, t_x, big_t, *p), rel=1e-9), (x, t_x, big_t)


def reference_expected_by_integral(t: float, x: float, t_x: float, big_t: float, r, alpha, a, b) -> float:
    """E[Y(t) | x, t_x, T] another way, with no hypergeometric function: P(alive) times the
    mean over p ~ Beta(a, b + x) of (1 - ((alpha + T) / (alpha + T + p t))^(r + x)) / p, the
    expected purchases of an alive customer with lambda ~ Gamma(r + x, alpha + T)."""
    from scipy.integrate import quad
    from scipy.stats import beta as beta_dist

    def alive_mean(p: float) -> float:
        return -math.expm1((r + x) * math.log((alpha + big_t) / (alpha + big_t + p * t))) / p

    density = beta_dist(a, b + x)
    mean, _ = quad(lambda p: alive_mean(p) * density.pdf(p), 0, 1, points=[density.mean()], limit=200)
    u = math.log(a) - math.log(b + x - 1) + (r + x) * math.log((alpha + big_t) / (alpha + t_x)) if x else -math.inf
    return mean / (1 + math.exp(u))


def test_expected_purchases_stay_finite_for_hundreds_of_purchases(spark):
    # hyp2f1(r + x, b + x; a + b + x - 1; z) as FHL print it is about 1e200 here
    p = [0.243, 4.414, 0.793, 2.426]
    data = [(500, 729.0, 730.0), (500, 700.0, 730.0), (300, 200.0, 210.0)]
    got = spark.createDataFrame(data, TUPLES).select(bgnbd.expected_purchases(p, 52.0)).collect()
    for (x, t_x, big_t), row in zip(data, got, strict=True):
        assert math.isfinite(row[0])
        assert row[0] == pytest.approx(reference_expected_by_integral(52.0, x, t_x, big_t, *p), rel=1e-6), x
    assert got[0][0] > 10  # an active heavy buyer keeps buying; one silent for 30 of their ~1-week gaps does not
    assert got[1][0] < 1e-3
