from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from custseg import io
from custseg.ingest import job as ingest_job
from custseg.ingest import quality
from custseg.ingest.sources import SourceError
from tests.conftest import make_config

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

POS_CSV = """receipt_no,line_no,loyalty_id,sku,qty,unit_price,sold_at,store_id
P1,1,0042,SKU1,2,3.50,2024-06-01 10:00:00,S01
P1,2,0042,SKU2,1,10.00,2024-06-01 10:00:00,S01
P1,2,0042,SKU2,1,10.00,2024-06-01 10:00:00,S01
R1,1,0042,SKU1,-1,3.50,2024-06-03 10:00:00,S01
G1,1,,SKU2,1,10.00,2024-06-01 11:00:00,S02
P2,1,0077,SKU3,x,1.00,2024-06-02 10:00:00,S02
"""
WEB_JSONL = """{"order_id":"W1","customer":{"id":"0042"},"created_at":"2024-06-05T10:00:00Z","kind":"order","status":"completed","items":[{"position":1,"sku":"SKU9","quantity":1,"price":20.0}]}
{"order_id":"W1","customer":{"id":"0042"},"created_at":"2024-06-05T10:00:00Z","kind":"order","status":"completed","items":[{"position":1,"sku":"SKU9","quantity":1,"price":20.0}]}
{"order_id":"W2","customer":{"id":"0099"},"created_at":"2024-06-06T10:00:00Z","kind":"order","status":"cancelled","items":[{"position":1,"sku":"SKU9","quantity":1,"price":20.0}]}
"""  # noqa: E501


def write_sources(raw: Path) -> None:
    (raw / "pos").mkdir(parents=True, exist_ok=True)
    (raw / "web").mkdir(parents=True, exist_ok=True)
    (raw / "pos" / "day1.csv").write_text(POS_CSV, encoding="utf-8")
    (raw / "web" / "day1.jsonl").write_text(WEB_JSONL, encoding="utf-8")


def run_log_expected(spark, run_id):
    return spark.createDataFrame(
        [(run_id, "ingest", "pos", 6, 1, 3, 2, 3), (run_id, "ingest", "web", 3, 1, 2, 0, 2)],
        "run_id STRING, job STRING, source STRING, rows_read LONG, duplicates LONG, accepted LONG, quarantined LONG, "
        "inserted LONG",
    )


def test_ingest_accepts_quarantines_and_reconciles(spark, tmp_path, caplog):
    cfg = make_config(tmp_path)
    write_sources(tmp_path / "raw")
    with caplog.at_level(logging.INFO, logger="custseg.progress"):
        counts = ingest_job.run(spark, cfg, "run-1", now=NOW).counts

    assert all(s.balanced for s in counts)
    # the long steps between the source lines and the writes show their progress
    steps = [re.sub(r"\d+\.\ds", "T", r.getMessage()) for r in caplog.records if r.name == "custseg.progress"]
    assert steps == [
        "ingest: parsing, validating and deduplicating every line into a checkpoint: started",
        "ingest: parsing, validating and deduplicating every line into a checkpoint: done in T",
        "ingest: outlier fences and counts: started",
        "ingest: outlier fences and counts: done in T: 9 rows read, 5 accepted, 2 quarantined, 2 duplicates",
        "ingest: data profile: started",
        "ingest: data profile: done in T",
    ]
    log_cols = ["run_id", "job", "source", "rows_read", "duplicates", "accepted", "quarantined", "inserted"]
    run_log = io.read(spark, io.table_ref(cfg.storage, cfg.tables.run_log)).select(*log_cols)
    assert_df_equality(run_log, run_log_expected(spark, "run-1"), ignore_row_order=True, ignore_nullable=True)

    txns = io.read(spark, io.table_ref(cfg.storage, cfg.tables.transactions))
    expected = spark.createDataFrame(
        [
            ("pos", "0042", "P1", "1", 2.0, 7.0, "purchase"),
            ("pos", "0042", "P1", "2", 1.0, 10.0, "purchase"),
            ("pos", "0042", "R1", "1", -1.0, -3.5, "return"),
            ("web", "0042", "W1", "1", 1.0, 20.0, "purchase"),
            ("web", "0099", "W2", "1", 1.0, 0.0, "void"),
        ],
        "source STRING, customer_id STRING, invoice_id STRING, line_id STRING, quantity DOUBLE, amount DOUBLE, "
        "txn_type STRING",
    )
    actual = txns.select("source", "customer_id", "invoice_id", "line_id", "quantity", "amount", "txn_type")
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)

    quarantine = io.read(spark, io.table_ref(cfg.storage, cfg.tables.quarantine))
    expected_q = spark.createDataFrame(
        [("pos", "missing_customer_id"), ("pos", "unparseable_quantity")], "source STRING, reason STRING"
    )
    assert_df_equality(quarantine.select("source", "reason"), expected_q, ignore_row_order=True, ignore_nullable=True)


def test_ingest_rerun_of_same_input_leaves_every_table_unchanged(spark, tmp_path):
    cfg = make_config(tmp_path)
    write_sources(tmp_path / "raw")
    ingest_job.run(spark, cfg, "run-1", now=NOW)
    names = ("transactions", "quarantine", "profile")
    refs = [io.table_ref(cfg.storage, getattr(cfg.tables, name)) for name in names]
    before = [(io.read(spark, ref).schema, io.read(spark, ref).collect()) for ref in refs]  # a few rows each

    counts = ingest_job.run(spark, cfg, "run-2", now=NOW).counts

    for ref, (schema, rows) in zip(refs, before, strict=True):
        assert_df_equality(io.read(spark, ref), spark.createDataFrame(rows, schema), ignore_row_order=True)
    assert [s.inserted for s in counts] == [0, 0]  # the run log says so too
    run_log = io.read(spark, io.table_ref(cfg.storage, cfg.tables.run_log))
    assert run_log.where("rows_read != accepted + quarantined + duplicates").count() == 0


