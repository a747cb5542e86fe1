"""The benchmark's outputs: ``<N>.json`` (everything measured), ``<N>.md`` (the tables),
``<N>.png`` (stage times per tool) and ``README.md`` (one row per size run so far,
rebuilt from every ``<N>.json`` after each run).

The issue's targets are printed beside their measured ratios. They are goals, not
checks: a missed target is reported, never an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import CUSTSEG, DUCKDB, PANDAS, STAGE_LABELS, STAGES, TOOL_LABELS, TOOLS

GIB = 1 << 30
RFM_TARGET = 1.5  # our RFM stage at most 1.5x DuckDB's time
SWEEP_TARGET = 1.0  # our k sweep at most scikit-learn's time on the same features
GROWTH_TARGET = 0.10  # time per row grows at most 10% from 10M to 100M transactions
GROWTH_FROM, GROWTH_TO = 10_000_000, 100_000_000
END_TO_END_SIZE = 200_000_000
CHECKED = ("customers", "customers_with_purchase", "frequency_sum", "recency_sum", "monetary_sum")


# --------------------------------------------------------------------------- numbers


def stage_seconds(result: dict[str, Any], tool: str, stage: str) -> float | None:
    """Seconds of a tool's stage; None when it did not run it. A whole run counts only for
    a tool that ran every pipeline stage: DuckDB's "total" is its RFM query alone."""
    stages = result["tools"].get(tool, {}).get("stages", {})
    if stage == "total" and not all(s in stages for s in STAGES):
        return None
    return stages[stage]["seconds"] if stage in stages else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's per-run targets with their measured values (None: not measurable in
    this run, e.g. a tool ran out of memory)."""
    n = result["transactions"]
    statuses = "; ".join(f"{TOOL_LABELS[t]}: {d.get('status')}" for t, d in result["tools"].items())
    return {
        "rfm_vs_duckdb": {
            "goal": RFM_TARGET,
            "measured": ratio(stage_seconds(result, CUSTSEG, "rfm"), stage_seconds(result, DUCKDB, "rfm")),
        },
        "k_sweep_vs_sklearn": {
            "goal": SWEEP_TARGET,
            "measured": ratio(stage_seconds(result, CUSTSEG, "k_sweep"), stage_seconds(result, PANDAS, "k_sweep")),
        },
        "end_to_end_200m": {
            "goal": f"runs end to end at {END_TO_END_SIZE:,} transactions",
            "measured": statuses if n >= END_TO_END_SIZE else None,
        },
    }


def agreement(result: dict[str, Any]) -> dict[str, Any]:
    """Whether every tool that finished found the same customers, frequencies,
    recencies and monetary total: the RFM definitions are the same, so they must."""
    found = {tool: data["checks"] for tool, data in result["tools"].items() if data.get("checks")}
    differing = [
        key for key in CHECKED
        if len({round(float(checks.get(key) or 0), 2) for checks in found.values()}) > 1
    ]  # fmt: skip
    return {"tools": sorted(found), "agree": not differing and len(found) > 1, "differing": differing}


def time_per_row(result: dict[str, Any]) -> float | None:
    """Our whole run's seconds per transaction."""
    total = stage_seconds(result, CUSTSEG, "total")
    return total / result["transactions"] if total else None


def machine_key(result: dict[str, Any]) -> tuple[str, int, int]:
    """What makes two runs' times comparable: the same CPU model, cores and RAM (GiB)."""
    m = result["machine"]
    return m["cpu_model"], m["cores"], round(m["ram_bytes"] / GIB)


def growth(results: list[dict[str, Any]], small: int, large: int) -> float | None:
    """How much time per row grew from size ``small`` to ``large`` (0.1 = 10% more);
    None unless both sizes ran, and on the same kind of machine."""
    by_size = {r["transactions"]: r for r in results}
    a, b = by_size.get(small), by_size.get(large)
    if a is None or b is None or machine_key(a) != machine_key(b):
        return None
    per_row_a, per_row_b = time_per_row(a), time_per_row(b)
    return per_row_b / per_row_a - 1 if per_row_a and per_row_b else None


# --------------------------------------------------------------------------- formatting


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:,.2f} s" if s < 10 else f"{s:,.1f} s"


def fmt_ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:,.2f}×"


def fmt_bytes(b: int | None) -> str:
    return "–" if not b else f"{b / GIB:,.2f} GiB"


def fmt_rate(r: float | None) -> str:
    return "–" if not r else f"{r:,.0f}"


def fmt_goal(measured: float | None, goal: float, lower_is_better: bool = True) -> str:
    if measured is None:
        return "not measured"
    met = measured <= goal if lower_is_better else measured >= goal
    return "met" if met else "missed"


