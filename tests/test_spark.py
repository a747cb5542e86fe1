from __future__ import annotations

import dataclasses

import pytest

from custseg.spark import FETCH_JARS_COMMAND, MissingJarsError, delta_artifact, session_conf
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
