from __future__ import annotations

import datetime as dt
import logging

import pytest

from custseg.config import ConfigError, load_config, load_defaults
from custseg.config_view import config_changes, redacted
from tests.conftest import CONF

BASE = CONF / "base.yaml"
LOCAL = CONF / "local.yaml"


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_config_later_file_overrides_earlier_and_set_overrides_both(tmp_path):
    overlay = write(tmp_path, "o.yaml", "segment:\n  k_max: 5\n  seed: 7\n")
    cfg = load_config([BASE, LOCAL, overlay], ["segment.seed=11", "features.as_of_date=2024-06-30"])
    assert cfg.spark.master == "local[*]"  # from local.yaml over base's null
    assert cfg.segment.k_max == 5  # from the overlay
    assert cfg.segment.seed == 11  # --set wins
    assert cfg.segment.k_min == 2  # untouched base default
    assert cfg.features.as_of_date == dt.date(2024, 6, 30)
    assert [s.name for s in cfg.sources] == ["pos", "web"]


def test_load_config_unknown_key_names_key_and_file(tmp_path):
    overlay = write(tmp_path, "typo.yaml", "segment:\n  k_maxx: 5\n")
    with pytest.raises(
        ConfigError, match=r"typo\.yaml: unknown key 'segment\.k_maxx' \(did you mean 'segment\.k_max'\?\)"
    ):
        load_config([BASE, overlay])


def test_load_config_wrong_type_names_key_and_file(tmp_path):
    overlay = write(tmp_path, "bad.yaml", "segment:\n  k_max: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: segment\.k_max: expected an integer, got 'many'"):
        load_config([BASE, overlay])


def test_load_config_wrong_type_from_set_names_set():
    with pytest.raises(ConfigError, match=r"--set: spark\.ui_enabled: expected true or false"):
        load_config([BASE], ["spark.ui_enabled=maybe"])


def test_load_config_reads_a_number_in_exponent_form_without_a_dot():
    # YAML 1.1, as PyYAML reads it, has 1e-4 a string and 1.0e-4 a number
    assert load_config([BASE], ["segment.kmeans_tol=1e-4"]).segment.kmeans_tol == 1e-4
    assert load_config([BASE], ["segment.kmeans_tol=2.5E+1"]).segment.kmeans_tol == 25.0
    for text in ("e-4", "1e400", "\u0661e-4"):  # not a number, not finite, not ASCII digits
        with pytest.raises(ConfigError, match=r"--set: segment\.kmeans_tol: expected a number"):
            load_config([BASE], [f"segment.kmeans_tol={text}"])


def test_load_config_validates_ranges():
    with pytest.raises(ConfigError, match=r"segment\.k_max: must be at least segment\.k_min"):
        load_config([BASE], ["segment.k_min=5", "segment.k_max=3"])


def test_load_config_sweep_sample_needs_ten_customers_per_segment_of_k_max():
    with pytest.raises(ConfigError, match=r"segment\.sweep_sample: must be at least 10 customers .* \(80\), or null"):
        load_config([BASE], ["segment.k_max=8", "segment.sweep_sample=79"])
    assert load_config([BASE], ["segment.k_max=8", "segment.sweep_sample=null"]).segment.sweep_sample is None


def test_load_config_bad_source_mapping_names_its_file(tmp_path):
    source = write(
        tmp_path, "src.yaml", (CONF / "sources" / "demo_pos.yaml").read_text().replace("format: csv", "format: xlsx")
    )
    with pytest.raises(
        ConfigError, match=r"src\.yaml: format: expected one of 'csv', 'whitespace', 'json', 'parquet', 'delta'"
    ):
        load_config([BASE], [f"ingest.sources=['{source}']"])


def test_load_config_refuses_a_source_named_like_the_profiles_every_source_row(tmp_path):
    source = write(
        tmp_path, "all.yaml", (CONF / "sources" / "demo_pos.yaml").read_text().replace("name: pos", "name: ALL")
    )
    with pytest.raises(ConfigError, match=r"ingest\.sources: 'ALL' names every source together"):
        load_config([BASE], [f"ingest.sources=['{source}']"])


def test_load_config_reads_secrets_from_environment(monkeypatch):
    monkeypatch.setenv("CUSTSEG_TEST_TOKEN", "s3cr3t")
    cfg = load_config([BASE], ["spark.conf={fs.azure.account.key: '${CUSTSEG_TEST_TOKEN}'}"])
    assert cfg.spark.conf["fs.azure.account.key"] == "s3cr3t"
    assert "s3cr3t" not in str(redacted(cfg))


def test_load_config_missing_environment_variable_is_named():
    with pytest.raises(ConfigError, match=r"--set: spark\.conf\.x: environment variable CUSTSEG_NOT_SET is not set"):
        load_config([BASE], ["spark.conf={x: '${CUSTSEG_NOT_SET}'}"])


def test_load_config_type_error_shows_the_reference_not_the_secret(monkeypatch):
    monkeypatch.setenv("CUSTSEG_TEST_TOKEN", "s3cr3t-value")
    with pytest.raises(ConfigError, match=r"segment\.k_max: expected an integer, got '\$\{CUSTSEG_TEST_TOKEN\}'$"):
        load_config([BASE], ["segment.k_max=${CUSTSEG_TEST_TOKEN}"])


