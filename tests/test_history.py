from __future__ import annotations

from datetime import date, datetime

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from delta.tables import DeltaTable

from custseg import io
from custseg.config import StorageConfig
from custseg.segment.history import (
    HistoryChange,
    current_labels,
    labels_as_of,
    migration_between_runs,
    migration_matrix,
)
from custseg.segment.job import merge_history

LABELS = "customer_id STRING, segment_id INT, model_version STRING, as_of_date DATE"
HISTORY = (
    "customer_id STRING, segment_id INT, model_version STRING, as_of_date DATE, run_id STRING, "
    "valid_from TIMESTAMP, valid_to TIMESTAMP, is_current BOOLEAN"
)
SEGMENTS = "customer_id STRING, segment_id INT"
OUTPUT = "customer_id STRING, segment_id INT, model_version STRING"
MATRIX = "from_segment INT, to_segment INT, customers LONG, share_of_from DOUBLE"

T1, T2, T3 = datetime(2024, 1, 1), datetime(2024, 2, 1), datetime(2024, 3, 1)
D1, D2 = date(2023, 12, 31), date(2024, 1, 31)


def history_ref(tmp_path) -> io.TableRef:
    return io.table_ref(StorageConfig(mode="path", root=str(tmp_path), database=None), "segment_history")


def run1(spark, ref, *segments: tuple[str, int]) -> HistoryChange:
    labels = spark.createDataFrame([(cid, seg, "v1", D1) for cid, seg in segments], LABELS)
    return merge_history(spark, labels, ref, "r1", T1)


def run2(spark, ref, *segments: tuple[str, int]) -> HistoryChange:
    labels = spark.createDataFrame([(cid, seg, "v2", D2) for cid, seg in segments], LABELS)
    return merge_history(spark, labels, ref, "r2", T2)


def version(spark, ref) -> int:
    return DeltaTable.forPath(spark, ref.path).history(1).first()["version"]


def assert_history(spark, ref, rows) -> None:
    """The history table holds exactly ``rows`` (HISTORY schema)."""
    expected = spark.createDataFrame(rows, HISTORY)
    assert_df_equality(io.read(spark, ref), expected, ignore_row_order=True, ignore_nullable=True)


def test_merge_history_first_run_creates_current_rows(spark, tmp_path):
    ref = history_ref(tmp_path)
    change = run1(spark, ref, ("a", 0), ("b", 1))
    assert_history(spark, ref, [("a", 0, "v1", D1, "r1", T1, None, True), ("b", 1, "v1", D1, "r1", T1, None, True)])
    assert change == HistoryChange(new=2, changed=0, unchanged=0, gone=0)


def test_merge_history_unchanged_segments_write_nothing(spark, tmp_path):
    ref = history_ref(tmp_path)
    run1(spark, ref, ("a", 0), ("b", 1))
    before = version(spark, ref)
    change = run2(spark, ref, ("a", 0), ("b", 1))  # new run, model and as-of date; same segments
    assert version(spark, ref) == before
    assert_history(spark, ref, [("a", 0, "v1", D1, "r1", T1, None, True), ("b", 1, "v1", D1, "r1", T1, None, True)])
    assert change == HistoryChange(new=0, changed=0, unchanged=2, gone=0)


def test_merge_history_rerun_of_the_same_run_is_a_noop(spark, tmp_path):
    ref = history_ref(tmp_path)
    run1(spark, ref, ("a", 0), ("b", 1))
    before = version(spark, ref)
    run1(spark, ref, ("a", 0), ("b", 1))
    assert version(spark, ref) == before


def test_merge_history_changed_customer_is_closed_and_reopened_in_one_merge(spark, tmp_path):
    ref = history_ref(tmp_path)
    run1(spark, ref, ("a", 0), ("b", 1))
    change = run2(spark, ref, ("a", 0), ("b", 2))
    assert_history(
        spark,
        ref,
        [
            ("a", 0, "v1", D1, "r1", T1, None, True),
            ("b", 1, "v1", D1, "r1", T1, T2, False),
            ("b", 2, "v2", D2, "r2", T2, None, True),
        ],
    )
    assert change == HistoryChange(new=0, changed=1, unchanged=1, gone=0)
    commits = DeltaTable.forPath(spark, ref.path).history().orderBy("version").collect()
    assert [c["operation"] for c in commits] == ["WRITE", "MERGE"]
    metrics = commits[-1]["operationMetrics"]
    assert (metrics["numTargetRowsUpdated"], metrics["numTargetRowsInserted"]) == ("1", "1")


