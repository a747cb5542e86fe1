"""A deterministic generator of raw demo transactions, in one of two scenarios
(``demo.scenario``):

* ``archetypes``: four planted customer archetypes with separated behaviour, for the
  tests that check the model recovers them.
* ``realistic``: customers as a real retailer has them, with no planted groups: a
  purchase rate, a lifetime and an order value per customer, each drawn from a
  continuous, skewed distribution, and acquisitions spread over the whole history (a
  Pareto/NBD-style process of repeat buying). Calibrated on a two-year history
  (``conf/realistic.yaml``) to the figures of two real logs (a UK online retailer's and
  CDNOW's), measured per customer as the features job computes them: 35-51% of customers
  buy once; the top 20% bring 68-74% of the revenue; frequency has median 1-2, p90 6-9
  and p99 19-30; the p99 of spend is 20-26 times its median; last purchases fall all
  along the history. Heavy tails make these vary with the sample: in a simulation of
  the same model over 20 seeds, each of 4,000 customers, 4 fell just outside a range
  (the p99 of spend is the 40th customer from the top; the top 20%'s share hangs on a
  few heavy buyers); of 50,000 customers, none did. A shorter history has fewer repeat
  orders: over one year, about half buy once and frequency's p99 is about 16.

Both feed the same export code. It writes two source systems in two formats, the way
real ones arrive:

* ``<raw_dir>/pos/``: point-of-sale line items as CSV (``receipt_no, line_no,
  loyalty_id, sku, qty, unit_price, sold_at, store_id``), local time in Europe/London.
  Returns are receipts numbered ``R…`` with negative quantities; guests have no
  loyalty id; some lines are exported twice.
* ``<raw_dir>/web/``: web orders as JSON lines, one order per line with nested
  ``items`` and a ``customer`` object, ISO-8601 UTC timestamps. Refunds are records of
  ``kind: refund``; cancelled orders carry ``status: cancelled``; guest checkouts have
  no customer; some lines are exported twice.
* ``<raw_dir>/truth/``: the planted archetype of every customer (CSV), for scoring;
  ``unplanted`` for every customer of the realistic scenario.

Every random draw is a hash of (seed, purpose, row keys), so the output depends only on
the seed and sizes, never on partitioning or the number of cores. Everything is
DataFrame operations, so sizes far beyond memory work.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from custseg.config import DemoConfig
from custseg.io import resolve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Archetype:
    name: str
    weight: float
    last_days_ago: tuple[int, int]  # the last order was this many days before the end
    first_days_ago: tuple[int, int]  # the first order (>= last)
    orders: tuple[int, int]  # number of orders, inclusive
    order_value: float  # median order value; order values are log-normal around it


ARCHETYPES = (
    Archetype("champions", 0.15, (0, 20), (200, 365), (18, 35), 90.0),
    Archetype("new_customers", 0.25, (0, 30), (30, 45), (1, 3), 35.0),
    Archetype("lapsed_high_value", 0.20, (150, 240), (300, 365), (6, 12), 140.0),
    Archetype("hibernating", 0.40, (260, 330), (330, 365), (1, 2), 18.0),
)

ORDER_VALUE_SIGMA = 0.45  # log-normal spread of order values: a long right tail
RETURN_RATE = 0.05  # share of orders with a line returned a few days later
CANCEL_RATE = 0.03  # share of web orders cancelled before payment
GUEST_RATE = 0.05  # share of orders with no customer id (an extra guest order each)
DUPLICATE_RATE = 0.02  # share of exported lines that appear twice
CUSTOMER_ID_BASE = 100_000
SKUS = 500
ORDER_NO_BLOCK = 1000  # order numbers are id * 1000 + the order's index: at most 1000 orders a customer

# The realistic scenario. Each customer is acquired on a day uniform over the history
# and buys at a constant rate until an unobserved dropout (Pareto/NBD). The constants are
# fitted to the figures in the module docstring on two-year histories of 4,000 to 50,000
# customers, and measured on the generated sources (tests/test_datagen.py checks them).
UNPLANTED = "unplanted"  # the truth file's archetype for every realistic customer
RATE_MEDIAN = 1 / 131  # orders per day while active, of the median customer
# Log-logistic rates: the median customer orders about three times a year while active,
# and a Pareto tail (index 1 / 0.557 = 1.8) of heavy buyers (trade customers) holds much
# of the revenue, as in real logs. A log-normal with the same p90 to p99 of frequency
# leaves the top 20%'s share 1-2 points lower.
RATE_SHAPE = 0.557
RATE_MAX = 1.0  # orders per day: the heaviest buyers order about daily
# Lifetimes are exponential with a gamma-distributed dropout rate across customers
# (a Lomax distribution): half lapse within 200 days, a sixth stay beyond two years.
LIFETIME_DAYS = 329.0  # the Lomax scale
LIFETIME_SHAPE = 1.49
VALUE_MEDIAN = 35.0  # about the median of the customers' typical order values
VALUE_SIGMA = 0.5  # their spread across customers, on the log scale (within: ORDER_VALUE_SIGMA)
VALUE_RATE_CORRELATION = 0.3  # heavier buyers buy somewhat bigger baskets
# Typical order values are skewed left on the log scale (a long tail of small baskets),
# which leaves more of the revenue with the top customers than a log-normal would.
VALUE_SKEW = 0.515
LOGISTIC_SD = math.pi / math.sqrt(3)
POISSON_EXACT_MEAN = 40.0  # Poisson counts by inverting the CDF up to this mean, then a normal approximation


def _uniform(seed: int, purpose: str, *keys: Column) -> Column:
    """A uniform draw in [0, 1) from a hash of the seed, a purpose and row keys."""
    bits = F.xxhash64(F.lit(seed), F.lit(purpose), *keys).bitwiseAND(F.lit((1 << 53) - 1))
    return bits.cast("double") / float(1 << 53)


def _normal(seed: int, purpose: str, *keys: Column) -> Column:
    u1 = _uniform(seed, purpose + ".1", *keys)
    u2 = _uniform(seed, purpose + ".2", *keys)
    return F.sqrt(-2.0 * F.log(u1 + F.lit(1e-12))) * F.cos(2.0 * math.pi * u2)


def _between(u: Column, lo: int | Column, hi: int | Column) -> Column:
    """An integer in [lo, hi] from a uniform draw."""
    lo_c, hi_c = F.lit(lo) if isinstance(lo, int) else lo, F.lit(hi) if isinstance(hi, int) else hi
    return (lo_c + F.floor(u * (hi_c - lo_c + 1))).cast("int")


def _poisson(u: Column, z: Column, mean: Column) -> Column:
    """A Poisson count of the given mean: the inverse of its CDF at the uniform draw
    ``u`` or, for a mean above POISSON_EXACT_MEAN, a normal approximation at the standard
    normal draw ``z``."""
    capped = F.least(mean, F.lit(POISSON_EXACT_MEAN))
    terms = F.ceil(capped + 8.0 * F.sqrt(capped) + 8.0).cast("int")  # P(more) < 1e-15
    p0 = F.exp(-capped)
    start = F.struct(F.lit(0).alias("n"), p0.alias("p"), p0.alias("cdf"))

    def step(acc: Column, k: Column) -> Column:
        p = acc["p"] * capped / k
        advanced = F.struct(k.alias("n"), p.alias("p"), (acc["cdf"] + p).alias("cdf"))
        return F.when(acc["cdf"] > u, acc).otherwise(advanced)

    exact = F.aggregate(F.sequence(F.lit(1), terms), start, step, lambda acc: acc["n"])
    approx = F.greatest(F.lit(0.0), F.round(mean + F.sqrt(mean) * z)).cast("int")
    return F.when(mean <= POISSON_EXACT_MEAN, exact).otherwise(approx)


def customers(spark: SparkSession, cfg: DemoConfig) -> DataFrame:
    """customer_id, archetype and the archetype's parameters, one row per customer."""
    cum = 0.0
    arch_index = None
    u = _uniform(cfg.seed, "archetype", F.col("id"))
    for index, arch in enumerate(ARCHETYPES):
        cum += arch.weight
        arch_index = F.when(u < cum, index) if arch_index is None else arch_index.when(u < cum, index)
    arch_index = arch_index.otherwise(len(ARCHETYPES) - 1)

    def param(getter) -> Column:
        out = None
        for index, arch in enumerate(ARCHETYPES):
            out = (
                F.when(F.col("arch") == index, getter(arch))
                if out is None
                else out.when(F.col("arch") == index, getter(arch))
            )
        return out

    cid = F.col("id")
    base = spark.range(cfg.customers).withColumn("arch", arch_index)
    return base.select(
        cid,
        (cid + CUSTOMER_ID_BASE + 1).cast("string").alias("customer_id"),
        param(lambda a: a.name).alias("archetype"),
        _between(
            _uniform(cfg.seed, "last", cid), param(lambda a: a.last_days_ago[0]), param(lambda a: a.last_days_ago[1])
        ).alias("last_days_ago"),
        _between(
            _uniform(cfg.seed, "first", cid), param(lambda a: a.first_days_ago[0]), param(lambda a: a.first_days_ago[1])
        ).alias("first_days_ago"),
        _between(_uniform(cfg.seed, "orders", cid), param(lambda a: a.orders[0]), param(lambda a: a.orders[1])).alias(
            "n_orders"
        ),
        param(lambda a: a.order_value).alias("order_value"),
        _uniform(cfg.seed, "web_share", cid).alias("web_share"),
    ).withColumn("first_days_ago", F.greatest("first_days_ago", "last_days_ago"))


