"""What a user sees when something is missing or wrong: exit code 2, one line that says
what to fix, no traceback, and no secret anywhere in the output; the effective config
compact at INFO, in full only with --debug."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from delta.tables import DeltaTable

from custseg import cli as custseg_cli
from custseg import io
from custseg.config import StorageConfig
from custseg.demo import standalone
from custseg.value.fitting import ModelNotIdentifiedError
from tests.conftest import CONF, JVM_OPTIONS, ROOT, TEST_SETTINGS, make_config
from tests.test_e2e import run_cli

SECRET = "s3cr3t-Zq9x-7731"
TRANSACTIONS = (
    "txn_id STRING, source STRING, customer_id STRING, invoice_id STRING, line_id STRING, product_id STRING, "
    "quantity DOUBLE, unit_price DOUBLE, amount DOUBLE, event_ts TIMESTAMP, store STRING, channel STRING, "
    "txn_type STRING, is_extreme BOOLEAN, source_file STRING, run_id STRING"
)
FEATURES = (
    "customer_id STRING, as_of_date DATE, recency_days INT, frequency LONG, monetary DOUBLE, avg_order_value DOUBLE"
)


@pytest.fixture
def lake(tmp_path, monkeypatch, caplog) -> Path:
    """A working directory of its own (the config's relative paths land there), with
    the CLI's INFO log captured; returns where its lake is."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    return (tmp_path / "data" / "lake").resolve()


def outcome(capsys, caplog) -> tuple[list[str], str]:
    """The ERROR lines, and everything the run printed or logged."""
    printed = capsys.readouterr()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    return errors, printed.out + printed.err + caplog.text


def assert_one_line(errors: list[str], everything: str, expected: str) -> None:
    assert errors == [expected]
    assert "Traceback" not in everything and "\tat org.apache" not in everything  # no Python or Java trace


def write_table(spark, lake: Path, name: str, rows: list[tuple], schema: str) -> str:
    ref = io.table_ref(StorageConfig("path", str(lake), None), name)
    io.overwrite(spark.createDataFrame(rows, schema), ref)
    return ref.path


def version(spark, path: str) -> int:
    return DeltaTable.forPath(spark, path).history(1).first()["version"]


# --------------------------------------------------------------------------- ingest


def test_main_ingest_every_source_empty_exits_2_naming_the_sources(spark, lake, capsys, caplog):
    for name in ("pos/empty.csv", "web/empty.json"):
        raw = lake.parent / "raw" / name
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_bytes(b"")
    assert run_cli("ingest") == 2
    expected = "every configured source is empty, nothing to ingest: pos (data/raw/pos), web (data/raw/web)"
    assert_one_line(*outcome(capsys, caplog), expected)


def test_main_ingest_empty_source_folder_exits_2_naming_source_and_folder(spark, lake, capsys, caplog):
    folder = lake.parent / "raw" / "pos"
    folder.mkdir(parents=True)
    assert run_cli("ingest") == 2
    errors, everything = outcome(capsys, caplog)
    expected = (
        f"source 'pos' ({CONF / 'sources' / 'demo_pos.yaml'}): path: {folder} holds no files (Spark skips names "
        "that start with '_' or '.'); check the path, or put the source's files there"
    )
    assert_one_line(errors, everything, expected)
    assert "Unable to infer schema" not in everything


ORDER = (
    '{{"order_id":"{id}","customer":{customer},"created_at":"2024-03-01T10:00:00Z","kind":"order",'
    '"status":"completed","items":{items}}}'
)
ITEMS = '[{"position":1,"sku":"X","quantity":1,"price":2.0}]'


def write_raw(lake: Path, name: str, data: bytes) -> Path:
    raw = lake.parent / "raw" / name
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(data)
    return raw


def lake_table(spark, lake: Path, name: str):
    return io.read(spark, io.table_ref(StorageConfig("path", str(lake), None), name))


@pytest.mark.parametrize(
    "bad",
    [
        ORDER.format(id="W2", customer='"206"', items=ITEMS),  # a text where an object is mapped
        ORDER.format(id="W2", customer='{"id":"8"}', items=ITEMS[1:-1]),  # an object where an array is exploded
        ORDER.format(id="W2", customer='{"id":"8"}', items='["X"]'),  # a text where an array's objects are mapped
    ],
    ids=["customer_a_string", "items_an_object", "items_of_text"],
)
def test_main_ingest_json_record_of_another_shape_is_quarantined_and_the_rest_loads(spark, lake, capsys, caplog, bad):
    good = [ORDER.format(id=f"W{i}", customer=f'{{"id":"{i}"}}', items=ITEMS) for i in (1, 3)]
    raw = write_raw(lake, "web/orders.jsonl", "\n".join([good[0], bad, good[1]]).encode() + b"\n")
    write_raw(lake, "pos/empty.csv", b"")
    assert run_cli("ingest") == 0
    errors, _ = outcome(capsys, caplog)
    assert errors == []
    loaded = [r.invoice_id for r in lake_table(spark, lake, "transactions").orderBy("invoice_id").collect()]
    assert loaded == ["W1", "W3"]
    quarantined = [tuple(r) for r in lake_table(spark, lake, "transactions_quarantine").select(
        "source", "reason", "raw", "source_file").collect()]  # fmt: skip
    assert quarantined == [("web", "malformed_row", bad, f"file:{raw}")]
    logged = lake_table(spark, lake, "run_log").where("source = 'web'").select("rows_read", "accepted", "quarantined")
    assert [tuple(r) for r in logged.collect()] == [(3, 2, 1)]


POS_HEADER = b"receipt_no,line_no,loyalty_id,sku,qty,unit_price,sold_at,store_id\n"
BINARY = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # undecodable in UTF-8, control characters, a newline


def not_text(file: Path) -> str:
    return (
        f"source 'pos' ({CONF / 'sources' / 'demo_pos.yaml'}): {file} is not a text file in UTF-8 (its first line "
        "holds undecodable bytes or control characters: a binary file?); move it out of the source's path, or set "
        "options.encoding"
    )


@pytest.mark.parametrize("good_lines", [0, 40], ids=["alone", "beside_a_larger_good_file"])
def test_main_ingest_binary_csv_file_exits_2_naming_it_and_loads_nothing(spark, lake, capsys, caplog, good_lines):
    rows = b"".join(b"P%d,1,0042,SKU1,2,3.50,2024-06-01 10:00:00,S01\n" % i for i in range(good_lines))
    if good_lines:
        write_raw(lake, "pos/a_good.csv", POS_HEADER + rows)
        assert len(POS_HEADER + rows) > len(BINARY)
    binary = write_raw(lake, "pos/b_photo.csv", BINARY)
    write_raw(lake, "web/empty.jsonl", b"")
    assert run_cli("ingest") == 2
    errors, everything = outcome(capsys, caplog)
    assert_one_line(errors, everything, not_text(binary))
    assert "\ufffd" not in everything and "PNG" not in everything and "cannot resolve" not in everything
    assert not io.exists(spark, io.table_ref(StorageConfig("path", str(lake), None), "transactions"))


def test_main_ingest_csv_file_with_columns_in_another_order_exits_2_naming_it(spark, lake, capsys, caplog):
    write_raw(lake, "pos/a.csv", POS_HEADER + b"P1,1,0042,SKU1,2,3.50,2024-06-01 10:00:00,S01\n" * 3)
    swapped = write_raw(
        lake, "pos/b.csv", POS_HEADER.replace(b"qty,unit_price", b"unit_price,qty") + b"P2,1,0042,SKU1,9.99,1,x,S1\n"
    )
    write_raw(lake, "web/empty.jsonl", b"")
    assert run_cli("ingest") == 2
    expected = (
        f"source 'pos' ({CONF / 'sources' / 'demo_pos.yaml'}): {swapped}: its header is not the source's (columns in "
        "another order, missing or extra): expected qty, found unit_price; every file of a source must have the "
        "same header"
    )
    assert_one_line(*outcome(capsys, caplog), expected)
    assert not io.exists(spark, io.table_ref(StorageConfig("path", str(lake), None), "transactions"))


# --------------------------------------------------------------------------- features


def test_main_features_without_a_transactions_table_exits_2(spark, lake, capsys, caplog):
    assert run_cli("features") == 2
    assert_one_line(*outcome(capsys, caplog), f"no transactions table at {lake / 'transactions'}: run ingest first")


def test_main_features_on_an_empty_transactions_table_exits_2(spark, lake, capsys, caplog):
    path = write_table(spark, lake, "transactions", [], TRANSACTIONS)
    assert run_cli("features") == 2
    expected = f"the transactions table {path} is empty: run ingest first, or check its quarantine"
    assert_one_line(*outcome(capsys, caplog), expected)


def one_purchase(day: str) -> tuple:
    return ("t1", "pos", "c1", "i1", "1", "p1", 1.0, 5.0, 5.0, dt.datetime.fromisoformat(day), "s1", "pos", "purchase",
            False, "a.csv", "r0")  # fmt: skip


def test_main_features_as_of_before_every_transaction_exits_2_and_leaves_the_table(spark, lake, capsys, caplog):
    txns = write_table(spark, lake, "transactions", [one_purchase("2024-06-01T10:00:00")], TRANSACTIONS)
    features = write_table(spark, lake, "customer_features", [("c0", None, 1, 1, 1.0, 1.0)], FEATURES)
    before = version(spark, features)
    assert run_cli("features", "features.as_of_date=2024-01-01") == 2
    expected = (
        f"features.as_of_date 2024-01-01 is before every transaction in {txns} (the first is on 2024-06-01): no "
        "customer has any history. The features table is left as it was; choose a later date, or set "
        "features.allow_empty: true to write an empty one on purpose"
    )
    assert_one_line(*outcome(capsys, caplog), expected)
    assert version(spark, features) == before
    assert [r["customer_id"] for r in spark.read.format("delta").load(features).collect()] == ["c0"]


def test_main_features_as_of_before_every_transaction_writes_an_empty_table_when_allowed(spark, lake, capsys, caplog):
    txns = write_table(spark, lake, "transactions", [one_purchase("2024-06-01T10:00:00")], TRANSACTIONS)
    features = write_table(spark, lake, "customer_features", [("c0", None, 1, 1, 1.0, 1.0)], FEATURES)
    before = version(spark, features)
    assert run_cli("features", "features.as_of_date=2024-01-01", "features.allow_empty=true") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("custseg")]
    assert warnings == [
        f"features.as_of_date 2024-01-01 is before every transaction in {txns} (the first is on 2024-06-01): "
        "writing an empty features table (features.allow_empty)"
    ]
    assert version(spark, features) == before + 1
    assert spark.read.format("delta").load(features).count() == 0


