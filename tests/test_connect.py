"""The jobs run unchanged through Spark Connect (how Databricks serverless and shared
clusters run PySpark): no RDD API or SparkContext in lib, and the whole pipeline gives
the same segments over a local Connect server as in a classic session."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chispa import assert_df_equality

from custseg import columns as c
from custseg import io
from tests.conftest import CONF, DEMO_LAKE_SETTINGS, JVM_OPTIONS, ROOT, TEST_SETTINGS

LIB = ROOT / "lib"
# What Spark Connect has no equivalent for: the driver's JVM and the RDD API.
CLASSIC_ONLY = re.compile(r"sparkContext|SparkContext|\.rdd\b|_jvm|_jsc|_jdf")

CONNECT_PORT = 15002  # where pyspark's local Connect server listens, and its client connects
RUN_TIMEOUT = 600  # seconds; the run takes 80 to 90 here
JVM_THREADS_SHOWN = re.compile(r"org\.apache\.spark\.(sql\.connect|scheduler|executor)|Executor task launch")


def test_lib_uses_no_classic_only_api():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted(LIB.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if CLASSIC_ONLY.search(line)
    ]
    assert not offenders, (
        "lib/ must run over Spark Connect, which has no SparkContext, RDD API or py4j handles "
        "(sparkContext, SparkContext, .rdd, _jvm, _jsc, _jdf):\n" + "\n".join(offenders)
    )


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> list[int]:
    try:
        found = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # it ended meanwhile
        found = []
    return found + [grandchild for child in found for grandchild in _descendants(child)]


def _hung(run: subprocess.Popen, log: Path) -> str:
    """What a run that did not end was doing: every JVM thread (SIGQUIT makes a JVM print
    them) and every Python thread (SIGABRT, with -X faulthandler), from the run's log."""
    for pid in _descendants(run.pid):
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            if Path(f"/proc/{pid}/comm").read_text().strip() == "java":
                os.kill(pid, signal.SIGQUIT)
    time.sleep(3)
    run.send_signal(signal.SIGABRT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        run.wait(timeout=10)
    text = log.read_text()
    before, _, rest = text.partition("Full thread dump")
    jvm, _, python = rest.partition("Fatal Python error")
    spark_threads = "\n".join(thread for thread in jvm.split("\n\n") if JVM_THREADS_SHOWN.search(thread))
    return (
        f"the Connect run did not end in {RUN_TIMEOUT}s. Its log ends:\n{before[-4000:]}\n"
        f"Its JVM's Spark threads:\n{spark_threads[-12000:]}\nIts Python threads:\nFatal Python error{python}"
    )


def test_pipeline_over_spark_connect_labels_like_classic(spark, demo_raw, request, tmp_path, report):
    """The Connect run (its own JVM, a subprocess) against the shared demo lake, which the
    classic session in this process built (or builds meanwhile) with the same settings."""
    if _port_in_use(CONNECT_PORT):
        pytest.fail(f"port {CONNECT_PORT} is taken: stop the other local Spark Connect server and rerun")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw").symlink_to(demo_raw, target_is_directory=True)  # where the demo mappings read
    sources = [str(CONF / "sources" / "demo_pos.yaml"), str(CONF / "sources" / "demo_web.yaml")]
    settings = [
        *TEST_SETTINGS,
        *DEMO_LAKE_SETTINGS,
        "report.tsne=false",
        "spark.remote=local[2]",
        "spark.conf.spark.driver.memory=1g",
        f"spark.conf.spark.driver.extraJavaOptions={JVM_OPTIONS}",
        f"ingest.sources={sources}",
        f"storage.root={tmp_path / 'lake'}",
        f"segment.model_dir={tmp_path / 'models'}",
        f"report.dir={tmp_path / 'reports'}",
    ]
    # -X faulthandler: SIGABRT makes the client print every thread's stack (see _hung).
    command = [sys.executable, "-X", "faulthandler", "-m", "custseg.cli", "run", "--config", str(CONF / "base.yaml")]
    command += ["--config", str(CONF / "local.yaml"), "--run-id", "connect-run"]
    for setting in settings:
        command += ["--set", setting]
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "MASTER", "PYSPARK_SUBMIT_ARGS")}
    log = tmp_path / "connect.log"
    started = time.perf_counter()
    with log.open("w") as out:
        connect_run = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            classic_lake = request.getfixturevalue("demo_lake")
            returncode = connect_run.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(_hung(connect_run, log))
        finally:
            connect_run.kill()
    output = log.read_text()
    assert returncode == 0, f"the Connect run failed:\n{output[-6000:]}"
    assert "Connect session ready (remote local[2], from spark.remote)" in output
    assert "garbage collector resumed after the Spark Connect job" in output
    report.append(f"spark connect: whole pipeline {time.perf_counter() - started:.0f}s in a subprocess "
                  "(server start included)")  # fmt: skip

    def labels(lake):
        ref = io.TableRef(name="segment_labels", path=str(lake / "segment_labels"))
        return io.read(spark, ref).select(c.CUSTOMER_ID, c.SEGMENT_ID).orderBy(c.CUSTOMER_ID)

    classic = labels(classic_lake)
    assert classic.count() == 300
    assert_df_equality(labels(tmp_path / "lake"), classic)