def realistic_customers(spark: SparkSession, cfg: DemoConfig) -> DataFrame:
    """Customers of the realistic scenario, with the columns of ``customers``: id,
    customer_id, archetype (``unplanted``), last_days_ago, first_days_ago, n_orders,
    order_value, web_share.

    A customer is acquired (their first order) on a day uniform over the history, then
    orders at their rate (a Poisson process) until their lifetime ends or the history
    does. Given the count, the repeat orders fall uniformly over that active span, so
    the last one is the maximum of that many uniform draws; ``orders`` spreads the rest
    between the first and the last.
    """
    seed = cfg.seed
    cid = F.col("id")
    history_days = (cfg.end_date - cfg.start_date).days
    acquired_days_ago = _uniform(seed, "acquired", cid) * history_days
    u_rate = _uniform(seed, "rate", cid)
    rate_z = F.log(u_rate + F.lit(1e-12)) - F.log(1.0 - u_rate)  # a standard logistic draw
    rate = F.least(F.lit(RATE_MAX), RATE_MEDIAN * F.exp(RATE_SHAPE * rate_z))
    lifetime = LIFETIME_DAYS * (F.pow(1.0 - _uniform(seed, "lifetime", cid), -1.0 / LIFETIME_SHAPE) - 1.0)
    active_days = F.least(lifetime, acquired_days_ago)
    repeats = _poisson(_uniform(seed, "repeats", cid), _normal(seed, "repeats", cid), rate * active_days)
    # the latest of `repeats` uniform draws over the active span
    last_offset = F.col("active_days") * F.pow(_uniform(seed, "last", cid), 1.0 / F.greatest("repeats", F.lit(1)))
    log_value = VALUE_SIGMA * (
        VALUE_RATE_CORRELATION * rate_z / LOGISTIC_SD
        + math.sqrt(1.0 - VALUE_RATE_CORRELATION**2) * _normal(seed, "order_value", cid)
        + VALUE_SKEW * F.log(2.0 * _uniform(seed, "order_value.skew", cid) + F.lit(1e-12))
    )
    return (
        spark.range(cfg.customers)
        .select(
            cid,
            acquired_days_ago.alias("acquired_days_ago"),
            active_days.alias("active_days"),
            repeats.alias("repeats"),
            (VALUE_MEDIAN * F.exp(log_value)).alias("order_value"),
        )
        .select(
            cid,
            (cid + CUSTOMER_ID_BASE + 1).cast("string").alias("customer_id"),
            F.lit(UNPLANTED).alias("archetype"),
            F.when(F.col("repeats") == 0, F.floor("acquired_days_ago"))
            .otherwise(F.floor(F.col("acquired_days_ago") - last_offset))
            .cast("int")
            .alias("last_days_ago"),
            F.floor("acquired_days_ago").cast("int").alias("first_days_ago"),
            F.least(F.col("repeats") + 1, F.lit(ORDER_NO_BLOCK)).alias("n_orders"),
            "order_value",
            _uniform(seed, "web_share", cid).alias("web_share"),
        )
    )


