"""The only place a SparkSession is built."""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import socket
import sys
import urllib.parse
import warnings
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pyspark.sql import SparkSession

from custseg.config import ConfigError, SparkConfig
from custseg.redaction import redact

log = logging.getLogger(__name__)

FETCH_JARS_COMMAND = "make jars"
# Spark 4.1+: a query built while this is on removes its shuffle files when it ends.
SHUFFLE_CLEANUP = "spark.sql.classic.shuffleDependency.fileCleanup.enabled"

_DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


class MissingJarsError(RuntimeError):
    """The Delta Lake jars are not in the project-local cache."""


class MasterUnreachableError(RuntimeError):
    """No host of a ``spark://`` master accepts connections."""


class ConnectServerUnreachableError(RuntimeError):
    """The Spark Connect server of an ``sc://`` URL does not accept connections."""


MASTER_CONNECT_TIMEOUT = 3.0  # seconds per host of a spark:// master, for the pre-flight check
CONNECT_DEFAULT_PORT = 15002  # Spark Connect's port when the URL names none
# pyspark's own JSON records of an analysis error (the error and a py4j trace, 7 to 11 KB
# on one line), logged as it is raised, before our own one-line message says the same.
QUERY_CONTEXT_LOGGERS = ("SQLQueryContextLogger", "DataFrameQueryContextLogger")


def check_master(master: str | None, timeout: float = MASTER_CONNECT_TIMEOUT) -> None:
    """Fail fast when no host of a standalone master (``spark://h1:p1[,h2:p2]``) accepts a
    TCP connection: the driver would otherwise retry for about a minute before giving up
    with "All masters are unresponsive". One reachable host is enough (the others may be
    standbys). Other masters (local, yarn, k8s) are not checked."""
    if not master or not master.startswith("spark://"):
        return
    failures = []
    for address in master.removeprefix("spark://").split(","):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return
        except (OSError, ValueError) as exc:
            failures.append(f"{address}: {getattr(exc, 'strerror', None) or exc}")
    raise MasterUnreachableError(
        f"Spark master {master} is not reachable ({'; '.join(failures)}). Check that the master is running "
        f"and that --master (or spark.master) matches the URL its log shows after 'Starting Spark master at'."
    )


def check_connect_server(remote: str, origin: str, timeout: float = MASTER_CONNECT_TIMEOUT) -> None:
    """Fail fast when the server of a Spark Connect URL (``sc://host[:port]/;params``)
    does not accept a TCP connection: the client would otherwise retry in silence for a
    quarter of an hour or more. ``local[N]`` (a server this process starts) is not checked.
    The message names the host and port only: the URL's parameters may hold a token."""
    if not remote.startswith("sc://"):
        return
    try:
        parts = urllib.parse.urlsplit(remote)
        host, port = parts.hostname, parts.port or CONNECT_DEFAULT_PORT
        if not host:
            raise ValueError("no host")
    except ValueError as exc:
        raise ConfigError(
            f"{origin}: '{redact(remote)}' is not a Spark Connect URL sc://host[:port][/;name=value...] ({exc})"
        ) from None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
    raise ConnectServerUnreachableError(
        f"Spark Connect server sc://{host}:{port} (from {origin}) is not reachable ({reason}). Check that the "
        f"server is running (sbin/start-connect-server.sh) and that {origin} names its host and port."
    )


def quiet_query_context_loggers() -> None:
    """Silence pyspark's JSON record of each analysis error (``SQLQueryContextLogger``):
    the error reaches the caller anyway, and the CLI says it in one line (the trace goes
    to the log with --debug). They are Python loggers of pyspark's own, which do not
    propagate to the root logger and so ignore its level."""
    from pyspark.logger import PySparkLogger

    for name in QUERY_CONTEXT_LOGGERS:
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)


