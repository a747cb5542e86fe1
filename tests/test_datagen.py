from __future__ import annotations

import dataclasses

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from custseg import cli
from custseg.config import ConfigError, load_config
from custseg.demo import datagen
from tests.conftest import CONF, make_config


def test_generate_is_deterministic_and_has_real_data_quirks(spark, tmp_path):
    demo = dataclasses.replace(make_config(tmp_path).demo, customers=60)
    first = datagen.generate(spark, demo, str(tmp_path / "a"))
    second = datagen.generate(spark, demo, str(tmp_path / "b"))
    pos_a = spark.read.option("header", "true").csv(first["pos"])
    assert_df_equality(pos_a, spark.read.option("header", "true").csv(second["pos"]), ignore_row_order=True)
    web_a = spark.read.json(first["web"])
    assert_df_equality(web_a, spark.read.json(second["web"]), ignore_row_order=True)

    assert pos_a.where("loyalty_id IS NULL").count() > 0  # guests
    assert pos_a.where("receipt_no LIKE 'R%' AND CAST(qty AS INT) < 0").count() > 0  # returns
    assert pos_a.count() > pos_a.distinct().count()  # exact duplicates
    assert web_a.where("status = 'cancelled'").count() > 0
    assert web_a.where("kind = 'refund'").count() > 0
    truth = datagen.read_truth(spark, str(tmp_path / "a"))
    assert truth.count() == 60
    assert {r.archetype for r in truth.select("archetype").distinct().collect()} <= {a.name for a in datagen.ARCHETYPES}


# --------------------------------------------------------------------------- realistic scenario

REALISTIC = ("demo.scenario=realistic", "demo.start_date=2023-01-01", "demo.end_date=2025-01-01")


def realistic_demo(tmp_path, customers: int, seed: int = 42):
    return dataclasses.replace(make_config(tmp_path, *REALISTIC).demo, customers=customers, seed=seed)


def customer_figures(spark, paths: dict[str, str], demo) -> dict[str, float]:
    """Per-customer frequency, spend and recency from the raw sources, as the features
    job computes them (duplicates once, cancelled orders void, returns and refunds netted,
    purchases only in the frequency), then the figures the realistic scenario promises."""
    pos = spark.read.option("header", "true").csv(paths["pos"]).dropDuplicates(["receipt_no", "line_no"])
    web = spark.read.json(paths["web"]).dropDuplicates(["order_id"])
    pos_txns = pos.select(
        F.col("loyalty_id").alias("customer_id"),
        F.col("receipt_no").alias("invoice"),
        (~F.col("receipt_no").startswith("R")).alias("purchase"),
        (F.col("qty").cast("int") * F.col("unit_price").cast("double")).alias("amount"),
        F.to_date("sold_at").alias("day"),
    )
    refund = F.col("kind") == "refund"
    web_txns = (
        web.where(F.col("status") != "cancelled")
        .select("*", F.explode("items").alias("item"))
        .select(
            F.col("customer.id").alias("customer_id"),
            F.col("order_id").alias("invoice"),
            (~refund).alias("purchase"),
            (F.when(refund, -1).otherwise(1) * F.col("item.quantity") * F.col("item.price")).alias("amount"),
            F.to_date(F.to_timestamp("created_at")).alias("day"),
        )
    )
    per_customer = (
        pos_txns.unionByName(web_txns)
        .where(F.col("customer_id").isNotNull())
        .groupBy("customer_id")
        .agg(
            F.count_distinct(F.when(F.col("purchase"), F.col("invoice"))).alias("frequency"),
            F.sum("amount").alias("monetary"),
            F.datediff(F.lit(demo.end_date), F.max(F.when(F.col("purchase"), F.col("day")))).alias("recency"),
        )
        .where(F.col("frequency") >= 1)
    )
    history_days = (demo.end_date - demo.start_date).days
    quarter = F.least(F.floor((F.col("recency") - 1) * 4 / history_days), F.lit(3))
    row = per_customer.agg(
        F.count(F.lit(1)).alias("customers"),
        F.avg((F.col("frequency") == 1).cast("double")).alias("one_time_share"),
        F.percentile("frequency", [0.5, 0.9, 0.99]).alias("f"),
        F.percentile("monetary", [0.5, 0.8, 0.99]).alias("m"),
        F.sum("monetary").alias("revenue"),
        *[F.avg((quarter == q).cast("double")).alias(f"quarter_{q}") for q in range(4)],
    ).first()
    p80 = row["m"][1]
    top = per_customer.where(F.col("monetary") >= p80).agg(F.sum("monetary")).first()[0]
    return {
        "customers": row["customers"],
        "one_time_share": row["one_time_share"],
        "top20_revenue_share": top / row["revenue"],
        "frequency_p50": row["f"][0],
        "frequency_p90": row["f"][1],
        "frequency_p99": row["f"][2],
        "spend_p99_over_median": row["m"][2] / row["m"][0],
        "last_purchase_share_least_quarter": min(row[f"quarter_{q}"] for q in range(4)),
    }


