"""The whole job, through the same entry point spark-submit and the console use."""

from __future__ import annotations

from chispa import assert_df_equality
from delta.tables import DeltaTable

from custseg import columns as c
from custseg import datagen
from custseg.cli import main
from custseg.evaluate import adjusted_rand_index
from tests.conftest import CONF, TEST_SETTINGS

CUSTOMERS = 400


def run_cli(command: str, *extra: str) -> int:
    sources = [str(CONF / "sources" / "demo_pos.yaml"), str(CONF / "sources" / "demo_web.yaml")]
    args = [command, "--config", str(CONF / "base.yaml"), "--config", str(CONF / "local.yaml"), "--run-id", "e2e-run"]
    for setting in [*TEST_SETTINGS, f"ingest.sources={sources}", f"demo.customers={CUSTOMERS}", *extra]:
        args += ["--set", setting]
    return main(args)


def test_demo_run_labels_every_valid_customer_once_and_recovers_archetypes(spark, tmp_path, monkeypatch, report):
    monkeypatch.chdir(tmp_path)  # the demo config's relative paths land in tmp_path
    assert run_cli("demo") == 0

    lake = tmp_path / "data" / "lake"
    labels = DeltaTable.forPath(spark, str(lake / "segment_labels")).toDF()
    txns = DeltaTable.forPath(spark, str(lake / "transactions")).toDF()

    valid_customers = txns.select(c.CUSTOMER_ID).distinct()
    assert_df_equality(labels.select(c.CUSTOMER_ID), valid_customers, ignore_row_order=True, ignore_nullable=True)
    assert labels.groupBy(c.CUSTOMER_ID).count().where("count > 1").count() == 0
    assert labels.select(c.RUN_ID, c.K, c.MODEL_VERSION).distinct().count() == 1

    truth = datagen.read_truth(spark, str(tmp_path / "data" / "raw"))
    ari = adjusted_rand_index(labels.join(truth, on=c.CUSTOMER_ID, how="inner"), c.SEGMENT_ID, "archetype")
    report.append(f"end-to-end: {CUSTOMERS} customers, adjusted Rand index vs planted archetypes = {ari:.4f}")
    assert ari >= 0.9

    sweep = DeltaTable.forPath(spark, str(lake / "k_sweep")).toDF()
    assert sweep.count() == 5  # k = 2..6
    assert sweep.where("chosen").select(c.K).first()[c.K] == labels.select(c.K).first()[c.K]

    run_log = DeltaTable.forPath(spark, str(lake / "run_log")).toDF()
    unbalanced = run_log.where("rows_read != accepted + quarantined + duplicates").count()
    assert run_log.count() == 2 and unbalanced == 0


def test_cli_config_error_exits_2_with_message(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert run_cli("features", "segment.k_maxx=3") == 2
    assert "unknown key 'segment.k_maxx'" in caplog.text
    assert "Traceback" not in caplog.text