def test_load_config_lower_case_reference_stays_as_written_with_a_warning(tmp_path, caplog):
    text = "mlflow:\n  experiment: seg-${my_token}\nspark:\n  conf:\n    a.b: ${spark.x}\n"
    overlay = write(tmp_path, "o.yaml", text)
    with caplog.at_level(logging.WARNING, logger="custseg.config"):
        cfg = load_config([BASE, overlay])
    assert cfg.mlflow.experiment == "seg-${my_token}"
    assert cfg.spark.conf["a.b"] == "${spark.x}"  # Spark's own substitution: no warning
    assert [r.getMessage() for r in caplog.records] == [
        f"{overlay}: mlflow.experiment: '${{my_token}}' stays as written: only upper-case names (${{MY_TOKEN}}) "
        "are read from the environment"
    ]


def test_config_changes_are_the_keys_that_differ_from_the_defaults(monkeypatch):
    monkeypatch.setenv("CUSTSEG_TEST_TOKEN", "s3cr3t-value")
    cfg = load_config([BASE, LOCAL], ["segment.k_max=6", "mlflow.tracking_uri=https://u:${CUSTSEG_TEST_TOKEN}@h"])
    assert config_changes(cfg, load_defaults(BASE)) == {
        "spark.master": "local[*]",
        "spark.delta_jars_dir": ".cache/jars",
        "spark.log_level": "ERROR",
        "spark.conf.spark.driver.memory": "4g",
        "segment.k_max": 6,
        "mlflow.tracking_uri": "https://u:***@h",
    }


def test_load_config_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: configuration file not found"):
        load_config([tmp_path / "nope.yaml"])


def test_load_config_range_error_names_the_overlay_that_set_it(tmp_path):
    overlay = write(tmp_path, "small.yaml", "segment:\n  k_min: 1\n")
    with pytest.raises(ConfigError, match=r"small\.yaml: segment\.k_min: must be at least 2"):
        load_config([BASE, overlay])


def test_load_config_bad_list_item_names_the_overlay(tmp_path):
    overlay = write(tmp_path, "feats2.yaml", "segment:\n  features: [recency_days, [1]]\n")
    with pytest.raises(ConfigError, match=r"feats2\.yaml: segment\.features\[1\]: expected a string"):
        load_config([BASE, overlay])


def test_set_spark_conf_key_with_dots_and_scalar_values():
    cfg = load_config([BASE], ["spark.conf.spark.driver.memory=8g", "spark.app_name=a: b #1"])
    assert cfg.spark.conf == {"spark.driver.memory": "8g"}
    assert cfg.spark.app_name == "a: b #1"


def test_load_config_rfm_cut_points_must_fit_the_bins(tmp_path):
    overlay = write(tmp_path, "rfm.yaml", "rfm:\n  cut_points: {recency_days: [30, 90]}\n")
    with pytest.raises(ConfigError, match=r"rfm\.yaml: rfm\.cut_points\.recency_days: needs 4 increasing edges"):
        load_config([BASE, overlay])


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("features.log1p=[monetry]", r"features\.log1p: unknown or non-numeric features \['monetry'\]"),
        ("segment.value_feature=gender", r"segment\.value_feature: must be a numeric feature"),
        ("segment.pca_variance=0.9", r"segment\.pca_variance: set pca_variance or pca_components, not both"),
        ("features.cap_quantile=1.5", r"features\.cap_quantile: must be in \[0\.5, 1\)"),
        ("stability.threshold=0", r"stability\.threshold: must be in \(0, 1\]"),
        ("segment.kmeans_tol=0", r"segment\.kmeans_tol: must be positive and finite"),
        ("segment.kmeans_tol=.inf", r"segment\.kmeans_tol: must be positive and finite"),
        ("segment.restarts=0", r"segment\.restarts: must be at least 1"),
        ("segment.min_segment_share=0.5", r"segment\.min_segment_share: must be in \[0, 0\.5\)"),
        ("segment.selection_bootstrap=-1", r"segment\.selection_bootstrap: must be 0 or more"),
        ("segment.business_k=[6, 3]", r"segment\.business_k: must be \[lowest, highest\] with 2 <= lowest"),
        ("segment.business_k=[4]", r"segment\.business_k: must be \[lowest, highest\]"),
        ("segment.business_k=[9, 12]", r"segment\.business_k: \[9, 12\] does not overlap the sweep's range \[2, 8\]"),
        ("segment.selection=gap", r"segment\.selection"),
    ],
)
def test_load_config_rejects_impossible_modelling_settings(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config([BASE, LOCAL], [setting])


def test_load_config_customer_table_alone_needs_an_as_of_date():
    mall = CONF / "mall.yaml"
    assert load_config([BASE, LOCAL, mall]).customers.numeric["annual_income"] == "Annual Income (k$)"
    with pytest.raises(ConfigError, match=r"features\.as_of_date: is required when there are no transaction"):
        load_config([BASE, LOCAL, mall], ["features.as_of_date=null"])