def table(header: list[str], rows: Iterable[list[str]], align: str = "") -> str:
    """A markdown table; ``align`` is one letter per column, l or r (default: first l)."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def tools_of(result: dict[str, Any]) -> list[str]:
    return [t for t in TOOLS if t in result["tools"]]


def tool_header(tool: str, result: dict[str, Any]) -> str:
    status = result["tools"][tool]["status"]
    return TOOL_LABELS[tool] + ("" if status == common.OK else f" ({status.split(':')[0]})")


def machine_line(machine: dict[str, Any]) -> str:
    v = machine["versions"]
    versions = ", ".join(f"{name} {v[name]}" for name in sorted(v) if v[name])
    return (f"{machine['cpu_model']}, {machine['cores']} cores, {machine['ram_bytes'] / GIB:.1f} GiB RAM; "
            f"{machine['os']}; Python {machine['python']}; {versions}")  # fmt: skip


# --------------------------------------------------------------------------- one size


def user_overrides(result: dict[str, Any]) -> list[str]:
    """The config overrides given with ``--set``: those beyond the driver heap, which
    the harness sets itself and the page states on its own."""
    return [o for o in result["settings"].get("overrides", []) if not o.startswith(f"{common.DRIVER_MEMORY_KEY}=")]


def overrides_lines(result: dict[str, Any]) -> list[str]:
    given = user_overrides(result)
    if not given:
        return []
    return ["", "Our pipeline ran with these settings instead of its defaults: "
                + ", ".join(f"`{o}`" for o in given) + "."]  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    n = result["transactions"]
    tools = tools_of(result)
    data = result["data"]
    counts = data["counts"]
    customers = next((d["checks"]["customers"] for d in result["tools"].values() if d.get("checks")), None)
    customers_text = f"{customers:,}" if customers else "?"
    parts = [
        f"# Benchmark: {n:,} transactions",
        "",
        f"Run {result['run_at']} by `python -m benchmarks.run --transactions {n}` on: "
        f"{machine_line(result['machine'])}.",
        "",
        f"Data: {counts['rows']:,} lines, {customers_text} customers, {counts['return_lines']:,} return lines, "
        f"{data['expected_quarantined']:,} bad lines ({data['bytes'] / 1e6:,.1f} MB of Parquet in {data['files']} "
        f"files). k = {result['settings']['k_min']}..{result['settings']['k_max']}; features as of "
        f"{common.AS_OF}; Spark driver memory {result['settings']['driver_memory']}.",
        *overrides_lines(result),
        "",
        "## Stage times",
        "",
        stage_table(result, tools),
        "",
        "Ratios are custseg's time over the other tool's (below 1: custseg is faster). pandas' consolidation is "
        "reading the Parquet and dropping bad rows; ours also validates, quarantines, deduplicates and MERGEs "
        "into Delta. Start-up is not part of the whole run.",
        "",
        "## Targets (issue 6)",
        "",
        targets_table(result),
        "",
        "## Rows per second",
        "",
        "Transactions per second for consolidation, RFM and the whole run; customers per second for the model stages.",
        "",
        per_stage_table(result, tools, lambda s: fmt_rate(s.get("rows_per_second"))),
        "",
        "## Memory and CPU",
        "",
        memory_table(result, tools),
        "",
        "Peak memory is the resident set of the tool's whole process tree (for custseg: the Python driver and "
        "its JVM), sampled every 100 ms; per stage, the highest sample while the stage ran.",
        "",
        "## Where custseg's time goes",
        "",
        *diagnostics(result),
        "",
        *events_section(result),
        "## Agreement",
        "",
        agreement_table(result, tools),
        "",
        "## k sweep",
        "",
        sweep_table(result),
        "",
        f"![stage times per tool]({n}.png)",
        "",
    ]
    return "\n".join(parts)


def stage_table(result: dict[str, Any], tools: list[str]) -> str:
    others = [t for t in tools if t != CUSTSEG]
    header = ["stage", *[tool_header(t, result) for t in tools]]
    if CUSTSEG in tools:
        header += [f"custseg ÷ {TOOL_LABELS[t]}" for t in others]
    rows = []
    for stage in ("startup", *STAGES, "total"):
        row = [STAGE_LABELS[stage], *[seconds_cell(result, t, stage) for t in tools]]
        if CUSTSEG in tools:
            ours = stage_seconds(result, CUSTSEG, stage)
            row += [fmt_ratio(ratio(ours, stage_seconds(result, t, stage))) if stage != "startup" else "–"
                    for t in others]  # fmt: skip
        rows.append(row)
    return table(header, rows)


def seconds_cell(result: dict[str, Any], tool: str, stage: str) -> str:
    """The stage's time, or the tool's outcome in the stage where it stopped."""
    data = result["tools"][tool]
    if data.get("status") != common.OK and data.get("failed_stage") == stage:
        return data["status"].split(":")[0]
    return fmt_seconds(stage_seconds(result, tool, stage))


def per_stage_table(result: dict[str, Any], tools: list[str], cell) -> str:
    rows = []
    for stage in (*STAGES, "total"):
        row = [STAGE_LABELS[stage]]
        for t in tools:
            found = result["tools"][t].get("stages", {}).get(stage)
            row.append(cell(found) if found and stage_seconds(result, t, stage) is not None else "–")
        rows.append(row)
    return table(["stage", *[tool_header(t, result) for t in tools]], rows)


def memory_table(result: dict[str, Any], tools: list[str]) -> str:
    rows = [
        ["peak memory, whole process", *[fmt_bytes(result["tools"][t].get("peak_rss")) for t in tools]],
        ["CPU time", *[fmt_seconds(result["tools"][t].get("cpu_seconds")) for t in tools]],
        ["average cores busy", *[f"{result['tools'][t].get('average_cores') or 0:.2f}" for t in tools]],
        ["memory cap", *[fmt_bytes(result["tools"][t].get("memory_cap")) for t in tools]],
    ]
    for stage in (*STAGES,):
        row = [f"peak memory: {STAGE_LABELS[stage]}"]
        for t in tools:
            found = result["tools"][t].get("stages", {}).get(stage)
            row.append(fmt_bytes(found.get("peak_rss")) if found else "–")
        rows.append(row)
    return table(["", *[tool_header(t, result) for t in tools]], rows)


def targets_table(result: dict[str, Any]) -> str:
    t = result["targets"]
    rfm, sweep, e2e = t["rfm_vs_duckdb"], t["k_sweep_vs_sklearn"], t["end_to_end_200m"]
    growth_value = result.get("time_per_row_growth_10m_100m")
    rows = [
        ["RFM stage vs DuckDB's RFM query", f"≤ {RFM_TARGET}×", fmt_ratio(rfm["measured"]),
         fmt_goal(rfm["measured"], RFM_TARGET)],
        ["k sweep vs scikit-learn's, same features", f"≤ {SWEEP_TARGET}×", fmt_ratio(sweep["measured"]),
         fmt_goal(sweep["measured"], SWEEP_TARGET)],
        [f"{END_TO_END_SIZE:,} transactions end to end (2 cores, 24 GiB)", "runs",
         e2e["measured"] or f"not run at {result['transactions']:,}", ""],
        ["time per row, 10M → 100M transactions", f"≤ +{GROWTH_TARGET:.0%}",
         "–" if growth_value is None else f"{growth_value:+.1%}",
         fmt_goal(growth_value, GROWTH_TARGET) if growth_value is not None else "needs runs at 10M and 100M"],
    ]  # fmt: skip
    return table(["target", "goal", "measured", ""], rows, "llrl")


def diagnostics(result: dict[str, Any]) -> list[str]:
    ours = result["tools"].get(CUSTSEG, {})
    stages = ours.get("stages", {})
    if "total" not in stages:
        return [f"custseg did not finish: {ours.get('status')}."]
    total = stages["total"]["seconds"]
    shares = [[STAGE_LABELS[s], f"{stages[s]['seconds'] / total:.0%}"] for s in STAGES if s in stages]
    lines = [table(["stage", "share of the whole run"], shares)]
    core, duck = stage_seconds(result, CUSTSEG, "rfm_core"), stage_seconds(result, DUCKDB, "rfm")
    if core is not None:
        lines += [
            "",
            f"Diagnostic, outside the whole run: our `customer_features` transform reduced to the four columns "
            f"DuckDB computes (recency, frequency, monetary, average order value), from our transactions table to "
            f"Parquet, takes {fmt_seconds(core)} ({fmt_ratio(ratio(core, duck))} DuckDB) against "
            f"{fmt_seconds(stages['rfm']['seconds'])} for the RFM stage: the difference is the other features, the "
            f"RFM scores (a quantile pass) and the Delta write.",
        ]
    return lines


def events_section(result: dict[str, Any]) -> list[str]:
    """custseg's own log lines (tables written, sweep steps), placed in time within their
    stage: where the time of a stage goes, without instrumenting the library."""
    ours = result["tools"].get(CUSTSEG, {})
    events, stages = ours.get("events") or [], ours.get("stages", {})
    rows = []
    for event in events:
        start = stages.get(event["stage"], {}).get("started_at")
        offset = f"{event['at'] - start:,.1f} s" if start else "–"
        rows.append([event["stage"] or "–", offset, event["message"].replace("|", "\\|")])
    if not rows:
        return []
    return [
        "<details><summary>custseg's own log lines, by stage (seconds into the stage)</summary>",
        "",
        table(["stage", "at", "log line"], rows, "lrl"),
        "",
        "</details>",
        "",
    ]


def agreement_table(result: dict[str, Any], tools: list[str]) -> str:
    checked = [t for t in tools if result["tools"][t].get("checks")]
    rows = [[key, *[f"{result['tools'][t]['checks'].get(key):,}" for t in checked]] for key in CHECKED]
    verdict = result["agreement"]
    note = ("Every tool found the same RFM totals." if verdict["agree"]
            else f"The tools differ on: {', '.join(verdict['differing']) or 'nothing comparable'}.")  # fmt: skip
    return table(["check", *[TOOL_LABELS[t] for t in checked]], rows) + "\n\n" + note


def sweep_table(result: dict[str, Any]) -> str:
    ours = {p["k"]: p for p in result["tools"].get(CUSTSEG, {}).get("sweep") or []}
    theirs = {p["k"]: p for p in result["tools"].get(PANDAS, {}).get("sweep") or []}
    if not ours and not theirs:
        return "No sweep finished."

    def cells(p: dict[str, Any] | None) -> list[str]:
        if not p:
            return ["–"] * 4
        return [f"{p['wcss']:,.1f}", f"{p['silhouette']:.4f}", f"{p['calinski_harabasz']:,.1f}",
                f"{p['davies_bouldin']:.4f}"]  # fmt: skip

    metrics = ["WCSS", "silhouette", "CH", "DB"]
    header = ["k", *[f"custseg {m}" for m in metrics], *[f"scikit-learn {m}" for m in metrics]]
    rows = [[str(k), *cells(ours.get(k)), *cells(theirs.get(k))] for k in sorted(set(ours) | set(theirs))]
    custseg = result["tools"].get(CUSTSEG, {})
    swept, customers = custseg.get("sweep_customers"), custseg.get("model_customers")
    ours = (
        f"ours on the k sweep's {swept:,} customers, a sample stratified by RFM segment (`segment.sweep_sample`)"
        if swept and customers and swept < customers
        else "ours on all"
    )
    chosen = (f"Chosen k: custseg {custseg.get('k', '–')}, scikit-learn "
              f"{result['tools'].get(PANDAS, {}).get('k', '–')} (the same rule: the smallest k within the "
              "silhouette tolerance of the best). Silhouette is squared-Euclidean for both, as Spark's; "
              f"scikit-learn's on a 20,000-customer sample, {ours}.")  # fmt: skip
    final = custseg.get("final")
    if final and swept and customers and swept < customers:
        chosen += (f" The chosen k refitted on all {customers:,} customers: WCSS {final['wcss']:,.1f}, "
                   f"silhouette {final['silhouette']:.4f}, CH {final['calinski_harabasz']:,.1f}, "
                   f"DB {final['davies_bouldin']:.4f}.")  # fmt: skip
    return table(header, rows) + "\n\n" + chosen


def plot(result: dict[str, Any], path: Path) -> None:
    """Grouped bars: seconds per stage (log scale), one bar per tool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tools = tools_of(result)
    stages = [*STAGES, "total"]
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.8 / max(1, len(tools))
    for i, tool in enumerate(tools):
        xs, ys = [], []
        for j, stage in enumerate(stages):
            s = stage_seconds(result, tool, stage)
            if s:
                xs.append(j + (i - (len(tools) - 1) / 2) * width)
                ys.append(s)
        ax.bar(xs, ys, width=width, label=tool_header(tool, result))
    ax.set_yscale("log")
    ax.set_xticks(range(len(stages)), [STAGE_LABELS[s].split(" (")[0] for s in stages], rotation=20)
    ax.set_ylabel("seconds (log scale)")
    ax.set_title(f"{result['transactions']:,} transactions: time per stage")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- all sizes


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    return sorted(
        (common.read_json(p) for p in results_dir.glob("*.json") if p.stem.isdigit()), key=lambda r: r["transactions"]
    )


