"""The customer-value stage: transactions in; customer_value, customer_value_fits and
customer_value_evaluation out. The only module of the stage that reads or writes tables.

1. The BTYD summary per customer as of the as-of date (features.as_of_date, else the day
   after the newest transaction, as the features job takes it).
2. With ``value.holdout_days``: the same on the history before the holdout, the BG/NBD
   fit there, and its evaluation on the holdout (per customer, per frequency group, and
   the cumulative curve).
3. The BG/NBD and Gamma-Gamma fits on the whole history (the BG/NBD starting from the
   estimates before the holdout, when there are some), and each customer's P(alive),
   expected purchases and spend and CLV over ``value.horizon_months``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from custseg import columns as c
from custseg import io
from custseg.config import Config, ValueConfig
from custseg.features import rfm
from custseg.value import bgnbd, evaluate, gamma_gamma
from custseg.value.fitting import Fit, ModelNotIdentifiedError
from custseg.value.predict import VALUE_COLUMNS, customer_value
from custseg.value.summary import btyd_summary, compress_frequency, compress_spend, holdout_purchases, unit_days

log = logging.getLogger(__name__)

FITS_SCHEMA = (
    "run_id string, as_of_date date, model string, period string, fitted_before date, unit string, "
    "params map<string, double>, std_errors map<string, double>, log_likelihood double, customers long, "
    "tuples long, converged boolean, iterations int, evaluations int, message string, holdout_customers long, "
    "holdout_actual double, holdout_expected double, holdout_mae double"
)


@dataclass(frozen=True)
class ValueResult:
    as_of: dt.date
    purchases: Fit  # BG/NBD on the whole history
    spend: Fit  # Gamma-Gamma on the whole history
    calibration: Fit | None = None  # BG/NBD before the holdout
    holdout: evaluate.HoldoutMetrics | None = None


def run(spark: SparkSession, cfg: Config, run_id: str) -> ValueResult:
    """Fit, predict and write the stage's three tables; return the fits."""
    vc = cfg.value
    source = io.table_ref(cfg.storage, cfg.tables.transactions)
    txns = io.read_required(spark, source, "transactions", "ingest")
    as_of = cfg.features.as_of_date or rfm.default_as_of(txns, source)
    log.info("customer value as of %s from %s, in %s, over %d months", as_of, source, vc.unit, vc.horizon_months)
    calibration = holdout = None
    if vc.holdout_days > 0:
        calibration, holdout = _evaluate_on_holdout(spark, cfg, txns, as_of, run_id)
    summary = txns.transform(btyd_summary(as_of, vc.unit)).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        warm = None if calibration is None else calibration.values()
        purchases = bgnbd.fit(summary.transform(compress_frequency), start=warm)
        spend = gamma_gamma.fit(summary.transform(compress_spend))
        values = summary.transform(
            customer_value(purchases.values(), spend.values(), vc.unit, vc.horizon_months, vc.monthly_discount_rate,
                           vc.margin)
        )  # fmt: skip
        keyed = values.select(c.CUSTOMER_ID, F.lit(run_id).alias(c.RUN_ID), *VALUE_COLUMNS[1:])
        io.overwrite(keyed, io.table_ref(cfg.storage, cfg.tables.customer_value))
    finally:
        summary.unpersist()
    rows = [_fit_row(run_id, as_of, "full", as_of, vc, fit) for fit in (purchases, spend)]
    if calibration is not None:
        rows.insert(0, _fit_row(run_id, as_of, "calibration", as_of - dt.timedelta(days=vc.holdout_days), vc,
                                calibration, holdout))  # fmt: skip
    _replace_run(spark, spark.createDataFrame(rows, FITS_SCHEMA), io.table_ref(cfg.storage, cfg.tables.value_fits),
                 run_id)  # fmt: skip
    return ValueResult(as_of, purchases, spend, calibration, holdout)


