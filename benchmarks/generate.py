"""N raw transactions as Parquet, generated with DataFrame operations from ``spark.range``.

The layout is a typical order-line export (``conf/sources/bench.yaml`` maps it):
``invoice_no, line_no, customer_id, sku, quantity, unit_price, invoice_ts, country``.

* Lines come in blocks of 21 that hold one invoice each of 1 to 6 lines, in an order
  drawn per block, so there are exactly N lines and 3.5 lines per invoice on average.
* About one customer per 40 lines. Invoices go to customers with a skew (a few buy a
  lot, as in retail data), within each customer's active period: a start day over the
  two years and an exponential lifetime, so recency and tenure vary realistically.
* Products are drawn with a popularity skew; a product's price is log-normal
  (mostly a few pounds, a long tail), quantities are mostly small with a few bulk lines.
* About 3% of invoices are returns: numbered ``C…``, with negative quantities.
* About 1.1% of lines are bad in one way our ingest quarantines: no customer id, zero
  quantity, a zero price, or a timestamp in 2099.

Every draw is a hash of (seed, purpose, row keys), as in ``custseg.demo.datagen``, so the
data depends only on N and the seed, never on partitioning. No Python UDF, nothing
collected but one row of counts for the manifest. A size is generated once: a later
run reuses ``data/bench/<N>/raw/`` when ``manifest.json`` beside it matches.

``python -m benchmarks.generate --transactions N`` generates (or reuses) one size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from benchmarks import common

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the data changes, so older generated sizes are rebuilt
START_DAY = "2023-01-01"  # the first day of data; the last is the day before common.AS_OF
DAYS = (common.AS_OF - dt.date.fromisoformat(START_DAY)).days
TRANSACTIONS_PER_CUSTOMER = 40
INVOICE_SIZES = (1, 2, 3, 4, 5, 6)  # lines per invoice: one of each per block
BLOCK = sum(INVOICE_SIZES)
BLOCK_ORDERS = 24  # distinct orders of the invoice sizes a block can take
CUSTOMER_SKEW = 1.5  # customer = C * u**skew: low customer numbers buy most often
MEAN_LIFETIME_DAYS = 365
SKUS = 10_000
PRICE_MEDIAN, PRICE_SIGMA, PRICE_FLOOR = 6.0, 0.9, 0.19
QUANTITY_SCALE, BULK_RATE, BULK_FACTOR = 2.5, 0.02, 12
RETURN_RATE = 0.03  # share of invoices that are returns
COUNTRIES = (("United Kingdom", 0.82), ("Germany", 0.05), ("France", 0.05), ("Netherlands", 0.03),
             ("Ireland", 0.02), ("Spain", 0.015), ("Belgium", 0.015))  # fmt: skip
# Bad lines, by the reason our ingest quarantines them; the bands of one uniform draw, so
# a line is bad in at most one way and the reasons can be counted exactly.
BAD_ROWS = (
    ("missing_customer_id", 0.006),
    ("zero_quantity", 0.002),
    ("non_positive_price", 0.002),
    ("future_timestamp", 0.001),
)
FUTURE_DAY = "2099-01-01"
# Files of up to 2M rows, but at least 8 from 800k rows on: one file is one task (and one
# row group) for Spark and DuckDB alike, and a real export of that size comes in parts.
ROWS_PER_FILE, MIN_FILES, MIN_ROWS_PER_FILE = 2_000_000, 8, 100_000


# --------------------------------------------------------------------------- draws


def uniform(seed: int, purpose: str, *keys: Column) -> Column:
    """A uniform draw in [0, 1) from a hash of the seed, a purpose and row keys."""
    bits = F.xxhash64(F.lit(seed), F.lit(purpose), *keys).bitwiseAND(F.lit((1 << 53) - 1))
    return bits.cast("double") / float(1 << 53)


def normal(seed: int, purpose: str, *keys: Column) -> Column:
    """A standard normal draw (Box-Muller on two hashed uniforms)."""
    u1 = uniform(seed, purpose + ".1", *keys)
    u2 = uniform(seed, purpose + ".2", *keys)
    return F.sqrt(-2.0 * F.log(u1 + F.lit(1e-12))) * F.cos(2.0 * math.pi * u2)


def exponential(u: Column, mean: float) -> Column:
    return -F.log(F.lit(1.0) - u) * F.lit(mean)


def block_layout(seed: int) -> tuple[list[int], list[int]]:
    """For each of BLOCK_ORDERS orders of the invoice sizes, and each of the BLOCK line
    positions: the invoice within the block and the line number within the invoice.
    Flattened, so a row finds its place with one array lookup."""
    rng = random.Random(seed)
    invoice_of, line_of = [], []
    for _ in range(BLOCK_ORDERS):
        sizes = list(INVOICE_SIZES)
        rng.shuffle(sizes)
        for invoice, size in enumerate(sizes):
            invoice_of += [invoice] * size
            line_of += list(range(1, size + 1))
    return invoice_of, line_of


def _lookup(values: Sequence[int], position: Column) -> Column:
    return F.element_at(F.array(*[F.lit(v) for v in values]), (position + 1).cast("int"))


def _pick(u: Column, weighted: Sequence[tuple[str, float]]) -> Column:
    """A value from a weighted list by a uniform draw (the last takes the rest)."""
    cum, out = 0.0, None
    for value, weight in weighted[:-1]:
        cum += weight
        out = F.when(u < cum, value) if out is None else out.when(u < cum, value)
    return out.otherwise(weighted[-1][0]) if out is not None else F.lit(weighted[-1][0])


def _bad_band(u: Column, reason: str) -> Column:
    """The line is bad for ``reason``: its draw falls in that reason's band."""
    low = 0.0
    for name, rate in BAD_ROWS:
        if name == reason:
            return (u >= low) & (u < low + rate)
        low += rate
    raise KeyError(reason)


