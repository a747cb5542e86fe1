"""Smoke test of the benchmark harness (benchmarks/, issue 6): the whole harness at a tiny
size, as `make bench` runs it, into a temporary folder. It checks that every output is
written and complete, and that our pipeline, pandas and DuckDB agree on the RFM results
of the same data: the definitions are the same, so the totals must be. No timing is
asserted: the numbers are measurements, not pass marks."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import functions as F

from benchmarks import common, generate, measure, report
from benchmarks.run import final_status
from tests.conftest import JVM_OPTIONS, build_once, shared_dir

N = 20_000
K_MIN, K_MAX = 2, 3
PIPELINE_STAGES = ("startup", *common.STAGES, "total")
EXPECTED_STAGES = {
    common.CUSTSEG: (*PIPELINE_STAGES, "rfm_core"),
    common.PANDAS: PIPELINE_STAGES,
    common.DUCKDB: ("startup", "rfm", "total"),
}


@pytest.fixture(scope="module")
def bench(spark, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The data generated in-process with the session (the harness then reuses it), and
    one run of the harness in its own process, as `make bench` starts it: once per test
    run, whichever xdist worker asks first."""
    tmp = shared_dir(tmp_path_factory) / "bench"
    tmp.mkdir(exist_ok=True)
    data_dir, results_dir = tmp / "data", tmp / "results"

    def run_harness() -> None:
        common.write_json(tmp / "manifest.json", generate.ensure(spark, N, data_dir))
        command = [
            sys.executable, "-m", "benchmarks.run", f"--transactions={N}", f"--k-min={K_MIN}", f"--k-max={K_MAX}",
            f"--data-dir={data_dir}", f"--results-dir={results_dir}", "--driver-memory=1g", "--memory-cap-gb=6",
            "--set=spark.shuffle_partitions=2",
            f"--set=spark.conf.spark.driver.extraJavaOptions={JVM_OPTIONS}",
        ]  # fmt: skip
        done = subprocess.run(command, cwd=common.ROOT, capture_output=True, text=True, timeout=600)
        (tmp / "stdout.txt").write_text(done.stdout)
        assert done.returncode == 0, done.stderr[-5000:]

    build_once(tmp / "harness.done", run_harness)
    return {
        "manifest": common.read_json(tmp / "manifest.json"),  # what generating the data returned
        "data_dir": data_dir,
        "results_dir": results_dir,
        "result": common.read_json(results_dir / f"{N}.json"),
        "stdout": (tmp / "stdout.txt").read_text(),
    }


def test_generate_raw_transactions_is_deterministic_with_invoices_of_one_to_six_lines(spark):
    first = generate.raw_transactions(spark, 2_000).orderBy(common.INVOICE_NO, common.LINE_NO).collect()
    again = generate.raw_transactions(spark, 2_000).orderBy(common.INVOICE_NO, common.LINE_NO).collect()
    assert first == again and len(first) == 2_000

    lines = generate.raw_transactions(spark, 2_000).groupBy(common.INVOICE_NO).agg(F.count("*").alias("n"))
    sizes = lines.agg(F.min("n").alias("lo"), F.max("n").alias("hi")).first()
    assert (sizes["lo"], sizes["hi"]) == (1, 6)


def test_generate_reuses_data_with_a_matching_manifest(bench):
    raw = generate.raw_dir(bench["data_dir"], N)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in raw.iterdir())
    assert generate.current_manifest(bench["data_dir"], N, common.SEED) == bench["manifest"]
    assert generate.current_manifest(bench["data_dir"], N, common.SEED + 1) is None  # other data: regenerate
    assert sorted((p.name, p.stat().st_mtime_ns) for p in raw.iterdir()) == before


