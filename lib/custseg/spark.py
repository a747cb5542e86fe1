"""The only place a SparkSession is built."""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pyspark.sql import SparkSession

from custseg.config import SparkConfig

log = logging.getLogger(__name__)

FETCH_JARS_COMMAND = "make jars"

_DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


class MissingJarsError(RuntimeError):
    """The Delta Lake jars are not in the project-local cache."""


def delta_artifact() -> str:
    """The Maven artifact that matches the installed delta-spark and pyspark, e.g.
    ``delta-spark_4.2_2.13-4.4.0`` (the same rule as ``configure_spark_with_delta_pip``)."""
    import pyspark

    try:
        delta_version = version("delta-spark")
    except PackageNotFoundError:  # pragma: no cover - delta-spark is a hard dependency
        delta_version = "?"
    spark_binary = ".".join(pyspark.__version__.split(".")[:2])
    return f"delta-spark_{spark_binary}_2.13-{delta_version}"


def delta_jars(jars_dir: str | Path) -> list[str]:
    """The cached jars to put on ``spark.jars``; raises MissingJarsError naming the fix."""
    directory = Path(jars_dir).resolve()
    expected = directory / f"{delta_artifact()}.jar"
    if not expected.is_file():
        raise MissingJarsError(
            f"Delta Lake jar {expected.name} not found in {directory}. "
            f"Fetch it once (needs Maven Central) with: {FETCH_JARS_COMMAND}"
        )
    return sorted(str(p) for p in directory.glob("*.jar"))


def session_conf(cfg: SparkConfig) -> dict[str, str]:
    """Everything the builder sets, as plain settings (kept separate for tests and logs)."""
    conf: dict[str, str] = {
        **_DELTA_CONF,
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": str(cfg.ui_enabled).lower(),
        # Delta tables are small-file sensitive; the defaults of 200 shuffle partitions
        # cost seconds per stage on a laptop, so local runs size them to the machine.
        "spark.sql.shuffle.partitions": str(_shuffle_partitions(cfg)),
    }
    if cfg.log_level:
        conf["spark.log.level"] = cfg.log_level
    if cfg.delta_jars_dir:
        conf["spark.jars"] = ",".join(delta_jars(cfg.delta_jars_dir))
    if _is_local(cfg):
        # Delta rebuilds table state with 50 tasks by default: seconds per read locally.
        conf["spark.databricks.delta.snapshotPartitions"] = conf["spark.sql.shuffle.partitions"]
        # Progress bars help on a terminal and clutter CI logs and files.
        conf["spark.ui.showConsoleProgress"] = str(sys.stderr.isatty() and not os.environ.get("CI")).lower()
    conf.update(cfg.conf)
    return conf


def _is_local(cfg: SparkConfig) -> bool:
    return bool(cfg.master) and cfg.master.startswith("local")


def _shuffle_partitions(cfg: SparkConfig) -> int:
    if cfg.shuffle_partitions:
        return cfg.shuffle_partitions
    if _is_local(cfg):
        return 2 * (os.cpu_count() or 1)
    return 200


def get_spark(cfg: SparkConfig) -> SparkSession:
    """Build (or reuse) the session. The master comes from config only when config sets
    one; otherwise spark-submit or the platform has already decided it."""
    if _is_local(cfg):
        # A laptop's hostname often resolves to loopback; say so instead of warning.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master:
        builder = builder.master(cfg.master)
    for key, value in session_conf(cfg).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    log.info("Spark %s session ready (master %s)", spark.version, spark.conf.get("spark.master", "?"))
    return spark