def _day_ts(day: str, days: Column, seconds: Column) -> Column:
    """``day`` + days + seconds, as TIMESTAMP_NTZ: wall-clock UTC, so the data does not
    depend on the session time zone and every tool reads the same value."""
    return F.expr(f"TIMESTAMP_NTZ '{day} 00:00:00'") + F.make_dt_interval(days, F.lit(0), F.lit(0), seconds)


# --------------------------------------------------------------------------- the data


def customer_count(n: int) -> int:
    return max(1, n // TRANSACTIONS_PER_CUSTOMER)


def file_count(n: int) -> int:
    return max(math.ceil(n / ROWS_PER_FILE), min(MIN_FILES, math.ceil(n / MIN_ROWS_PER_FILE)))


def raw_transactions(spark: SparkSession, n: int, seed: int = common.SEED) -> DataFrame:
    """N raw order lines (see the module docstring).

    Output columns: invoice_no, line_no, customer_id, sku, quantity, unit_price,
    invoice_ts, country.
    """
    invoice_of, line_of = block_layout(seed)
    block = F.expr(f"id div {BLOCK}")
    position = F.pmod(F.xxhash64(F.lit(seed), F.lit("block"), block), F.lit(BLOCK_ORDERS)) * BLOCK + F.col("id") % BLOCK
    lines = spark.range(0, n, 1, file_count(n)).select(
        "id",
        (block * len(INVOICE_SIZES) + _lookup(invoice_of, position)).alias("invoice"),
        _lookup(line_of, position).alias(common.LINE_NO),
    )
    return lines.transform(_with_invoice_draws(seed, customer_count(n))).transform(_with_line_draws(seed))


def _with_invoice_draws(seed: int, customers: int) -> Callable[[DataFrame], DataFrame]:
    """Adds the invoice's customer, day, time and whether it is a return. A customer's
    active period is a function of the customer number alone, so no join is needed."""

    def transform(lines: DataFrame) -> DataFrame:
        invoice = F.col("invoice")
        cust = F.least(F.floor(F.pow(uniform(seed, "customer", invoice), CUSTOMER_SKEW) * customers),
                       F.lit(customers - 1))  # fmt: skip
        first_day = F.floor(uniform(seed, "start", F.col("cust")) * DAYS)
        lifetime = F.ceil(exponential(uniform(seed, "lifetime", F.col("cust")), MEAN_LIFETIME_DAYS))
        last_day = F.least(F.lit(DAYS - 1), first_day + lifetime)
        day = first_day + F.floor(uniform(seed, "day", invoice) * (last_day - first_day + 1))
        second = F.lit(8 * 3600) + F.floor(uniform(seed, "time", invoice) * 13 * 3600)
        return lines.withColumn("cust", cust.cast("long")).select(
            "*",
            day.cast("int").alias("day"),
            second.cast("int").alias("second"),
            (uniform(seed, "return", invoice) < RETURN_RATE).alias("is_return"),
        )

    return transform


def _with_line_draws(seed: int) -> Callable[[DataFrame], DataFrame]:
    """Adds product, quantity and price per line, then spoils the bad lines, and states
    the output columns."""

    def transform(lines: DataFrame) -> DataFrame:
        line = F.col("id")
        sku = F.floor(F.pow(uniform(seed, "sku", line), 2.0) * SKUS).cast("long")
        price = F.greatest(
            F.lit(PRICE_FLOOR),
            F.round(F.exp(F.lit(math.log(PRICE_MEDIAN)) + PRICE_SIGMA * normal(seed, "price", sku)), 2),
        )
        quantity = F.lit(1) + F.floor(exponential(uniform(seed, "quantity", line), QUANTITY_SCALE))
        quantity = F.when(uniform(seed, "bulk", line) < BULK_RATE, quantity * BULK_FACTOR).otherwise(quantity)
        quantity = F.when(F.col("is_return"), -quantity).otherwise(quantity).cast("int")
        bad = uniform(seed, "bad", line)
        customer_id = F.concat(F.lit("C"), F.lpad((F.col("cust") + 1).cast("string"), 8, "0"))
        invoice_no = F.concat(
            F.when(F.col("is_return"), F.lit("C")).otherwise(F.lit("")),
            F.lpad(F.col("invoice").cast("string"), 10, "0"),
        )
        return lines.select(
            invoice_no.alias(common.INVOICE_NO),
            F.col(common.LINE_NO).cast("int").alias(common.LINE_NO),
            F.when(~_bad_band(bad, "missing_customer_id"), customer_id).alias(common.CUSTOMER),
            F.concat(F.lit("SKU"), F.lpad(sku.cast("string"), 5, "0")).alias(common.SKU),
            F.when(_bad_band(bad, "zero_quantity"), F.lit(0)).otherwise(quantity).alias(common.QUANTITY),
            F.when(_bad_band(bad, "non_positive_price"), F.lit(0.0)).otherwise(price).alias(common.UNIT_PRICE),
            F.when(_bad_band(bad, "future_timestamp"), _day_ts(FUTURE_DAY, F.col("day"), F.col("second")))
            .otherwise(_day_ts(START_DAY, F.col("day"), F.col("second")))
            .alias(common.INVOICE_TS),
            _pick(uniform(seed, "country", F.col("cust")), COUNTRIES).alias(common.COUNTRY),
        )

    return transform


def data_counts(raw: DataFrame) -> DataFrame:
    """One row: rows, lines per bad-row reason, return lines, and the rows every tool
    should accept. Read back from the written files, so the manifest describes them.

    Output columns: rows, missing_customer_id, zero_quantity, non_positive_price,
    future_timestamp, return_lines, accepted.
    """
    as_of = F.lit(common.AS_OF.isoformat()).cast("timestamp_ntz")
    reasons = {
        "missing_customer_id": F.col(common.CUSTOMER).isNull(),
        "zero_quantity": F.col(common.QUANTITY) == 0,
        "non_positive_price": F.col(common.UNIT_PRICE) <= 0,
        "future_timestamp": F.col(common.INVOICE_TS) >= as_of,
    }
    bad = F.lit(False)
    for predicate in reasons.values():
        bad = bad | predicate
    return raw.agg(
        F.count(F.lit(1)).alias("rows"),
        *[F.count_if(predicate).alias(name) for name, predicate in reasons.items()],
        F.count_if(F.col(common.QUANTITY) < 0).alias("return_lines"),
        F.count_if(~bad).alias("accepted"),
    )


# --------------------------------------------------------------------------- files


def size_dir(data_dir: Path, n: int) -> Path:
    return data_dir / str(n)


def raw_dir(data_dir: Path, n: int) -> Path:
    return size_dir(data_dir, n) / "raw"


def params(n: int, seed: int) -> dict[str, Any]:
    """What the data depends on: a manifest with other params means another data set."""
    return {"generator_version": GENERATOR_VERSION, "transactions": n, "seed": seed, "as_of_date": str(common.AS_OF)}


def current_manifest(data_dir: Path, n: int, seed: int) -> dict[str, Any] | None:
    """The manifest of data already generated for these params, or None."""
    manifest = size_dir(data_dir, n) / "manifest.json"
    if not manifest.is_file() or not raw_dir(data_dir, n).is_dir():
        return None
    found = common.read_json(manifest)
    return found if found.get("params") == params(n, seed) else None


def ensure(spark: SparkSession, n: int, data_dir: Path, seed: int = common.SEED) -> dict[str, Any]:
    """Generate the data for N (unless it is there already) and return its manifest."""
    found = current_manifest(data_dir, n, seed)
    if found is not None:
        log.info("reusing %s (%s rows)", raw_dir(data_dir, n), f"{n:,}")
        return found
    return generate(spark, n, data_dir, seed)


def generate(spark: SparkSession, n: int, data_dir: Path, seed: int = common.SEED) -> dict[str, Any]:
    """Write the raw Parquet next to its final place, then move it in and write the
    manifest last: a crash leaves no directory that looks complete."""
    target, staging = raw_dir(data_dir, n), size_dir(data_dir, n) / "raw.partial"
    shutil.rmtree(size_dir(data_dir, n), ignore_errors=True)
    log.info("generating %s transactions into %s", f"{n:,}", target)
    started = time.perf_counter()
    raw_transactions(spark, n, seed).write.mode("overwrite").parquet(str(staging))
    staging.rename(target)
    seconds = time.perf_counter() - started
    counts = data_counts(spark.read.parquet(str(target))).first().asDict()
    manifest = {
        "params": params(n, seed),
        "customers_drawn_from": customer_count(n),
        "counts": counts,
        "expected_quarantined": sum(counts[name] for name, _ in BAD_ROWS),
        "files": len(list(target.glob("*.parquet"))),
        "bytes": sum(p.stat().st_size for p in target.glob("*.parquet")),
        "seconds": seconds,
    }
    common.write_json(size_dir(data_dir, n) / "manifest.json", manifest)
    log.info("generated %s rows (%s bad, %.1f MB) in %.1fs", f"{counts['rows']:,}", manifest["expected_quarantined"],
             manifest["bytes"] / 1e6, seconds)  # fmt: skip
    return manifest


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    from custseg.config import load_config
    from custseg.spark import get_spark

    p = argparse.ArgumentParser(prog="python -m benchmarks.generate", description=__doc__.splitlines()[0])
    p.add_argument("--transactions", type=int, required=True)
    p.add_argument("--data-dir", type=Path, default=common.DEFAULT_DATA_DIR)
    p.add_argument("--seed", type=int, default=common.SEED)
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="a custseg config override for the session (spark.*)")  # fmt: skip
    args = p.parse_args(argv)
    common.configure_logging("generate")
    cfg = load_config([common.ROOT / f for f in common.BENCH_CONFIGS], [common.JARS_OVERRIDE, *args.overrides])
    spark = get_spark(cfg.spark)
    try:
        ensure(spark, args.transactions, args.data_dir.resolve(), args.seed)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