def orders(cust: DataFrame, cfg: DemoConfig) -> DataFrame:
    """One row per order: customer, order number, timestamp (UTC), channel, value."""
    seed = cfg.seed
    end = F.lit(cfg.end_date).cast("timestamp")
    idx = F.col("order_idx")
    keys = (F.col("id"), idx)
    # The first and last orders sit at the customer's planted dates; the rest fall between.
    days_ago = (
        F.when(idx == F.col("n_orders") - 1, F.col("last_days_ago"))
        .when(idx == 0, F.col("first_days_ago"))
        .otherwise(
            F.col("last_days_ago") + _uniform(seed, "day", *keys) * (F.col("first_days_ago") - F.col("last_days_ago"))
        )
    )
    seconds_ago = F.floor(days_ago * 86400) + 86400 - _between(_uniform(seed, "tod", *keys), 8 * 3600, 21 * 3600)
    return cust.select(
        "id",
        "customer_id",
        F.explode(F.sequence(F.lit(0), F.col("n_orders") - 1)).alias("order_idx"),
        "order_value",
        "web_share",
        "last_days_ago",
        "first_days_ago",
        "n_orders",
    ).select(
        "id",
        "customer_id",
        "order_idx",
        (end - F.make_dt_interval(F.lit(0), F.lit(0), F.lit(0), seconds_ago)).alias("ts"),
        F.when(_uniform(seed, "channel", *keys) < F.col("web_share"), "web").otherwise("store").alias("channel"),
        F.round(F.col("order_value") * F.exp(ORDER_VALUE_SIGMA * _normal(seed, "value", *keys)), 2).alias("value"),
        _between(_uniform(seed, "lines", *keys), 1, 4).alias("n_lines"),
        _uniform(seed, "return", *keys).alias("u_return"),
        _uniform(seed, "cancel", *keys).alias("u_cancel"),
        _uniform(seed, "guest", *keys).alias("u_guest"),
        (F.col("id") * ORDER_NO_BLOCK + idx).alias("order_no"),
    )


