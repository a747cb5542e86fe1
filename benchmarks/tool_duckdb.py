"""The RFM aggregation in DuckDB: one SQL query from the same raw Parquet, with the same
row filter and the same definitions as our features, written as Parquet (our RFM
stage writes a Delta table, so both results end on disk).

DuckDB 2 runs as an analyst would start it: every core, spilling to a temp folder in
``--work``; its memory limit (by default 80% of RAM) is set below the harness's memory
cap when given, so that DuckDB spills instead of being stopped at the cap.

``python -m benchmarks.tool_duckdb --raw DIR --work DIR --out FILE [--memory-limit-gb G]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common


def rfm_query(raw: Path) -> str:
    """recency_days, frequency (distinct purchase invoices), monetary (net of returns)
    and avg_order_value per customer, from the lines our ingest accepts."""
    as_of = common.AS_OF.isoformat()
    return f"""
        WITH lines AS (
            SELECT {common.CUSTOMER} AS customer_id,
                   {common.INVOICE_NO} AS invoice_no,
                   CAST({common.INVOICE_TS} AS DATE) AS day,
                   {common.QUANTITY} * {common.UNIT_PRICE} AS amount,
                   {common.QUANTITY} > 0 AS is_purchase
            FROM read_parquet('{raw}/*.parquet')
            WHERE {common.CUSTOMER} IS NOT NULL AND {common.QUANTITY} <> 0 AND {common.UNIT_PRICE} > 0
              AND {common.INVOICE_TS} < TIMESTAMP '{as_of}'
        )
        SELECT customer_id,
               date_diff('day', max(day) FILTER (WHERE is_purchase), DATE '{as_of}') AS recency_days,
               count(DISTINCT invoice_no) FILTER (WHERE is_purchase) AS frequency,
               round(sum(amount), 2) AS monetary,
               round(sum(amount) FILTER (WHERE is_purchase)
                     / nullif(count(DISTINCT invoice_no) FILTER (WHERE is_purchase), 0), 2) AS avg_order_value
        FROM lines
        GROUP BY customer_id
    """


def checks(con: Any, result: Path) -> dict[str, Any]:
    [row] = con.execute(f"""
        SELECT count(*), count(*) FILTER (WHERE frequency > 0), sum(frequency), sum(recency_days), sum(monetary)
        FROM read_parquet('{result}')
    """).fetchall()  # fmt: skip
    names = ("customers", "customers_with_purchase", "frequency_sum", "recency_sum", "monetary_sum")
    values = dict(zip(names, row, strict=True))
    return {**{k: int(v or 0) for k, v in values.items()}, "monetary_sum": round(float(values["monetary_sum"]), 2)}


def run(rec: common.Recorder, raw: Path, work: Path, transactions: int, memory_limit_gb: float | None) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result = work / "rfm.parquet"
    with rec.stage("startup", kind=common.SETUP):
        import duckdb

        con = duckdb.connect()
        con.execute(f"SET temp_directory = '{work / 'spill'}'").fetchall()
        if memory_limit_gb:
            con.execute(f"SET memory_limit = '{memory_limit_gb:.2f}GiB'").fetchall()
    with rec.stage("total", rows=transactions, kind=common.TOTAL), rec.stage("rfm", rows=transactions):
        con.execute(f"COPY ({rfm_query(raw)}) TO '{result}' (FORMAT parquet)").fetchall()
    rec.set("checks", checks(con, result))
    settings = con.execute("SELECT name, value FROM duckdb_settings() WHERE name IN ('threads', 'memory_limit')")
    rec.set("settings", dict(settings.fetchall()))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tool_duckdb", description=__doc__.splitlines()[0])
    p.add_argument("--raw", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--transactions", type=int, required=True)
    p.add_argument("--memory-limit-gb", type=float, default=None, help="DuckDB's memory_limit; default: DuckDB's")
    args = p.parse_args(argv)
    common.configure_logging(common.DUCKDB)
    rec = common.Recorder(common.DUCKDB, args.out)
    try:
        run(rec, args.raw.resolve(), args.work.resolve(), args.transactions, args.memory_limit_gb)
    except BaseException as exc:  # recorded as the tool's outcome; the harness goes on
        return rec.fail(exc)
    rec.finish()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
