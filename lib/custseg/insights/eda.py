"""Exploratory views of the data before segmenting it (the 01_explore notebook).

Every view is an aggregate computed in Spark whose size is fixed by its shape (one row
per month, per histogram bin, per RFM cell), so only that reaches the driver, whatever
the number of transactions. The plots take those small frames and return PNG bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from custseg import columns as c
from custseg.insights.plots import png_bytes

MONTH = "month"
BIN = "bin"
LOWER = "lower"
UPPER = "upper"
COUNT = "count"


def monthly_activity(txns: DataFrame) -> DataFrame:
    """Per calendar month: purchases (distinct invoices), active customers, revenue
    (purchase amounts) and returns (returned amounts, positive)."""
    purchase = F.col(c.TXN_TYPE) == c.PURCHASE
    return (
        txns.groupBy(F.date_trunc("month", c.EVENT_TS).cast("date").alias(MONTH))
        .agg(
            F.countDistinct(F.when(purchase, F.col(c.INVOICE_ID))).alias("purchases"),
            F.countDistinct(F.when(purchase, F.col(c.CUSTOMER_ID))).alias("customers"),
            F.sum(F.when(purchase, F.col(c.AMOUNT)).otherwise(0.0)).alias("revenue"),
            F.sum(F.when(F.col(c.TXN_TYPE) == c.RETURN, -F.col(c.AMOUNT)).otherwise(0.0)).alias("returns"),
        )
        .orderBy(MONTH)
    )


def histogram(df: DataFrame, column: str, bins: int = 30, log1p: bool = False) -> pd.DataFrame:
    """Equal-width histogram of ``column`` (of ``log1p(max(x, 0))`` with ``log1p``):
    one pass for the range, one for the counts; nulls are left out. Columns: bin,
    lower, upper, count (``bins`` rows at most; empty when there is no value)."""
    value = F.log1p(F.greatest(F.col(column).cast("double"), F.lit(0.0))) if log1p else F.col(column).cast("double")
    values = df.select(value.alias("v")).where(F.col("v").isNotNull() & ~F.isnan("v"))
    bounds = values.agg(F.min("v").alias("lo"), F.max("v").alias("hi")).first()
    if bounds["lo"] is None:
        return pd.DataFrame({BIN: [], LOWER: [], UPPER: [], COUNT: []})
    lo, hi = float(bounds["lo"]), float(bounds["hi"])
    width = (hi - lo) / bins if hi > lo else 1.0
    # the maximum falls in the last bin rather than one of its own
    bucket = F.least(F.floor((F.col("v") - F.lit(lo)) / F.lit(width)).cast("int"), F.lit(bins - 1))
    counts = values.groupBy(bucket.alias(BIN)).agg(F.count(F.lit(1)).alias(COUNT)).toPandas()  # <= bins rows
    counts = counts.sort_values(BIN).reset_index(drop=True)
    counts[LOWER] = lo + counts[BIN] * width
    counts[UPPER] = counts[LOWER] + width
    return counts[[BIN, LOWER, UPPER, COUNT]]


def rfm_grid(features: DataFrame) -> DataFrame:
    """Customers and their mean monetary value per (R score, F score) cell, with the
    named RFM segment of the cell (customers with no purchase have no score: left out)."""
    return (
        features.where(F.col("r_score").isNotNull() & F.col("f_score").isNotNull())
        .groupBy("r_score", "f_score")
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.avg(c.MONETARY).alias("mean_monetary"),
            F.min("rfm_segment").alias("rfm_segment"),  # one per cell: the rules map scores to names
        )
        .orderBy("r_score", "f_score")
    )


# --------------------------------------------------------------------------- plots


def plot_monthly(months: pd.DataFrame) -> bytes:
    fig = Figure(figsize=(10, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = pd.to_datetime(months[MONTH])
    top.bar(x, months["revenue"], width=20, color="tab:blue", label="revenue")
    top.bar(x, -months["returns"], width=20, color="tab:red", label="returns")
    top.set_title("Revenue and returns per month")
    top.legend(loc="best", fontsize="small")
    bottom.plot(x, months["purchases"], marker="o", label="purchases")
    bottom.plot(x, months["customers"], marker="s", label="active customers")
    bottom.set_title("Purchases and active customers per month")
    bottom.legend(loc="best", fontsize="small")
    return png_bytes(fig)


def plot_histograms(histograms: dict[str, pd.DataFrame], log1p: Sequence[str] = ()) -> bytes:
    """One panel per feature; features in ``log1p`` are drawn on the log1p scale."""
    columns = 3
    rows = max(1, math.ceil(len(histograms) / columns))
    fig = Figure(figsize=(4 * columns, 3 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).flat
    for ax, (name, hist) in zip(axes, histograms.items(), strict=False):
        ax.bar(hist[LOWER], hist[COUNT], width=hist[UPPER] - hist[LOWER], align="edge", color="tab:blue")
        ax.set_title(f"log1p({name})" if name in log1p else name, fontsize="medium")
        ax.set_ylabel("customers")
    for ax in list(axes):  # the unused panels of the last row
        ax.set_visible(False)
    return png_bytes(fig)


def plot_rfm_grid(grid: pd.DataFrame, bins: int) -> bytes:
    """Customers per R x F cell, each cell labelled with its count and RFM segment."""
    counts = np.zeros((bins, bins))
    names: dict[tuple[int, int], str] = {}
    for row in grid.itertuples(index=False):
        counts[bins - row.r_score, row.f_score - 1] = row.customers
        names[(bins - row.r_score, row.f_score - 1)] = row.rfm_segment
    fig = Figure(figsize=(9, 7), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, f"{int(n):,}\n{names.get((i, j), '')}", ha="center", va="center", fontsize="x-small",
                color="white" if n > 0.6 * counts.max() else "black")  # fmt: skip
    ax.set_xticks(range(bins), [str(f) for f in range(1, bins + 1)])
    ax.set_yticks(range(bins), [str(r) for r in range(bins, 0, -1)])
    ax.set_xlabel("F score (5: most frequent)")
    ax.set_ylabel("R score (5: most recent)")
    ax.set_title("Customers per RFM cell")
    fig.colorbar(image, ax=ax, label="customers")
    return png_bytes(fig)
