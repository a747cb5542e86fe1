"""The benchmark harness: ``python -m benchmarks.run --transactions N`` (``make bench N=...``).

1. Generate N raw transactions into ``data/bench/<N>/raw/`` (or reuse them).
2. Run each tool in its own process, measured from here (time, peak memory of the
   process tree, CPU), under a memory cap: our pipeline (``tool_custseg``), pandas +
   scikit-learn (``tool_pandas``) and DuckDB's RFM (``tool_duckdb``). A tool that runs
   out of memory or fails is a recorded outcome, not the end of the run.
3. Write ``benchmarks/results/<N>.json``, ``<N>.md``, ``<N>.png`` and the summary
   ``README.md``, and print the tables.

The exit code is 0 when our pipeline finished (whatever the other tools did), 1 when it
did not, 2 when the data could not be generated or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks import common, generate, measure, report
from benchmarks.common import CUSTSEG, DUCKDB, PANDAS, TOOLS

log = logging.getLogger("benchmarks.run")

GIB = 1 << 30
PACKAGES = ("pyspark", "delta-spark", "pandas", "numpy", "pyarrow", "scikit-learn", "duckdb", "matplotlib")
DRIVER_MEMORY_SHARE = 0.5  # of RAM for Spark's driver heap: local mode runs every task in it
MEMORY_CAP_SHARE = 0.75  # of RAM a tool's process tree may use before it counts as out of memory
DUCKDB_LIMIT_SHARE = 0.8  # of its cap, for DuckDB's own memory_limit (it allocates a little beyond it)
MODULES = {CUSTSEG: "benchmarks.tool_custseg", PANDAS: "benchmarks.tool_pandas", DUCKDB: "benchmarks.tool_duckdb"}


# --------------------------------------------------------------------------- the machine


def ram_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def java_version() -> str | None:
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stderr or done.stdout).splitlines()[0] if (done.stderr or done.stdout) else None


def machine_info() -> dict[str, Any]:
    """What the numbers depend on: hardware, OS and every package version involved."""

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "cores": os.cpu_count(),
        "ram_bytes": ram_bytes(),
        "cpu_model": cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "java": java_version(),
        "versions": {name: installed(name) for name in PACKAGES},
    }


def default_driver_memory() -> str:
    return f"{max(1, int(ram_bytes() * DRIVER_MEMORY_SHARE / GIB))}g"


# --------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--transactions", "-n", type=int, required=True, help="raw transaction lines to generate")
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, from {','.join(TOOLS)}")
    p.add_argument("--k-min", type=int, default=None, help="default: segment.k_min of conf/bench.yaml (2)")
    p.add_argument("--k-max", type=int, default=None, help="default: segment.k_max of conf/bench.yaml (10)")
    p.add_argument("--seed", type=int, default=common.SEED, help="the data generator's seed")
    p.add_argument("--data-dir", type=Path, default=common.DEFAULT_DATA_DIR, help="generated data and scratch")
    p.add_argument("--results-dir", type=Path, default=common.DEFAULT_RESULTS_DIR)
    p.add_argument("--driver-memory", default=None, help="Spark driver heap, e.g. 8g; default: half the RAM")
    p.add_argument(
        "--memory-cap-gb",
        type=float,
        default=None,
        # argparse formats each help text with %: a literal percent sign is written %%
        help=f"kill a tool whose process tree exceeds this; default {MEMORY_CAP_SHARE * 100:.0f}%% of RAM",
    )
    p.add_argument(
        "--memory-cap",
        action="append",
        default=[],
        metavar="TOOL=GB",
        help="a cap for one tool, e.g. pandas=8 (repeatable)",
    )
    p.add_argument("--timeout-minutes", type=float, default=None, help="per tool; default: none")
    p.add_argument("--silhouette-sample", type=int, default=20_000, help="scikit-learn's silhouette sample")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="KEY=VALUE",
        help="a custseg config override for our pipeline (repeatable), e.g. spark.shuffle_partitions=8",
    )
    args = p.parse_args(argv)  # fmt: skip
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = sorted(set(args.tools) - set(TOOLS))
    if unknown:
        p.error(f"unknown tools {unknown}; choose from {list(TOOLS)}")
    if args.transactions < 1:
        p.error("--transactions must be at least 1")
    return args


def memory_caps(args: argparse.Namespace) -> dict[str, int]:
    default = args.memory_cap_gb if args.memory_cap_gb is not None else ram_bytes() * MEMORY_CAP_SHARE / GIB
    caps = dict.fromkeys(TOOLS, default)
    for item in args.memory_cap:
        tool, _, gb = item.partition("=")
        if tool not in TOOLS or not gb:
            raise SystemExit(f"--memory-cap {item!r}: expected TOOL=GB with TOOL one of {list(TOOLS)}")
        caps[tool] = float(gb)
    return {tool: int(gb * GIB) for tool, gb in caps.items()}


def custseg_overrides(args: argparse.Namespace, driver_memory: str) -> list[str]:
    """Our pipeline's config overrides: the driver heap, the k range, then the user's."""
    overrides = [f"{common.DRIVER_MEMORY_KEY}={driver_memory}"]
    if args.k_min is not None:
        overrides.append(f"segment.k_min={args.k_min}")
    if args.k_max is not None:
        overrides.append(f"segment.k_max={args.k_max}")
    return [*overrides, *args.overrides]


def model_spec(overrides: Sequence[str]) -> dict[str, Any]:
    """The model settings of our pipeline, for the pandas + scikit-learn run: read from
    the same config, so both fit the same features the same way."""
    from custseg.config import load_config  # PyYAML only; nothing of Spark's

    cfg = load_config([common.ROOT / f for f in common.BENCH_CONFIGS], [common.JARS_OVERRIDE, *overrides])
    seg = cfg.segment
    if seg.selection != "silhouette" or seg.k:
        log.warning("the scikit-learn run chooses k by the silhouette rule; ours uses %s",
                    f"k={seg.k}" if seg.k else seg.selection)  # fmt: skip
    return {
        "features": list(seg.features),
        "log1p": [f for f in cfg.features.log1p if f in seg.features],
        "pca_components": seg.pca_components or seg.pca_variance,  # scikit-learn takes a count or a share
        "seed": seg.seed,
        "max_iter": seg.max_iter,
        "restarts": seg.restarts,
        "k_min": seg.k_min,
        "k_max": seg.k_max,
        "silhouette_tolerance": seg.silhouette_tolerance,
    }


# --------------------------------------------------------------------------- running


class GenerationError(RuntimeError):
    """The benchmark data could not be generated: there is nothing to measure."""


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def ensure_data(args: argparse.Namespace, overrides: Sequence[str]) -> dict[str, Any]:
    """The manifest of the raw data for N, generating it first (in its own process, with
    our session factory) unless a matching one is there."""
    data_dir = args.data_dir.resolve()
    found = generate.current_manifest(data_dir, args.transactions, args.seed)
    if found is not None:
        log.info("data: reusing %s", generate.raw_dir(data_dir, args.transactions))
        return {**found, "reused": True}
    spark_sets = [f"--set={o}" for o in overrides if o.startswith("spark.")]
    command = python_module("benchmarks.generate", f"--transactions={args.transactions}", f"--data-dir={data_dir}",
                            f"--seed={args.seed}", *spark_sets)  # fmt: skip
    outcome = measure.run_measured(command, "generate", cwd=common.ROOT)
    manifest = generate.current_manifest(data_dir, args.transactions, args.seed)
    if outcome.returncode != 0 or manifest is None:
        raise GenerationError(f"generating {args.transactions:,} transactions failed (exit code {outcome.returncode})")
    return {**manifest, "reused": False, "generation_peak_rss": outcome.peak_rss}


def tool_command(
    tool: str,
    args: argparse.Namespace,
    work: Path,
    out: Path,
    overrides: Sequence[str],
    spec: dict[str, Any],
    cap: int,
) -> list[str]:
    raw = generate.raw_dir(args.data_dir.resolve(), args.transactions)
    common_args = [f"--raw={raw}", f"--work={work}", f"--out={out}", f"--transactions={args.transactions}"]
    if tool == CUSTSEG:
        return python_module(MODULES[tool], *common_args, *[f"--set={o}" for o in overrides])
    if tool == PANDAS:
        return python_module(MODULES[tool], *common_args, f"--spec={json.dumps(spec)}",
                             f"--silhouette-sample={args.silhouette_sample}")  # fmt: skip
    # DuckDB manages its own memory: keep its limit under the cap, so it spills rather than being killed
    return python_module(MODULES[tool], *common_args, f"--memory-limit-gb={cap * DUCKDB_LIMIT_SHARE / GIB:.2f}")


def final_status(data: dict[str, Any], outcome: measure.Outcome, cap: int) -> str:
    """The tool's outcome: its own account when it could give one, else what the parent
    saw (killed at the memory cap, timed out, or killed by the system)."""
    stage = data.get("current_stage")
    where = f" during {stage}" if stage else ""
    if outcome.killed_for_memory:
        return f"OOM: over the {cap / GIB:.1f} GiB memory cap{where}"
    if outcome.timed_out:
        return f"failed: timed out{where}"
    status = data.get("status")
    if outcome.returncode == 0 and status == common.OK:
        return common.OK
    if status and status not in ("running", common.OK):
        return status
    if outcome.returncode == -9:
        return f"OOM: killed by SIGKILL, likely the kernel's out-of-memory killer{where}"
    return f"failed: exit code {outcome.returncode}{where}"


def run_tool(
    tool: str, args: argparse.Namespace, cap: int, overrides: Sequence[str], spec: dict[str, Any]
) -> dict[str, Any]:
    """Run one tool in its own process and merge its own record with the measurements."""
    scratch = generate.size_dir(args.data_dir.resolve(), args.transactions) / "work"
    work, out = scratch / tool, scratch / f"{tool}.json"
    out.unlink(missing_ok=True)
    timeout = args.timeout_minutes * 60 if args.timeout_minutes else None
    command = tool_command(tool, args, work, out, overrides, spec, cap)
    outcome = measure.run_measured(command, tool, common.ROOT, cap, timeout)
    data = common.read_json(out) if out.is_file() else {"tool": tool, "stages": {}}
    data["status"] = final_status(data, outcome, cap)
    data["failed_stage"] = None if data["status"] == common.OK else data.get("current_stage")
    for stage in data["stages"].values():
        stage["peak_rss"] = outcome.peak_between(stage["started_at"], stage["ended_at"])
    data.update(
        returncode=outcome.returncode,
        wall_seconds=outcome.wall_seconds,
        cpu_seconds=outcome.cpu_seconds,
        average_cores=outcome.cpu_seconds / outcome.wall_seconds if outcome.wall_seconds else None,
        peak_rss=outcome.peak_rss,
        peak_rss_by_command=outcome.peak_rss_by_command,
        memory_cap=cap,
    )
    log.info("%s: %s", tool, data["status"])
    return data


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    common.configure_logging("bench")
    driver_memory = args.driver_memory or default_driver_memory()
    overrides = custseg_overrides(args, driver_memory)
    spec = model_spec(overrides)
    caps = memory_caps(args)
    run_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    log.info("benchmark of %s transactions: tools %s, k %d..%d, driver memory %s, caps %s", f"{args.transactions:,}",
             args.tools, spec["k_min"], spec["k_max"], driver_memory,
             {t: f"{caps[t] / GIB:.1f} GiB" for t in args.tools})  # fmt: skip
    try:
        data = ensure_data(args, overrides)
    except GenerationError as exc:
        log.error("%s", exc)
        return 2
    tools = {tool: run_tool(tool, args, caps[tool], overrides, spec) for tool in args.tools}
    result = {
        "transactions": args.transactions,
        "run_at": run_at,
        "machine": machine_info(),
        "settings": {
            "k_min": spec["k_min"],
            "k_max": spec["k_max"],
            "seed": args.seed,
            "model": spec,
            "silhouette_sample": args.silhouette_sample,
            "driver_memory": driver_memory,
            "memory_caps": {t: caps[t] for t in args.tools},
            "overrides": overrides,
        },  # fmt: skip
        "data": data,
        "tools": tools,
    }
    paths = report.write_all(result, args.results_dir.resolve())
    print(paths[1].read_text(encoding="utf-8"))
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0 if tools.get(CUSTSEG, {}).get("status", common.OK) == common.OK else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
