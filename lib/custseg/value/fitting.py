"""Maximum likelihood on the driver over sums that Spark computes.

A model supplies the per-row log-likelihood and its gradient as column expressions of
the parameters. Each evaluation of the optimiser is one Spark aggregate over the
compressed tuples (weighted by their counts of customers): only the total and the
gradient, a handful of numbers, come back to the driver. L-BFGS-B runs on the log of the
parameters, which keeps them positive without constraints that stall it; standard
errors come from a numerical Hessian (central differences of the exact gradient).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from scipy.optimize import minimize

from custseg.value.summary import CUSTOMERS

log = logging.getLogger(__name__)


class ModelNotIdentifiedError(ValueError):
    """The data cannot identify the model (no repeat customers, a parameter that runs off
    to zero or infinity): the one-line message says what is missing."""


# exp(+-20): 5e8 and 2e-9. A parameter that ends there is not estimated, only bounded.
LOG_BOUND = 20.0
MAX_ITERATIONS = 500
# Relative change of the objective and projected gradient at which L-BFGS-B stops: tight
# enough for the published fits' third decimal, which scipy's defaults are not always.
FTOL = 1e-12
GTOL = 1e-7
HESSIAN_STEP = 1e-5  # relative step of the central differences

LL = "ll"  # the per-row log-likelihood column of a likelihood's last stage


def gradient_column(name: str) -> str:
    """The per-row derivative of the log-likelihood by the parameter ``name``."""
    return f"d_{name}"


@dataclass(frozen=True)
class Likelihood:
    """A model's log-likelihood as Spark expressions.

    ``literals(params)``: the parameters and any constants of them alone (lnGamma(r), ...,
    computed once on the driver with scipy rather than per row), by column name (each
    starting with ``_``, which the data's columns do not).
    ``stages()``: lists of new columns, each added by one ``select("*", ...)`` over the
    previous; the last adds ``ll`` and ``d_<name>`` per parameter. Staged, a quantity used
    several times (the log-sum-exp, its weights) is computed once per row instead of
    copied into every expression that reads it.
    """

    names: tuple[str, ...]
    literals: Callable[[Sequence[float]], dict[str, float]]
    stages: Callable[[], list[list[Column]]]


SET = "_set"  # which parameter set a row of the cross join is scored at


def _parameter_sets(spark: SparkSession, likelihood: Likelihood, sets: Sequence[Sequence[float]]) -> DataFrame:
    """One row per parameter set: its number and its literals. Made by the JVM from
    literals (inline of an array of structs), not by createDataFrame, whose rows would
    come from a Python RDD that a Python worker must read at every evaluation."""
    rows = [
        F.struct(F.lit(i).alias(SET), *[F.lit(float(v)).alias(k) for k, v in likelihood.literals(params).items()])
        for i, params in enumerate(sets)
    ]
    return spark.range(1).select(F.inline(F.array(*rows)))


def scored(tuples: DataFrame, likelihood: Likelihood, sets: Sequence[Sequence[float]],
           stages: list[list[Column]] | None = None) -> DataFrame:  # fmt: skip
    """``tuples`` scored at each parameter set of ``sets``: one row per tuple and set,
    with the set's number (``_set``), the log-likelihood (``ll``), its gradient
    (``d_<name>``) and the intermediate columns. The parameters are columns of a small
    broadcast table rather than literals, so that the expressions are built once per fit,
    and one pass scores several sets (the Hessian's 2k points)."""
    df = tuples.crossJoin(F.broadcast(_parameter_sets(tuples.sparkSession, likelihood, sets)))
    for stage in likelihood.stages() if stages is None else stages:
        df = df.select("*", *stage)
    return df


def weighted_sums(tuples: DataFrame, likelihood: Likelihood, sets: Sequence[Sequence[float]],
                  stages: list[list[Column]] | None = None) -> np.ndarray:  # fmt: skip
    """Per parameter set, [total log-likelihood, its gradient]: sums of customers * column,
    grouped by set, in one Spark job; only these numbers reach the driver."""
    weight = F.col(CUSTOMERS).cast("double")
    columns = [LL, *(gradient_column(n) for n in likelihood.names)]
    totals = (
        scored(tuples, likelihood, sets, stages).groupBy(SET).agg(*[F.sum(weight * F.col(c)).alias(c) for c in columns])
    )
    out = np.full((len(sets), len(columns)), math.nan)
    for row in totals.collect():  # one row per parameter set
        out[row[SET]] = [math.nan if row[c] is None else float(row[c]) for c in columns]
    return out


@dataclass(frozen=True)
class Fit:
    """A fitted model: the estimates, their standard errors and how the fit went."""

    model: str
    params: dict[str, float]
    std_errors: dict[str, float]
    log_likelihood: float
    customers: int
    tuples: int
    converged: bool
    iterations: int
    evaluations: int
    message: str

    def values(self) -> list[float]:
        """The estimates in the model's parameter order, as its predictions take them."""
        return list(self.params.values())


# Tuples per partition of the cached working set: an evaluation on a few thousand tuples
# is then one task, not one per shuffle partition (on 2 cores the tasks' overhead was most
# of an evaluation's time), while millions of tuples still spread over the cluster.
TUPLES_PER_PARTITION = 200_000


def working_set(tuples: DataFrame, n_tuples: int) -> DataFrame:
    """The compressed tuples, in as few partitions as their number needs, cached for the
    optimiser's evaluations (the caller unpersists it)."""
    return tuples.coalesce(max(1, math.ceil(n_tuples / TUPLES_PER_PARTITION))).persist()


def maximise(
    model: str, tuples: DataFrame, likelihood: Likelihood, start: Sequence[float], customers: int, n_tuples: int
) -> Fit:
    """The maximum-likelihood estimates of the likelihood's parameters over the
    compressed ``tuples`` (cached by the caller: every evaluation reads them; see
    ``working_set``).

    Raises ModelNotIdentifiedError when the log-likelihood is not finite at the start or a
    parameter ends on its bound (the likelihood keeps rising towards 0 or infinity).
    """
    names = likelihood.names
    stages = likelihood.stages()
    calls = {"n": 0}
    seen: dict[bytes, tuple[float, np.ndarray]] = {}  # the optimiser asks for the start again

    def negative(theta: np.ndarray) -> tuple[float, np.ndarray]:
        key = np.asarray(theta, dtype=float).tobytes()
        if key not in seen:
            calls["n"] += 1
            params = np.exp(theta)
            sums = weighted_sums(tuples, likelihood, [params.tolist()], stages)[0]
            finite = np.all(np.isfinite(sums))
            # chain rule: d/dlog(p) = p d/dp
            seen.clear()
            seen[key] = (-sums[0], -sums[1:] * params) if finite else (math.inf, np.zeros_like(theta))
        return seen[key]

    theta0 = np.log(np.asarray(start, dtype=float))
    first, _ = negative(theta0)
    if not math.isfinite(first):
        raise ModelNotIdentifiedError(f"{model}: the log-likelihood is not finite at the starting values {list(start)}")
    result = minimize(
        negative, theta0, jac=True, method="L-BFGS-B",
        bounds=[(-LOG_BOUND, LOG_BOUND)] * len(names),
        options={"maxiter": MAX_ITERATIONS, "ftol": FTOL, "gtol": GTOL},
    )  # fmt: skip
    at_bound = [n for n, t in zip(names, result.x, strict=True) if abs(t) > LOG_BOUND - 1e-3]
    if at_bound:
        raise ModelNotIdentifiedError(
            f"{model}: the data do not identify {', '.join(at_bound)} (the likelihood keeps rising as "
            f"{'it goes' if len(at_bound) == 1 else 'they go'} to 0 or infinity): too few customers, or too "
            "little repeat buying, to fit the model"
        )
    params = np.exp(result.x)
    errors, hessian_note = standard_errors(tuples, likelihood, stages, params)
    converged = bool(result.success) and not hessian_note
    message = str(result.message) + (f"; {hessian_note}" if hessian_note else "")
    fit = Fit(
        model=model,
        params=dict(zip(names, params.tolist(), strict=True)),
        std_errors=dict(zip(names, errors.tolist(), strict=True)),
        log_likelihood=float(-result.fun),
        customers=customers,
        tuples=n_tuples,
        converged=converged,
        iterations=int(result.nit),
        evaluations=calls["n"],
        message=message,
    )
    log.info("%s fit: %s, log-likelihood %.4f, %s after %d iterations (%d evaluations): %s", model,
             {n: f"{v:.4g} ({e:.2g})" for n, v, e in zip(names, params, errors, strict=True)}, fit.log_likelihood,
             "converged" if converged else "NOT converged", fit.iterations, fit.evaluations, message)  # fmt: skip
    return fit


def standard_errors(
    tuples: DataFrame, likelihood: Likelihood, stages: list[list[Column]], params: np.ndarray
) -> tuple[np.ndarray, str]:
    """Standard errors from the inverse of the observed information (minus the Hessian of
    the total log-likelihood, by central differences of the exact gradient at 2k points,
    scored in one Spark job). NaN, with a note, when the Hessian is not negative definite."""
    k = len(params)
    steps = HESSIAN_STEP * params
    points = [params + sign * steps[j] * np.eye(k)[j] for j in range(k) for sign in (1, -1)]
    gradients = weighted_sums(tuples, likelihood, [p.tolist() for p in points], stages)[:, 1:]
    hessian = np.column_stack([(gradients[2 * j] - gradients[2 * j + 1]) / (2 * steps[j]) for j in range(k)])
    information = -(hessian + hessian.T) / 2
    try:
        np.linalg.cholesky(information)
    except np.linalg.LinAlgError:
        return np.full(k, math.nan), "the Hessian is not negative definite: no standard errors, not a clear maximum"
    return np.sqrt(np.diag(np.linalg.inv(information))), ""
