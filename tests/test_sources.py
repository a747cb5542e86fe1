from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from chispa import assert_df_equality
from pyspark.sql.types import ArrayType, StringType, StructField, StructType

from custseg.config import CustomerSourceConfig, load_source
from custseg.ingest.sources import SourceError, _text_type, canonicalize, check_mapping, read_source
from tests.conftest import CONF

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
POS = load_source(CONF / "sources" / "demo_pos.yaml")
WEB = load_source(CONF / "sources" / "demo_web.yaml")

POS_RAW = (
    "receipt_no STRING, line_no STRING, loyalty_id STRING, sku STRING, qty STRING, "
    "unit_price STRING, sold_at STRING, store_id STRING, source_file STRING"
)
CANONICAL = (
    "source STRING, customer_id STRING, invoice_id STRING, line_id STRING, product_id STRING, "
    "quantity DOUBLE, unit_price DOUBLE, amount DOUBLE, event_ts TIMESTAMP, store STRING, "
    "channel STRING, txn_type STRING, reason STRING"
)
KEEP = [
    "source",
    "customer_id",
    "invoice_id",
    "line_id",
    "product_id",
    "quantity",
    "unit_price",
    "amount",
    "event_ts",
    "store",
    "channel",
    "txn_type",
    "reason",
]


def test_canonicalize_pos_maps_types_zones_returns_and_reasons(spark):
    raw = spark.createDataFrame(
        [
            # June is British Summer Time: 10:00 in London is 09:00 UTC.
            ("P1", "1", " 0042 ", "SKU1", "2", "3.50", "2024-06-01 10:00:00", "S01", "f.csv"),
            # a return receipt: quantity made negative, amount netted
            ("R7", "1", "0042", "SKU1", "-1", "3.50", "2024-12-01 10:00:00", "S01", "f.csv"),
            ("G1", "1", "", "SKU2", "1", "5.00", "2024-06-01 10:00:00", "S02", "f.csv"),
            ("P2", "1", "0043", "SKU2", "two", "5.00", "2024-06-01 10:00:00", "S02", "f.csv"),
            ("P3", "1", "0043", "SKU2", "1", "5.00", "01/06/2024", "S02", "f.csv"),
            ("P4", "1", "0043", "SKU2", "1", "0", "2024-06-01 10:00:00", "S02", "f.csv"),
            ("P5", "1", "0043", "SKU2", "1", "5.00", "2030-01-01 00:00:00", "S02", "f.csv"),
        ],
        POS_RAW,
    )
    expected = spark.createDataFrame(
        [
            (
                "pos",
                "0042",
                "P1",
                "1",
                "SKU1",
                2.0,
                3.5,
                7.0,
                dt.datetime(2024, 6, 1, 9),
                "S01",
                "store",
                "purchase",
                None,
            ),
            (
                "pos",
                "0042",
                "R7",
                "1",
                "SKU1",
                -1.0,
                3.5,
                -3.5,
                dt.datetime(2024, 12, 1, 10),
                "S01",
                "store",
                "return",
                None,
            ),
            (
                "pos",
                None,
                "G1",
                "1",
                "SKU2",
                1.0,
                5.0,
                5.0,
                dt.datetime(2024, 6, 1, 9),
                "S02",
                "store",
                "purchase",
                "missing_customer_id",
            ),
            (
                "pos",
                "0043",
                "P2",
                "1",
                "SKU2",
                None,
                5.0,
                None,
                dt.datetime(2024, 6, 1, 9),
                "S02",
                "store",
                "purchase",
                "unparseable_quantity",
            ),
            (
                "pos",
                "0043",
                "P3",
                "1",
                "SKU2",
                1.0,
                5.0,
                5.0,
                None,
                "S02",
                "store",
                "purchase",
                "unparseable_timestamp",
            ),
            (
                "pos",
                "0043",
                "P4",
                "1",
                "SKU2",
                1.0,
                0.0,
                0.0,
                dt.datetime(2024, 6, 1, 9),
                "S02",
                "store",
                "purchase",
                "non_positive_price",
            ),
            (
                "pos",
                "0043",
                "P5",
                "1",
                "SKU2",
                1.0,
                5.0,
                5.0,
                dt.datetime(2030, 1, 1),
                "S02",
                "store",
                "purchase",
                "future_timestamp",
            ),
        ],
        CANONICAL,
    )
    actual = raw.transform(canonicalize(POS, NOW)).select(*KEEP)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_canonicalize_keeps_the_original_row_and_hashes_content(spark):
    row = ("P1", "1", "0042", "SKU1", "2", "3.50", "2024-06-01 10:00:00", "S01", "f.csv")
    other_file = (*row[:-1], "g.csv")
    out = spark.createDataFrame([row, other_file], POS_RAW).transform(canonicalize(POS, NOW))
    ids = out.select("content_id").distinct()
    expected = spark.createDataFrame(
        [
            (
                '{"receipt_no":"P1","line_no":"1","loyalty_id":"0042","sku":"SKU1",'
                '"qty":"2","unit_price":"3.50","sold_at":"2024-06-01 10:00:00",'
                '"store_id":"S01"}',
            )
        ],
        "raw STRING",
    )
    assert_df_equality(out.select("raw").distinct(), expected, ignore_nullable=True)
    assert ids.count() == 1  # the same line exported in two files is one transaction


