"""The holdout evaluation: on the CDNOW sample (39 weeks of calibration, 39 of holdout)
against counts and expectations computed independently with pandas and scipy, and the
metrics on a hand-worked frame."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from custseg.value import evaluate
from custseg.value.summary import btyd_summary, holdout_purchases
from tests.conftest import cdnow_file
from tests.value_reference import cdnow_sample_transactions, reference_expected

# Our fit on the CDNOW summary (tests/test_value_bgnbd.py checks it against FHL 2005).
FIT = [0.242593, 4.413531, 0.792886, 2.425753]
CALIBRATION_END = dt.date(1997, 10, 1)  # exclusive: the calibration's last day is 1997-09-30
HOLDOUT_DAYS = 273  # 39 weeks, to 1998-06-30, the data's last day
ORIGIN = dt.date(1997, 1, 1)


@pytest.fixture(scope="module")
def sample():
    """The sample's purchase days with pandas: one row per customer and day."""
    raw = pd.read_csv(cdnow_file("CDNOW_sample.txt"), sep=r"\s+", header=None, names=["m", "id", "date", "cds", "usd"])
    raw["date"] = pd.to_datetime(raw["date"].astype(str))
    return raw.groupby(["id", "date"], as_index=False)["usd"].sum()


@pytest.fixture(scope="module")
def comparison(spark):
    txns = cdnow_sample_transactions(spark)
    summary = txns.transform(btyd_summary(CALIBRATION_END, "weeks"))
    holdout = txns.transform(holdout_purchases(CALIBRATION_END, HOLDOUT_DAYS))
    return summary.transform(evaluate.holdout_comparison(holdout, FIT, HOLDOUT_DAYS / 7)).toPandas()


def test_holdout_comparison_on_cdnow_counts_and_expects_as_computed_independently(comparison, sample, report):
    calibration = sample[sample["date"] < pd.Timestamp(CALIBRATION_END)]
    holdout = sample[sample["date"] >= pd.Timestamp(CALIBRATION_END)]
    assert len(comparison) == 2357
    assert comparison["actual"].sum() == len(holdout) == 1882  # repeat purchase days in the holdout
    first = calibration.groupby("id")["date"].min()
    last = calibration.groupby("id")["date"].max()
    x = calibration.groupby("id").size() - 1
    t_x, big_t = (last - first).dt.days / 7, (pd.Timestamp("1997-09-30") - first).dt.days / 7
    expected = sum(reference_expected(39.0, x[i], t_x[i], big_t[i], *FIT) for i in x.index)
    assert comparison["expected"].sum() == pytest.approx(expected, rel=1e-9)
    report.append(f"CDNOW holdout (39 weeks): actual {comparison['actual'].sum()} repeat purchases, "
                  f"expected {comparison['expected'].sum():.1f}")  # fmt: skip


def test_holdout_metrics_on_a_hand_worked_frame(spark):
    rows = [(0, "a", 0, 0.25), (1, "b", 2, 1.0), (3, "c", 1, 1.5), (9, "d", 4, 2.0)]
    comparison = spark.createDataFrame(rows, "x long, customer_id string, actual long, expected double")
    metrics = evaluate.holdout_metrics(comparison)
    assert metrics == evaluate.HoldoutMetrics(customers=4, actual=7, expected=4.75, mae=(0.25 + 1 + 0.5 + 2) / 4)
    groups = comparison.transform(evaluate.by_frequency(3)).orderBy("group").collect()
    assert [tuple(g) for g in groups] == [(0, "0", 1, 0.0, 0.25), (1, "1", 1, 2.0, 1.0), (3, "3+", 2, 2.5, 1.75)]


def test_by_frequency_on_cdnow_covers_every_customer(comparison, spark):
    groups = spark.createDataFrame(comparison).transform(evaluate.by_frequency(7)).orderBy("group").toPandas()
    assert list(groups["label"]) == ["0", "1", "2", "3", "4", "5", "6", "7+"]
    assert groups["customers"].sum() == 2357
    assert groups["customers"].iloc[0] == (comparison["x"] == 0).sum() == 1411


def test_cumulative_curve_on_cdnow_matches_counts_and_cohort_expectations(spark, sample):
    txns = cdnow_sample_transactions(spark)
    summary = txns.transform(btyd_summary(CALIBRATION_END, "weeks"))
    end = CALIBRATION_END + dt.timedelta(days=HOLDOUT_DAYS)
    curve = evaluate.cumulative_curve(txns, summary, FIT, "weeks", ORIGIN, CALIBRATION_END, end)
    curve = curve.orderBy("period").toPandas()
    assert list(curve["period"]) == list(range(1, 79))
    week39 = curve.iloc[38]
    assert (week39["period_end"], week39["in_holdout"], curve.iloc[39]["in_holdout"]) == (
        dt.date(1997, 9, 30), False, True
    )  # fmt: skip
    first = sample.groupby("id")["date"].transform("min")
    repeats = sample[sample["date"] > first]
    calibration_repeats = (repeats["date"] <= pd.Timestamp("1997-09-30")).sum()
    assert week39["actual"] == calibration_repeats
    assert curve.iloc[-1]["actual"] == len(repeats) == calibration_repeats + 1882
    cohorts = (sample.groupby("id")["date"].min() - pd.Timestamp(ORIGIN)).dt.days.value_counts()
    for week in (10, 39, 78):
        offset = week * 7 - 1
        alive = [(d, n) for d, n in cohorts.items() if d < offset]
        expected = sum(n * reference_expected((offset - d) / 7, 0, 0, 0, *FIT) for d, n in alive)
        assert curve.iloc[week - 1]["expected"] == pytest.approx(expected, rel=1e-9), week
    assert np.all(np.diff(curve["expected"]) > 0)
