from __future__ import annotations

import dataclasses
import gc
import logging
import os
import socket
import time
import weakref
from pathlib import Path

import pytest
from pyspark.errors import AnalysisException

from custseg.config import ConfigError
from custseg.demo import standalone
from custseg.spark import (
    FETCH_JARS_COMMAND,
    QUERY_CONTEXT_LOGGERS,
    SHUFFLE_CLEANUP,
    ConnectServerUnreachableError,
    MissingJarsError,
    check_connect_server,
    delta_artifact,
    garbage_collected_at_the_end,
    get_spark,
    remote_url,
    session_conf,
    shuffle_files_removed,
)
from tests.conftest import make_config


def test_missing_jars_error_names_the_fetch_command(tmp_path):
    cfg = dataclasses.replace(make_config(tmp_path).spark, delta_jars_dir=str(tmp_path / "empty"))
    with pytest.raises(MissingJarsError, match=f"{delta_artifact()}.jar not found.*{FETCH_JARS_COMMAND}"):
        session_conf(cfg)
    assert FETCH_JARS_COMMAND == "make jars"


def test_session_conf_local_has_delta_and_sized_partitions(tmp_path):
    conf = session_conf(make_config(tmp_path).spark)
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.catalog.spark_catalog"] == "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    assert conf["spark.sql.shuffle.partitions"] == "2"
    assert conf["spark.ui.enabled"] == "false"
    assert f"{delta_artifact()}.jar" in conf["spark.jars"]


def test_session_conf_cluster_leaves_master_and_jars_to_spark_submit(tmp_path):
    cfg = dataclasses.replace(make_config(tmp_path).spark, master=None, delta_jars_dir=None, shuffle_partitions=None)
    conf = session_conf(cfg)
    assert "spark.jars" not in conf and "spark.master" not in conf
    assert conf["spark.sql.shuffle.partitions"] == "200"


def test_remote_url_from_config_wins_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_REMOTE", "sc://env-host:15002")
    cfg = make_config(tmp_path).spark
    assert remote_url(cfg) == ("sc://env-host:15002", "$SPARK_REMOTE")
    assert remote_url(dataclasses.replace(cfg, remote="sc://cfg-host:15002")) == ("sc://cfg-host:15002", "spark.remote")


def test_remote_url_none_without_config_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    assert remote_url(make_config(tmp_path).spark) == (None, "")