def test_canonicalize_web_explodes_items_voids_and_refunds(spark, tmp_path):
    lines = [
        '{"order_id":"W1","customer":{"id":"7"},"created_at":"2024-03-01T10:00:00Z","kind":"order",'
        '"status":"completed","items":[{"position":1,"sku":"A","quantity":2,"price":1.5},'
        '{"position":2,"sku":"B","quantity":1,"price":4}]}',
        '{"order_id":"W2","customer":{"id":"7"},"created_at":"2024-03-02T10:00:00+01:00","kind":"order",'
        '"status":"cancelled","items":[{"position":1,"sku":"A","quantity":1,"price":1.5}]}',
        '{"order_id":"F1","customer":{"id":"7"},"created_at":"2024-03-05T10:00:00Z","kind":"refund",'
        '"status":"completed","items":[{"position":1,"sku":"B","quantity":1,"price":4}]}',
        '{"order_id":"X1","customer":null,"created_at":"2024-03-05T10:00:00Z","kind":"order",'
        '"status":"completed","items":[{"position":1,"sku":"B","quantity":1,"price":4}]}',
    ]
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = spark.read.option("primitivesAsString", "true").json(str(path)).selectExpr("*", "'f.json' AS source_file")
    expected = spark.createDataFrame(
        [
            ("web", "7", "W1", "1", "A", 2.0, 1.5, 3.0, dt.datetime(2024, 3, 1, 10), None, "web", "purchase", None),
            ("web", "7", "W1", "2", "B", 1.0, 4.0, 4.0, dt.datetime(2024, 3, 1, 10), None, "web", "purchase", None),
            ("web", "7", "W2", "1", "A", 1.0, 1.5, 0.0, dt.datetime(2024, 3, 2, 9), None, "web", "void", None),
            ("web", "7", "F1", "1", "B", -1.0, 4.0, -4.0, dt.datetime(2024, 3, 5, 10), None, "web", "return", None),
            (
                "web",
                None,
                "X1",
                "1",
                "B",
                1.0,
                4.0,
                4.0,
                dt.datetime(2024, 3, 5, 10),
                None,
                "web",
                "purchase",
                "missing_customer_id",
            ),
        ],
        CANONICAL,
    )
    actual = raw.transform(canonicalize(WEB, NOW)).select(*KEEP)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_check_mapping_names_file_and_key_for_unknown_column(spark):
    raw = spark.createDataFrame([("P1", "1")], "receipt_no STRING, line_no STRING")
    bad = dataclasses.replace(POS, columns=dataclasses.replace(POS.columns, customer_id="loyalty"))
    with pytest.raises(SourceError, match=r"demo_pos\.yaml: columns\.customer_id: cannot resolve 'loyalty'"):
        check_mapping(raw, bad)