def _submitted_master() -> str | None:
    """The master spark-submit was given, before any session exists: spark-submit starts
    this Python process with a Py4J gateway into its JVM (``$PYSPARK_GATEWAY_PORT``),
    where the submit options are system properties. None outside spark-submit."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ or SparkSession.getActiveSession() is not None:
        return None
    from pyspark.java_gateway import launch_gateway

    try:
        gateway = launch_gateway()  # connects to the running JVM; starts nothing
        try:
            return gateway.jvm.java.lang.System.getProperty("spark.master")
        finally:
            gateway.close()
    except Exception as exc:  # the check is a courtesy: never fail a job over it
        log.debug("could not read spark.master from the spark-submit JVM: %s", exc)
        return None


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


def remote_url(cfg: SparkConfig) -> tuple[str | None, str]:
    """The Spark Connect URL, if any, and where it came from: ``spark.remote`` in config
    wins over ``$SPARK_REMOTE``; (None, "") means a classic session."""
    if cfg.remote:
        return cfg.remote, "spark.remote"
    if os.environ.get("SPARK_REMOTE"):
        return os.environ["SPARK_REMOTE"], "$SPARK_REMOTE"
    return None, ""


# Spark's log configuration with a failed task's repeated Java trace left out; for a JVM
# this process starts (a local master). Not in a zip of the package: a file is needed.
QUIET_LOG4J = Path(__file__).with_name("log4j2.properties")


def session_conf(cfg: SparkConfig, quiet_tasks: bool = True) -> dict[str, str]:
    """Everything the builder sets, as plain settings (kept separate for tests and logs).

    For a remote Connect server (``sc://``) these are wishes: ``get_spark`` sets only
    those the server lets a client change, and leaves out the local Delta jars.

    ``quiet_tasks``: in a JVM started here, a failed task's trace is not logged by the
    executor and the scheduler (the job's error says it once); off for ``--debug``."""
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
    if cfg.delta_jars_dir and not _is_remote_server(cfg):
        conf["spark.jars"] = ",".join(delta_jars(cfg.delta_jars_dir))
    if _is_local(cfg):
        # Delta rebuilds table state with 50 tasks by default: seconds per read locally.
        conf["spark.databricks.delta.snapshotPartitions"] = conf["spark.sql.shuffle.partitions"]
        # Progress bars help on a terminal and clutter CI logs and files.
        conf["spark.ui.showConsoleProgress"] = str(sys.stderr.isatty() and not os.environ.get("CI")).lower()
    conf.update(cfg.conf)
    if quiet_tasks and _is_local(cfg) and QUIET_LOG4J.is_file():
        # Read by the JVM only when this process starts it (not under spark-submit).
        option = f"-Dlog4j2.configurationFile={QUIET_LOG4J.as_uri()}"
        conf["spark.driver.extraJavaOptions"] = " ".join(
            filter(None, (conf.get("spark.driver.extraJavaOptions"), option))
        )
    return conf


def _is_local(cfg: SparkConfig) -> bool:
    """Spark runs in this machine's JVM: a local master, or a local Connect server
    (``remote: local[N]``, which replaces the master)."""
    remote, _ = remote_url(cfg)
    master = remote if remote else cfg.master
    return bool(master) and master.startswith("local")


def _is_remote_server(cfg: SparkConfig) -> bool:
    remote, _ = remote_url(cfg)
    return bool(remote) and not remote.startswith("local")


def _shuffle_partitions(cfg: SparkConfig) -> int:
    if cfg.shuffle_partitions:
        return cfg.shuffle_partitions
    if _is_local(cfg):
        return 2 * (os.cpu_count() or 1)
    return 200


def get_spark(cfg: SparkConfig, quiet_tasks: bool = True) -> SparkSession:
    """Build (or reuse) the session. The master comes from config only when config sets
    one; otherwise spark-submit or the platform has already decided it. With
    ``spark.remote`` (or ``$SPARK_REMOTE``) the session is a Spark Connect client instead,
    and ``spark.master`` is ignored: a Connect URL replaces the master."""
    quiet_query_context_loggers()
    remote, origin = remote_url(cfg)
    if remote:
        check_connect_server(remote, origin)
        return _connect_session(cfg, remote, origin, quiet_tasks)
    if _is_local(cfg):
        # A laptop's hostname often resolves to loopback; say so instead of warning.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    check_master(cfg.master or _submitted_master())
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master:
        builder = builder.master(cfg.master)
    for key, value in session_conf(cfg, quiet_tasks).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    log.info("Spark %s session ready (master %s)", spark.version, spark.conf.get("spark.master", "?"))
    return spark


def _connect_session(cfg: SparkConfig, remote: str, origin: str, quiet_tasks: bool) -> SparkSession:
    conf = session_conf(cfg, quiet_tasks)
    builder = SparkSession.builder.remote(remote)
    if _is_local(cfg):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # pyspark starts the local server with every builder setting (jars, Delta's
        # extensions), then also offers them all to the client session, where the static
        # ones are refused with a warning each: expected, so not shown.
        builder = builder.appName(cfg.app_name).config(map=conf)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Failed to set spark\.", category=UserWarning)
            spark = builder.getOrCreate()
        skipped: list[str] = []
    else:
        # A remote server is set up already (Delta included); a client may change only
        # its session's runtime settings, and a static one would fail the session.
        spark = builder.getOrCreate()
        runtime = {key: value for key, value in conf.items() if spark.conf.isModifiable(key)}
        for key, value in runtime.items():
            spark.conf.set(key, value)
        skipped = sorted(set(conf) - set(runtime))
    # A fitted MLlib model frees its server-side copy when garbage-collected; during
    # interpreter shutdown that call hangs for good (grpc cannot start a thread then).
    # Stopping the session first turns those calls into no-ops.
    atexit.register(spark.stop)
    log.info("Spark %s Connect session ready (remote %s, from %s)", spark.version, redact(remote), origin)
    if skipped:
        log.info("left to the Connect server (not settable by a client): %s", ", ".join(skipped))
    return spark


def is_connect(spark: SparkSession) -> bool:
    """The session is a Spark Connect client, not a classic session."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


@contextlib.contextmanager
def garbage_collected_at_the_end(spark: SparkSession) -> Iterator[None]:
    """A Spark Connect client's job, with Python's cyclic garbage collector paused until
    it ends (a classic session's is left as it is).

    A fitted model's Python object asks the server to free its copy when it is freed. In
    pyspark 4.2 the collector may free it inside another call to the server on the same
    thread, and that request then waits on the call for good (SPARK-55020 and SPARK-57655
    upstream; 4.2.0 has neither guard). Paused, the collector cannot interrupt a call.
    The cycles a job leaves grow with its calls, not its rows, and are freed here at the
    end, where no call is in flight.
    """
    if not is_connect(spark) or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        freed = gc.collect()
        gc.enable()
        log.info("garbage collector resumed after the Spark Connect job; it freed %d objects", freed)


@contextlib.contextmanager
def shuffle_files_removed(spark: SparkSession) -> Iterator[None]:
    """Queries built inside the block remove their shuffle files once they end.

    For a query whose result is kept another way, such as a checkpoint: otherwise the
    files stay until the driver's garbage collector releases the shuffle, which may be
    never (at 200M lines, 24 to 38 GB of deduplication shuffle stayed on disk beside the
    checkpoint, and a forced collection did not remove it). Only for those: an action
    repeated on a frame reuses its shuffle files, and would then recompute them. A
    Spark Connect session is left as it is: its server has a cleanup setting of its own.
    """
    if is_connect(spark) or not spark.conf.isModifiable(SHUFFLE_CLEANUP):
        yield
        return
    before = spark.conf.get(SHUFFLE_CLEANUP, None)  # None: not set, Spark's default applies
    spark.conf.set(SHUFFLE_CLEANUP, "true")
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(SHUFFLE_CLEANUP)
        else:
            spark.conf.set(SHUFFLE_CLEANUP, before)
