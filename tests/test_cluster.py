"""The whole job on a real Spark standalone cluster: a master and two 1-core workers on
this machine, the job submitted with spark-submit exactly as in production
(``--py-files`` the package zip, ``--jars`` the Delta jars, conf/cluster.yaml). Its labels
must equal those of a local-mode run on the same data and seed: ``segment.fit_partitions``
makes the fit independent of the cluster's layout (here 4 shuffle partitions on 2
executors, against 2 partitions in one local JVM).

The helpers below are shared with tests/test_faults.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from chispa import assert_df_equality
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from custseg import columns as c
from custseg.demo import standalone
from custseg.spark import delta_jars
from tests.conftest import CONF, DEMO_LAKE_SETTINGS, JVM_OPTIONS, ROOT

# As the shared demo lake (conftest), which the cluster's labels must equal; no tracking.
JOB_SETTINGS = (*DEMO_LAKE_SETTINGS, "mlflow.enabled=false")
# The cluster side: tables under the run's folder, few partitions for tiny tables (Delta
# rebuilds a table's state with 50 tasks by default), Spark's own logs at WARN.
CLUSTER_SETTINGS = (
    "storage.root=lake",
    "segment.model_dir=models",
    f"ingest.sources={[str(CONF / 'sources' / 'demo_pos.yaml'), str(CONF / 'sources' / 'demo_web.yaml')]}",
    "spark.ui_enabled=false",
    "spark.log_level=WARN",
    "spark.shuffle_partitions=4",
    "spark.conf.spark.databricks.delta.snapshotPartitions=2",
)
JOB_TIMEOUT = 900  # seconds: generous, the machine is shared


# --------------------------------------------------------------------------- shared helpers


def labels(spark: SparkSession, lake: Path) -> DataFrame:
    return DeltaTable.forPath(spark, str(lake / "segment_labels")).toDF().select(c.CUSTOMER_ID, c.SEGMENT_ID)


def package(directory: Path) -> Path:
    """dist/custseg.zip as `make package` builds it, but fresh and in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    zip_path = directory / "custseg.zip"
    subprocess.run([sys.executable, "-m", "zipfile", "-c", str(zip_path), "custseg"], cwd=ROOT / "lib", check=True)
    return zip_path


@dataclass
class Submitted:
    proc: subprocess.Popen
    log: Path  # the driver's output: spark-submit's and our own logging
    run_dir: Path  # its working directory: data/raw, lake/, models/

    def wait(self, timeout: float = JOB_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"spark-submit still running after {timeout}s; log {self.log}:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the driver: spark-submit's JVM and the Python process it started."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait_for(self, ready, what: str, timeout: float = JOB_TIMEOUT, poll: float = 0.2) -> None:
        """Poll ``ready()`` until true; fail if the job ends or time runs out first."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"the job ended (exit {self.proc.returncode}) before {what}; log:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout}s; log:\n{self.tail()}")
            time.sleep(poll)


def submit(
    master: str,
    run_dir: Path,
    raw: Path,
    zip_path: Path,
    job: str = "run.py",
    settings: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Submitted:
    """Start ``spark-submit --master <master> ... jobs/<job>`` with cwd ``run_dir`` (the demo
    sources linked in at data/raw, where their mappings look), in its own process group."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "data").mkdir(exist_ok=True)
    if not (run_dir / "data" / "raw").exists():
        (run_dir / "data" / "raw").symlink_to(raw, target_is_directory=True)
    command = [
        str(Path(sys.executable).parent / "spark-submit"),
        "--master", master,
        "--py-files", str(zip_path),
        "--jars", ",".join(delta_jars(ROOT / ".cache" / "jars")),
        "--driver-java-options", JVM_OPTIONS,
        "--conf", f"spark.executor.extraJavaOptions={JVM_OPTIONS}",
        str(ROOT / "jobs" / job),
        "--config", str(CONF / "base.yaml"),
        "--config", str(CONF / "cluster.yaml"),
    ]  # fmt: skip
    for setting in [*JOB_SETTINGS, *CLUSTER_SETTINGS, *settings]:
        command += ["--set", setting]
    child_env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "SPARK_HOME": str(standalone.spark_home()),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        **(env or {}),
    }
    log = run_dir / "driver.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command, cwd=run_dir, env=child_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Submitted(proc=proc, log=log, run_dir=run_dir)


def apps_on_workers(cluster: standalone.Cluster) -> list[set[str]]:
    """Per worker, the applications it ran executors for (one folder each in its work dir)."""
    return [{p.name for p in (cluster.work_dir / f"worker-{i}").glob("app-*")} for i in range(len(cluster.workers))]


# --------------------------------------------------------------------------- tests


def test_cluster_run_labels_equal_local_run(spark, cluster, demo_raw, request, tmp_path, submitted, report):
    started = time.perf_counter()
    job = submit(cluster.master_url, tmp_path / "run", demo_raw, package(tmp_path / "dist"))
    submitted.append(job)
    local_lake = request.getfixturevalue("demo_lake")  # meanwhile, the same pipeline in local mode
    assert job.wait() == 0, job.tail()
    elapsed = time.perf_counter() - started
    report.append(f"cluster: spark-submit of the whole pipeline took {elapsed:.0f}s (beside it, the shared "
                  "local-mode run in the test process)")  # fmt: skip

    assert "session ready (master spark://127.0.0.1:" in job.text()
    on_workers = apps_on_workers(cluster)
    assert all(len(apps) == 1 for apps in on_workers) and on_workers[0] == on_workers[1]  # both ran executors
    assert_df_equality(labels(spark, tmp_path / "run" / "lake"), labels(spark, local_lake), ignore_row_order=True)
