"""The value section of the config: base.yaml's defaults and the ranges it refuses."""

from __future__ import annotations

import pytest

from custseg.config import ConfigError, ValueConfig, load_config
from tests.conftest import CONF

BASE = CONF / "base.yaml"


def test_value_config_reads_base_yaml_and_overrides():
    cfg = load_config([BASE], ["value.unit=days", "value.holdout_days=0"])
    assert cfg.value == ValueConfig(unit="days", horizon_months=12, holdout_days=0, monthly_discount_rate=0.01,
                                    margin=1.0, frequency_groups=7)  # fmt: skip
    assert (cfg.tables.customer_value, cfg.tables.value_fits) == ("customer_value", "customer_value_fits")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("value.unit=months", r"value\.unit: expected one of 'days', 'weeks'"),
        ("value.horizon_months=0", r"value\.horizon_months: must be at least 1"),
        ("value.holdout_days=-1", r"value\.holdout_days: must be 0 \(no holdout\) or more"),
        ("value.monthly_discount_rate=1.5", r"value\.monthly_discount_rate: must be in \[0, 1\)"),
        ("value.margin=0", r"value\.margin: must be in \(0, 1\]"),
    ],
)
def test_value_config_refuses_values_out_of_range_naming_the_key(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config([BASE], [setting])
