"""A real Spark standalone cluster on this machine, for ``make cluster-demo`` and tests.

A master and N workers run as child processes (``spark-class`` from the installed
pyspark), bound to 127.0.0.1 on free ports, each in its own process group with its own
log under a work dir. ``start`` returns once the master's JSON status page lists every
worker ALIVE; ``stop`` kills them all. Use the context manager, which stops the cluster
even when the body raises::

    with cluster(Path("work/spark"), workers=2) as c:
        subprocess.run(["spark-submit", "--master", c.master_url, ...])

or from a shell, which substitutes ``{master}`` and stops the cluster however the command
ends (its exit code is passed on)::

    python -m custseg.demo.standalone run --work-dir work/spark -- spark-submit --master {master} ...
    python -m custseg.demo.standalone start --work-dir work/spark    # until Ctrl-C

It starts processes and nothing else: no SparkSession, nothing of the job.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
DAEMON_JAVA_OPTS = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"


class ClusterError(RuntimeError):
    """The cluster did not come up; the message ends with the tail of the failing log."""


@dataclass
class Cluster:
    master_url: str  # spark://127.0.0.1:<port>, for --master
    ui_url: str  # the master's web UI; <ui_url>/json/ is its status as JSON
    work_dir: Path
    master: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def processes(self) -> list[subprocess.Popen]:
        return [*self.workers, self.master]

    def status(self) -> dict:
        """The master's view: workers (with ``state``), running and completed apps."""
        with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=5) as response:
            return json.load(response)

    def alive_workers(self) -> int:
        return sum(w["state"] == "ALIVE" for w in self.status()["workers"])

    def stop(self, grace: float = 10.0) -> None:
        """Terminate every process group (a worker's executors are in its group), then
        kill what is still running after ``grace`` seconds. Safe to call twice."""
        for proc in self.processes:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.processes:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(proc, signal.SIGKILL)  # stragglers, and executors left in the group
            proc.wait()
        log.info("standalone cluster %s stopped", self.master_url)


