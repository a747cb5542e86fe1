"""Two ingests of one lake at once: the one whose commit comes second retries Delta's
conflict (a new lake: ProtocolChangedException; an existing one:
ConcurrentAppendException) and finds the other's rows there, so the table holds every
row once. The race is made certain, not hoped for: the first ingest, a process of its
own, waits inside its write of the transactions table (io.py's test hook) while the
second, in this process, loads and commits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pyspark.sql import functions as F

from custseg import io
from custseg.config import StorageConfig
from custseg.io import SLOW_WRITE_ENV
from tests.conftest import CONF, JVM_OPTIONS, ROOT, TEST_SETTINGS
from tests.test_e2e import run_cli

HEADER = b"receipt_no,line_no,loyalty_id,sku,qty,unit_price,sold_at,store_id\n"
WAIT = 25  # s the first ingest's write waits: long enough for the second to load and commit


def lines(first: int, count: int) -> bytes:
    return b"".join(b"P%d,1,00%d,SKU1,2,3.50,2024-06-01 10:00:00,S01\n" % (i, i % 7) for i in range(first, count))


def write_raw(root: Path, name: str, data: bytes) -> None:
    path = root / "data" / "raw" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def start_slow_ingest(root: Path, run_id: str) -> tuple[subprocess.Popen, Path]:
    """``custseg ingest`` in a process of its own whose transactions write waits WAIT s."""
    sources = [str(CONF / "sources" / "demo_pos.yaml"), str(CONF / "sources" / "demo_web.yaml")]
    settings = [
        *TEST_SETTINGS,
        f"ingest.sources={sources}",
        f"spark.conf={{spark.driver.extraJavaOptions: '{JVM_OPTIONS}'}}",
    ]
    args = ["ingest", "--config", str(CONF / "base.yaml"), "--config", str(CONF / "local.yaml"), "--run-id", run_id]
    for setting in settings:
        args += ["--set", setting]
    env = {**os.environ, SLOW_WRITE_ENV: f"transactions:{WAIT}",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "lib"), str(ROOT)])}  # fmt: skip
    log = root / f"{run_id}.log"
    with open(log, "w") as out:
        job = subprocess.Popen([sys.executable, "-m", "custseg.cli", *args], cwd=root, env=env, stdout=out, stderr=out)
    return job, log


def wait_for_text(job: subprocess.Popen, log: Path, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert job.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no '{text}' in {timeout} s"
        time.sleep(0.5)


def table(spark, root: Path, name: str):
    return io.read(spark, io.table_ref(StorageConfig("path", str(root / "data" / "lake"), None), name))


def race(spark, root: Path, monkeypatch) -> str:
    """The slow ingest (run-slow) and, once it waits in its write, one in this process
    (run-fast); returns the slow one's output, once it has exited 0."""
    monkeypatch.chdir(root)
    slow, log = start_slow_ingest(root, "run-slow")
    try:
        wait_for_text(slow, log, f"{SLOW_WRITE_ENV} is set")
        assert run_cli("ingest", run_id="run-fast") == 0
        assert slow.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if slow.poll() is None:
            slow.kill()
    return log.read_text()


def assert_every_row_once(spark, root: Path, expected: int) -> None:
    transactions = table(spark, root, "transactions")
    assert transactions.count() == transactions.select("txn_id").distinct().count() == expected
    inserted = table(spark, root, "run_log").where("job = 'ingest'").agg(F.sum("inserted")).first()[0]
    assert inserted == expected  # the run log's story adds up: each row inserted by one run


def test_ingest_two_at_once_on_a_new_lake_load_every_row_once(spark, tmp_path, monkeypatch):
    write_raw(tmp_path, "pos/a.csv", HEADER + lines(0, 30))
    write_raw(tmp_path, "web/empty.jsonl", b"")
    output = race(spark, tmp_path, monkeypatch)
    assert "another writer committed first (ProtocolChangedException); writing again" in output
    assert "Traceback" not in output and "\tat org.apache" not in output  # no Python or Java trace
    assert_every_row_once(spark, tmp_path, 30)


def test_ingest_two_at_once_on_an_existing_lake_load_every_row_once(spark, tmp_path, monkeypatch):
    write_raw(tmp_path, "pos/a.csv", HEADER + lines(0, 30))
    write_raw(tmp_path, "web/empty.jsonl", b"")
    monkeypatch.chdir(tmp_path)
    assert run_cli("ingest", run_id="run-first") == 0
    write_raw(tmp_path, "pos/b.csv", HEADER + lines(30, 50))
    output = race(spark, tmp_path, monkeypatch)
    assert "another writer committed first (ConcurrentAppendException); writing again" in output
    assert "Traceback" not in output and "\tat org.apache" not in output  # no Python or Java trace
    assert_every_row_once(spark, tmp_path, 50)
