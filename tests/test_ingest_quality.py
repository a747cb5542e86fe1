"""Dirty input: every row is accepted or quarantined with a reason, and the job never
crashes on a bad file; the cleaning policy's switches; the data profile."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import functions as F

from custseg import io
from custseg.ingest import job as ingest_job
from custseg.ingest import quality
from custseg.ingest.sources import SourceError
from tests.conftest import make_config

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
HEADER = b"receipt_no,line_no,loyalty_id,sku,qty,unit_price,sold_at,store_id\n"
GOOD = b"P1,1,0042,SKU1,2,3.50,2024-06-01 10:00:00,S01\n"
# What data_profile reads: ingest's flagged rows.
PROFILE_INPUT = (
    "source STRING, customer_id STRING, product_id STRING, quantity DOUBLE, unit_price DOUBLE, amount DOUBLE, "
    "event_ts TIMESTAMP, txn_type STRING, is_extreme BOOLEAN, reason STRING, is_duplicate BOOLEAN"
)


def pos_only(tmp_path, *overrides):
    cfg = make_config(tmp_path, *overrides)
    return dataclasses.replace(cfg, sources=cfg.sources[:1])


def web_without_positions(cfg):
    """The web mapping for exports whose items carry no position."""
    web = cfg.sources[1]
    return dataclasses.replace(
        cfg, sources=(dataclasses.replace(web, columns=dataclasses.replace(web.columns, line_id=None)),)
    )


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def table(spark, cfg, name):
    return io.read(spark, io.table_ref(cfg.storage, getattr(cfg.tables, name)))


def assert_reconciled(spark, cfg):
    run_log = table(spark, cfg, "run_log")
    assert run_log.where("rows_read != accepted + quarantined + duplicates").count() == 0


def test_ingest_broken_files_quarantine_with_reasons_never_crash(spark, tmp_path):
    cfg = pos_only(tmp_path)
    pos = tmp_path / "raw" / "pos"
    write(pos / "a_good.csv", HEADER + GOOD)
    write(pos / "b_malformed.csv", HEADER + b"P2,1,0042,SKU1,2,3.50,2024-06-01 10:00:00,S01,EXTRA\nP3,1,0042\n")
    write(pos / "c_wrong_type.csv", HEADER + b"P4,1,0042,SKU1,two,3.50,2024-06-01 10:00:00,S01\n")
    write(pos / "d_empty.csv", b"")
    write(pos / "e_latin1.csv", HEADER + b"P5,1,0042,CAF\xc9,1,3.50,2024-06-01 10:00:00,S01\n")

    counts = ingest_job.run(spark, cfg, "run-1", now=NOW).counts

    assert [(s.rows_read, s.accepted, s.quarantined, s.duplicates) for s in counts] == [(5, 1, 4, 0)]
    expected = spark.createDataFrame(
        [("P2", "malformed_row"), ("P3", "malformed_row"), ("P4", "unparseable_quantity"), ("P5", "invalid_encoding")],
        "invoice STRING, reason STRING",
    )
    invoice = "coalesce(get_json_object(raw, '$.receipt_no'), substring(raw, 1, 2)) AS invoice"
    quarantine = table(spark, cfg, "quarantine").selectExpr(invoice, "reason")
    assert_df_equality(quarantine, expected, ignore_row_order=True, ignore_nullable=True)
    raw_lines = table(spark, cfg, "quarantine").where("reason = 'malformed_row'").select("raw")
    expected_raw = spark.createDataFrame(
        [("P2,1,0042,SKU1,2,3.50,2024-06-01 10:00:00,S01,EXTRA",), ("P3,1,0042",)], "raw STRING"
    )
    assert_df_equality(raw_lines, expected_raw, ignore_row_order=True, ignore_nullable=True)
    assert_reconciled(spark, cfg)


def test_ingest_missing_column_stops_before_reading_naming_file_and_key(spark, tmp_path):
    cfg = pos_only(tmp_path)
    write(tmp_path / "raw" / "pos" / "old_layout.csv", b"receipt_no,line_no,loyalty_id,sku,qty,unit_price,sold_at\n")
    with pytest.raises(SourceError, match=r"demo_pos\.yaml: columns\.store: cannot resolve 'store_id'"):
        ingest_job.run(spark, cfg, "run-1", now=NOW)
    assert not io.exists(spark, io.table_ref(cfg.storage, cfg.tables.transactions))


def test_ingest_empty_source_is_logged_with_zero_rows(spark, tmp_path):
    cfg = make_config(tmp_path)
    write(tmp_path / "raw" / "pos" / "a.csv", HEADER + GOOD)
    write(tmp_path / "raw" / "web" / "empty.jsonl", b"")
    counts = ingest_job.run(spark, cfg, "run-1", now=NOW).counts
    assert [(s.source, s.rows_read, s.accepted) for s in counts] == [("pos", 1, 1), ("web", 0, 0)]
    assert_reconciled(spark, cfg)


def test_ingest_keep_duplicates_policy_keeps_every_copy_idempotently(spark, tmp_path):
    cfg = pos_only(tmp_path, "ingest.drop_duplicates=false")
    write(tmp_path / "raw" / "pos" / "a.csv", HEADER + GOOD + GOOD)
    ingest_job.run(spark, cfg, "run-1", now=NOW)
    ingest_job.run(spark, cfg, "run-2", now=NOW)
    assert table(spark, cfg, "transactions").count() == 2
    assert_reconciled(spark, cfg)


def test_ingest_future_rows_accepted_when_policy_allows(spark, tmp_path):
    cfg = pos_only(tmp_path, "ingest.quarantine_future=false")
    write(tmp_path / "raw" / "pos" / "a.csv", HEADER + b"P9,1,0042,SKU1,1,3.50,2031-01-01 10:00:00,S01\n")
    ingest_job.run(spark, cfg, "run-1", now=NOW)
    assert table(spark, cfg, "transactions").count() == 1


def test_flag_extremes_marks_amounts_beyond_the_far_fence(spark):
    # log1p amounts of 9 rows around 10 and one of 100000: Q1 = Q3 = log1p(10), IQR 0,
    # so the fence is log1p(10) itself; only the outlier is beyond it.
    rows = [("pos", 10.0, None, False)] * 9 + [("pos", 100000.0, None, False), ("pos", 5e6, "bad", False)]
    df = spark.createDataFrame(rows, "source STRING, amount DOUBLE, reason STRING, is_duplicate BOOLEAN")
    flagged = df.transform(quality.flag_extremes(3.0)).select("amount", "is_extreme")
    expected = spark.createDataFrame(
        [(10.0, False)] * 9 + [(100000.0, True), (5e6, True)], "amount DOUBLE, is_extreme BOOLEAN"
    )
    assert_df_equality(flagged, expected, ignore_row_order=True, ignore_nullable=True)


def test_nearest_rank_quantiles_of_counted_values(spark):
    # Source a: 1.0, 2.0, 2.0, 3.0, 5.0 (n = 5). Ranks ceil(p x 5): p01 -> 1, p25 -> 2,
    # p50 -> 3, p75 -> 4, p99 -> 5; cumulative counts 1, 3, 4, 5 at 1, 2, 3, 5.
    # Source b counts only a null value: no row.
    counted = spark.createDataFrame(
        [("a", 2.0, 2), ("a", 5.0, 1), ("a", 1.0, 1), ("a", 3.0, 1), ("b", None, 4)],
        "source STRING, v DOUBLE, n LONG",
    )
    quantiles = quality.nearest_rank_quantiles(counted, "source", "v", "n", quality.AMOUNT_QUANTILES)
    expected = spark.createDataFrame(
        [("a", 1.0, 2.0, 2.0, 3.0, 5.0)], "source STRING, q0 DOUBLE, q1 DOUBLE, q2 DOUBLE, q3 DOUBLE, q4 DOUBLE"
    )
    assert_df_equality(quantiles, expected, ignore_nullable=True)


def test_nearest_rank_is_the_exact_rank_where_p_times_n_is_not_exact_in_doubles(spark):
    # Values 1..100 once each: p = 0.07 is rank 7, though 0.07 * 100 = 7.000000000000001.
    counted = spark.range(1, 101).select(F.lit("a").alias("source"), F.col("id").cast("double").alias("v"), F.lit(1))
    quantiles = quality.nearest_rank_quantiles(counted.toDF("source", "v", "n"), "source", "v", "n", (0.07, 0.55))
    expected = spark.createDataFrame([("a", 7.0, 55.0)], "source STRING, q0 DOUBLE, q1 DOUBLE")
    assert_df_equality(quantiles, expected, ignore_nullable=True)


def test_nearest_rank_quantiles_agree_with_percentile_approx_where_it_is_exact(spark):
    # 2,000 values with ties, below percentile_approx's accuracy of 10,000: exact there.
    values = spark.range(2000).select(
        (F.col("id") % 3).cast("string").alias("source"), F.round(F.rand(seed=7) * 50).alias("v")
    )
    probabilities = quality.AMOUNT_QUANTILES
    ours = quality.nearest_rank_quantiles(values.groupBy("source", "v").count(), "source", "v", "count", probabilities)
    theirs = (
        values.groupBy("source")
        .agg(F.percentile_approx("v", list(probabilities), 10_000).alias("q"))
        .select("source", *[F.col("q")[i].alias(f"q{i}") for i in range(len(probabilities))])
    )
    assert_df_equality(ours, theirs, ignore_row_order=True, ignore_nullable=True)


def test_data_profile_per_source_and_all(spark):
    t1, t2, t3 = (dt.datetime(2024, 1, d) for d in (1, 2, 3))
    rows = [
        ("pos", "a", "p", 1.0, 10.0, 10.0, t1, "purchase", False, None, False),
        ("pos", "a", "p", 1.0, 10.0, 10.0, t1, "purchase", False, None, True),  # duplicate: not profiled
        ("pos", None, "p", 1.0, 30.0, 30.0, t2, "purchase", False, "missing_customer_id", False),
        ("web", "b", None, -1.0, 20.0, -20.0, t3, "return", False, None, False),
        ("web", "c", "q", 2.0, 10.0, 20.0, t2, "purchase", True, None, False),
    ]
    profile = quality.data_profile(spark.createDataFrame(rows, PROFILE_INPUT)).select(
        "source", "rows", "accepted", "quarantined", "null_rate_customer_id", "null_rate_product_id",
        "distinct_customers", "first_event_ts", "last_event_ts", "amount_p50", "return_share", "extreme_rows",
    )  # fmt: skip
    expected = spark.createDataFrame(
        [
            ("pos", 2, 1, 1, 0.5, 0.0, 1, t1, t1, 10.0, 0.0, 0),
            ("web", 2, 2, 0, 0.0, 0.5, 2, t2, t3, 20.0, 0.5, 1),
            ("ALL", 4, 3, 1, 0.25, 0.25, 3, t1, t3, 10.0, 0.3333, 1),
        ],
        "source STRING, rows LONG, accepted LONG, quarantined LONG, null_rate_customer_id DOUBLE, "
        "null_rate_product_id DOUBLE, distinct_customers LONG, first_event_ts TIMESTAMP, last_event_ts TIMESTAMP, "
        "amount_p50 DOUBLE, return_share DOUBLE, extreme_rows LONG",
    )
    assert_approx_df_equality(profile, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)


def test_data_profile_of_a_source_without_accepted_purchases(spark):
    t1 = dt.datetime(2024, 1, 1)
    rows = [
        ("pos", "a", "p", 1.0, 10.0, 10.0, t1, "purchase", False, None, False),
        ("pos", "b", "p", 3.0, 10.0, 30.0, t1, "purchase", False, None, False),
        ("app", None, "p", 1.0, 5.0, 5.0, t1, "purchase", False, "missing_customer_id", False),
        ("app", "c", "p", -1.0, 5.0, -5.0, t1, "return", False, None, False),  # accepted, not a purchase
    ]
    profile = quality.data_profile(spark.createDataFrame(rows, PROFILE_INPUT)).select(
        "source", "rows", "accepted", "quarantined", "distinct_customers", "amount_p01", "amount_p50", "amount_p99",
        "return_share",
    )  # fmt: skip
    # p01, p50, p99 of (10, 30): ranks ceil(0.02) = 1, ceil(1.0) = 1, ceil(1.98) = 2.
    expected = spark.createDataFrame(
        [
            ("pos", 2, 2, 0, 2, 10.0, 10.0, 30.0, 0.0),
            ("app", 2, 1, 1, 1, None, None, None, 1.0),
            ("ALL", 4, 3, 1, 3, 10.0, 10.0, 30.0, 0.3333),
        ],
        "source STRING, rows LONG, accepted LONG, quarantined LONG, distinct_customers LONG, amount_p01 DOUBLE, "
        "amount_p50 DOUBLE, amount_p99 DOUBLE, return_share DOUBLE",
    )
    assert_approx_df_equality(profile, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)


def test_data_profile_counts_a_customer_of_two_sources_once_in_all(spark):
    t1 = dt.datetime(2024, 1, 1)
    rows = [
        ("pos", "a", "p", 1.0, 10.0, 10.0, t1, "purchase", False, None, False),
        ("web", "a", "p", 1.0, 10.0, 10.0, t1, "purchase", False, None, False),  # a buys in both
        ("web", "b", "p", 1.0, 10.0, 10.0, t1, "purchase", False, None, False),
        ("web", "c", "p", 1.0, 10.0, 10.0, t1, "purchase", False, "bad_quantity", False),  # quarantined
        ("app", None, "p", 1.0, 10.0, 10.0, t1, "purchase", False, "missing_customer_id", False),
    ]
    profile = quality.data_profile(spark.createDataFrame(rows, PROFILE_INPUT)).select("source", "distinct_customers")
    expected = spark.createDataFrame(
        [("pos", 1), ("web", 2), ("app", 0), ("ALL", 2)], "source STRING, distinct_customers LONG"
    )
    assert_df_equality(profile, expected, ignore_row_order=True, ignore_nullable=True)


def test_ingest_parquet_and_delta_sources(spark, tmp_path):
    base = make_config(tmp_path)
    pos = base.sources[0]
    rows = spark.createDataFrame(
        [("P1", 1, "0042", "SKU1", 2, 3.5, "2024-06-01 10:00:00", "S01")],
        "receipt_no STRING, line_no INT, loyalty_id STRING, sku STRING, qty INT, unit_price DOUBLE, sold_at STRING, "
        "store_id STRING",
    )
    rows.write.parquet(str(tmp_path / "pq"))
    rows.write.format("delta").save(str(tmp_path / "dl"))
    sources = (
        dataclasses.replace(pos, name="pq", format="parquet", path=str(tmp_path / "pq")),
        dataclasses.replace(pos, name="dl", format="delta", path=str(tmp_path / "dl")),
    )
    cfg = dataclasses.replace(base, sources=sources)
    ingest_job.run(spark, cfg, "run-1", now=NOW)
    expected = spark.createDataFrame(
        [("dl", "0042", 2.0, 3.5, 7.0), ("pq", "0042", 2.0, 3.5, 7.0)],
        "source STRING, customer_id STRING, quantity DOUBLE, unit_price DOUBLE, amount DOUBLE",
    )
    actual = table(spark, cfg, "transactions").select(*expected.columns)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    assert_reconciled(spark, cfg)


def test_ingest_csv_files_with_columns_in_another_order_fail_loudly(spark, tmp_path):
    cfg = pos_only(tmp_path)
    write(tmp_path / "raw" / "pos" / "a.csv", HEADER + GOOD)
    swapped = (
        b"receipt_no,line_no,loyalty_id,sku,unit_price,qty,sold_at,store_id\n"
        b"P2,1,0042,SKU1,9.99,1,2024-06-01 10:00:00,S01\n"
    )
    write(tmp_path / "raw" / "pos" / "b.csv", swapped)
    with pytest.raises(SourceError, match=r"/b\.csv: its header is not the source's .*expected qty, found unit_price"):
        ingest_job.run(spark, cfg, "run-1", now=NOW)
    assert not io.exists(spark, io.table_ref(cfg.storage, cfg.tables.transactions))


def test_ingest_json_that_is_not_json_lines_is_a_clear_error(spark, tmp_path):
    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(cfg, sources=cfg.sources[1:])
    write(tmp_path / "raw" / "web" / "pretty.json", b'{\n  "order_id": "W1",\n  "items": []\n}\n')
    with pytest.raises(SourceError, match=r"source 'web' .*no line .* parses as json.*multiLine"):
        ingest_job.run(spark, cfg, "run-1", now=NOW)


def test_ingest_identical_items_of_one_order_are_two_lines(spark, tmp_path):
    cfg = web_without_positions(make_config(tmp_path))
    order = (
        b'{"order_id":"W1","customer":{"id":"7"},"created_at":"2024-03-01T10:00:00Z","kind":"order",'
        b'"status":"completed","items":[{"sku":"X","quantity":1,"price":2.0},{"sku":"X","quantity":1,"price":2.0}]}\n'
    )
    write(tmp_path / "raw" / "web" / "a.jsonl", order)
    counts = ingest_job.run(spark, cfg, "run-1", now=NOW).counts
    assert [(s.rows_read, s.accepted, s.duplicates) for s in counts] == [(2, 2, 0)]


def test_ingest_switching_duplicate_policy_does_not_load_a_line_twice(spark, tmp_path):
    write(tmp_path / "raw" / "pos" / "a.csv", HEADER + GOOD + GOOD)
    ingest_job.run(spark, pos_only(tmp_path), "run-1", now=NOW)
    cfg = pos_only(tmp_path, "ingest.drop_duplicates=false")
    ingest_job.run(spark, cfg, "run-2", now=NOW)
    assert table(spark, cfg, "transactions").count() == 2  # the first copy once, the second copy once


def test_ingest_empty_csv_source_is_logged_with_zero_rows(spark, tmp_path):
    base = make_config(tmp_path)
    cfg = dataclasses.replace(base, sources=(base.sources[0], web_without_positions(base).sources[0]))
    write(tmp_path / "raw" / "pos" / "empty.csv", b"")
    write(
        tmp_path / "raw" / "web" / "a.jsonl",
        b'{"order_id":"W1","customer":{"id":"7"},"created_at":"2024-03-01T10:00:00Z","kind":"order","status":"completed","items":[{"sku":"X","quantity":1,"price":2.0}]}\n',
    )
    counts = ingest_job.run(spark, cfg, "run-1", now=NOW).counts
    assert [(s.source, s.rows_read, s.accepted) for s in counts] == [("pos", 0, 0), ("web", 1, 1)]
    assert_reconciled(spark, cfg)


def test_ingest_header_only_csv_source_is_logged_with_zero_rows(spark, tmp_path):
    base = make_config(tmp_path)
    cfg = dataclasses.replace(base, sources=(base.sources[0], web_without_positions(base).sources[0]))
    write(tmp_path / "raw" / "pos" / "header_only.csv", HEADER)
    write(
        tmp_path / "raw" / "web" / "a.jsonl",
        b'{"order_id":"W1","customer":{"id":"7"},"created_at":"2024-03-01T10:00:00Z","kind":"order","status":"completed","items":[{"sku":"X","quantity":1,"price":2.0}]}\n',
    )
    counts = ingest_job.run(spark, cfg, "run-1", now=NOW).counts
    assert [(s.source, s.rows_read, s.accepted, s.inserted) for s in counts] == [("pos", 0, 0, 0), ("web", 1, 1, 1)]
    logged = table(spark, cfg, "run_log").select("source", "rows_read", "accepted", "quarantined", "inserted")
    expected = spark.createDataFrame(
        [("pos", 0, 0, 0, 0), ("web", 1, 1, 0, 1)],
        "source STRING, rows_read LONG, accepted LONG, quarantined LONG, inserted LONG",
    )
    assert_df_equality(logged, expected, ignore_row_order=True, ignore_nullable=True)
    W1 = dt.datetime(2024, 3, 1, 10)  # noqa: N806 (the one web order's time)
    profiled = table(spark, cfg, "profile").select(
        "source", "rows", "accepted", "distinct_customers", "first_event_ts", "amount_p50"
    )
    expected = spark.createDataFrame(
        [("pos", 0, 0, 0, None, None), ("web", 1, 1, 1, W1, 2.0), ("ALL", 1, 1, 1, W1, 2.0)],
        "source STRING, rows LONG, accepted LONG, distinct_customers LONG, first_event_ts TIMESTAMP, amount_p50 DOUBLE",
    )  # fmt: skip
    assert_df_equality(profiled, expected, ignore_row_order=True, ignore_nullable=True)


def test_ingest_without_quarantined_rows_leaves_no_file_in_quarantine(spark, tmp_path):
    cfg = pos_only(tmp_path)
    write(tmp_path / "raw" / "pos" / "a.csv", HEADER + GOOD)
    ingest_job.run(spark, cfg, "run-1", now=NOW)
    folder = tmp_path / "lake" / cfg.tables.quarantine
    assert (folder / "_delta_log").is_dir()  # the first run creates the table, empty
    files = {p.name for p in folder.rglob("*.parquet")}
    write(tmp_path / "raw" / "pos" / "b.csv", HEADER + GOOD.replace(b"P1", b"P2"))
    ingest_job.run(spark, cfg, "run-2", now=NOW)
    assert {p.name for p in folder.rglob("*.parquet")} == files
    assert table(spark, cfg, "transactions").count() == 2
    assert_reconciled(spark, cfg)


def web_order(order_id: str, customer: str, notes: str = '"none"') -> bytes:
    return (
        f'{{"order_id":"{order_id}","customer":{customer},"notes":{notes},"created_at":"2024-03-01T10:00:00Z",'
        '"kind":"order","status":"completed","items":[{"sku":"X","quantity":1,"price":2.0}]}\n'
    ).encode()


def test_ingest_json_field_of_mixed_shape_quarantines_only_where_the_mapping_reads_it(spark, tmp_path):
    cfg = web_without_positions(make_config(tmp_path))
    orders = web_order("W1", '{"id":"7"}') + web_order("W2", '"206"') + web_order("W3", '{"id":"8"}', '{"by":"ops"}')
    write(tmp_path / "raw" / "web" / "a.jsonl", orders)
    counts = ingest_job.run(spark, cfg, "run-1", now=NOW).counts
    assert [(s.rows_read, s.accepted, s.quarantined) for s in counts] == [(3, 2, 1)]  # notes: nothing reads it
    quarantine = table(spark, cfg, "quarantine").select("reason", "raw")
    expected = spark.createDataFrame(
        [("malformed_row", web_order("W2", '"206"').decode().strip())], "reason STRING, raw STRING"
    )
    assert_df_equality(quarantine, expected, ignore_nullable=True)
    assert_reconciled(spark, cfg)


def test_ingest_json_field_never_of_the_mapped_shape_is_still_a_mapping_error(spark, tmp_path):
    cfg = web_without_positions(make_config(tmp_path))
    write(tmp_path / "raw" / "web" / "a.jsonl", web_order("W1", '"7"') + web_order("W2", '"206"'))
    with pytest.raises(SourceError, match=r"demo_web\.yaml: columns\.customer_id: cannot resolve 'customer\.id'"):
        ingest_job.run(spark, cfg, "run-1", now=NOW)


def test_ingest_killed_before_its_run_log_row_is_logged_by_the_next_run(spark, tmp_path, monkeypatch):
    cfg = pos_only(tmp_path)
    write(tmp_path / "raw" / "pos" / "a.csv", HEADER + GOOD + b"P1,2,0042,SKU2,x,3.50,2024-06-01 10:00:00,S01\n")
    # The process dies after both loads committed and before the run log's append: the
    # same tables on disk as a kill -9 there.
    with monkeypatch.context() as patched:
        patched.setattr(ingest_job, "_write_run_log", lambda *args: (_ for _ in ()).throw(SystemExit(137)))
        with pytest.raises(SystemExit):
            ingest_job.run(spark, cfg, "run-1", now=NOW)
    assert table(spark, cfg, "transactions").count() == 1
    assert not io.exists(spark, io.table_ref(cfg.storage, cfg.tables.run_log))

    write(tmp_path / "raw" / "pos" / "b.csv", HEADER + GOOD.replace(b"P1", b"P2"))
    ingest_job.run(spark, cfg, "run-2", now=NOW)
    ingest_job.run(spark, cfg, "run-3", now=NOW)  # finds nothing more to repair
    logged = table(spark, cfg, "run_log").select("run_id", "rows_read", "quarantined", "inserted", "repaired_by")
    expected = spark.createDataFrame(
        [("run-1", None, 1, 1, "run-2"), ("run-2", 3, 1, 1, None), ("run-3", 3, 1, 0, None)],
        "run_id STRING, rows_read LONG, quarantined LONG, inserted LONG, repaired_by STRING",
    )
    assert_df_equality(logged, expected, ignore_row_order=True, ignore_nullable=True)
    assert logged.agg(F.sum("inserted")).first()[0] == table(spark, cfg, "transactions").count() == 2