# --------------------------------------------------------------------------- segment, score


def test_main_segment_without_a_features_table_exits_2(spark, lake, capsys, caplog):
    assert run_cli("segment") == 2
    expected = f"no customer features table at {lake / 'customer_features'}: run the features job first"
    assert_one_line(*outcome(capsys, caplog), expected)


def test_main_score_without_a_features_table_exits_2(spark, lake, capsys, caplog):
    assert run_cli("score") == 2
    expected = f"no customer features table at {lake / 'customer_features'}: run the features job first"
    assert_one_line(*outcome(capsys, caplog), expected)


def test_main_score_without_a_model_exits_2(spark, lake, capsys, caplog):
    write_table(spark, lake, "customer_features", [("c1", dt.date(2025, 1, 1), 3, 2, 10.0, 5.0)], FEATURES)
    assert run_cli("score") == 2
    expected = f"no model on record in {lake / 'segment_models'}: run the segment job first"
    assert_one_line(*outcome(capsys, caplog), expected)


# --------------------------------------------------------------------------- remotes, secrets, config log


def test_main_unreachable_connect_server_exits_2_within_10s_without_the_token(lake, monkeypatch, capsys, caplog):
    monkeypatch.setenv("MY_SECRET", SECRET)
    port = standalone.free_port()  # nothing listens there
    started = time.monotonic()
    assert run_cli("segment", f"spark.remote=sc://127.0.0.1:{port}/;token=${{MY_SECRET}}") == 2
    assert time.monotonic() - started < 10
    errors, everything = outcome(capsys, caplog)
    expected = (
        f"Spark Connect server sc://127.0.0.1:{port} (from spark.remote) is not reachable (Connection refused). "
        "Check that the server is running (sbin/start-connect-server.sh) and that spark.remote names its host and port."
    )
    assert_one_line(errors, everything, expected)
    assert SECRET not in everything
    assert f"sc://127.0.0.1:{port}/;token=***" in everything  # the config line, masked