def _evaluate_on_holdout(
    spark: SparkSession, cfg: Config, txns: DataFrame, as_of: dt.date, run_id: str
) -> tuple[Fit, evaluate.HoldoutMetrics]:
    """The BG/NBD fit before the holdout and its scores on it; writes the evaluation table."""
    vc = cfg.value
    start = as_of - dt.timedelta(days=vc.holdout_days)
    summary = txns.transform(btyd_summary(start, vc.unit)).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        try:
            fit = bgnbd.fit(summary.transform(compress_frequency))
        except ModelNotIdentifiedError as exc:
            raise ModelNotIdentifiedError(
                f"before the holdout (the history before {start}, value.holdout_days={vc.holdout_days}): {exc}; "
                "shorten value.holdout_days, or set it to 0 for no holdout evaluation"
            ) from None
        length = vc.holdout_days / unit_days(vc.unit)
        comparison = summary.transform(
            evaluate.holdout_comparison(txns.transform(holdout_purchases(start, vc.holdout_days)), fit.values(), length)
        ).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            metrics = evaluate.holdout_metrics(comparison)
            log.info("holdout from %s (%d days): %d customers, %.0f repeat purchases, %.1f expected, MAE %.4f",
                     start, vc.holdout_days, metrics.customers, metrics.actual, metrics.expected,
                     metrics.mae)  # fmt: skip
            origin = summary.agg(F.min(c.FIRST_PURCHASE)).first()[0]  # one date: where the curve starts
            groups = comparison.transform(evaluate.by_frequency(vc.frequency_groups))
            curve = evaluate.cumulative_curve(txns, summary, fit.values(), vc.unit, origin, start, as_of)
            table = _evaluation_table(groups, curve, run_id, as_of, start)
            _replace_run(spark, table, io.table_ref(cfg.storage, cfg.tables.value_evaluation), run_id)
        finally:
            comparison.unpersist()
    finally:
        summary.unpersist()
    return fit, metrics


def _evaluation_table(
    groups: DataFrame, curve: DataFrame, run_id: str, as_of: dt.date, holdout_start: dt.date
) -> DataFrame:
    """The frequency groups and the cumulative curve, in one long table: ``view`` says
    which, ``point`` is the group or the period."""
    keys = [F.lit(run_id).alias(c.RUN_ID), F.lit(as_of).alias(c.AS_OF_DATE),
            F.lit(holdout_start).alias("holdout_start")]  # fmt: skip
    by_group = groups.select(
        *keys,
        F.lit("frequency").alias("view"),
        F.col(evaluate.GROUP).alias("point"),
        evaluate.LABEL,
        F.lit(None).cast("date").alias(evaluate.PERIOD_END),
        F.lit(True).alias(evaluate.IN_HOLDOUT),
        "customers",
        F.col(evaluate.ACTUAL).cast("double").alias(evaluate.ACTUAL),
        evaluate.EXPECTED,
    )
    over_time = curve.select(
        *keys,
        F.lit("cumulative").alias("view"),
        F.col(evaluate.PERIOD).alias("point"),
        F.col(evaluate.PERIOD).cast("string").alias(evaluate.LABEL),
        evaluate.PERIOD_END,
        evaluate.IN_HOLDOUT,
        F.lit(None).cast("long").alias("customers"),
        F.col(evaluate.ACTUAL).cast("double").alias(evaluate.ACTUAL),
        evaluate.EXPECTED,
    )
    return by_group.unionByName(over_time)


def _fit_row(
    run_id: str,
    as_of: dt.date,
    period: str,
    fitted_before: dt.date,
    vc: ValueConfig,
    fit: Fit,
    holdout: evaluate.HoldoutMetrics | None = None,
) -> tuple[Any, ...]:
    scores = (None, None, None, None) if holdout is None else (
        holdout.customers, holdout.actual, holdout.expected, holdout.mae)  # fmt: skip
    return (
        run_id, as_of, fit.model, period, fitted_before, vc.unit, fit.params, fit.std_errors, fit.log_likelihood,
        fit.customers, fit.tuples, fit.converged, fit.iterations, fit.evaluations, fit.message, *scores,
    )  # fmt: skip


def _replace_run(spark: SparkSession, rows: DataFrame, ref: io.TableRef, run_id: str) -> None:
    """This run's rows of a table that keeps every run's: a rerun with the same run id
    replaces them instead of adding a second copy."""
    io.delete_matching(spark, spark.range(1).select(F.lit(run_id).alias(c.RUN_ID)), ref, [c.RUN_ID])
    io.append(rows, ref)