def test_merge_history_new_customer_is_inserted_as_current(spark, tmp_path):
    ref = history_ref(tmp_path)
    run1(spark, ref, ("a", 0))
    change = run2(spark, ref, ("a", 0), ("d", 1))
    assert_history(spark, ref, [("a", 0, "v1", D1, "r1", T1, None, True), ("d", 1, "v2", D2, "r2", T2, None, True)])
    assert change == HistoryChange(new=1, changed=0, unchanged=1, gone=0)


def test_merge_history_vanished_customer_is_closed(spark, tmp_path):
    ref = history_ref(tmp_path)
    run1(spark, ref, ("a", 0), ("c", 2))
    change = run2(spark, ref, ("a", 0))
    assert_history(spark, ref, [("a", 0, "v1", D1, "r1", T1, None, True), ("c", 2, "v1", D1, "r1", T1, T2, False)])
    assert change == HistoryChange(new=0, changed=0, unchanged=1, gone=1)


def test_merge_history_duplicate_customer_ids_raise(spark, tmp_path):
    ref = history_ref(tmp_path)
    with pytest.raises(ValueError, match="2 ids appear more than once"):
        run1(spark, ref, ("a", 0), ("a", 1), ("b", 1), ("b", 1), ("c", 0))
    assert not io.exists(spark, ref)


def test_merge_history_null_customer_id_raises(spark, tmp_path):
    with pytest.raises(ValueError, match="null customer_id"):
        run1(spark, history_ref(tmp_path), ("a", 0), (None, 1))


def test_merge_history_change_at_or_before_the_latest_run_raises(spark, tmp_path):
    ref = history_ref(tmp_path)
    run2(spark, ref, ("a", 0))
    with pytest.raises(ValueError, match="not after the latest run"):
        run1(spark, ref, ("a", 1))


def two_run_history(spark):
    """a: 0 throughout; b: 1 then 2 from T2; c: 2 until T2, then gone; d: new at T2."""
    return spark.createDataFrame(
        [
            ("a", 0, "v1", D1, "r1", T1, None, True),
            ("b", 1, "v1", D1, "r1", T1, T2, False),
            ("b", 2, "v2", D2, "r2", T2, None, True),
            ("c", 2, "v1", D1, "r1", T1, T2, False),
            ("d", 1, "v2", D2, "r2", T2, None, True),
        ],
        HISTORY,
    )


def test_labels_as_of_between_runs_returns_the_earlier_segments(spark):
    actual = two_run_history(spark).transform(labels_as_of(datetime(2024, 1, 15)))
    expected = spark.createDataFrame([("a", 0, "v1"), ("b", 1, "v1"), ("c", 2, "v1")], OUTPUT)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_labels_as_of_a_run_time_returns_that_runs_segments(spark):
    actual = two_run_history(spark).transform(labels_as_of(T2))
    expected = spark.createDataFrame([("a", 0, "v1"), ("b", 2, "v2"), ("d", 1, "v2")], OUTPUT)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_labels_as_of_before_the_first_run_is_empty(spark):
    actual = two_run_history(spark).transform(labels_as_of(datetime(2023, 6, 1)))
    assert_df_equality(actual, spark.createDataFrame([], OUTPUT), ignore_nullable=True)


def test_current_labels_are_the_open_rows(spark):
    actual = two_run_history(spark).transform(current_labels)
    expected = spark.createDataFrame([("a", 0, "v1", D1), ("b", 2, "v2", D2), ("d", 1, "v2", D2)], LABELS)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_migration_matrix_counts_moves_new_and_gone_customers(spark):
    # c1, c2 stay in 0; c3 moves 0 -> 1; c4 (was 1) is gone; c5 is new, in 2.
    previous = spark.createDataFrame([("c1", 0), ("c2", 0), ("c3", 0), ("c4", 1)], SEGMENTS)
    current = spark.createDataFrame([("c1", 0), ("c2", 0), ("c3", 1), ("c5", 2)], SEGMENTS)
    expected = spark.createDataFrame(
        [(0, 0, 2, 2 / 3), (0, 1, 1, 1 / 3), (1, None, 1, 1.0), (None, 2, 1, None)], MATRIX
    )
    actual = migration_matrix(previous, current)
    assert_approx_df_equality(actual, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)


def test_migration_between_runs_compares_the_labels_valid_at_each_time(spark):
    actual = migration_between_runs(two_run_history(spark), T1, T2)
    # a: 0 -> 0; b: 1 -> 2; c: 2 -> gone; d: new -> 1.
    expected = spark.createDataFrame([(0, 0, 1, 1.0), (1, 2, 1, 1.0), (2, None, 1, 1.0), (None, 1, 1, None)], MATRIX)
    assert_approx_df_equality(actual, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)
