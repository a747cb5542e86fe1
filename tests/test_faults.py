"""Faults a cluster job must survive, on a real standalone cluster (see test_cluster.py):
a worker lost mid-job, the driver killed inside a Delta write, and a master that is not
there. The baseline tables come from the shared demo lake (conftest), which test_cluster.py
also compares with.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
from chispa import assert_df_equality
from delta.tables import DeltaTable

from custseg import columns as c
from custseg.demo import standalone
from custseg.io import SLOW_WRITE_ENV
from custseg.spark import MasterUnreachableError, check_master, get_spark
from tests.conftest import make_config
from tests.test_cluster import apps_on_workers, labels, package, submit

FEATURES = "customer_features"


@pytest.fixture(scope="module")
def zip_path(tmp_path_factory) -> Path:
    return package(tmp_path_factory.mktemp("dist"))


def data_files(table: Path, complete: bool = False) -> set[str]:
    """The table folder's Parquet files (only those fully written: ``complete``)."""
    files = [p for p in table.rglob("*.parquet") if "_delta_log" not in p.parts]
    return {p.name for p in files if not complete or _ends_with_footer(p)}


def _ends_with_footer(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 8:
            return False
        f.seek(-4, os.SEEK_END)
        return f.read() == b"PAR1"  # a Parquet file ends with its magic once the footer is written


def table_files(spark, table: Path) -> set[str]:
    """The data files the table's current version reads."""
    return {Path(f.removeprefix("file:")).name for f in DeltaTable.forPath(spark, str(table)).toDF().inputFiles()}


# --------------------------------------------------------------------------- unreachable master


def closed_port() -> int:
    return standalone.free_port()  # free a moment ago: nothing listens there


def test_check_master_passes_when_one_host_of_the_list_listens():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_master(f"spark://127.0.0.1:{closed_port()},127.0.0.1:{port}")
    for master in (None, "local[2]", "yarn", "k8s://https://127.0.0.1:1"):
        check_master(master)  # not standalone: not checked


def test_get_spark_with_unreachable_configured_master_raises_naming_it(tmp_path):
    master = f"spark://127.0.0.1:{closed_port()},localhost:{closed_port()}"
    cfg = make_config(tmp_path, f"spark.master={master}").spark
    started = time.monotonic()
    with pytest.raises(MasterUnreachableError, match=re.escape(f"Spark master {master} is not reachable")):
        get_spark(cfg)  # raises before any session is built
    assert time.monotonic() - started < 10


def test_spark_submit_to_unreachable_master_exits_2_fast_with_one_line(demo_raw, tmp_path, zip_path, submitted, report):
    master = f"spark://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    job = submit(master, tmp_path / "run", demo_raw, zip_path)
    submitted.append(job)
    assert job.wait(timeout=120) == 2, job.tail()
    elapsed = time.monotonic() - started
    report.append(f"faults: spark-submit to an unreachable master exited 2 after {elapsed:.1f}s")
    errors = [line for line in job.text().splitlines() if " ERROR custseg" in line]
    assert len(errors) == 1 and f"Spark master {master} is not reachable" in errors[0], job.tail()
    assert "Check that the master is running" in errors[0]
    assert "Traceback" not in job.text()
    assert elapsed < 30


# --------------------------------------------------------------------------- driver killed mid-write


def test_driver_killed_during_delta_write_leaves_previous_version_and_rerun_adds_no_duplicates(
    spark, cluster, demo_raw, demo_lake, zip_path, tmp_path, submitted, report
):
    run_dir = tmp_path / "run"
    for table in ("transactions", FEATURES):  # what the features job reads and writes
        shutil.copytree(demo_lake / table, run_dir / "lake" / table)
    table = run_dir / "lake" / FEATURES
    before = DeltaTable.forPath(spark, str(table))
    version = before.history(1).first()["version"]
    rows = before.toDF().localCheckpoint()  # the rows as they are now, kept by Spark
    files_before = data_files(table)

    # The features job's write of its table waits in its first task (io.py's test hook)
    # while the others write their files (4 partitions: AQE may not merge them into one);
    # the driver is killed once a new data file is complete: data written, nothing committed.
    job = submit(cluster.master_url, run_dir, demo_raw, zip_path, job="features.py",
                 settings=["spark.conf.spark.sql.adaptive.coalescePartitions.enabled=false"],
                 env={SLOW_WRITE_ENV: f"{FEATURES}:300"})  # fmt: skip
    submitted.append(job)
    job.wait_for(lambda: data_files(table, complete=True) - files_before, "complete new data file in the table")
    job.kill()
    orphans = data_files(table) - files_before
    report.append(f"faults: driver killed with {len(data_files(table, complete=True) - files_before)} complete "
                  f"(of {len(orphans)}) uncommitted data files in {FEATURES}")  # fmt: skip

    after = DeltaTable.forPath(spark, str(table))
    assert after.history(1).first()["version"] == version
    assert_df_equality(after.toDF(), rows, ignore_row_order=True)
    assert not orphans & table_files(spark, table)

    rerun = submit(cluster.master_url, run_dir, demo_raw, zip_path, job="features.py")
    submitted.append(rerun)
    assert rerun.wait() == 0, rerun.tail()
    rerun_table = DeltaTable.forPath(spark, str(table))
    assert rerun_table.history(1).first()["version"] == version + 1
    features = rerun_table.toDF()
    assert features.count() == rows.count() == features.select(c.CUSTOMER_ID).distinct().count()
    assert not orphans & table_files(spark, table)


# --------------------------------------------------------------------------- worker lost mid-job


def test_worker_killed_mid_job_job_finishes_with_same_labels(
    spark, cluster, demo_raw, demo_lake, zip_path, tmp_path, submitted, report
):
    """Last in this module: the cluster has one worker left afterwards."""
    run_dir = tmp_path / "run"
    shutil.copytree(demo_lake / FEATURES, run_dir / "lake" / FEATURES)  # the segment job's input, and no model yet
    apps_before = apps_on_workers(cluster)[1]
    started = time.perf_counter()
    job = submit(cluster.master_url, run_dir, demo_raw, zip_path, job="segment.py")
    submitted.append(job)
    # Once the k sweep is under way (its first k logged), the executors hold the cached
    # model input: losing one loses cached blocks, shuffle output and running tasks.
    job.wait_for(lambda: re.search(r"k sweep 1/\d", job.text()), "k sweep progress in the driver's log")
    victim = cluster.workers[1]
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and the executor it started: a lost machine
    victim.wait()
    assert job.wait() == 0, job.tail()
    report.append(f"faults: segment job with a worker killed mid-sweep took {time.perf_counter() - started:.0f}s")

    assert "Lost executor" in job.text() and cluster.alive_workers() == 1
    assert apps_on_workers(cluster)[1] - apps_before, "the killed worker ran no executor for the job"
    assert_df_equality(labels(spark, run_dir / "lake"), labels(spark, demo_lake), ignore_row_order=True)
