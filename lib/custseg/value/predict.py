"""Each customer's value from the two fitted models: P(alive), expected purchases over the
horizon, expected spend per purchase and the discounted CLV over the horizon.

    CLV = margin * E[spend] * sum_{k=1..H} (E[Y(k m)] - E[Y((k-1) m)]) / (1 + d)^k

with m a month in the model's unit (365.25 / 12 days), H the horizon in months and d the
monthly discount rate: each month's expected purchases, discounted to today at the end of
that month (lifetimes' customer_lifetime_value does the same). docs/customer-value.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from custseg import columns as c
from custseg.value import bgnbd, gamma_gamma
from custseg.value.summary import MEAN_SPEND, T_CAL, T_X, X, unit_days

DAYS_PER_MONTH = 365.25 / 12

P_ALIVE = c.P_ALIVE
EXPECTED_PURCHASES = "expected_purchases"
EXPECTED_SPEND = "expected_spend"
CLV = c.CLV

VALUE_COLUMNS = (c.CUSTOMER_ID, c.AS_OF_DATE, X, T_X, T_CAL, MEAN_SPEND, P_ALIVE, EXPECTED_PURCHASES, EXPECTED_SPEND,
                 CLV)  # fmt: skip


def month_in_units(unit: str) -> float:
    return DAYS_PER_MONTH / unit_days(unit)


def discounted_purchases(params: Sequence[float], month: float, months: int, monthly_rate: float) -> Column:
    """sum over the next ``months`` months of that month's expected purchases, discounted
    at ``monthly_rate`` from the end of the month."""
    cumulative = [F.lit(0.0)] + [bgnbd.expected_purchases(params, k * month) for k in range(1, months + 1)]
    return sum(
        ((cumulative[k] - cumulative[k - 1]) * F.lit((1 + monthly_rate) ** -k) for k in range(1, months + 1)),
        F.lit(0.0),
    )


def customer_value(
    purchases: Sequence[float],
    spend: Sequence[float],
    unit: str,
    horizon_months: int,
    monthly_discount_rate: float,
    margin: float,
) -> Callable[[DataFrame], DataFrame]:
    """Customer summaries -> their value, from the BG/NBD ``purchases`` and Gamma-Gamma
    ``spend`` parameters (in the summary's ``unit``).

    Input columns: customer_id, as_of_date, x, t_x, T, mean_spend.
    Output columns: customer_id, as_of_date, x, t_x, T, mean_spend, p_alive,
    expected_purchases (over the horizon), expected_spend (per purchase), clv (margin times
    the discounted expected spend over the horizon; null where the expected spend is).

    The purchase predictions depend on (x, t_x, T) alone and are computed once per
    distinct tuple (each is a series per month of the horizon), then joined back.
    """
    month = month_in_units(unit)

    def transform(summary: DataFrame) -> DataFrame:
        by_tuple = bgnbd.per_tuple(
            summary,
            {
                P_ALIVE: bgnbd.p_alive(purchases),
                EXPECTED_PURCHASES: bgnbd.expected_purchases(purchases, horizon_months * month),
                "_discounted": discounted_purchases(purchases, month, horizon_months, monthly_discount_rate),
            },
        )
        expected_spend = gamma_gamma.expected_spend(spend)
        return by_tuple.select(
            *VALUE_COLUMNS[:-2],
            expected_spend.alias(EXPECTED_SPEND),
            (F.lit(float(margin)) * expected_spend * F.col("_discounted")).alias(CLV),
        )

    return transform


def with_value(values: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Customer features -> the same with each customer's clv and p_alive from ``values``
    (the customer_value table), matched by customer and as-of date: null for a customer
    it has no row for, or a row of another as-of date.

    Input columns: customer_id, as_of_date and any others (``values``: customer_id,
    as_of_date, clv, p_alive).
    Output columns: the input's, then clv, p_alive.
    """

    def transform(features: DataFrame) -> DataFrame:
        value = values.select(c.CUSTOMER_ID, c.AS_OF_DATE, *c.VALUE_FEATURES)
        kept = [f for f in features.columns if f not in c.VALUE_FEATURES]
        return (
            features.select(*kept)
            .join(value, on=[c.CUSTOMER_ID, c.AS_OF_DATE], how="left")
            .select(*kept, *c.VALUE_FEATURES)
        )

    return transform
