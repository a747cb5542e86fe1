"""Customer-attribute tables: mapping, quarantine, joining, and segmenting a customer
table alone (the mall customers case)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from chispa import assert_df_equality
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from custseg import columns as c
from custseg.config import ConfigError, CustomerSourceConfig, load_customer_source
from custseg.features.rfm import with_attributes
from custseg.ingest import customers
from custseg.segment import preprocess
from custseg.segment.evaluate import adjusted_rand_index
from tests.conftest import CONF, ROOT
from tests.test_e2e import run_cli

MALL = ROOT / "tests" / "data" / "mall_customers"
SRC = CustomerSourceConfig(
    name="crm", format="csv", path="unused", customer_id="id", numeric={"age": "age", "income": "income"},
    categorical={"region": "upper(region)"}, file="crm.yaml",
)  # fmt: skip
RAW_SCHEMA = "id STRING, age STRING, income STRING, region STRING, source_file STRING"


def test_canonical_customers_accepts_quarantines_and_counts_copies(spark):
    raw = spark.createDataFrame(
        [
            ("1", "34", "55.5", " north ", "f1"),
            ("1", "34", "55.5", " north ", "f2"),  # an exact copy (in another file): counted once
            ("2", "n/a", "40", "south", "f1"),  # age is not a number
            (" ", "50", "40", "south", "f1"),  # no id
            ("3", "41", "NaN", "east", "f1"),  # NaN is not an income
            ("4", "29", "30", "west", "f1"),  # id 4 twice with different incomes: which is right?
            ("4", "29", "31", "west", "f1"),
            ("5", None, "20", None, "f1"),  # missing values are not errors: null
            ("6", "60", "10", "west", "f1"),
            ("6", "60", "10", "west ", "f2"),  # the same values once trimmed: a copy, not a conflict
        ],
        RAW_SCHEMA,
    )
    actual = raw.transform(customers.canonical_customers(SRC)).select(
        "customer_id", "age", "income", "region", "reason", "duplicate"
    )
    expected = spark.createDataFrame(
        [
            ("1", 34.0, 55.5, "NORTH", None, False),
            ("1", 34.0, 55.5, "NORTH", None, True),
            ("2", None, 40.0, "SOUTH", "unparseable_age", False),
            (None, 50.0, 40.0, "SOUTH", "missing_customer_id", False),
            ("3", 41.0, float("nan"), "EAST", "non_finite_number", False),
            ("4", 29.0, 30.0, "WEST", "conflicting_customer_rows", False),
            ("4", 29.0, 31.0, "WEST", "conflicting_customer_rows", False),
            ("5", None, 20.0, None, None, False),
            ("6", 60.0, 10.0, "WEST", None, False),
            ("6", 60.0, 10.0, "WEST", None, True),
        ],
        "customer_id STRING, age DOUBLE, income DOUBLE, region STRING, reason STRING, duplicate BOOLEAN",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True, allow_nan_equality=True)


def test_customer_source_rejects_names_taken_by_features(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: c\nformat: csv\npath: x\ncustomer_id: id\nnumeric: {monetary: spend}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: attribute names \['monetary'\] are taken"):
        load_customer_source(path)


def test_with_attributes_keeps_customers_from_both_sides(spark):
    as_of = dt.date(2024, 7, 1)
    feats = spark.createDataFrame(
        [("a", as_of, 3), ("b", as_of, 1)], "customer_id STRING, as_of_date DATE, frequency LONG"
    )
    attrs = spark.createDataFrame([("b", 40.0, "x"), ("z", 22.0, "y")], "customer_id STRING, age DOUBLE, seg STRING")
    actual = feats.transform(with_attributes(attrs, ["age"], as_of))
    expected = spark.createDataFrame(
        [("a", as_of, 3, None), ("b", as_of, 1, 40.0), ("z", as_of, None, 22.0)],
        "customer_id STRING, as_of_date DATE, frequency LONG, age DOUBLE",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_categorical_feature_is_one_hot_encoded_and_unseen_values_score_as_zeros(spark, tmp_path):
    from tests.conftest import make_config

    seg = dataclasses.replace(make_config(tmp_path).segment, features=["gender"], pca_components=None)
    train = spark.createDataFrame(
        [("a", "Male"), ("b", "Female"), ("c", "Female")], "customer_id STRING, gender STRING"
    )
    fitted = preprocess.preprocessing(seg, categorical=["gender"]).fit(train)
    score = spark.createDataFrame([("d", "Female"), ("e", "Male"), ("f", "Other")], "customer_id STRING, gender STRING")
    onehot = fitted.transform(score).select("customer_id", vector_to_array("in_gender").alias("v"))
    # alphabetical: Female is position 0, Male 1; an unseen value has no position
    expected = spark.createDataFrame(
        [("d", [1.0, 0.0]), ("e", [0.0, 1.0]), ("f", [0.0, 0.0])], "customer_id STRING, v ARRAY<DOUBLE>"
    )
    assert_df_equality(onehot, expected, ignore_row_order=True, ignore_nullable=True)


def test_customer_table_alone_is_segmented_into_its_planted_groups(spark, tmp_path, monkeypatch, report):
    monkeypatch.chdir(tmp_path)
    mapping = (
        (CONF / "sources" / "mall_customers.yaml")
        .read_text()
        .replace("path: tests/data/mall_customers/mall_customers.csv", f"path: {MALL / 'mall_customers.csv'}")
    )
    (tmp_path / "mall.yaml").write_text(mapping)
    overlay = ["--config", str(CONF / "mall.yaml")]
    assert run_cli("run", "ingest.sources=[]", f"ingest.customers={tmp_path / 'mall.yaml'}", "segment.k_max=7",
                   "stability.seeds=[]", "stability.bootstrap=0",
                   configs=overlay) == 0  # fmt: skip

    lake = tmp_path / "data" / "mall"
    labels = spark.read.format("delta").load(str(lake / "segment_labels"))
    truth = spark.read.option("header", "true").csv(str(MALL / "truth.csv"))
    ari = adjusted_rand_index(labels.join(truth, on=c.CUSTOMER_ID, how="inner"), c.SEGMENT_ID, "group")
    report.append(f"mall customers (customer table alone): k={labels.first()['k']}, ARI vs planted groups = {ari:.4f}")
    assert labels.count() == 200 and labels.where("segment_id < 0").count() == 0
    assert ari >= 0.9

    profiles = spark.read.format("delta").load(str(lake / "segment_profiles"))
    names = {r["segment_name"] for r in profiles.collect()}  # k rows
    assert "High spending score, high annual income" in names or "High annual income, high spending score" in names
    attributes = spark.read.format("delta").load(str(lake / "customer_attributes"))
    assert attributes.columns[:5] == ["customer_id", "age", "annual_income", "spending_score", "gender"]
    assert attributes.where(F.col("gender").isNull()).count() == 0