def test_ingest_new_file_adds_only_its_rows(spark, tmp_path):
    cfg = make_config(tmp_path)
    write_sources(tmp_path / "raw")
    ingest_job.run(spark, cfg, "run-1", now=NOW)
    (tmp_path / "raw" / "pos" / "day2.csv").write_text(
        "receipt_no,line_no,loyalty_id,sku,qty,unit_price,sold_at,store_id\n"
        "P1,1,0042,SKU1,2,3.50,2024-06-01 10:00:00,S01\n"  # already loaded from day1
        "P9,1,0042,SKU1,1,3.50,2024-06-09 10:00:00,S01\n",
        encoding="utf-8",
    )
    ingest_job.run(spark, cfg, "run-2", now=NOW)
    txns = io.read(spark, io.table_ref(cfg.storage, cfg.tables.transactions))
    added = txns.where("run_id = 'run-2'").select("invoice_id")
    assert_df_equality(added, spark.createDataFrame([("P9",)], "invoice_id STRING"), ignore_nullable=True)


def test_ingest_missing_source_path_is_a_clear_error(spark, tmp_path):
    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(cfg, sources=cfg.sources[:1])
    with pytest.raises(SourceError, match=r"source 'pos' \(.*demo_pos\.yaml\): cannot read"):
        ingest_job.run(spark, cfg, "run-1", now=NOW)


def test_ingest_row_quarantined_as_future_moves_to_transactions_when_due(spark, tmp_path):
    cfg = make_config(tmp_path)
    write_sources(tmp_path / "raw")
    ingest_job.run(spark, cfg, "run-1", now=dt.datetime(2024, 6, 2, 12, tzinfo=dt.UTC))
    quarantine = io.table_ref(cfg.storage, cfg.tables.quarantine)
    future = io.read(spark, quarantine).where("reason = 'future_timestamp'").count()
    assert future > 0  # R1 (June 3) and the web orders (June 5, 6) were in the future then

    ingest_job.run(spark, cfg, "run-2", now=NOW)
    txn_ids = io.read(spark, io.table_ref(cfg.storage, cfg.tables.transactions)).select("txn_id")
    in_both = io.read(spark, quarantine).join(txn_ids, "txn_id", "inner").count()
    reasons = io.read(spark, quarantine).select("reason")
    expected = spark.createDataFrame([("missing_customer_id",), ("unparseable_quantity",)], "reason STRING")
    assert in_both == 0
    assert_df_equality(reasons, expected, ignore_row_order=True, ignore_nullable=True)


def test_ingest_rerun_after_crash_part_way_completes_without_duplicates(spark, tmp_path, monkeypatch):
    cfg = make_config(tmp_path)
    write_sources(tmp_path / "raw")

    def crash(*args, **kwargs):
        raise RuntimeError("driver lost")

    # Crash after transactions are written, before quarantine and the run log.
    with monkeypatch.context() as patch:
        patch.setattr(io, "delete_matching", crash)
        with pytest.raises(RuntimeError, match="driver lost"):
            ingest_job.run(spark, cfg, "run-1", now=NOW)
    assert not io.exists(spark, io.table_ref(cfg.storage, cfg.tables.quarantine))

    counts = ingest_job.run(spark, cfg, "run-2", now=NOW).counts

    txns = io.read(spark, io.table_ref(cfg.storage, cfg.tables.transactions))
    assert txns.count() == txns.select("txn_id").distinct().count() == 5
    assert [(s.accepted, s.inserted, s.quarantined) for s in counts] == [(3, 0, 2), (2, 0, 0)]
    # run-1's load is logged by run-2, from the rows it left: sum(inserted) is the table's rows.
    run_log = io.read(spark, io.table_ref(cfg.storage, cfg.tables.run_log))
    logged = run_log.groupBy("run_id", "repaired_by").agg(F.sum("inserted").alias("inserted"))
    expected = spark.createDataFrame(
        [("run-1", "run-2", 5), ("run-2", None, 0)], "run_id STRING, repaired_by STRING, inserted LONG"
    )
    assert_df_equality(logged, expected, ignore_row_order=True, ignore_nullable=True)


def test_ingest_fails_when_a_load_read_fewer_rows_than_were_meant_for_it(spark, tmp_path, monkeypatch):
    cfg = make_config(tmp_path)
    write_sources(tmp_path / "raw")
    real_insert_new = io.insert_new

    def loses_a_row(*args, **kwargs):
        loaded = real_insert_new(*args, **kwargs)
        return dataclasses.replace(loaded, source_rows=loaded.source_rows - 1)

    monkeypatch.setattr(io, "insert_new", loses_a_row)
    with pytest.raises(quality.ReconciliationError, match=r"accepted 5, loaded into .*transactions 4"):
        ingest_job.run(spark, cfg, "run-1", now=NOW)


def test_ingest_keeps_the_original_row_of_quarantined_rows_only(spark, tmp_path):
    cfg = make_config(tmp_path)
    write_sources(tmp_path / "raw")
    ingest_job.run(spark, cfg, "run-1", now=NOW)
    quarantine = io.read(spark, io.table_ref(cfg.storage, cfg.tables.quarantine))
    expected = spark.createDataFrame(
        [("missing_customer_id", "G1"), ("unparseable_quantity", "P2")], "reason STRING, receipt_no STRING"
    )
    actual = quarantine.selectExpr("reason", "from_json(raw, 'receipt_no STRING').receipt_no AS receipt_no")
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    assert "raw" not in io.read(spark, io.table_ref(cfg.storage, cfg.tables.transactions)).columns