def free_port(host: str = HOST) -> int:
    """A port nobody listens on right now (the OS picks it; we release it at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def spark_home() -> Path:
    """$SPARK_HOME, else the pip-installed pyspark (which ships bin/spark-class and the jars)."""
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"])
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # each daemon leads its own group (start_new_session)


def _launch(cls: str, args: Sequence[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    command = [str(spark_home() / "bin" / "spark-class"), cls, *args]
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(
    work_dir: Path,
    workers: int = 2,
    cores: int = 1,
    memory: str = "1g",
    daemon_memory: str = "512m",
    timeout: float = 120.0,
) -> Cluster:
    """Start a master and ``workers`` workers (``cores`` and ``memory`` each, for
    executors) and wait until all are ALIVE; raise ClusterError (after stopping what
    started) if that takes longer than ``timeout`` seconds or a process dies."""
    work_dir = Path(work_dir).resolve()
    (work_dir / "logs").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": HOST,
        "SPARK_DAEMON_MEMORY": daemon_memory,  # the master's and workers' own JVMs
        # Small, mostly idle daemons: the serial collector and the quick (C1) compiler only.
        "SPARK_DAEMON_JAVA_OPTS": f"{os.environ.get('SPARK_DAEMON_JAVA_OPTS', '')} {DAEMON_JAVA_OPTS}".strip(),
        "SPARK_LOCAL_DIRS": str(work_dir / "local"),  # executors' shuffle and spill files
        # Spark 4 starts a REST submission server on port 6066: two clusters would clash.
        "SPARK_MASTER_OPTS": f"{os.environ.get('SPARK_MASTER_OPTS', '')} -Dspark.master.rest.enabled=false".strip(),
    }
    port, ui_port = free_port(), free_port()
    master_url, ui_url = f"spark://{HOST}:{port}", f"http://{HOST}:{ui_port}"
    master_log = work_dir / "logs" / "master.log"
    master = _launch(MASTER_CLASS, ["--host", HOST, "--port", str(port), "--webui-port", str(ui_port)], master_log, env)
    cluster = Cluster(master_url=master_url, ui_url=ui_url, work_dir=work_dir, master=master)
    logs = {master.pid: master_log}
    try:
        for i in range(workers):
            worker_log = work_dir / "logs" / f"worker-{i}.log"
            args = ["--host", HOST, "--port", "0", "--webui-port", str(free_port()), "--cores", str(cores),
                    "--memory", memory, "--work-dir", str(work_dir / f"worker-{i}"), master_url]  # fmt: skip
            cluster.workers.append(_launch(WORKER_CLASS, args, worker_log, env))
            logs[cluster.workers[-1].pid] = worker_log
        _wait_until_ready(cluster, workers, timeout, logs)
    except BaseException:
        cluster.stop()
        raise
    log.info("standalone cluster %s ready: %d workers x %d cores, %s (UI %s, logs %s)",
             master_url, workers, cores, memory, ui_url, work_dir / "logs")  # fmt: skip
    return cluster


def _wait_until_ready(cluster: Cluster, workers: int, timeout: float, logs: dict[int, Path]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for proc in cluster.processes:
            if proc.poll() is not None:
                raise ClusterError(f"{proc.args[1]} exited with code {proc.returncode}; "
                                   f"{logs[proc.pid]}:\n{_tail(logs[proc.pid])}")  # fmt: skip
        with suppress(OSError, ValueError, KeyError):  # the UI is not up yet
            if cluster.alive_workers() >= workers:
                return
        if time.monotonic() > deadline:
            raise ClusterError(f"{workers} workers not ALIVE at {cluster.ui_url} after {timeout:.0f}s; "
                               f"{logs[cluster.master.pid]}:\n{_tail(logs[cluster.master.pid])}")  # fmt: skip
        time.sleep(0.5)


@contextmanager
def cluster(work_dir: Path, **kwargs) -> Iterator[Cluster]:
    """``start(work_dir, **kwargs)``, and ``stop()`` however the block ends."""
    running = start(work_dir, **kwargs)
    try:
        yield running
    finally:
        running.stop()


# --------------------------------------------------------------------------- command line


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # so that the finally blocks stop the cluster


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m custseg.demo.standalone", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["run", "start"],
                   help="run: start, run the command after --, stop; start: start and wait for Ctrl-C")  # fmt: skip
    p.add_argument("--work-dir", type=Path, default=Path("data/cluster/spark"), help="logs and scratch space")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cores", type=int, default=1, help="cores per worker")
    p.add_argument("--memory", default="1g", help="executor memory per worker, e.g. 1g or 1536m")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the workers")
    p.epilog = "run: everything after -- is the command; {master} in it becomes the master URL"
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = p.parse_args(argv[:split]), argv[split + 1 :]
    if (args.action == "run") != bool(command):
        p.error("run needs a command after --; start takes none")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        with cluster(args.work_dir, workers=args.workers, cores=args.cores, memory=args.memory,
                     timeout=args.timeout) as running:  # fmt: skip
            print(f"Spark master {running.master_url} (UI {running.ui_url}, logs {running.work_dir / 'logs'})",
                  flush=True)  # fmt: skip
            if args.action == "start":
                while running.master.poll() is None:
                    time.sleep(1)
                return 1
            return _run(command, running.master_url)
    except KeyboardInterrupt:
        return 130
    except ClusterError as exc:
        log.error("%s", exc)
        return 2


def _run(command: Sequence[str], master_url: str) -> int:
    """Run ``command`` with {master} filled in; on the way out (an interrupt), end it first."""
    child = subprocess.Popen(
        [part.replace("{master}", master_url) for part in command],
        env={**os.environ, "SPARK_MASTER_URL": master_url},
    )
    try:
        return child.wait()
    finally:
        if child.poll() is None:
            child.terminate()
            with suppress(subprocess.TimeoutExpired):
                child.wait(timeout=10)
            child.kill()
            child.wait()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