def test_bench_writes_the_results_table_plot_and_summary(bench):
    results_dir = bench["results_dir"]
    for name in (f"{N}.json", f"{N}.md", f"{N}.png", "README.md"):
        assert (results_dir / name).stat().st_size > 0, name
    table = (results_dir / f"{N}.md").read_text(encoding="utf-8")
    assert "RFM stage vs DuckDB" in table and "k sweep vs scikit-learn" in table
    assert f"[{N:,}]({N}.md)" in (results_dir / "README.md").read_text(encoding="utf-8")
    assert table.strip() in bench["stdout"]


def test_bench_times_every_stage_of_every_tool(bench):
    tools = bench["result"]["tools"]
    assert set(tools) == set(common.TOOLS)
    for tool, stages in EXPECTED_STAGES.items():
        assert tools[tool]["status"] == common.OK, (tool, tools[tool]["status"])
        assert set(tools[tool]["stages"]) == set(stages), tool
        for name, stage in tools[tool]["stages"].items():
            assert stage["seconds"] > 0, (tool, name)
            assert stage["kind"] == common.SETUP or stage["rows_per_second"] > 0, (tool, name)
        assert tools[tool]["peak_rss"] > 0 and tools[tool]["cpu_seconds"] > 0, tool


def test_bench_tools_agree_on_customers_and_rfm_totals(bench):
    checks = {tool: data["checks"] for tool, data in bench["result"]["tools"].items()}
    ours = checks[common.CUSTSEG]
    assert ours["customers"] > 0 and ours["monetary_sum"] > 0
    for tool in (common.PANDAS, common.DUCKDB):
        for key in ("customers", "customers_with_purchase", "frequency_sum", "recency_sum"):
            assert checks[tool][key] == ours[key], (tool, key)
        assert math.isclose(checks[tool]["monetary_sum"], ours["monetary_sum"], rel_tol=1e-9, abs_tol=0.01), tool
    assert bench["result"]["agreement"]["agree"]


def test_bench_ingest_quarantines_exactly_the_generated_bad_rows(bench):
    [counts] = bench["result"]["tools"][common.CUSTSEG]["ingest"]
    manifest = bench["manifest"]
    assert counts["rows_read"] == N
    assert counts["quarantined"] == manifest["expected_quarantined"] > 0
    assert counts["accepted"] == manifest["counts"]["accepted"]


def test_bench_sweeps_the_same_k_with_the_same_metrics_for_both_tools(bench):
    tools = bench["result"]["tools"]
    for tool in (common.CUSTSEG, common.PANDAS):
        sweep = tools[tool]["sweep"]
        assert [p["k"] for p in sweep] == list(range(K_MIN, K_MAX + 1)), tool
        for point in sweep:
            for metric in ("wcss", "silhouette", "calinski_harabasz", "davies_bouldin"):
                assert math.isfinite(point[metric]), (tool, point)
        assert K_MIN <= tools[tool]["k"] <= K_MAX


def test_report_targets_compare_our_stage_times_with_the_other_tools(bench):
    result = bench["result"]
    rfm = report.stage_seconds(result, common.CUSTSEG, "rfm") / report.stage_seconds(result, common.DUCKDB, "rfm")
    assert result["targets"]["rfm_vs_duckdb"]["measured"] == pytest.approx(rfm)
    assert result["targets"]["end_to_end_200m"]["measured"] is None  # not at this size


def test_measure_records_a_tool_over_its_memory_cap_as_out_of_memory(tmp_path: Path):
    hog = "import time; x = bytearray(400 << 20); x[::4096] = b'1' * len(x[::4096]); time.sleep(30)"
    outcome = measure.run_measured([sys.executable, "-c", hog], "hog", tmp_path, cap_bytes=200 << 20, timeout=60)
    assert outcome.killed_for_memory and outcome.returncode == -9
    assert outcome.wall_seconds < 30
    status = final_status({"current_stage": "rfm", "status": "running"}, outcome, 200 << 20)
    assert status.startswith("OOM: ") and status.endswith("during rfm")