def lines(ords: DataFrame, cfg: DemoConfig) -> DataFrame:
    """One row per order line: sku, quantity and unit price adding up to the order value."""
    seed = cfg.seed
    keys = (F.col("order_no"), F.col("line_no"))
    qty = _between(_uniform(seed, "qty", *keys), 1, 3)
    return (
        ords.select("*", F.explode(F.sequence(F.lit(1), F.col("n_lines"))).alias("line_no"))
        .select(
            "*",
            F.concat(
                F.lit("SKU"), F.lpad(_between(_uniform(seed, "sku", *keys), 1, SKUS).cast("string"), 5, "0")
            ).alias("sku"),
            qty.alias("qty"),
        )
        .withColumn("unit_price", F.greatest(F.lit(0.5), F.round(F.col("value") / F.col("n_lines") / F.col("qty"), 2)))
    )


def pos_lines(lns: DataFrame, cfg: DemoConfig) -> DataFrame:
    """The point-of-sale export: store sales, their returns, guest sales and duplicates."""
    seed = cfg.seed
    local_fmt = "yyyy-MM-dd HH:mm:ss"
    store = lns.where(F.col("channel") == "store")
    store_id = F.concat(
        F.lit("S"), F.lpad(_between(_uniform(seed, "store", F.col("id")), 1, 12).cast("string"), 2, "0")
    )

    def export(df: DataFrame, prefix: str, loyalty: Column, qty: Column, ts: Column) -> DataFrame:
        return df.select(
            F.concat(F.lit(prefix), F.col("order_no").cast("string")).alias("receipt_no"),
            F.col("line_no"),
            loyalty.alias("loyalty_id"),
            "sku",
            qty.alias("qty"),
            F.format_string("%.2f", "unit_price").alias("unit_price"),
            F.date_format(F.from_utc_timestamp(ts, "Europe/London"), local_fmt).alias("sold_at"),
            store_id.alias("store_id"),
            F.col("line_no").alias("_line"),
        )

    sales = export(store, "P", F.col("customer_id"), F.col("qty"), F.col("ts"))
    # A returned line comes back 1-14 days later on its own receipt, quantity negative.
    returned = store.where((F.col("u_return") < RETURN_RATE) & (F.col("line_no") == 1))
    return_ts = F.col("ts") + F.make_dt_interval(_between(_uniform(seed, "return_days", F.col("order_no")), 1, 14))
    returns = export(
        returned,
        "R",
        F.col("customer_id"),
        -F.col("qty"),
        F.least(return_ts, F.lit(cfg.end_date).cast("timestamp") - F.expr("INTERVAL 1 SECOND")),
    )
    guests = export(
        store.where(F.col("u_guest") < GUEST_RATE), "G", F.lit(None).cast("string"), F.col("qty"), F.col("ts")
    )
    out = sales.unionByName(returns).unionByName(guests)
    dupes = out.where(_uniform(seed, "dupe.pos", F.col("receipt_no"), F.col("line_no")) < DUPLICATE_RATE)
    return out.unionByName(dupes).drop("_line")


