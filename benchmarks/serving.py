"""Latency of the exported scorer behind a real ``mlflow models serve``:
``python -m benchmarks.serving --model models/<version>-scorer`` (after ``custseg export-scorer``).

1. Start ``mlflow models serve --env-manager local`` on the model, in a process of its own.
2. Send single-customer requests one after another over one kept-alive connection, then
   batches of 1,000 customers, each as ``dataframe_split`` JSON, and time each round trip
   from here (JSON encoding, HTTP, mlflow's parsing and schema check, the scorer, the answer).
3. Time the scorer alone in this process on the same inputs, for what the server adds.
4. Write the p50 and p99 of each to ``benchmarks/results/serving.md`` with the date and the machine.

The customers are drawn from the artefact itself (numeric features log-normal around
their fitted scale, categories from the fitted vocabulary): latency depends on how many
customers a request holds, not on their values. Not a test: the figures are measurements.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.run import cpu_model, ram_bytes
from custseg.serve import scorer

RESULTS = Path(__file__).resolve().parent / "results" / "serving.md"
START_TIMEOUT = 120.0  # seconds for the server to answer /ping


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(model_dir: Path, log_path: Path, timeout: float = START_TIMEOUT) -> Iterator[str]:
    """``mlflow models serve`` on ``model_dir`` until the block ends; yields its URL. The
    server (and its uvicorn worker) is killed as a process group, whatever happens."""
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir), "--env-manager", "local",
             "-p", str(port), "-h", "127.0.0.1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while not _pings(url):
                if process.poll() is not None:
                    raise RuntimeError(f"mlflow models serve exited {process.returncode}: "
                                       f"{log_path.read_text(errors='replace')[-2000:]}")  # fmt: skip
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mlflow models serve did not answer /ping within {timeout:.0f} s")
                time.sleep(0.5)
            yield url
        finally:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()


def _pings(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def body(customers: pd.DataFrame) -> bytes:
    """The ``dataframe_split`` request mlflow's scoring server reads."""
    return json.dumps({"dataframe_split": json.loads(customers.to_json(orient="split", index=False))}).encode()


class Client:
    """One kept-alive HTTP connection to the server, as a calling service would hold."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=60)

    def invoke(self, customers: pd.DataFrame) -> list[int]:
        self.connection.request("POST", "/invocations", body(customers), {"Content-Type": "application/json"})
        answer = self.connection.getresponse()
        payload = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"HTTP {answer.status}: {payload[:500]!r}")
        return json.loads(payload)["predictions"]


def customers(artefact: dict, n: int, seed: int = 7) -> pd.DataFrame:
    """``n`` customers with every model feature, drawn around the fitted scale."""
    rng = np.random.default_rng(seed)
    scale = artefact["scaler"]
    columns: dict[str, np.ndarray] = {}
    for i, spec in enumerate(artefact["numeric"]):
        centre, spread = scale["mean"][i], max(scale["std"][i], 1e-6)
        value = rng.normal(centre, spread, n)
        columns[spec["name"]] = np.round(np.expm1(value) if spec["log1p"] else np.abs(value), 2)
    for spec in artefact["categorical"]:
        columns[spec["name"]] = rng.choice(spec["labels"], n)
    return pd.DataFrame(columns)


def timed(call, repeats: int) -> np.ndarray:
    """Seconds per call, ``repeats`` times."""
    seconds = np.empty(repeats)
    for i in range(repeats):
        started = time.perf_counter()
        call(i)
        seconds[i] = time.perf_counter() - started
    return seconds


def percentiles(seconds: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(seconds, 50) * 1e3), "p99_ms": float(np.percentile(seconds, 99) * 1e3),
            "n": int(len(seconds))}  # fmt: skip


def measure(model_dir: Path, singles: int, batches: int, batch_size: int) -> dict:
    """Latency per single-customer request and per batch, served and in process."""
    load = os.getloadavg()[0]  # other work on the machine shows in the p99s: say how busy it was
    loaded = scorer.load(model_dir / "artifacts" / "scorer.json")
    one_each = customers(loaded.artefact, singles, seed=1)
    batch = customers(loaded.artefact, batch_size, seed=2)
    rows = [one_each.iloc[[i]] for i in range(singles)]
    results = {}
    with tempfile.TemporaryDirectory() as work, served(model_dir, Path(work) / "server.log") as url:
        client = Client(url)
        for i in range(20):  # warm up: the first requests import and compile
            client.invoke(rows[i % singles])
        assert client.invoke(batch) == loaded.score(batch).tolist(), "the server disagrees with the scorer"
        results["served, 1 customer"] = percentiles(timed(lambda i: client.invoke(rows[i]), singles))
        results[f"served, {batch_size:,} customers"] = percentiles(timed(lambda i: client.invoke(batch), batches))
    results["in process, 1 customer"] = percentiles(timed(lambda i: loaded.score(rows[i]), singles))
    results[f"in process, {batch_size:,} customers"] = percentiles(timed(lambda i: loaded.score(batch), batches))
    return {"model_version": loaded.model_version, "clusterer": loaded.artefact["clusterer"]["kind"],
            "features": len(loaded.features), "results": results, "load": load}  # fmt: skip


def write(measured: dict) -> Path:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = measured["results"]
    lines = [
        "# Serving latency",
        "",
        "The exported scorer (`custseg export-scorer`) behind `mlflow models serve --env-manager local` (one "
        "uvicorn worker), measured by `python -m benchmarks.serving`: each request is timed from the client "
        "(its JSON encoding included), over one kept-alive connection, one request at a time, with client and "
        "server on the same machine; `in process` is the numpy scorer alone on the same inputs (a DataFrame in, "
        "segment ids out). Milliseconds.",
        "",
        "| what | p50 | p99 | requests |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {what} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['n']:,} |" for what, r in results.items()),
        "",
        f"Model `{measured['model_version']}` ({measured['clusterer']}, {measured['features']} features). "
        f"Run {when} on {cpu_model()}, {os.cpu_count()} cores, {ram_bytes() / (1 << 30):.1f} GiB RAM "
        f"(1-minute load average {measured['load']:.1f} at the start); "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}; "
        f"mlflow {version('mlflow')}, numpy {version('numpy')}, pandas {version('pandas')}.",
        "",
    ]
    RESULTS.write_text("\n".join(lines), encoding="utf-8")
    return RESULTS


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path, help="an exported scorer: <model>-scorer")
    p.add_argument("--singles", type=int, default=2000, help="single-customer requests to time")
    p.add_argument("--batches", type=int, default=300, help="batch requests to time")
    p.add_argument("--batch-size", type=int, default=1000, help="customers per batch request")
    args = p.parse_args(argv)
    if not (args.model / "MLmodel").is_file():
        print(f"{args.model} is not an exported scorer (no MLmodel): run custseg export-scorer first", file=sys.stderr)
        return 2
    measured = measure(args.model, args.singles, args.batches, args.batch_size)
    for what, r in measured["results"].items():
        print(f"{what:<28} p50 {r['p50_ms']:8.2f} ms   p99 {r['p99_ms']:8.2f} ms   ({r['n']} requests)")
    print(f"written to {write(measured)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