def config_lines(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.getMessage().startswith("effective config")]


def test_main_logs_the_config_changes_at_info_and_all_of_it_only_at_debug(lake, tmp_path, capsys, caplog):
    # Missing Delta jars stop the run before any Spark session: a cheap run that logs its config.
    jars = tmp_path / "no-jars"
    assert run_cli("features", f"spark.delta_jars_dir={jars}") == 2
    ((level, compact),) = config_lines(caplog)
    assert level == "INFO"
    assert compact.startswith(f"effective config, where it differs from {CONF / 'base.yaml'} (--debug shows all): {{")
    assert f'"spark.delta_jars_dir": "{jars}"' in compact and '"segment.k_max": 6' in compact
    assert "rfm.segments" not in compact and "tables." not in compact  # base.yaml's defaults are not repeated
    caplog.clear()

    caplog.set_level(logging.DEBUG)  # as --debug sets it (basicConfig does not, under pytest)
    assert run_cli("features", f"spark.delta_jars_dir={jars}") == 2
    assert [level for level, _ in config_lines(caplog)] == ["INFO", "DEBUG"]
    full = config_lines(caplog)[1][1]
    assert '"segments": [{"f": [4, 5], "name": "Champions", "r": [5]}' in full and '"tables": {' in full


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The console command in a process of its own: everything it prints, the JVM's too."""
    env = {**os.environ, "MY_SECRET": SECRET, "PYTHONPATH": os.pathsep.join([str(ROOT / "lib"), str(ROOT)])}
    command = [sys.executable, "-m", "custseg.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_command_with_secrets_in_its_config_prints_none_of_them(tmp_path):
    sources = [str(CONF / "sources" / "demo_pos.yaml"), str(CONF / "sources" / "demo_web.yaml")]
    settings = [
        *TEST_SETTINGS,
        f"ingest.sources={sources}",
        "mlflow.tracking_uri=https://user:${MY_SECRET}@127.0.0.1:1",
        "mlflow.experiment=exp-${MY_SECRET}",
        "spark.conf.spark.hadoop.fs.azure.sas.container.account.blob.core.windows.net=${MY_SECRET}",
        "spark.conf.spark.driver.memory=1g",
        f"spark.conf.spark.driver.extraJavaOptions={JVM_OPTIONS}",
    ]
    args = ["features", "--debug", "--config", str(CONF / "base.yaml"), "--config", str(CONF / "local.yaml")]
    run = cli(*args, *[a for s in settings for a in ("--set", s)], cwd=tmp_path)  # a lake that is not there

    everything = run.stdout + run.stderr
    assert run.returncode == 2, everything[-3000:]
    errors = [line for line in everything.splitlines() if " ERROR custseg: " in line]
    lake = (tmp_path / "data" / "lake").resolve()
    expected = f"no transactions table at {lake / 'transactions'}: run ingest first"
    assert len(errors) == 1 and errors[0].endswith(expected), everything[-3000:]
    assert '"tracking_uri": "https://user:***@127.0.0.1:1"' in everything  # the full config, --debug
    assert SECRET not in everything


def test_cli_config_error_with_a_secret_names_the_reference_in_one_line(tmp_path):
    run = cli("segment", "--config", str(CONF / "base.yaml"), "--set", "segment.k_max=${MY_SECRET}", cwd=tmp_path)
    everything = run.stdout + run.stderr
    assert run.returncode == 2
    errors = [line for line in everything.splitlines() if " ERROR custseg: " in line]
    assert len(errors) == 1 and errors[0].endswith("--set: segment.k_max: expected an integer, got '${MY_SECRET}'")
    assert SECRET not in everything and "Traceback" not in everything


def test_cli_csv_file_with_columns_in_another_order_prints_one_line_and_no_java_trace(tmp_path):
    lake = tmp_path / "data" / "lake"
    write_raw(lake, "pos/a.csv", POS_HEADER + b"P1,1,0042,SKU1,2,3.50,2024-06-01 10:00:00,S01\n" * 3)
    swapped = write_raw(
        lake, "pos/b.csv", POS_HEADER.replace(b"qty,unit_price", b"unit_price,qty") + b"P2,1,0042,SKU1,9.99,1,x,S1\n"
    )
    write_raw(lake, "web/empty.jsonl", b"")
    sources = [str(CONF / "sources" / "demo_pos.yaml"), str(CONF / "sources" / "demo_web.yaml")]
    settings = [*TEST_SETTINGS, f"ingest.sources={sources}", f"spark.conf.spark.driver.extraJavaOptions={JVM_OPTIONS}"]
    args = ["ingest", "--config", str(CONF / "base.yaml"), "--config", str(CONF / "local.yaml")]

    run = cli(*args, *[a for s in settings for a in ("--set", s)], cwd=tmp_path)
    everything = run.stdout + run.stderr
    assert run.returncode == 2, everything[-3000:]
    errors = [line for line in everything.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{swapped.resolve()}: its header is not the source's" in errors[0], everything[-3000:]
    # The executor's and the scheduler's copies of the failed task's trace are not printed.
    assert "\tat " not in everything and "Exception in task" not in everything, everything[-3000:]


def test_print_profile_shows_a_source_without_rows_with_dashes(capsys):
    when = dt.datetime(2024, 3, 1, 10)
    web = {"source": "web", "rows": 1, "accepted": 1, "quarantined": 0, "null_rate_customer_id": 0.0,
           "distinct_customers": 1, "first_event_ts": when, "last_event_ts": when, "amount_p50": 2.0,
           "amount_p99": 2.0, "return_share": 0.0, "extreme_rows": 0}  # fmt: skip
    empty = {**dict.fromkeys(web), "source": "pos", "rows": 0, "accepted": 0, "quarantined": 0,
             "distinct_customers": 0, "extreme_rows": 0}  # fmt: skip
    custseg_cli.print_profile([empty, web])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[2].split() == ["pos", "0", "0", "0", "-", "0", "-", "-", "-", "-", "-", "0"]
    assert lines[3].split() == ["web", "1", "1", "0", "0.0", "1", "2024-03-01", "2024-03-01", "2.0", "2.0", "0.0", "0"]
    assert "NaN" not in "".join(lines) and "None" not in "".join(lines)


def test_print_profile_of_no_rows_says_so(capsys):
    custseg_cli.print_profile([])
    assert capsys.readouterr().out == "\nData profile: no rows read this run\n"


def _stub_pipeline(monkeypatch, value_error: Exception | None = None) -> list[str]:
    """Every stage of ``run`` a stub that records its name (value raising
    ``value_error`` when given); no Spark."""
    ran: list[str] = []

    def stage(name: str):
        def run(spark, cfg, run_id):
            ran.append(name)
            if name == "value" and value_error is not None:
                raise value_error

        return run

    stages = {name: (stage(name), help_text) for name, (_, help_text) in custseg_cli.STAGES.items()}
    monkeypatch.setattr(custseg_cli, "STAGES", stages)
    monkeypatch.setattr(custseg_cli, "print_summary", lambda spark, cfg, run_id: None)
    return ran


def test_run_all_runs_the_value_stage_after_features_and_before_segment(tmp_path, monkeypatch):
    ran = _stub_pipeline(monkeypatch)
    custseg_cli.run_all(None, make_config(tmp_path), "r1")
    assert ran == ["ingest", "features", "value", "segment", "profile", "report"]


def test_run_all_goes_on_without_customer_value_when_the_data_cannot_identify_the_model(tmp_path, monkeypatch, caplog):
    ran = _stub_pipeline(monkeypatch, ModelNotIdentifiedError("BG/NBD: no repeat customers"))
    with caplog.at_level(logging.WARNING, logger="custseg"):
        custseg_cli.run_all(None, make_config(tmp_path), "r1")
    assert ran == ["ingest", "features", "value", "segment", "profile", "report"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["value: BG/NBD: no repeat customers; the run goes on without customer value"]


def test_run_all_skips_the_value_stage_when_disabled_or_without_transactions(tmp_path, monkeypatch):
    ran = _stub_pipeline(monkeypatch)
    custseg_cli.run_all(None, make_config(tmp_path, "value.enabled=false"), "r1")
    custseg_cli.run_all(None, dataclasses.replace(make_config(tmp_path), sources=()), "r2")
    assert ran == ["ingest", "features", "segment", "profile", "report"] * 2