def test_canonicalize_quarantines_nan_and_infinite_numbers(spark):
    raw = spark.createDataFrame(
        [
            ("P1", "1", "0042", "SKU1", "NaN", "3.50", "2024-06-01 10:00:00", "S01", "f.csv"),
            ("P2", "1", "0042", "SKU1", "1", "Infinity", "2024-06-01 10:00:00", "S01", "f.csv"),
        ],
        POS_RAW,
    )
    actual = raw.transform(canonicalize(POS, NOW)).select("invoice_id", "reason")
    expected = spark.createDataFrame(
        [("P1", "non_finite_number"), ("P2", "non_finite_number")], "invoice_id STRING, reason STRING"
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_canonicalize_iso_timestamps_apply_an_offset_once_and_zone_only_without_one(spark):
    london = dataclasses.replace(WEB, timezone="Europe/London")
    rows = [
        ("2024-06-01T10:00:00+01:00",),
        ("2024-06-01T10:00:00+01",),
        ("2024-06-01T09:00:00z",),
        ("2024-06-01 09:00:00 UTC",),
        ("2024-06-01T10:00:00",),
    ]  # the last is London local time
    raw = spark.createDataFrame(rows, "created_at STRING").selectExpr(
        "'W1' AS order_id",
        "named_struct('id', '7') AS customer",
        "created_at",
        "'order' AS kind",
        "'completed' AS status",
        "array(named_struct('position', '1', 'sku', 'A', 'quantity', '1', 'price', '2')) AS items",
        "'f.json' AS source_file",
    )
    actual = raw.transform(canonicalize(london, NOW)).select("event_ts").distinct()
    expected = spark.createDataFrame([(dt.datetime(2024, 6, 1, 9),)], "event_ts TIMESTAMP")
    assert_df_equality(actual, expected, ignore_nullable=True)


def test_check_mapping_rejects_bad_sql_and_bad_timestamp_pattern(spark):
    raw = spark.createDataFrame([("P1",)], "receipt_no STRING").selectExpr(
        "*", "'1' AS line_no", "'1' AS loyalty_id", "'s' AS sku", "'1' AS qty", "'1' AS unit_price",
        "'x' AS sold_at", "'s' AS store_id",
    )  # fmt: skip
    with pytest.raises(SourceError, match=r"demo_pos\.yaml: return_when: cannot resolve 'receipt_no LIKE \(\('R%''"):
        check_mapping(raw, dataclasses.replace(POS, return_when="receipt_no LIKE (('R%'"))
    with pytest.raises(SourceError, match=r"demo_pos\.yaml: void_when: 'receipt_no' is not a true/false condition"):
        check_mapping(raw, dataclasses.replace(POS, void_when="receipt_no"))
    with pytest.raises(SourceError, match=r"demo_pos\.yaml: timestamp_formats\[1\]: 'yyyy-bb' is not a valid"):
        check_mapping(raw, dataclasses.replace(POS, timestamp_formats=["yyyyMMdd", "yyyy-bb"]))


def test_text_type_of_a_variant_schema_is_structs_and_arrays_of_text():
    schema = (
        "OBJECT<`a b`: BIGINT, c: ARRAY<VARIANT>, d: DECIMAL(2,1), e: VOID, g: OBJECT<h: ARRAY<OBJECT<i: BIGINT>>>>"
    )
    expected = StructType(
        [
            StructField("a b", StringType()),
            StructField("c", ArrayType(StringType())),
            StructField("d", StringType()),
            StructField("e", StringType()),
            StructField("g", StructType([StructField("h", ArrayType(StructType([StructField("i", StringType())])))])),
        ]
    )
    assert _text_type(schema) == expected


def test_read_source_reads_a_customer_tables_json_as_spark_infers_it(spark, tmp_path):
    (tmp_path / "crm.jsonl").write_text('{"id":"1","address":{"city":"Leeds"}}\n{"id":"2","address":"unknown"}\n')
    src = CustomerSourceConfig(name="crm", format="json", path=str(tmp_path), customer_id="id", numeric={"n": "1"})
    rows = read_source(spark, src).orderBy("id").select("id", "address").collect()
    assert [tuple(r) for r in rows] == [("1", '{"city":"Leeds"}'), ("2", "unknown")]
