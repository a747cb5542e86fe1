"""The jobs run unchanged through Spark Connect (how Databricks serverless and shared
clusters run PySpark): no RDD API or SparkContext in lib, and the whole pipeline gives
the same segments over a local Connect server as in a classic session."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest
from chispa import assert_df_equality

from custseg import columns as c
from custseg import datagen, io
from custseg.cli import run_all
from tests.conftest import CONF, ROOT, TEST_SETTINGS, make_config

LIB = ROOT / "lib"
# What Spark Connect has no equivalent for: the driver's JVM and the RDD API.
CLASSIC_ONLY = re.compile(r"sparkContext|SparkContext|\.rdd\b|_jvm|_jsc|_jdf")

CONNECT_PORT = 15002  # where pyspark's local Connect server listens, and its client connects
SMALL = [
    "demo.customers=300",
    "segment.k_max=4",
    "stability.seeds=[]",
    "stability.bootstrap=0",
    "mlflow.enabled=false",
    "report.tsne=false",
]


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


def _stamp_exit(process: subprocess.Popen, finished: dict[str, float]) -> None:
    process.wait()
    finished["connect"] = time.perf_counter()


def test_pipeline_over_spark_connect_labels_like_classic(spark, tmp_path, report):
    if _port_in_use(CONNECT_PORT):
        pytest.fail(f"port {CONNECT_PORT} is taken: stop the other local Spark Connect server and rerun")
    raw = tmp_path / "data" / "raw"  # where the demo source mappings (data/raw/...) read, from tmp_path
    cfg = make_config(tmp_path / "classic", *SMALL, f"report.dir={tmp_path / 'classic' / 'reports'}")
    cfg = dataclasses.replace(cfg, sources=tuple(dataclasses.replace(s, path=str(raw / s.name)) for s in cfg.sources))
    datagen.generate(spark, cfg.demo, str(raw))

    sources = [str(CONF / "sources" / "demo_pos.yaml"), str(CONF / "sources" / "demo_web.yaml")]
    settings = [
        *TEST_SETTINGS,
        *SMALL,
        "spark.remote=local[2]",
        "spark.conf.spark.driver.memory=1g",
        f"ingest.sources={sources}",
        f"storage.root={tmp_path / 'connect' / 'lake'}",
        f"segment.model_dir={tmp_path / 'connect' / 'models'}",
        f"report.dir={tmp_path / 'connect' / 'reports'}",
        f"demo.raw_dir={raw}",
    ]
    command = [sys.executable, "-m", "custseg.cli", "run", "--config", str(CONF / "base.yaml")]
    command += ["--config", str(CONF / "local.yaml"), "--run-id", "connect-run"]
    for setting in settings:
        command += ["--set", setting]
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "MASTER", "PYSPARK_SUBMIT_ARGS")}
    log = tmp_path / "connect.log"
    # The Connect run (its own JVM) and the classic one (this process's) run side by side.
    finished: dict[str, float] = {}
    started = time.perf_counter()
    with log.open("w") as stderr:
        connect_run = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        waiter = threading.Thread(target=_stamp_exit, args=(connect_run, finished))
        waiter.start()
        try:
            run_all(spark, cfg, "classic-run")
            finished["classic"] = time.perf_counter()
            returncode = connect_run.wait(timeout=600)
        finally:
            connect_run.kill()
            waiter.join()
    output = log.read_text()
    assert returncode == 0, f"the Connect run failed:\n{output[-6000:]}"
    assert "Connect session ready (remote local[2], from spark.remote)" in output
    report.append(
        f"spark connect: whole pipeline {finished['connect'] - started:.0f}s in a subprocess (server start "
        f"included), side by side with the classic run in-process, {finished['classic'] - started:.0f}s"
    )

    labels_ref = io.TableRef(name="segment_labels", path=str(tmp_path / "connect" / "lake" / "segment_labels"))
    over_connect = io.read(spark, labels_ref).select(c.CUSTOMER_ID, c.SEGMENT_ID)
    classic = io.read(spark, io.table_ref(cfg.storage, cfg.tables.labels)).select(c.CUSTOMER_ID, c.SEGMENT_ID)
    assert classic.count() > 0
    assert_df_equality(over_connect.orderBy(c.CUSTOMER_ID), classic.orderBy(c.CUSTOMER_ID))
