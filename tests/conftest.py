"""One local SparkSession for the whole suite, built by the production factory with
test-sized settings: two cores, two shuffle partitions, no UI, UTC, a temp warehouse,
interpreted expressions (NO_CODEGEN).
And one small demo lake, built once by the real pipeline, for the tests that compare
another way of running it (a cluster, Spark Connect) or read its outputs (the report)."""

from __future__ import annotations

import dataclasses
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from custseg.cli import run_all
from custseg.config import Config, load_config
from custseg.demo import datagen, standalone
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
    # The value stage in every pipeline run, without its holdout refit and evaluation,
    # which cost about half of it (on the realistic lake, loaded 2 cores: 31-50 s instead of 72);
    # tests/test_value_job.py sets a holdout and checks it on CDNOW.
    "value.holdout_days=0",
]

# Short jobs on tiny data spend most of their CPU compiling (JIT): the C1 compiler alone
# and the serial collector cut a job's CPU time by a third or more here, without changing
# what it computes. For every JVM the suite starts: this session's and the jobs' it submits.
# C1 alone shrinks the default code cache to 48 MB, which a Connect server or a long
# session fills ("Out of space in CodeCache for adapters"): the reserved size goes back up.
JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:ReservedCodeCacheSize=256m"

# For this process's session only: Spark's interpreted expressions instead of generated
# code. On the suite's few thousand rows, compiling each new plan's code (Janino, then
# class lookups across every jar) costs more than running it: generating the demo data and
# running the pipeline on it twice, in one session, took 160.5 s instead of 181 to 217 s
# (the suite: 17:39 instead of 24:10, the same day). Results are the same by Spark's
# contract; the jobs the suite submits (cluster, Connect, faults, benchmark) keep code
# generation, as production runs.
NO_CODEGEN = "spark.sql.codegen.wholeStage: 'false', spark.sql.codegen.factoryMode: NO_CODEGEN"

# The shared demo lake: 300 customers, k from 2 to 4, no stability refits (the tests that
# run the pipeline another way use these same settings, so their labels must be equal).
# No customer value: on the archetypes' spend (four order-value levels, each tied to a
# frequency) the Gamma-Gamma fit runs to its bound, so each of these runs would spend
# about a minute to log that warning; tests/test_e2e.py runs the value stage on a demo.
DEMO_LAKE_SETTINGS = (
    "demo.customers=300", "segment.k_max=4", "stability.seeds=[]", "stability.bootstrap=0", "value.enabled=false",
)  # fmt: skip
DEMO_RUN_ID = "demo-run"

_RESULTS: list[str] = []

# The CDNOW data (Fader, Hardie & Lee's sample and summaries), extracted once by setup.
CDNOW = ROOT / ".cache" / "cdnow"


def cdnow_file(name: str) -> Path:
    """A CDNOW data file from .cache/cdnow; a failure that names the fix when setup has
    not fetched them (a test that silently skipped would hide the published checks)."""
    path = CDNOW / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make cdnow` (part of `make setup`) to fetch the CDNOW data once")
    return path


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
        f"spark.driver.extraJavaOptions: '{JVM_OPTIONS}', {NO_CODEGEN}}}",
    )
    session = get_spark(cfg.spark)
    yield session
    session.stop()


def shared_dir(factory: pytest.TempPathFactory) -> Path:
    """The run's temp root that every xdist worker sees (each worker's own is inside it)."""
    base = factory.getbasetemp()
    return base.parent if base.name.startswith("popen-gw") else base


def build_once(done: Path, build: Callable[[], None]) -> None:
    """Run ``build`` unless it already ran in this test run: the first worker to take the
    lock builds and leaves ``done``; the others wait for the lock, then find it. A build
    that fails leaves no ``done``, so the next worker tries (and fails) on its own."""
    with open(done.with_name(done.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            build()
            done.touch()


def lake_config(factory: pytest.TempPathFactory, name: str, *settings: str) -> Config:
    """The test config of a lake shared by every worker: ``<run's temp root>/<name>``."""
    base = shared_dir(factory) / name
    base.mkdir(exist_ok=True)
    return make_config(base, *settings, f"report.dir={base / 'reports'}")


def generated_once(spark: SparkSession, cfg: Config) -> Path:
    """``cfg.demo``'s sources (pos/, web/, truth/), generated once per test run (across workers)."""
    raw = Path(cfg.demo.raw_dir)
    build_once(raw.with_name("raw.done"), lambda: datagen.generate(spark, cfg.demo))
    return raw


@pytest.fixture(scope="session")
def demo_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return lake_config(tmp_path_factory, "demo-lake", *DEMO_LAKE_SETTINGS)


@pytest.fixture(scope="session")
def demo_raw(spark: SparkSession, demo_config: Config) -> Path:
    """The demo sources, generated once per test run."""
    return generated_once(spark, demo_config)


# The realistic scenario: customers like a real retailer's, overlapping, heavy-tailed,
# with no planted groups (conf/realistic.yaml, at the size it is calibrated on).
REALISTIC_SETTINGS = (
    "demo.scenario=realistic", "demo.customers=4000", "demo.start_date=2023-01-01", "demo.end_date=2025-01-01",
)  # fmt: skip


@pytest.fixture(scope="session")
def realistic_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return lake_config(tmp_path_factory, "realistic-lake", *REALISTIC_SETTINGS)


@pytest.fixture(scope="session")
def realistic_raw(spark: SparkSession, realistic_config: Config) -> Path:
    """The realistic scenario's sources, generated once per test run."""
    return generated_once(spark, realistic_config)


@pytest.fixture(scope="session")
def demo_lake(spark: SparkSession, demo_config: Config, demo_raw: Path) -> Path:
    """The lake of one run of the whole pipeline (ingest to report, run id ``DEMO_RUN_ID``)
    on ``demo_raw``, by whichever worker asks first. Read-only for the tests: copy a table
    to change it."""
    lake = Path(demo_config.storage.root)
    build_once(lake.with_name("lake.done"), lambda: run_all(spark, demo_config, DEMO_RUN_ID))
    return lake


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