def web_orders(lns: DataFrame, cfg: DemoConfig) -> DataFrame:
    """The web export: one JSON object per order, refund or guest order, some twice."""
    seed = cfg.seed
    web = lns.where(F.col("channel") == "web")
    item = F.struct(
        F.col("line_no").alias("position"),
        F.col("sku"),
        F.col("qty").alias("quantity"),
        F.col("unit_price").alias("price"),
    )
    iso = "yyyy-MM-dd'T'HH:mm:ssXXX"

    def export(df: DataFrame, prefix: str, customer: Column, kind: str, status: Column, ts: Column) -> DataFrame:
        return (
            df.groupBy("order_no", "customer_id", "ts", "u_cancel")
            .agg(F.array_sort(F.collect_list(item)).alias("items"))
            .select(
                F.concat(F.lit(prefix), F.col("order_no").cast("string")).alias("order_id"),
                customer.alias("customer"),
                F.date_format(ts, iso).alias("created_at"),
                F.lit(kind).alias("kind"),
                status.alias("status"),
                F.lit("GBP").alias("currency"),
                "items",
            )
        )

    status = F.when(F.col("u_cancel") < CANCEL_RATE, "cancelled").otherwise("completed")
    customer = F.struct(F.col("customer_id").alias("id"))
    placed = export(web, "W", customer, "order", status, F.col("ts"))
    refunded = web.where(
        (F.col("u_return") < RETURN_RATE) & (F.col("u_cancel") >= CANCEL_RATE) & (F.col("line_no") == 1)
    )
    refund_ts = F.least(
        F.col("ts") + F.make_dt_interval(_between(_uniform(seed, "refund_days", F.col("order_no")), 1, 20)),
        F.lit(cfg.end_date).cast("timestamp") - F.expr("INTERVAL 1 SECOND"),
    )
    refunds = export(refunded, "F", customer, "refund", F.lit("completed"), refund_ts)
    guests = export(
        web.where(F.col("u_guest") < GUEST_RATE),
        "X",
        F.lit(None).cast("struct<id:string>"),
        "order",
        F.lit("completed"),
        F.col("ts"),
    )
    out = placed.unionByName(refunds).unionByName(guests)
    dupes = out.where(_uniform(seed, "dupe.web", F.col("order_id")) < DUPLICATE_RATE)
    return out.unionByName(dupes)


def generate(spark: SparkSession, cfg: DemoConfig, raw_dir: str | None = None) -> dict[str, str]:
    """Write the demo sources and the ground truth under ``raw_dir``; return their paths."""
    root = raw_dir or cfg.raw_dir
    if cfg.start_date >= cfg.end_date:
        raise ValueError("demo.start_date must be before demo.end_date")
    cust = realistic_customers(spark, cfg) if cfg.scenario == "realistic" else customers(spark, cfg)
    lns = lines(orders(cust, cfg), cfg).where(F.col("ts") >= F.lit(cfg.start_date).cast("timestamp"))
    files = max(1, cfg.customers // 50_000)
    paths = {name: resolve(root, name) for name in ("pos", "web", "truth")}
    log.info("generating %s demo data for %d customers (seed %d) into %s", cfg.scenario, cfg.customers, cfg.seed, root)
    (
        pos_lines(lns, cfg)
        .repartition(files, "receipt_no")
        .sortWithinPartitions("receipt_no", "line_no")
        .write.mode("overwrite")
        .option("header", "true")
        .csv(paths["pos"])
    )
    (
        web_orders(lns, cfg)
        .repartition(files, "order_id")
        .sortWithinPartitions("order_id")
        .write.mode("overwrite")
        .json(paths["web"])
    )
    (
        cust.select("customer_id", "archetype")
        .coalesce(1)
        .sortWithinPartitions("customer_id")
        .write.mode("overwrite")
        .option("header", "true")
        .csv(paths["truth"])
    )
    return paths


def read_truth(spark: SparkSession, raw_dir: str) -> DataFrame:
    """The planted archetypes: customer_id, archetype (``unplanted`` in the realistic scenario)."""
    return spark.read.option("header", "true").csv(resolve(raw_dir, "truth"))
