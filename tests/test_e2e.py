"""The whole job, through the same entry point spark-submit and the console use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from chispa import assert_df_equality
from delta.tables import DeltaTable

from custseg import columns as c
from custseg.cli import main
from custseg.demo import datagen
from custseg.segment.evaluate import adjusted_rand_index
from tests.conftest import CONF, TEST_SETTINGS

CUSTOMERS = 400


def run_cli(command: str, *extra: str, run_id: str = "e2e-run", configs: Sequence[str] = ()) -> int:
    sources = [str(CONF / "sources" / "demo_pos.yaml"), str(CONF / "sources" / "demo_web.yaml")]
    args = [command, "--config", str(CONF / "base.yaml"), "--config", str(CONF / "local.yaml"), *configs]
    args += ["--run-id", run_id]
    for setting in [*TEST_SETTINGS, f"ingest.sources={sources}", f"demo.customers={CUSTOMERS}", *extra]:
        args += ["--set", setting]
    return main(args)


def test_demo_run_labels_every_valid_customer_once_and_recovers_archetypes(spark, tmp_path, monkeypatch, report):
    monkeypatch.chdir(tmp_path)  # the demo config's relative paths land in tmp_path
    assert run_cli("demo") == 0

    lake = tmp_path / "data" / "lake"
    # The value stage ran before the segments: every customer with a purchase has a value
    # of this run, and every placed segment's profile a median CLV and P(alive).
    values = DeltaTable.forPath(spark, str(lake / "customer_value")).toDF()
    buyers = DeltaTable.forPath(spark, str(lake / "customer_features")).toDF().where(f"{c.FREQUENCY} >= 1")
    assert values.count() == buyers.count() and values.where(f"{c.RUN_ID} != 'e2e-run'").count() == 0
    profiled = DeltaTable.forPath(spark, str(lake / "segment_profiles")).toDF().where("segment_id >= 0").collect()
    for r in profiled:  # k rows
        report.append(f"end-to-end: segment {r['segment_id']} {r['segment_name']}: median CLV {r['median_clv']:.2f}, "
                      f"mean P(alive) {r['mean_p_alive']:.3f}")  # fmt: skip
    assert all(r["median_clv"] is not None and 0 <= r["mean_p_alive"] <= 1 for r in profiled)
    # the labels table is overwritten below: keep this run's labels
    labels = DeltaTable.forPath(spark, str(lake / "segment_labels")).toDF().localCheckpoint()
    labels_before = labels
    txns = DeltaTable.forPath(spark, str(lake / "transactions")).toDF()

    valid_customers = txns.select(c.CUSTOMER_ID).distinct()
    assert_df_equality(labels.select(c.CUSTOMER_ID), valid_customers, ignore_row_order=True, ignore_nullable=True)
    assert labels.groupBy(c.CUSTOMER_ID).count().where("count > 1").count() == 0
    assert labels.select(c.RUN_ID, c.K, c.MODEL_VERSION).distinct().count() == 1

    truth = datagen.read_truth(spark, str(tmp_path / "data" / "raw"))
    ari = adjusted_rand_index(labels.join(truth, on=c.CUSTOMER_ID, how="inner"), c.SEGMENT_ID, "archetype")
    report.append(f"end-to-end: {CUSTOMERS} customers, adjusted Rand index vs planted archetypes = {ari:.4f}")
    assert ari >= 0.95

    sweep = DeltaTable.forPath(spark, str(lake / "k_sweep")).toDF()
    assert sweep.count() == 5  # k = 2..6
    chosen = sweep.where("chosen").first()
    assert chosen[c.K] == labels.select(c.K).first()[c.K]
    # the archetypes are far apart: a clear structure, and k is the silhouette's, guard rails passed
    assert (chosen["rule"], chosen["structure"]) == ("guarded", "clear")
    assert chosen["reason"].startswith("clear cluster structure") and chosen["stability"] >= 0.75
    assert sweep.where("NOT chosen AND reason IS NULL").count() == 0  # every k says why not

    run_log = DeltaTable.forPath(spark, str(lake / "run_log")).toDF()
    unbalanced = run_log.where("rows_read != accepted + quarantined + duplicates").count()
    assert run_log.where("job = 'ingest'").count() == 2 and unbalanced == 0
    # the report is linked from the run log, and every plot is in it
    linked = run_log.where("job = 'report'").select("run_id", "artifact").first()
    assert linked["run_id"] == "e2e-run" and Path(linked["artifact"]).is_file()
    assert len(list(Path(linked["artifact"]).parent.glob("*.png"))) == 6

    stability = DeltaTable.forPath(spark, str(lake / "segment_stability_runs")).toDF()
    seed_ari = stability.where("kind = 'seed'").agg({"ari": "min"}).first()[0]
    report.append(f"end-to-end: stability, lowest adjusted Rand index between seeds = {seed_ari:.4f}")
    assert stability.count() == 4 and seed_ari >= 0.95  # restarts: the choice, not one seed's luck

    k = labels.select(c.K).first()[c.K]
    profiles = DeltaTable.forPath(spark, str(lake / "segment_profiles")).toDF()
    names = [r["segment_name"] for r in profiles.where("segment_id >= 0").collect()]  # k rows
    assert len(names) == k and len(set(names)) == k
    assert profiles.agg({"customers": "sum"}).first()[0] == labels.count()

    # Retraining on the same data keeps every customer's segment id, and the label
    # history gains no row; scoring with the saved model changes nothing either.
    history = DeltaTable.forPath(spark, str(lake / "segment_label_history"))
    version = history.history(1).first()["version"]
    assert (
        run_cli("segment", "segment.seed=7", "stability.seeds=[]", "stability.bootstrap=0", run_id="e2e-retrain") == 0
    )
    retrained = DeltaTable.forPath(spark, str(lake / "segment_labels")).toDF()
    assert retrained.select(c.MODEL_VERSION).first()[0] != labels.select(c.MODEL_VERSION).first()[0]
    assert_df_equality(
        retrained.select(c.CUSTOMER_ID, c.SEGMENT_ID),
        labels_before.select(c.CUSTOMER_ID, c.SEGMENT_ID),
        ignore_row_order=True,
    )
    models = DeltaTable.forPath(spark, str(lake / "segment_models")).toDF().orderBy("fitted_at").collect()  # 2 rows
    first_model, retrained_model = models
    assert retrained_model["matched_to"] == first_model["model_version"] and first_model["matched_to"] is None
    assert (
        len(first_model["explained_variance"]) == 3
        and first_model["customers"] == labels.where("segment_id >= 0").count()
    )
    moves = DeltaTable.forPath(spark, str(lake / "segment_migrations")).toDF().where("run_id = 'e2e-retrain'")
    assert moves.where("from_segment <=> to_segment").agg({"customers": "sum"}).first()[0] == labels.count()
    assert moves.where("NOT from_segment <=> to_segment").count() == 0
    assert run_cli("score", run_id="e2e-score") == 0
    assert history.history(1).first()["version"] == version
    assert history.toDF().count() == labels_before.count()


def test_cli_config_error_exits_2_with_message(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert run_cli("features", "segment.k_maxx=3") == 2
    assert "unknown key 'segment.k_maxx'" in caplog.text
    assert "Traceback" not in caplog.text
