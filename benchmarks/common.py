"""What every part of the harness shares: paths, the raw layout, the stage names, and the
recorder a tool process writes its timings with.

This module imports only the standard library, so the pandas and DuckDB processes load
nothing of Spark's and their memory is their own.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT / "data" / "bench"
DEFAULT_RESULTS_DIR = ROOT / "benchmarks" / "results"
BENCH_CONFIGS = ("conf/base.yaml", "conf/local.yaml", "conf/bench.yaml")
# conf/local.yaml names the jars relative to the working directory; a tool may run elsewhere.
JARS_OVERRIDE = f"spark.delta_jars_dir={ROOT / '.cache' / 'jars'}"
DRIVER_MEMORY_KEY = "spark.conf.spark.driver.memory"  # the override the harness always gives our pipeline

# The generated data ends the day before this; every tool computes features as of it, so
# no tool depends on the clock (the date is also features.as_of_date in conf/bench.yaml).
AS_OF = dt.date(2025, 1, 1)
SEED = 42

# Columns of the raw Parquet files, as conf/sources/bench.yaml maps them.
INVOICE_NO = "invoice_no"  # 'C…' for a return invoice (its quantities are negative)
LINE_NO = "line_no"
CUSTOMER = "customer_id"  # null on a few bad rows
SKU = "sku"
QUANTITY = "quantity"  # 0 on a few bad rows
UNIT_PRICE = "unit_price"  # 0.0 on a few bad rows
INVOICE_TS = "invoice_ts"  # TIMESTAMP_NTZ in UTC; 2099 on a few bad rows
COUNTRY = "country"

# A row is accepted by every tool when it has a customer, a non-zero quantity and a
# positive price, and is dated before the as-of date: exactly the rows our ingest does
# not quarantine (missing_customer_id, zero_quantity, non_positive_price,
# future_timestamp), so that the RFM results of all tools can be compared.

# Tools, in the order they run and appear in tables.
CUSTSEG, PANDAS, DUCKDB = "custseg", "pandas", "duckdb"
TOOLS = (CUSTSEG, PANDAS, DUCKDB)
TOOL_LABELS = {CUSTSEG: "custseg (Spark)", PANDAS: "pandas + scikit-learn", DUCKDB: "DuckDB"}

# Pipeline stages, the same names for every tool that runs them.
STAGES = ("consolidate", "rfm", "scale_pca", "k_sweep", "final_fit", "write_labels")
STAGE_LABELS = {
    "startup": "start-up (imports, session)",
    "consolidate": "consolidate (pandas: read + clean)",
    "rfm": "RFM features",
    "scale_pca": "scaling + PCA",
    "k_sweep": "k sweep",
    "final_fit": "final fit",
    "write_labels": "write labels",
    "total": "whole run",
    "rfm_core": "diagnostic: R, F, M, AOV only",
}
# Stage kinds: "pipeline" stages add up to "total"; "setup" (start-up) and "diagnostic"
# (extra measurements after the run) do not.
PIPELINE, SETUP, DIAGNOSTIC, TOTAL = "pipeline", "setup", "diagnostic", "total"

OK = "ok"
EXIT_OOM = 3  # a tool process that ran out of memory exits with this code


def configure_logging(tool: str) -> None:
    """One format for the parent and every tool process, tagged with the tool, so the
    interleaved log of a long run reads as one progress report."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [{tool}] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("py4j", "pyspark"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def write_json(path: Path, data: Any) -> None:
    """Write atomically: the parent may read the file while a tool is still running, or
    after the tool was killed mid-write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def failure_status(exc: BaseException, stage: str | None) -> str:
    """``OOM: ...`` for memory exhaustion, in Python or in Spark's JVM (which reaches
    Python as a Py4J error naming java.lang.OutOfMemoryError), else ``failed: ...``."""
    where = f" during {stage}" if stage else ""
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    if isinstance(exc, MemoryError) or "OutOfMemoryError" in str(exc) or "Unable to allocate" in text:
        return f"OOM: {type(exc).__name__}{where}"
    return f"failed: {type(exc).__name__}{where}: {text}"


class Recorder:
    """The stages one tool ran and what it found, rewritten to ``out`` after every stage:
    when the parent kills the process (memory cap), the stages it finished are kept and
    the one it was in is named."""

    def __init__(self, tool: str, out: Path) -> None:
        self.out = out
        self.log = logging.getLogger(f"benchmarks.{tool}")
        self.data: dict[str, Any] = {"tool": tool, "status": "running", "current_stage": None, "stages": {}}
        self.save()

    def save(self) -> None:
        write_json(self.out, self.data)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    @contextmanager
    def stage(self, name: str, rows: int | None = None, kind: str = PIPELINE) -> Iterator[dict[str, Any]]:
        """Time one stage. The caller may set ``rows`` on the yielded record when the
        count is known only at the end (rows per second divide by it)."""
        record: dict[str, Any] = {"kind": kind, "rows": rows, "started_at": time.time()}
        if kind != TOTAL:
            self.data["current_stage"] = name
            self.save()
        self.log.info("%s: started", name)
        started = time.perf_counter()
        yield record
        record["seconds"] = time.perf_counter() - started
        record["ended_at"] = time.time()
        if record["rows"]:
            record["rows_per_second"] = record["rows"] / record["seconds"]
        self.data["stages"][name] = record
        self.data["current_stage"] = None
        self.save()
        rate = f", {record['rows_per_second']:,.0f} rows/s" if record.get("rows_per_second") else ""
        self.log.info("%s: done in %.2fs%s", name, record["seconds"], rate)

    def finish(self, status: str = OK) -> None:
        self.data["status"] = status
        self.save()

    def fail(self, exc: BaseException) -> int:
        """Record the failure and return the process exit code."""
        status = failure_status(exc, self.data.get("current_stage"))
        self.log.error("%s", status, exc_info=not status.startswith("OOM"))
        self.finish(status)
        return EXIT_OOM if status.startswith("OOM") else 1
