"""One local SparkSession for the whole suite, built by the production factory with
test-sized settings: two cores, two shuffle partitions, no UI, UTC, a temp warehouse.
And one small demo lake, built once by the real pipeline, for the tests that compare
another way of running it (a cluster, Spark Connect) or read its outputs (the report)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from custseg import datagen, standalone
from custseg.cli import run_all
from custseg.config import Config, load_config
from custseg.spark import get_spark

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

TEST_SETTINGS = [
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.ui_enabled=false",
    f"spark.delta_jars_dir={ROOT / '.cache' / 'jars'}",
    "segment.k_max=6",
    "mlflow.enabled=false",  # tests/test_tracking.py turns it on, with a store in its tmp dir
]

# Short jobs on tiny data spend most of their CPU compiling (JIT): the C1 compiler alone
# and the serial collector cut a job's CPU time by a third or more here, without changing
# what it computes. For every JVM the suite starts: this session's and the jobs' it submits.
# C1 alone shrinks the default code cache to 48 MB, which a Connect server or a long
# session fills ("Out of space in CodeCache for adapters"): the reserved size goes back up.
JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:ReservedCodeCacheSize=256m"

# The shared demo lake: 300 customers, k from 2 to 4, no stability refits (the tests that
# run the pipeline another way use these same settings, so their labels must be equal).
DEMO_LAKE_SETTINGS = ("demo.customers=300", "segment.k_max=4", "stability.seeds=[]", "stability.bootstrap=0")
DEMO_RUN_ID = "demo-run"

_RESULTS: list[str] = []


def make_config(tmp: Path, *overrides: str) -> Config:
    """The real base + local config, pointed at ``tmp`` and shrunk for tests."""
    sources = [str(CONF / "sources" / "demo_pos.yaml"), str(CONF / "sources" / "demo_web.yaml")]
    cfg = load_config(
        [CONF / "base.yaml", CONF / "local.yaml"],
        [
            *TEST_SETTINGS,
            f"storage.root={tmp / 'lake'}",
            f"segment.model_dir={tmp / 'models'}",
            f"demo.raw_dir={tmp / 'raw'}",
            f"ingest.sources={sources}",
            *overrides,
        ],
    )
    raw = tmp / "raw"
    return dataclasses.replace(cfg, sources=tuple(dataclasses.replace(s, path=str(raw / s.name)) for s in cfg.sources))


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    warehouse = tmp_path_factory.mktemp("warehouse")
    cfg = make_config(
        warehouse,
        f"spark.conf={{spark.sql.warehouse.dir: '{warehouse}', spark.driver.memory: 2g, "
        f"spark.driver.extraJavaOptions: '{JVM_OPTIONS}'}}",
    )
    session = get_spark(cfg.spark)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def demo_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    base = tmp_path_factory.mktemp("demo-lake")
    return make_config(base, *DEMO_LAKE_SETTINGS, f"report.dir={base / 'reports'}")


@pytest.fixture(scope="session")
def demo_raw(spark: SparkSession, demo_config: Config) -> Path:
    """The demo sources (pos/, web/, truth/), generated once per session."""
    datagen.generate(spark, demo_config.demo)
    return Path(demo_config.demo.raw_dir)


@pytest.fixture(scope="session")
def demo_lake(spark: SparkSession, demo_config: Config, demo_raw: Path) -> Path:
    """The lake of one run of the whole pipeline (ingest to report, run id ``DEMO_RUN_ID``)
    on ``demo_raw``, in this process. Read-only for the tests: copy a table to change it."""
    run_all(spark, demo_config, DEMO_RUN_ID)
    return Path(demo_config.storage.root)


class _Measured:
    """Lines a test wants shown in the run's summary. They travel on the test's report,
    so that they reach the summary from an xdist worker too."""

    def __init__(self, node: pytest.Item) -> None:
        self.node = node

    def append(self, line: str) -> None:
        self.node.user_properties.append(("measured", line))


@pytest.fixture
def report(request: pytest.FixtureRequest) -> _Measured:
    """Lines a test wants shown in the run's summary (e.g. measured scores)."""
    return _Measured(request.node)


# The tests that read or compare with the shared demo lake run on one xdist worker, so
# the lake is built once (with ``--dist loadgroup``; without xdist the mark does nothing).
DEMO_LAKE_MODULES = ("test_cluster", "test_connect", "test_faults", "test_report")


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ARG001
    for item in items:
        if item.module.__name__.rpartition(".")[2] in DEMO_LAKE_MODULES:
            item.add_marker(pytest.mark.xdist_group("demo_lake"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _RESULTS.extend(value for key, value in report.user_properties if key == "measured")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if _RESULTS:
        terminalreporter.section("measured")
        for line in _RESULTS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[standalone.Cluster]:
    """A standalone cluster (master and two 1-core workers) per test module that asks."""
    with standalone.cluster(tmp_path_factory.mktemp("standalone"), workers=2, cores=1, memory="1g") as running:
        yield running


@pytest.fixture
def submitted() -> Iterator[list]:
    """spark-submit jobs a test starts (tests/test_cluster.Submitted); any still running
    at the end is killed."""
    jobs: list = []
    yield jobs
    for job in jobs:
        job.kill()