def test_realistic_customers_match_real_retail_figures(spark, realistic_config, realistic_raw, report):
    demo = realistic_config.demo
    paths = {name: str(realistic_raw / name) for name in ("pos", "web")}
    figures = customer_figures(spark, paths, demo)
    report.append("realistic demo, 4000 customers, seed 42: " + ", ".join(f"{k} {v:.3f}" for k, v in figures.items()))
    assert figures["customers"] > 3900  # a few lose their only order to a cancellation
    assert 0.35 <= figures["one_time_share"] <= 0.51
    assert 0.68 <= figures["top20_revenue_share"] <= 0.74
    assert 1 <= figures["frequency_p50"] <= 2
    assert 6 <= figures["frequency_p90"] <= 9
    assert 19 <= figures["frequency_p99"] <= 30
    assert 20 <= figures["spend_p99_over_median"] <= 26
    # customers acquired all along the history, some lapsing: last purchases in every quarter
    assert figures["last_purchase_share_least_quarter"] >= 0.1


def test_realistic_generate_is_deterministic_and_plants_nothing(spark, tmp_path):
    demo = realistic_demo(tmp_path, 150, seed=7)
    first = datagen.generate(spark, demo, str(tmp_path / "a"))
    second = datagen.generate(spark, demo, str(tmp_path / "b"))
    csv = spark.read.option("header", "true")
    assert_df_equality(csv.csv(first["pos"]), csv.csv(second["pos"]), ignore_row_order=True)
    assert_df_equality(spark.read.json(first["web"]), spark.read.json(second["web"]), ignore_row_order=True)
    truth = datagen.read_truth(spark, str(tmp_path / "a"))
    assert [tuple(r) for r in truth.groupBy("archetype").count().collect()] == [(datagen.UNPLANTED, 150)]


def test_realistic_customers_stay_within_the_history(spark, tmp_path):
    demo = realistic_demo(tmp_path, 2000)
    history_days = (demo.end_date - demo.start_date).days
    row = (
        datagen.realistic_customers(spark, demo)
        .agg(
            F.min("last_days_ago").alias("min_last"),
            F.max("first_days_ago").alias("max_first"),
            F.min(F.col("first_days_ago") - F.col("last_days_ago")).alias("min_span"),
            F.min("n_orders").alias("min_orders"),
            F.max("n_orders").alias("max_orders"),
        )
        .first()
    )
    assert row["min_last"] >= 0 and row["max_first"] <= history_days - 1 and row["min_span"] >= 0
    assert row["min_orders"] == 1 and 1 < row["max_orders"] <= datagen.ORDER_NO_BLOCK


def test_load_config_demo_scenario_must_be_a_known_one():
    with pytest.raises(ConfigError, match=r"--set: demo\.scenario: expected one of 'archetypes', 'realistic'"):
        load_config([CONF / "base.yaml"], ["demo.scenario=bogus"])
    assert load_config([CONF / "base.yaml"]).demo.scenario == "archetypes"
    overlay = CONF / "realistic.yaml"
    assert load_config([CONF / "base.yaml", CONF / "local.yaml", overlay]).demo.scenario == "realistic"


def test_run_demo_realistic_says_there_is_nothing_to_recover(tmp_path, monkeypatch, capsys):
    cfg = make_config(tmp_path, *REALISTIC)
    generated, ran = [], []
    monkeypatch.setattr(cli.datagen, "generate", lambda spark, demo: generated.append(demo.scenario))
    monkeypatch.setattr(cli, "run_all", lambda spark, cfg, run_id: ran.append(run_id))
    cli.run_demo(None, cfg, "r1")  # no Spark: nothing past run_all may read a table
    assert generated == ["realistic"] and ran == ["r1"]
    out = capsys.readouterr().out
    assert "no planted archetypes to recover" in out and "recovered with adjusted Rand index" not in out
