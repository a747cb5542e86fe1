"""The example source mappings ingest hand-written files in their exact layouts."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from custseg import io
from custseg.config import ConfigError, load_source
from custseg.ingest import job as ingest_job
from custseg.value.summary import btyd_summary
from tests.conftest import CONF, ROOT, cdnow_file, make_config
from tests.value_reference import cdnow_sample_transactions

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
DATA = ROOT / "tests" / "data"
ACCEPTED = (
    "customer_id STRING, invoice_id STRING, product_id STRING, quantity DOUBLE, unit_price DOUBLE, amount DOUBLE, "
    "event_ts TIMESTAMP, store STRING, txn_type STRING"
)
LOG = "source STRING, rows_read LONG, duplicates LONG, accepted LONG, quarantined LONG"


def ingest_example(spark, tmp_path, mapping: str, data_dir: str):
    src = dataclasses.replace(load_source(CONF / "sources" / mapping), path=str(DATA / data_dir))
    cfg = dataclasses.replace(make_config(tmp_path), sources=(src,))
    ingest_job.run(spark, cfg, "run-1", now=NOW)
    read = lambda name: io.read(spark, io.table_ref(cfg.storage, getattr(cfg.tables, name)))  # noqa: E731
    return read("transactions"), read("quarantine"), read("run_log"), cfg


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_online_retail_mapping_ingests_uci_layout(spark, tmp_path):
    txns, quarantine, run_log, _ = ingest_example(spark, tmp_path, "online_retail.yaml", "online_retail")
    uk = "United Kingdom"
    expected = spark.createDataFrame([
        ("17850", "536365", "85123A", 6.0, 2.55, 15.3, ts("2010-12-01 08:26"), uk, "purchase"),
        ("17850", "536365", "71053", 6.0, 3.39, 20.34, ts("2010-12-01 08:26"), uk, "purchase"),
        ("17850", "536366", "22633", 6.0, 1.85, 11.1, ts("2010-12-01 08:28"), uk, "purchase"),
        ("13047", "536367", "84879", 32.0, 1.69, 54.08, ts("2010-12-01 08:34"), uk, "purchase"),
        ("12583", "536370", "POST", 3.0, 18.0, 54.0, ts("2010-12-01 08:45"), "France", "adjustment"),
        ("14527", "C536379", "D", -1.0, 27.5, -27.5, ts("2010-12-01 09:41"), uk, "adjustment"),
        ("15311", "C536383", "35004C", -1.0, 4.65, -4.65, ts("2010-12-01 09:49"), uk, "return"),
        ("13047", "537000", "21000", 2.0, 1.25, 2.5, ts("2010-12-02 10:00"), uk, "purchase"),
        ("13047", "537001", "21001", 1.0, 4.95, 4.95, ts("2010-12-02 10:05"), uk, "purchase"),  # "" inside quotes
    ], ACCEPTED)  # fmt: skip
    assert_df_equality(txns.select(*expected.columns), expected, ignore_row_order=True, ignore_nullable=True)
    reasons = spark.createDataFrame([("missing_customer_id",)] * 3, "reason STRING")
    assert_df_equality(quarantine.select("reason"), reasons, ignore_row_order=True, ignore_nullable=True)
    expected_log = spark.createDataFrame([("online_retail", 13, 1, 9, 3)], LOG)
    assert_df_equality(run_log.select(*expected_log.columns), expected_log, ignore_nullable=True)


def test_online_retail_ii_mapping_ingests_renamed_columns(spark, tmp_path):
    txns, quarantine, run_log, _ = ingest_example(spark, tmp_path, "online_retail_ii.yaml", "online_retail_ii")
    uk = "United Kingdom"
    expected = spark.createDataFrame([
        ("13085", "489434", "85048", 12.0, 6.95, 83.4, ts("2009-12-01 07:45"), uk, "purchase"),
        ("13085", "489434", "79323P", 12.0, 6.75, 81.0, ts("2009-12-01 07:45"), uk, "purchase"),
        ("16321", "C489449", "22087", -12.0, 2.95, -35.4, ts("2009-12-01 10:33"), "Australia", "return"),
        ("12533", "489597", "POST", 1.0, 18.0, 18.0, ts("2009-12-01 14:28"), "Germany", "adjustment"),
        ("13078", "489436", "M", 1.0, 1.25, 1.25, ts("2009-12-01 09:06"), uk, "adjustment"),
    ], ACCEPTED)  # fmt: skip
    assert_df_equality(txns.select(*expected.columns), expected, ignore_row_order=True, ignore_nullable=True)
    reasons = spark.createDataFrame([("missing_customer_id",)], "reason STRING")
    assert_df_equality(quarantine.select("reason"), reasons, ignore_nullable=True)
    expected_log = spark.createDataFrame([("online_retail_ii", 7, 1, 5, 1)], LOG)
    assert_df_equality(run_log.select(*expected_log.columns), expected_log, ignore_nullable=True)


def test_legacy_whitespace_mapping_keeps_leading_zeros_and_derives_unit_price(spark, tmp_path):
    txns, quarantine, run_log, _ = ingest_example(spark, tmp_path, "legacy_units.yaml", "legacy")
    expected = spark.createDataFrame([
        ("00001", "00001-19970101", None, 1.0, 11.77, 11.77, ts("1997-01-01 00:00"), None, "purchase"),
        ("00002", "00002-19970112", None, 1.0, 12.0, 12.0, ts("1997-01-12 00:00"), None, "purchase"),
        ("00002", "00002-19970112", None, 5.0, 15.4, 77.0, ts("1997-01-12 00:00"), None, "purchase"),
        ("00003", "00003-19970102", None, 2.0, 10.38, 20.76, ts("1997-01-02 00:00"), None, "purchase"),
        ("00003", "00003-19970330", None, 2.0, 10.38, 20.76, ts("1997-03-30 00:00"), None, "purchase"),
        ("00003", "00003-19970402", None, 2.0, 9.77, 19.54, ts("1997-04-02 00:00"), None, "purchase"),
        # a refund written as a negative amount is a return
        ("00005", "00005-19970106", None, -1.0, 11.77, -11.77, ts("1997-01-06 00:00"), None, "return"),
    ], ACCEPTED)  # fmt: skip
    assert_df_equality(txns.select(*expected.columns), expected, ignore_row_order=True, ignore_nullable=True)
    # tab-separated with a trailing tab parses; zero units is quarantined
    reasons = spark.createDataFrame([("zero_quantity",)], "reason STRING")
    assert_df_equality(quarantine.select("reason"), reasons, ignore_nullable=True)
    # line 7 repeats line 6 with other spacing: the same values, a duplicate
    expected_log = spark.createDataFrame([("legacy", 9, 1, 7, 1)], LOG)
    assert_df_equality(run_log.select(*expected_log.columns), expected_log, ignore_nullable=True)


def test_cdnow_sample_without_a_header_line_ingests_line_for_line(spark, tmp_path):
    src = dataclasses.replace(
        load_source(CONF / "sources" / "cdnow_sample.yaml"), path=str(cdnow_file("CDNOW_sample.txt"))
    )
    cfg = dataclasses.replace(make_config(tmp_path, "ingest.drop_duplicates=false"), sources=(src,))
    ingest_job.run(spark, cfg, "run-1", now=NOW)
    read = lambda name: io.read(spark, io.table_ref(cfg.storage, getattr(cfg.tables, name)))  # noqa: E731
    txns = read("transactions")
    # Every line of the file is a purchase of the sample's customer on its day, as a reader
    # of the file by hand (tests/value_reference.py) makes them; but the 8 lines of $0.00
    # go to quarantine, as a price of zero does in every source.
    loaded = txns.select(F.col("customer_id").cast("int").cast("string").alias("customer_id"), "amount", "event_ts",
                         "txn_type")  # fmt: skip
    by_hand = cdnow_sample_transactions(spark)
    assert_df_equality(loaded, by_hand.where("amount > 0"), ignore_row_order=True, ignore_nullable=True)
    reasons = read("quarantine").groupBy("reason").count()
    expected = spark.createDataFrame([("non_positive_price", 8)], "reason STRING, count LONG")
    assert_df_equality(reasons, expected, ignore_nullable=True)
    logged = read("run_log").select("rows_read", "accepted", "quarantined").first()
    assert tuple(logged) == (6919, 6911, 8)
    # So the BTYD summary from the lake is the hand reader's without those lines. (FHL count
    # them: with them, the fit is theirs, tests/test_value_job.py; without, r 0.244,
    # alpha 4.422, a 0.793, b 2.423.)
    as_of = dt.date(1997, 10, 1)
    ids = F.col("customer_id").cast("int").cast("string").alias("customer_id")
    from_lake = txns.transform(btyd_summary(as_of, "weeks")).select(ids, "x", "t_x", "T")
    by_hand_summary = by_hand.where("amount > 0").transform(btyd_summary(as_of, "weeks")).select(ids, "x", "t_x", "T")
    assert_df_equality(from_lake, by_hand_summary, ignore_row_order=True, ignore_nullable=True)


def test_whitespace_source_without_a_header_line_needs_its_names(tmp_path):
    mapping = tmp_path / "headerless.yaml"
    text = (CONF / "sources" / "cdnow_sample.yaml").read_text()
    mapping.write_text(text.replace("names: [master_id, customer_id, date, cds, dollars]\n", ""))
    with pytest.raises(ConfigError, match="a whitespace source without a header line needs names"):
        load_source(mapping)
    mapping.write_text(text.replace('header: "false"', 'header: "true"'))
    with pytest.raises(ConfigError, match="names: only for a whitespace source without a header line"):
        load_source(mapping)