def test_process_tree_flags_a_child_that_still_shares_its_parents_memory():
    """The JVM's posix_spawn child, before its exec, has the JVM's whole address space
    under a thread's name: counting its resident set would count the JVM twice."""
    java, spawned, chmod, forked = 100, 101, 102, 103
    stats = {
        1: (0, 5, "init", 0, 1_000),
        java: (1, 900, "java", 0, 12 << 30),
        spawned: (java, 0, "Thread-4", measure.PF_FORKNOEXEC, 12 << 30),  # same size, not exec'd
        chmod: (java, 1, "chmod", 0, 6 << 20),  # exec'd: its own memory
        forked: (java, 2, "python", measure.PF_FORKNOEXEC, 1 << 30),  # forked and diverged
    }
    tree = measure.process_tree(java, stats)
    assert tree == {
        java: (900, "java", False),
        spawned: (0, "Thread-4", True),
        chmod: (1, "chmod", False),
        forked: (2, "python", False),
    }
    assert measure.process_tree(spawned, stats) == {spawned: (0, "Thread-4", False)}  # a root always counts


@pytest.mark.parametrize("module", ["benchmarks.run", "benchmarks.generate", "benchmarks.tool_custseg"])
def test_harness_help_prints_every_option(module: str):
    """argparse formats each help text with %: a literal percent sign must be doubled."""
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=common.ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--transactions" in done.stdout


def sized_run(n: int, total_seconds: float, cpu: str, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """A results record as the harness writes it, reduced to what the summary reads."""
    stages = {stage: {"seconds": 1.0} for stage in common.STAGES} | {"total": {"seconds": total_seconds}}
    return {
        "transactions": n,
        "run_at": "2026-12-02T10:00:00Z",
        "machine": {
            "cpu_model": cpu,
            "cores": 2,
            "ram_bytes": 24 << 30,
            "os": "Linux",
            "python": "3.11",
            "versions": {"pyspark": "4.2.0"},
        },
        "settings": {"overrides": ["spark.conf.spark.driver.memory=11g", *overrides]},
        "tools": {common.CUSTSEG: {"status": common.OK, "stages": stages, "checks": {"customers": n // 40}}},
        "targets": {"rfm_vs_duckdb": {"measured": None}, "k_sweep_vs_sklearn": {"measured": None}},
    }


def test_summary_compares_time_per_transaction_only_on_the_same_kind_of_machine():
    # µs per transaction: 10M on A 40.0, 50M on B 30.0, 100M on A 46.0 (+15% on A's 10M), 200M on B 32.5
    results = [
        sized_run(10_000_000, 400.0, "CPU A"),
        sized_run(50_000_000, 1_500.0, "CPU B"),
        sized_run(100_000_000, 4_600.0, "CPU A"),
        sized_run(200_000_000, 6_500.0, "CPU B", ("spark.shuffle_partitions=200",)),
    ]
    rows = [line for line in report.summary(results).splitlines() if line.startswith("| [")]
    changes = [row.split(" | ")[-2] for row in rows]
    assert changes == ["–", "–", "+15.0%", "+8.3%"]
    assert rows[3].endswith("CPU B, 2026-12-02 (`--set`) |") and rows[0].endswith("CPU A, 2026-12-02 |")
    assert report.growth(results, 10_000_000, 100_000_000) == pytest.approx(0.15)
    assert report.growth(results, 50_000_000, 100_000_000) is None  # another machine
    assert "from 10M to 100M: +15.0%" in report.summary(results)
    assert "from 10M to 100M: needs runs at both sizes on the same kind of machine" in report.summary(
        [sized_run(10_000_000, 400.0, "CPU A"), sized_run(100_000_000, 4_600.0, "CPU B")]
    )
    page_lines = report.overrides_lines(results[3])
    assert page_lines == ["", "Our pipeline ran with these settings instead of its defaults: "
                              "`spark.shuffle_partitions=200`."]  # fmt: skip
    assert report.overrides_lines(results[0]) == []