def test_session_conf_local_connect_server_gets_delta_jars_and_local_sizing(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    # the Connect URL replaces the master, so a cluster master does not count here
    cfg = dataclasses.replace(make_config(tmp_path).spark, master="yarn", remote="local[2]", shuffle_partitions=None)
    conf = session_conf(cfg)
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert f"{delta_artifact()}.jar" in conf["spark.jars"]
    assert conf["spark.sql.shuffle.partitions"] == str(2 * (os.cpu_count() or 1))
    assert conf["spark.databricks.delta.snapshotPartitions"] == conf["spark.sql.shuffle.partitions"]


def test_session_conf_remote_connect_server_needs_no_local_jars(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    cfg = dataclasses.replace(
        make_config(tmp_path).spark,
        remote="sc://spark.example.com:15002",
        delta_jars_dir=str(tmp_path / "empty"),  # no MissingJarsError: the server has its own
        shuffle_partitions=None,
    )
    conf = session_conf(cfg)
    assert "spark.jars" not in conf and "spark.databricks.delta.snapshotPartitions" not in conf
    assert conf["spark.sql.shuffle.partitions"] == "200"


def shuffle_files(spark) -> set[Path]:
    local_dirs = spark._jvm.org.apache.spark.SparkEnv.get().blockManager().diskBlockManager().localDirsString()
    return {f for d in local_dirs for f in Path(d).rglob("shuffle_*.data")}


def test_a_checkpoint_built_with_shuffle_files_removed_leaves_none_behind(spark):
    before = shuffle_files(spark)
    assert spark.conf.get(SHUFFLE_CLEANUP, None) is None  # the session does not set it
    with shuffle_files_removed(spark):
        kept = spark.range(5000).repartition(3).localCheckpoint(eager=True)
    assert spark.conf.get(SHUFFLE_CLEANUP, None) is None  # unset again, as before the block
    deadline = time.monotonic() + 30  # the files are removed asynchronously
    while shuffle_files(spark) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert shuffle_files(spark) - before == set()
    assert kept.count() == 5000  # the checkpoint does not need them


# A stand-in for a Spark Connect session: what custseg.spark.is_connect looks at.
_ConnectSession = type("SparkSession", (), {"__module__": "pyspark.sql.connect.session"})


class _Cycle:
    def __init__(self) -> None:
        self.me = self  # freed only by the cyclic garbage collector


def test_garbage_collector_paused_through_a_connect_job_and_collected_at_its_end():
    with garbage_collected_at_the_end(_ConnectSession()):
        assert not gc.isenabled()
        garbage = weakref.ref(_Cycle())
        assert garbage() is not None  # unreachable, but kept until the end
    assert gc.isenabled()
    assert garbage() is None  # freed at the end


def test_garbage_collector_resumes_when_a_connect_job_fails_and_is_left_alone_for_classic(spark):
    with pytest.raises(ValueError, match="the job failed"), garbage_collected_at_the_end(_ConnectSession()):
        assert not gc.isenabled()
        raise ValueError("the job failed")
    assert gc.isenabled()
    with garbage_collected_at_the_end(spark):  # a classic session's calls go through py4j, not grpc
        assert gc.isenabled()


def test_check_connect_server_passes_when_the_server_listens_and_skips_a_local_server():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_connect_server(f"sc://127.0.0.1:{server.getsockname()[1]}/;token=abc", "spark.remote")
    check_connect_server("local[2]", "spark.remote")  # a server this process starts: nothing to check


def test_check_connect_server_with_nothing_listening_fails_fast_naming_host_and_port_not_the_token():
    port = standalone.free_port()
    started = time.monotonic()
    with pytest.raises(ConnectServerUnreachableError) as raised:
        check_connect_server(f"sc://127.0.0.1:{port}/;token=tok-9f8e7d", "$SPARK_REMOTE")
    assert time.monotonic() - started < 10
    assert str(raised.value).startswith(
        f"Spark Connect server sc://127.0.0.1:{port} (from $SPARK_REMOTE) is not reachable (Connection refused)."
    )
    assert "tok-9f8e7d" not in str(raised.value)


def test_check_connect_server_refuses_a_url_without_a_valid_port_as_config():
    with pytest.raises(ConfigError, match=r"spark\.remote: 'sc://host:x/;token=\*\*\*' is not a Spark Connect URL"):
        check_connect_server("sc://host:x/;token=tok-9f8e7d", "spark.remote")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_session_factory_silences_pysparks_json_record_of_an_analysis_error(spark, tmp_path):
    loggers = [logging.getLogger(name) for name in QUERY_CONTEXT_LOGGERS]
    seen = _Records()
    for logger in loggers:
        logger.setLevel(logging.WARNING)  # pyspark's own default
        logger.addHandler(seen)
    try:
        with pytest.raises(AnalysisException):
            spark.sql("SELECT no_such_column")
        assert [r.name for r in seen.records] == ["SQLQueryContextLogger"]  # what a user saw before every error
        seen.records.clear()
        assert get_spark(make_config(tmp_path).spark) is spark
        with pytest.raises(AnalysisException):
            spark.sql("SELECT no_such_column")
        assert seen.records == []
    finally:
        for logger in loggers:
            logger.removeHandler(seen)
            # pyspark makes them non-propagating when they log; pytest then attaches its
            # capture handler to them at the next test, and pyspark's addHandler gives
            # that handler its JSON formatter for the rest of the session.
            logger.propagate = True
