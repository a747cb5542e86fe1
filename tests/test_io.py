from __future__ import annotations

from chispa import assert_df_equality
from delta.tables import DeltaTable

from custseg import io
from custseg.config import StorageConfig

SCHEMA = "id LONG, name STRING"


def test_delta_round_trip_overwrite_and_read_back(spark, tmp_path):
    ref = io.table_ref(StorageConfig(mode="path", root=str(tmp_path), database=None), "t")
    df = spark.createDataFrame([(1, "a"), (2, "b")], SCHEMA)
    io.overwrite(df, ref)
    io.overwrite(spark.createDataFrame([(3, "c")], SCHEMA), ref)

    assert DeltaTable.isDeltaTable(spark, ref.path)
    assert_df_equality(io.read(spark, ref), spark.createDataFrame([(3, "c")], SCHEMA))
    first = spark.read.format("delta").option("versionAsOf", 0).load(ref.path)
    assert_df_equality(first, df, ignore_row_order=True)
    assert DeltaTable.forPath(spark, ref.path).history().count() == 2


def test_insert_new_is_idempotent_on_keys(spark, tmp_path):
    ref = io.table_ref(StorageConfig(mode="path", root=str(tmp_path), database=None), "t")
    io.insert_new(spark, spark.createDataFrame([(1, "a"), (2, "b")], SCHEMA), ref, ["id"])
    io.insert_new(spark, spark.createDataFrame([(2, "b"), (3, "c")], SCHEMA), ref, ["id"])
    io.insert_new(spark, spark.createDataFrame([(2, "b"), (3, "c")], SCHEMA), ref, ["id"])
    expected = spark.createDataFrame([(1, "a"), (2, "b"), (3, "c")], SCHEMA)
    assert_df_equality(io.read(spark, ref), expected, ignore_row_order=True)


def test_table_ref_catalog_mode_uses_database_name():
    ref = io.table_ref(StorageConfig(mode="catalog", root="ignored", database="main.custseg"), "segment_labels")
    assert ref.identifier == "main.custseg.segment_labels" and ref.path is None
