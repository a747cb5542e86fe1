from __future__ import annotations

from pathlib import Path

import pytest
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


def test_insert_new_reports_what_its_commit_read_and_inserted(spark, tmp_path):
    ref = io.table_ref(StorageConfig(mode="path", root=str(tmp_path), database=None), "t")
    created = io.insert_new(spark, spark.createDataFrame([(1, "a"), (2, "b")], SCHEMA), ref, ["id"])
    merged = io.insert_new(spark, spark.createDataFrame([(2, "b"), (3, "c"), (4, "d")], SCHEMA), ref, ["id"])
    # Nothing new: Delta commits nothing, so there is no commit of this load's to read.
    unchanged = io.insert_new(spark, spark.createDataFrame([(3, "c")], SCHEMA), ref, ["id"])
    assert (created, merged, unchanged) == (io.Loaded(2, 2), io.Loaded(3, 2), None)


def test_insert_new_sets_table_properties_when_it_creates_the_table(spark, tmp_path):
    ref = io.table_ref(StorageConfig(mode="path", root=str(tmp_path), database=None), "t")
    stats = {"delta.dataSkippingStatsColumns": "id"}
    io.insert_new(spark, spark.createDataFrame([(1, "a")], SCHEMA), ref, ["id"], stats)
    assert DeltaTable.forPath(spark, ref.path).detail().first()["properties"] == stats


def test_table_ref_catalog_mode_uses_database_name():
    ref = io.table_ref(StorageConfig(mode="catalog", root="ignored", database="main.custseg"), "segment_labels")
    assert ref.identifier == "main.custseg.segment_labels" and ref.path is None


def test_insert_new_and_append_add_columns_new_to_the_table(spark, tmp_path):
    ref = io.table_ref(StorageConfig(mode="path", root=str(tmp_path), database=None), "t")
    log_ref = io.table_ref(StorageConfig(mode="path", root=str(tmp_path), database=None), "log")
    io.insert_new(spark, spark.createDataFrame([(1, "a")], SCHEMA), ref, ["id"])
    io.append(spark.createDataFrame([(1, "a")], SCHEMA), log_ref)
    wider = spark.createDataFrame([(2, "b", True)], "id LONG, name STRING, flag BOOLEAN")
    io.insert_new(spark, wider, ref, ["id"])
    io.append(wider, log_ref)
    expected = spark.createDataFrame([(1, "a", None), (2, "b", True)], "id LONG, name STRING, flag BOOLEAN")
    assert_df_equality(io.read(spark, ref), expected, ignore_row_order=True)
    assert_df_equality(io.read(spark, log_ref), expected, ignore_row_order=True)


class Conflict(Exception):
    """What py4j raises for a Delta conflict: the Java exception on the second line."""

    def __init__(self, name: str) -> None:
        super().__init__(f"An error occurred while calling o1.save.\n: io.delta.exceptions.{name}: ...\n\tat x.y(Z)")


def test_retried_on_conflict_writes_again_until_the_other_writer_is_done(monkeypatch):
    waits, outcomes = [], [Conflict("ConcurrentAppendException"), Conflict("ProtocolChangedException"), "done"]
    monkeypatch.setattr(io.time, "sleep", waits.append)

    def write():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert io.retried_on_conflict(io.TableRef("t", path="/lake/t"), write) == "done"
    assert len(waits) == 2 and 0.75 <= waits[0] <= 1.25 and 1.5 <= waits[1] <= 2.5  # backoff, with jitter


def test_retried_on_conflict_gives_up_after_its_tries_in_one_line(monkeypatch):
    monkeypatch.setattr(io.time, "sleep", lambda _: None)
    tries = []

    def write():
        tries.append(1)
        raise Conflict("ConcurrentAppendException")

    with pytest.raises(io.ConcurrentWriteError) as raised:
        io.retried_on_conflict(io.TableRef("t", path="/lake/t"), write)
    assert len(tries) == io.CONFLICT_ATTEMPTS
    assert str(raised.value) == (
        f"/lake/t: another writer committed first at each of {io.CONFLICT_ATTEMPTS} tries "
        "(ConcurrentAppendException); run again once the other job is done (the load adds nothing twice)"
    )


def test_retried_on_conflict_does_not_repeat_other_failures(monkeypatch):
    tries = []

    def write():
        tries.append(1)
        raise ValueError("no such column")

    with pytest.raises(ValueError, match="no such column"):
        io.retried_on_conflict(io.TableRef("t", path="/lake/t"), write)
    assert tries == [1]


def data_files(ref) -> set[str]:
    return {p.name for p in Path(ref.path).rglob("*.parquet") if "_delta_log" not in p.parts}


def test_insert_new_and_delete_matching_of_no_rows_leave_no_file(spark, tmp_path):
    ref = io.table_ref(StorageConfig(mode="path", root=str(tmp_path), database=None), "t")
    io.insert_new(spark, spark.createDataFrame([(1, "a"), (2, "b")], SCHEMA), ref, ["id"])
    before, version = data_files(ref), DeltaTable.forPath(spark, ref.path).history(1).first()["version"]
    nothing = spark.createDataFrame([], SCHEMA)
    assert io.insert_new(spark, nothing, ref, ["id"], known_empty=True) is None
    io.delete_matching(spark, nothing, ref, ["id"], known_empty=True)
    io.delete_matching(spark, spark.createDataFrame([(9, "z")], SCHEMA), ref, ["id"])  # matches no row
    assert data_files(ref) == before
    assert DeltaTable.forPath(spark, ref.path).history(1).first()["version"] == version