def summary(results: list[dict[str, Any]]) -> str:
    """README.md: one row per size with the machine it ran on, and time-per-row growth.
    A size's per-row change is against the next smaller size run on the same kind of
    machine: times from different machines are not comparable."""
    rows, previous = [], {}
    machines = {machine_key(r) for r in results}
    for r in results:
        tools = r["tools"]
        per_row = time_per_row(r)
        before = previous.get(machine_key(r))
        change = f"{per_row / before - 1:+.1%}" if per_row and before else "–"
        t = r["targets"]
        rows.append([
            f"[{r['transactions']:,}]({r['transactions']}.md)",
            f"{tools.get(CUSTSEG, {}).get('checks', {}).get('customers', '–'):,}"
            if tools.get(CUSTSEG, {}).get("checks") else "–",
            outcome(tools.get(CUSTSEG), "total"),
            outcome(tools.get(PANDAS), "total"),
            outcome(tools.get(DUCKDB), "rfm"),
            fmt_ratio(t["rfm_vs_duckdb"]["measured"]),
            fmt_ratio(t["k_sweep_vs_sklearn"]["measured"]),
            fmt_bytes(tools.get(CUSTSEG, {}).get("peak_rss")),
            fmt_bytes(tools.get(PANDAS, {}).get("peak_rss")),
            f"{per_row * 1e6:,.1f}" if per_row else "–",
            change,
            f"{r['machine']['cpu_model']}, {r['run_at'][:10]}" + (" (`--set`)" if user_overrides(r) else ""),
        ])  # fmt: skip
        if per_row:
            previous[machine_key(r)] = per_row
    growth_value = growth(results, GROWTH_FROM, GROWTH_TO)
    sizes = {r["transactions"] for r in results}
    growth_text = (
        f"{growth_value:+.1%}" if growth_value is not None
        else "needs runs at both sizes" if not {GROWTH_FROM, GROWTH_TO} <= sizes
        else "needs runs at both sizes on the same kind of machine"
    )  # fmt: skip
    latest = max(results, key=lambda r: r["run_at"]) if results else None
    header = [
        "transactions", "customers", "custseg whole run", "pandas + scikit-learn whole run", "DuckDB RFM",
        f"RFM ÷ DuckDB (goal ≤ {RFM_TARGET})", f"k sweep ÷ scikit-learn (goal ≤ {SWEEP_TARGET})",
        "custseg peak memory", "pandas peak memory", "custseg µs per transaction", "per-transaction change",
        "run on",
    ]  # fmt: skip
    lines = [
        "# Benchmark results",
        "",
        "Rebuilt by `make bench N=<transactions>` (`python -m benchmarks.run`) after every run, from the "
        "`<N>.json` files in this folder; each size links to its full tables. Times are for the whole run "
        "without start-up; a tool that ran out of memory or failed shows its outcome instead. A per-transaction "
        "change is against the next smaller size run on the same kind of machine; `--set`: our pipeline ran with "
        "settings other than its defaults (listed on the size's page).",
        "",
        table(header, rows, "l" + "r" * (len(header) - 2) + "l"),
        "",
        f"Time per transaction from 10M to 100M: {growth_text} (goal ≤ +{GROWTH_TARGET:.0%}).",
    ]
    if len(machines) > 1:
        lines += ["", f"These runs come from {len(machines)} kinds of machine: compare times within one only."]
    if latest:
        lines += ["", f"Latest run: {latest['run_at']}, {latest['transactions']:,} transactions, on "
                      f"{machine_line(latest['machine'])}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def outcome(tool: dict[str, Any] | None, stage: str) -> str:
    if not tool:
        return "not run"
    if tool.get("status") != common.OK:
        return tool.get("status", "?").split(":")[0] if tool.get("status", "").startswith("OOM") else "failed"
    return fmt_seconds(tool.get("stages", {}).get(stage, {}).get("seconds"))


def write_all(result: dict[str, Any], results_dir: Path) -> list[Path]:
    """Write this size's JSON, markdown and plot, then rebuild the summary."""
    results_dir.mkdir(parents=True, exist_ok=True)
    n = result["transactions"]
    json_path = results_dir / f"{n}.json"
    others = [r for r in load_results(results_dir) if r["transactions"] != n]
    result["targets"] = targets(result)
    result["agreement"] = agreement(result)
    result["time_per_row_growth_10m_100m"] = growth([*others, result], GROWTH_FROM, GROWTH_TO)
    common.write_json(json_path, result)
    md_path, png_path, readme = results_dir / f"{n}.md", results_dir / f"{n}.png", results_dir / "README.md"
    md_path.write_text(markdown(result), encoding="utf-8")
    plot(result, png_path)
    readme.write_text(summary(load_results(results_dir)), encoding="utf-8")
    return [json_path, md_path, png_path, readme]
