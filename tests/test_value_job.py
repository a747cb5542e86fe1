"""The customer-value stage end to end: the CDNOW sample as a transactions table, fitted
with a 39-week holdout; and the command's exit code 2 when it cannot fit."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from custseg import io
from custseg.config import StorageConfig
from custseg.segment import job as segment_job
from custseg.value import job
from tests.conftest import make_config
from tests.test_e2e import run_cli
from tests.value_reference import cdnow_sample_transactions

RUN_ID = "value-run"
FHL = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}  # Fader, Hardie & Lee (2005)


@pytest.fixture(scope="module")
def cdnow_run(spark, tmp_path_factory):
    """The stage on the whole CDNOW sample (to 1998-06-30) with the last 39 weeks held out:
    its calibration is FHL's, 1997-01-01 to 1997-09-30."""
    tmp = tmp_path_factory.mktemp("value")
    cfg = make_config(tmp, "features.as_of_date=1998-07-01", "value.holdout_days=273", "value.unit=weeks")
    txns = cdnow_sample_transactions(spark).withColumn("source", F.lit("cdnow"))
    io.overwrite(txns, io.table_ref(cfg.storage, cfg.tables.transactions))
    result = job.run(spark, cfg, RUN_ID)
    read = {name: io.read(spark, io.table_ref(cfg.storage, getattr(cfg.tables, name)))
            for name in ("customer_value", "value_fits", "value_evaluation")}  # fmt: skip
    return result, read


def test_value_job_fits_fader_hardie_lee_on_the_raw_sample_before_the_holdout(cdnow_run, report):
    result, _ = cdnow_run
    for name, value in FHL.items():
        assert result.calibration.params[name] == pytest.approx(value, rel=1e-3, abs=6e-4), name
    assert result.calibration.log_likelihood == pytest.approx(-9582.4, abs=0.1)
    assert result.holdout.customers == 2357 and result.holdout.actual == 1882
    report.append(f"value job on the raw CDNOW sample: calibration {result.calibration.params}, "
                  f"LL {result.calibration.log_likelihood:.2f}; holdout {result.holdout}")  # fmt: skip


def test_value_job_writes_one_row_per_customer_keyed_by_run_and_as_of_date(cdnow_run):
    _, tables = cdnow_run
    values = tables["customer_value"]
    assert values.columns[:3] == ["customer_id", "run_id", "as_of_date"]
    row = values.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count_distinct("customer_id").alias("customers"),
        F.min("p_alive").alias("p_min"),
        F.max("p_alive").alias("p_max"),
        F.min("clv").alias("clv_min"),
        F.count("clv").alias("clv_rows"),
        F.collect_set("run_id").alias("runs"),
        F.collect_set("as_of_date").alias("dates"),
    ).first()
    assert (row["rows"], row["customers"], row["clv_rows"]) == (2357, 2357, 2357)
    assert 0 < row["p_min"] <= row["p_max"] == 1.0 and row["clv_min"] > 0
    assert (row["runs"], row["dates"]) == ([RUN_ID], [dt.date(1998, 7, 1)])


def test_value_job_records_the_fits_and_the_holdout_evaluation(cdnow_run):
    result, tables = cdnow_run
    fits = {(r["model"], r["period"]): r for r in tables["value_fits"].collect()}  # three rows
    assert set(fits) == {("bgnbd", "calibration"), ("bgnbd", "full"), ("gamma_gamma", "full")}
    assert fits[("bgnbd", "calibration")]["fitted_before"] == dt.date(1997, 10, 1)
    assert fits[("bgnbd", "calibration")]["holdout_actual"] == 1882
    assert fits[("bgnbd", "full")]["params"] == pytest.approx(result.purchases.params)
    views = (
        tables["value_evaluation"]
        .groupBy("view")
        .agg(F.count(F.lit(1)).alias("points"), F.sum("customers").alias("customers"), F.max("actual").alias("top"))
    )
    got = {r["view"]: (r["points"], r["customers"]) for r in views.collect()}
    assert got == {"frequency": (8, 2357), "cumulative": (78, None)}


@pytest.fixture
def workdir(tmp_path, monkeypatch, caplog) -> Path:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    return (tmp_path / "data" / "lake").resolve()


def test_main_value_without_repeat_customers_exits_2_in_one_line(spark, workdir, capsys, caplog):
    rows = [("c1", 5.0, dt.datetime(2024, 1, 2, 10), "purchase"), ("c2", 7.0, dt.datetime(2024, 1, 3, 10), "purchase"),
            ("c2", 2.0, dt.datetime(2024, 1, 3, 12), "purchase")]  # fmt: skip
    txns = spark.createDataFrame(rows, "customer_id string, amount double, event_ts timestamp, txn_type string")
    io.overwrite(txns, io.table_ref(StorageConfig("path", str(workdir), None), "transactions"))
    assert run_cli("value", "value.holdout_days=0") == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "BG/NBD: none of the 2 customers bought again after their first purchase day; "
        "the model needs repeat customers to estimate purchase rates and dropout"
    ]
    assert "Traceback" not in capsys.readouterr().err


def test_main_value_without_a_transactions_table_exits_2(spark, workdir, caplog):
    assert run_cli("value") == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"no transactions table at {workdir / 'transactions'}: run ingest first"]


def test_replace_run_keeps_one_copy_of_a_rerun_and_the_other_runs(spark, tmp_path):
    ref = io.table_ref(StorageConfig("path", str(tmp_path), None), "fits")
    schema = "run_id string, value double"
    io.append(spark.createDataFrame([("r1", 1.0), ("r2", 2.0)], schema), ref)
    job._replace_run(spark, spark.createDataFrame([("r1", 3.0)], schema), ref, "r1")
    assert sorted(tuple(r) for r in io.read(spark, ref).collect()) == [("r1", 3.0), ("r2", 2.0)]


def test_segment_job_joins_clv_and_p_alive_when_they_are_model_features(spark, tmp_path):
    cfg = make_config(tmp_path, "segment.features=[recency_days, frequency, clv, p_alive]", "features.log1p=[clv]")
    as_of = dt.date(2025, 1, 1)
    features = spark.createDataFrame(
        [("a", as_of, 10, 3, 90.0), ("b", as_of, 200, 0, None)],
        "customer_id string, as_of_date date, recency_days int, frequency long, monetary double",
    )
    values = spark.createDataFrame(
        [("a", RUN_ID, as_of, 120.5, 0.8)], "customer_id string, run_id string, as_of_date date, clv double, "
        "p_alive double"
    )  # fmt: skip
    io.overwrite(features, io.table_ref(cfg.storage, cfg.tables.features))
    io.overwrite(values, io.table_ref(cfg.storage, cfg.tables.customer_value))
    joined, read_as_of = segment_job.read_features(spark, cfg)
    expected = spark.createDataFrame(
        [("a", as_of, 10, 3, 90.0, 120.5, 0.8), ("b", as_of, 200, 0, None, None, None)],
        "customer_id string, as_of_date date, recency_days int, frequency long, monetary double, clv double, "
        "p_alive double",
    )
    assert read_as_of == as_of
    assert_df_equality(joined, expected, ignore_row_order=True, ignore_nullable=True)
