"""Secrets are masked by value: values from ${ENV_VAR} and credentials inside URLs,
query strings and connection strings, in the config view, log records and tracebacks."""

from __future__ import annotations

import io
import json
import logging

import pytest

from custseg.config import load_config
from custseg.config_view import redacted
from custseg.redaction import MASK, install_log_redaction, redact, redact_setting
from tests.conftest import CONF

BASE = CONF / "base.yaml"
SECRET = "s3cr3t-Zq9x-7731"


@pytest.fixture
def secret(monkeypatch) -> str:
    monkeypatch.setenv("MY_SECRET", SECRET)
    return SECRET


def config_view(*overrides: str) -> str:
    return json.dumps(redacted(load_config([BASE], list(overrides))), sort_keys=True)


def test_redacted_config_masks_the_password_of_a_tracking_uri_from_the_environment(secret):
    cfg = load_config([BASE], ["mlflow.tracking_uri=https://user:${MY_SECRET}@host"])
    assert cfg.mlflow.tracking_uri == f"https://user:{secret}@host"  # the job gets the value
    assert redacted(cfg)["mlflow"]["tracking_uri"] == "https://user:***@host"
    assert secret not in config_view("mlflow.tracking_uri=https://user:${MY_SECRET}@host")


def test_redacted_config_masks_the_token_of_a_spark_connect_url(secret):
    cfg = load_config([BASE], ["spark.remote=sc://host:15002/;token=${MY_SECRET}"])
    assert redacted(cfg)["spark"]["remote"] == "sc://host:15002/;token=***"
    assert secret not in config_view("spark.remote=sc://host:15002/;token=${MY_SECRET}")


def test_redacted_config_masks_an_azure_sas_setting_by_its_key_and_its_value(secret):
    key = "spark.hadoop.fs.azure.sas.container.account.blob.core.windows.net"
    cfg = load_config([BASE], [f"spark.conf.{key}=${{MY_SECRET}}"])
    assert cfg.spark.conf[key] == secret
    assert redacted(cfg)["spark"]["conf"] == {key: MASK}
    # a literal SAS token (against the rules, but it happens) is masked by its key alone
    literal = load_config([BASE], [f"spark.conf.{key}=sv=2022-11-02&sig=abcDEF%2B"])
    assert redacted(literal)["spark"]["conf"] == {key: MASK}


def test_redacted_config_masks_a_value_from_the_environment_whatever_its_key(monkeypatch):
    monkeypatch.setenv("CUSTSEG_TEST_HOST", "db.internal.example")
    monkeypatch.setenv("CUSTSEG_TEST_SHORT", "ab1")
    cfg = load_config([BASE], ["storage.root=s3://${CUSTSEG_TEST_HOST}/lake", "report.dir=${CUSTSEG_TEST_SHORT}"])
    view = redacted(cfg)
    assert view["storage"]["root"] == "s3://***/lake"
    assert view["report"]["dir"] == MASK  # too short to mask inside text, masked as a whole value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:pa55@host:443/x", "https://user:***@host:443/x"),
        ("https://user:p@ss@host/x", "https://user:***@host/x"),  # an unescaped '@' stays in the password
        ("sc://host:15002/;user_id=me;token=abc123", "sc://host:15002/;user_id=me;token=***"),
        ("https://a.blob.core.windows.net/c?sv=2022&sig=AbC%2Fd&se=2030", "https://a.blob.core.windows.net/c?sv=2022&sig=***&se=2030"),
        ("AccountName=a;AccountKey=Zm9v==;EndpointSuffix=core", "AccountName=a;AccountKey=***;EndpointSuffix=core"),
        ("jdbc:postgresql://db/x?user=u&password=hunter2", "jdbc:postgresql://db/x?user=u&password=***"),
        ("client_secret='abc' and api_key=xyz", "client_secret='***' and api_key=***"),
        ("Authorization: Bearer eyJhbGciOi.x-y", "Authorization: Bearer ***"),
        ("http://host:8080/path?k=3 local[2] segment.k=4", "http://host:8080/path?k=3 local[2] segment.k=4"),
    ],
)  # fmt: skip
def test_redact_masks_credentials_in_urls_query_and_connection_strings(text, expected):
    assert redact(text) == expected


def test_redact_masks_remembered_environment_values_in_any_text(monkeypatch):
    value = "read-by-this-test-only-0427"
    monkeypatch.setenv("CUSTSEG_TEST_VALUE", value)
    assert redact(value) == value  # not a credential by its shape
    load_config([BASE], ["mlflow.experiment=${CUSTSEG_TEST_VALUE}"])  # the loader remembers what it read
    assert redact(f"cannot reach {value}/x (got {value!r})") == "cannot reach ***/x (got '***')"


def test_redact_setting_masks_secret_looking_keys_whole():
    assert redact_setting("spark.conf.fs.azure.account.key.acct.dfs.core.windows.net", "abc") == MASK
    assert redact_setting("spark.conf.spark.hadoop.fs.s3a.secret.key", "abc") == MASK
    assert redact_setting("segment.k", 4) == 4 and redact_setting("spark.master", "local[2]") == "local[2]"


def test_log_records_are_redacted_in_message_and_traceback(secret):
    install_log_redaction()
    log = logging.getLogger("custseg.test.redaction")
    # A handler of its own with logging's plain formatter: pytest's caplog handler may
    # carry pyspark's JSON formatter (see tests/test_spark.py), which formats tracebacks
    # itself.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("remote %s", f"sc://h:1/;token={secret}")
        try:
            raise RuntimeError(f"https://u:{secret}@host refused")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert secret not in text
    assert "INFO remote sc://h:1/;token=***" in text and "RuntimeError: https://u:***@host refused" in text
