"""The CRM export: its contract and change set on literal rows, and the sync against a
real PostgreSQL server (Debian's binaries, `make postgres`), started for this module in
a temporary folder: a first sync, an incremental sync after a retrain, reruns that send
nothing, a run stopped between the staging table and the upsert and one killed inside
the upsert's transaction, each completed by the next run; the counts in run_log; the
file targets' columns; credentials never in the output."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from custseg import cli, io
from custseg.config import Config, ConfigError
from custseg.segment import job as segment_job
from custseg.serve import crm, postgres
from custseg.serve import job as serve_job
from tests.conftest import CONF, JVM_OPTIONS, NO_CODEGEN, ROOT, TEST_SETTINGS, make_config

psycopg = pytest.importorskip("psycopg", reason="the CRM export's tests need psycopg: pip install 'custseg[crm]'")

USER, PASSWORD = "custseg_crm", "pg-Pa55-Zq9x-7731"
USER_ENV, PASSWORD_ENV = "TEST_CRM_USER", "TEST_CRM_PASSWORD"
T0 = dt.datetime(2025, 1, 10, 8, 0)  # the first segment run
T1 = dt.datetime(2025, 2, 10, 8, 0)  # the retrain

HISTORY_ROWS = "customer_id STRING, segment_id INT, model_version STRING, as_of_date DATE, run_id STRING"
PROFILES = "run_id STRING, segment_id INT, segment_name STRING, description STRING"
FEATURES = "customer_id STRING, as_of_date DATE, rfm_segment STRING"


# --------------------------------------------------------------------------- a PostgreSQL server


@dataclass(frozen=True)
class Server:
    port: int

    def url(self) -> str:
        return f"jdbc:postgresql://127.0.0.1:{self.port}/crm"

    def connect(self):
        return psycopg.connect(
            host="127.0.0.1", port=self.port, dbname="crm", user=USER, password=PASSWORD, autocommit=True
        )


def _server_binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    bin_dir = _server_binaries()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("no PostgreSQL server binaries (initdb, pg_ctl): `make postgres` installs Debian's postgresql")
        pytest.skip("no PostgreSQL server binaries: install postgresql (`make postgres` does, as root)")
    # PostgreSQL refuses to run as root: as root, the server's folder and processes are the postgres user's.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="custseg-pg-"))
    data, pwfile, port = base / "data", base / "pw", _free_port()
    pwfile.write_text(PASSWORD + "\n")
    if as_user:
        shutil.chown(base, "postgres")
        shutil.chown(pwfile, "postgres")

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=60)

    try:
        pg(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start")
        with psycopg.connect(
            host="127.0.0.1", port=port, dbname="postgres", user=USER, password=PASSWORD, autocommit=True
        ) as admin:
            admin.execute("CREATE DATABASE crm")
        yield Server(port)
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- a lake by hand


def export_config(tmp_path: Path, server: Server | None, table: str, *overrides: str) -> Config:
    jdbc = [f"export.jdbc_url={server.url()}"] if server else []
    return make_config(
        tmp_path,
        *jdbc,
        f"export.table={table}",
        f"export.user_env={USER_ENV}",
        f"export.password_env={PASSWORD_ENV}",
        f"export.path={tmp_path / 'exports'}",
        *overrides,
    )


@pytest.fixture
def credentials(monkeypatch) -> None:
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


def segment_run(
    spark,
    cfg: Config,
    run_id: str,
    run_ts: dt.datetime,
    labels: dict[str, int],
    names: dict[int, tuple[str, str]],
    rfm: dict[str, str],
) -> None:
    """What a segment run and a profile run leave for the export: labels (merged into the
    history by the segment job's own writer), segment profiles and features."""
    tables, as_of = cfg.tables, run_ts.date()
    rows = [(cid, sid, f"model-{run_id}", as_of, run_id) for cid, sid in sorted(labels.items())]
    labelled = spark.createDataFrame(rows, HISTORY_ROWS)
    io.overwrite(labelled, io.table_ref(cfg.storage, tables.labels))
    segment_job.merge_history(spark, labelled, io.table_ref(cfg.storage, tables.label_history), run_id, run_ts)
    profiles = spark.createDataFrame([(run_id, sid, *names[sid]) for sid in sorted(names)], PROFILES)
    io.overwrite(profiles, io.table_ref(cfg.storage, tables.segment_profiles))
    features = spark.createDataFrame([(cid, as_of, seg) for cid, seg in sorted(rfm.items())], FEATURES)
    io.overwrite(features, io.table_ref(cfg.storage, tables.features))


NAMES_1 = {-1: ("Unsegmented", "No purchase yet"), 0: ("High-value active", "Buys often"), 1: ("Lapsed", "Gone quiet")}
RFM_1 = {"a": "Champions", "b": "At Risk", "c": "Champions", "d": "Other"}


def first_run(spark, cfg: Config) -> None:
    segment_run(spark, cfg, "r1", T0, {"a": 0, "b": 1, "c": 0, "d": -1}, NAMES_1, RFM_1)
    value = spark.createDataFrame([("a", 120.5), ("b", 30.0)], "customer_id STRING, clv DOUBLE")
    io.overwrite(value, io.table_ref(cfg.storage, cfg.tables.customer_value))


def retrain(spark, cfg: Config) -> None:
    """b and c swap segments; segment -1 is renamed (d's label stays); a is unchanged."""
    names = {**NAMES_1, -1: ("No purchase", "No purchase before the as-of date")}
    segment_run(spark, cfg, "r2", T1, {"a": 0, "b": 0, "c": 1, "d": -1}, names, {**RFM_1, "b": "Loyal Customers"})


def target_rows(server: Server, table: str) -> dict[str, tuple]:
    with server.connect() as conn:
        rows = conn.execute(f"SELECT {', '.join(crm.EXPORT_COLUMNS)} FROM {table}").fetchall()
    return {r[0]: (*r[1:-1], r[-1].astimezone(dt.UTC).replace(tzinfo=None)) for r in rows}


def export_log(spark, cfg: Config) -> list[tuple]:
    run_log = io.read(spark, io.table_ref(cfg.storage, cfg.tables.run_log)).where(F.col("job") == "export")
    return sorted((r.run_id, r.rows_read, r.rows_sent, r.rows_applied) for r in run_log.collect())


def export_cli(*settings: str) -> int:
    """``custseg export`` in this process, on the test config (sources by absolute path)."""
    sources = [str(CONF / "sources" / "demo_pos.yaml"), str(CONF / "sources" / "demo_web.yaml")]
    args = ["export", "--config", str(CONF / "base.yaml"), "--config", str(CONF / "local.yaml")]
    for setting in (*TEST_SETTINGS, f"ingest.sources={sources}", *settings):
        args += ["--set", setting]
    return cli.main(args)


# --------------------------------------------------------------------------- the contract (no database)


def test_current_records_are_the_contract_with_names_rfm_and_clv(spark):
    history = spark.createDataFrame(
        [
            ("a", 0, "m1", dt.date(2025, 1, 9), "r1", T0, None, True),
            ("b", 1, "m1", dt.date(2025, 1, 9), "r1", T0, T1, False),
            ("b", 0, "m2", dt.date(2025, 2, 9), "r2", T1, None, True),
            ("d", -1, "m1", dt.date(2025, 1, 9), "r1", T0, None, True),
        ],
        "customer_id STRING, segment_id INT, model_version STRING, as_of_date DATE, run_id STRING, "
        "valid_from TIMESTAMP, valid_to TIMESTAMP, is_current BOOLEAN",
    )
    profiles = spark.createDataFrame(
        [("r2", 0, "Best", "Buys often"), ("r2", -1, "Unsegmented", "No purchase")], PROFILES
    )
    features = spark.createDataFrame(
        [("a", dt.date(2025, 2, 9), "Champions"), ("b", dt.date(2025, 2, 9), "At Risk")], FEATURES
    )
    value = spark.createDataFrame([("a", 99.5)], "customer_id STRING, clv DOUBLE")

    records = history.transform(crm.current_records(profiles, features, value))

    expected = spark.createDataFrame(
        [
            ("a", 0, "Best", "Buys often", "Champions", 99.5, "m1", T0),
            ("b", 0, "Best", "Buys often", "At Risk", None, "m2", T1),
            ("d", -1, "Unsegmented", "No purchase", None, None, "m1", T0),
        ],
        crm.EXPORT_SCHEMA,
    )
    assert records.columns == list(crm.EXPORT_COLUMNS)
    assert_df_equality(records, expected, ignore_row_order=True, ignore_nullable=True)
    without_value = history.transform(crm.current_records(profiles, features, None))
    assert without_value.columns == list(crm.EXPORT_COLUMNS)
    assert [r.clv for r in without_value.collect()] == [None, None, None]


def test_changed_since_takes_segments_entered_after_the_watermark_and_renamed_segments(spark):
    records = spark.createDataFrame(
        [
            ("a", 0, "Best", "d0", None, None, "m1", T0),
            ("b", 0, "Best", "d0", None, None, "m2", T1),
            ("c", 1, "Lapsed", "d1", None, None, "m1", T0),
            ("d", -1, "None", "d-1", None, None, "m1", T0),
        ],
        crm.EXPORT_SCHEMA,
    )
    profiles = spark.createDataFrame(
        [("r2", 0, "Best", "d0"), ("r2", 1, "Lapsed", "new words"), ("r2", -1, "None", "d-1")], PROFILES
    )
    sent = spark.createDataFrame([(0, "Best", "d0"), (1, "Lapsed", "d1"), (-1, "None", "d-1")], crm.SEGMENTS_SCHEMA)

    renamed = profiles.transform(crm.renamed_segments(sent))
    changes = records.transform(crm.changed_since(T0, renamed))

    assert [r.segment_id for r in renamed.collect()] == [1]  # a new description is a change
    assert sorted(r.customer_id for r in changes.collect()) == ["b", "c"]  # b moved after T0, c's segment renamed
    nothing_sent = profiles.transform(crm.renamed_segments(spark.createDataFrame([], crm.SEGMENTS_SCHEMA)))
    assert sorted(r.segment_id for r in nothing_sent.collect()) == [-1, 0, 1]
    assert records.transform(crm.changed_since(None, renamed.limit(0))).count() == 4


def test_upsert_sql_updates_only_rows_that_differ():
    sql = crm.upsert_sql("crm.segments")
    assert sql.startswith("INSERT INTO crm.segments AS t (customer_id, segment_id, segment_name, description, ")
    assert "FROM crm.segments_staging ON CONFLICT (customer_id) DO UPDATE SET segment_id = EXCLUDED.segment_id" in sql
    assert sql.endswith("EXCLUDED.model_version, EXCLUDED.valid_from)")


def test_target_of_names_database_and_table_and_refuses_credentials_in_the_url(tmp_path):
    ex = export_config(tmp_path, Server(5432), "crm.segments").export
    assert serve_job.target_of(ex) == "postgresql://127.0.0.1:5432/crm#crm.segments"
    for url, key in [
        ("jdbc:postgresql://u:pw@127.0.0.1/crm", "export.jdbc_url"),
        ("jdbc:postgresql://127.0.0.1/crm?user=u&password=pw", "export.jdbc_url"),
        ("jdbc:mysql://127.0.0.1/crm", "export.jdbc_url"),
    ]:
        with pytest.raises(ConfigError, match=key) as error:
            serve_job.target_of(dataclasses.replace(ex, jdbc_url=url))
        assert "pw" not in str(error.value)
    with pytest.raises(ConfigError, match="export.table"):
        serve_job.target_of(dataclasses.replace(ex, table="Segments; DROP TABLE x"))


# --------------------------------------------------------------------------- against PostgreSQL


def test_export_first_sync_then_incremental_after_a_retrain_and_reruns_send_nothing(
    spark, server, tmp_path, credentials
):
    cfg = export_config(tmp_path, server, "segments")
    first_run(spark, cfg)

    first = serve_job.run(spark, cfg, "e1")
    assert (first.changed, first.sent, first.applied) == (4, 4, 4)
    assert target_rows(server, "segments") == {
        "a": (0, "High-value active", "Buys often", "Champions", 120.5, "model-r1", T0),
        "b": (1, "Lapsed", "Gone quiet", "At Risk", 30.0, "model-r1", T0),
        "c": (0, "High-value active", "Buys often", "Champions", None, "model-r1", T0),
        "d": (-1, "Unsegmented", "No purchase yet", "Other", None, "model-r1", T0),
    }
    rerun = serve_job.run(spark, cfg, "e2")
    assert (rerun.changed, rerun.sent, rerun.applied) == (0, 0, 0)

    retrain(spark, cfg)
    incremental = serve_job.run(spark, cfg, "e3")
    assert (incremental.changed, incremental.sent, incremental.applied) == (3, 3, 3)  # b, c moved; d's name changed
    rows = target_rows(server, "segments")
    assert rows["a"] == (0, "High-value active", "Buys often", "Champions", 120.5, "model-r1", T0)  # not sent again
    assert rows["b"] == (0, "High-value active", "Buys often", "Loyal Customers", 30.0, "model-r2", T1)
    assert rows["c"] == (1, "Lapsed", "Gone quiet", "Champions", None, "model-r2", T1)
    assert rows["d"] == (-1, "No purchase", "No purchase before the as-of date", "Other", None, "model-r1", T0)

    # reconciled in run_log: rows sent = customers changed, per run
    assert export_log(spark, cfg) == [("e1", 4, 4, 4), ("e2", 0, 0, 0), ("e3", 3, 3, 3)]
    with server.connect() as conn:
        assert conn.execute("SELECT count(*) FROM segments_staging").fetchone()[0] == 0


def test_export_stopped_after_staging_or_killed_in_its_transaction_leaves_the_target_and_the_next_run_completes(
    spark, server, tmp_path, credentials, monkeypatch
):
    cfg = export_config(tmp_path, server, "stopped")
    first_run(spark, cfg)
    with server.connect() as conn:  # what the CRM holds already: one customer, in an older segment
        conn.execute(crm.target_ddl("stopped"))
        conn.execute("INSERT INTO stopped (customer_id, segment_id, valid_from) VALUES ('a', 1, '2024-01-01')")
    before = target_rows(server, "stopped")

    # 1. stopped between the staging write and the upsert
    def stopped(table: str) -> str:
        raise KeyboardInterrupt("stopped between the staging write and the upsert")

    with monkeypatch.context() as patch:
        patch.setattr(crm, "upsert_sql", stopped)
        with pytest.raises(KeyboardInterrupt):
            serve_job.run(spark, cfg, "e1")
    with server.connect() as conn:
        assert conn.execute("SELECT count(*) FROM stopped_staging").fetchone()[0] == 4  # staged, never upserted
    assert target_rows(server, "stopped") == before
    assert not io.exists(spark, io.table_ref(cfg.storage, cfg.tables.crm_exports))  # no watermark

    # 2. killed (SIGKILL) inside the upsert's transaction, after the INSERT ... ON CONFLICT
    output = killed_in_transaction(cfg, server, tmp_path)
    assert "waiting 120 s before the commit" in output
    assert PASSWORD not in output  # the --debug log of a run with the real password
    assert target_rows(server, "stopped") == before  # the server rolled the transaction back
    assert not io.exists(spark, io.table_ref(cfg.storage, cfg.tables.crm_exports))

    # 3. the next run completes the sync
    completed = serve_job.run(spark, cfg, "e3")
    assert (completed.changed, completed.sent, completed.applied) == (4, 4, 4)
    expected_a = (0, "High-value active", "Buys often", "Champions", 120.5, "model-r1", T0)
    assert target_rows(server, "stopped")["a"] == expected_a
    assert export_log(spark, cfg) == [("e3", 4, 4, 4)]


def killed_in_transaction(cfg: Config, server: Server, tmp_path: Path) -> str:
    """Run ``custseg export`` (--debug) in a process of its own, SIGKILL it once its
    upsert waits inside the transaction, and return what it printed."""
    args = [sys.executable, "-m", "custseg.cli", "export", "--run-id", "killed-run", "--debug"]
    args += ["--config", str(CONF / "base.yaml"), "--config", str(CONF / "local.yaml")]
    sources = [str(CONF / "sources" / "demo_pos.yaml"), str(CONF / "sources" / "demo_web.yaml")]
    settings = [
        *TEST_SETTINGS,
        f"ingest.sources={sources}",
        f"storage.root={cfg.storage.root}",
        f"export.jdbc_url={server.url()}",
        f"export.table={cfg.export.table}",
        f"export.user_env={USER_ENV}",
        f"export.password_env={PASSWORD_ENV}",
        f"spark.conf={{spark.driver.extraJavaOptions: '{JVM_OPTIONS}', {NO_CODEGEN}}}",
    ]
    for setting in settings:
        args += ["--set", setting]
    env = {**os.environ, serve_job.PAUSE_BEFORE_COMMIT_ENV: "120", "PYTHONPATH": f"{ROOT / 'lib'}:{ROOT}"}
    log_file = tmp_path / "export.log"  # a file, not a pipe: nobody reads a pipe while the job runs
    in_transaction = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'custseg export' "
        "AND state = 'idle in transaction'"
    )
    with open(log_file, "wb") as out:
        job = subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        with server.connect() as conn:
            while conn.execute(in_transaction).fetchone()[0] == 0:
                assert job.poll() is None, log_file.read_text()
                assert time.monotonic() < deadline, "the export never reached its transaction"
                time.sleep(0.2)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    with server.connect() as conn:  # the server ends the session (and its advisory lock) once it sees the kill
        ours = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'custseg export'"
        while conn.execute(ours).fetchone()[0] and time.monotonic() < deadline + 30:
            time.sleep(0.1)
    return log_file.read_text()


def test_a_second_export_to_the_same_table_is_refused_while_the_first_holds_its_lock(server):
    creds = postgres.Credentials(USER, PASSWORD)
    where = postgres.address(server.url())
    with postgres.connect(where, creds, 5) as first, postgres.connect(where, creds, 5) as second:
        postgres.lock_table(first, "locked")
        with pytest.raises(postgres.CrmDatabaseError, match="another export to locked is running"):
            postgres.lock_table(second, "locked")
        postgres.lock_table(second, "another_table")
    with postgres.connect(where, creds, 5) as third:  # the first connection closed: its lock with it
        postgres.lock_table(third, "locked")


def test_export_refuses_segment_profiles_of_another_run_than_the_labels(spark, tmp_path, credentials):
    cfg = export_config(tmp_path, None, "unused", "export.format=csv")
    labels = spark.createDataFrame([("a", 0, "model-r1", T0.date(), "r1")], HISTORY_ROWS)
    io.overwrite(labels, io.table_ref(cfg.storage, cfg.tables.labels))
    stale = spark.createDataFrame([("r0", 0, "Old name", "Old words")], PROFILES)  # the profiles of an older run
    io.overwrite(stale, io.table_ref(cfg.storage, cfg.tables.segment_profiles))
    with pytest.raises(io.PrerequisiteError, match="run the profile job first"):
        serve_job.run(spark, cfg, "e1")


def test_export_with_a_wrong_password_exits_2_in_one_line_without_it(
    spark, server, tmp_path, monkeypatch, caplog, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(USER_ENV, USER)
    monkeypatch.setenv(PASSWORD_ENV, "wrong-Secret-4411")
    rc = export_cli(
        f"export.jdbc_url={server.url()}", f"export.user_env={USER_ENV}", f"export.password_env={PASSWORD_ENV}"
    )
    printed = capsys.readouterr()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert rc == 2
    assert len(errors) == 1 and "password authentication failed" in errors[0], errors
    assert "wrong-Secret-4411" not in printed.out + printed.err + caplog.text


def test_export_to_an_unreachable_database_exits_2_within_seconds(tmp_path, monkeypatch, caplog, credentials):
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    rc = export_cli(
        f"export.jdbc_url=jdbc:postgresql://127.0.0.1:{_free_port()}/crm",
        f"export.user_env={USER_ENV}",
        f"export.password_env={PASSWORD_ENV}",
        "export.connect_timeout=2",
    )
    assert rc == 2
    assert time.monotonic() - started < 10
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "is not reachable" in errors[0], errors


def test_export_without_the_credentials_in_the_environment_exits_2_naming_the_variables(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CUSTSEG_CRM_PASSWORD", raising=False)
    monkeypatch.setenv("CUSTSEG_CRM_USER", USER)
    rc = export_cli("export.jdbc_url=jdbc:postgresql://127.0.0.1:5432/crm")
    assert rc == 2
    assert "$CUSTSEG_CRM_PASSWORD (export.password_env) is not set" in caplog.text


# --------------------------------------------------------------------------- files


def test_file_export_writes_the_contract_as_csv_and_parquet_and_a_rerun_writes_nothing(spark, tmp_path):
    cfg = export_config(tmp_path, None, "unused", "export.format=csv")
    first_run(spark, cfg)

    assert serve_job.run(spark, cfg, "f1").sent == 4
    parquet_cfg = dataclasses.replace(
        cfg, export=dataclasses.replace(cfg.export, format="parquet", path=str(tmp_path / "parquet"))
    )
    assert serve_job.run(spark, parquet_cfg, "p1").sent == 4  # another target: a first export of its own

    csv_folder, parquet_folder = tmp_path / "exports" / "f1", tmp_path / "parquet" / "p1"
    csv_file = next(csv_folder.glob("*.csv"))
    assert csv_file.read_text().splitlines()[0] == ",".join(crm.EXPORT_COLUMNS)
    assert "2025-01-10T08:00:00.000000Z" in csv_file.read_text()  # timestamps with their offset
    from_csv = spark.read.options(header="true").schema(crm.EXPORT_SCHEMA).csv(str(csv_folder))
    from_parquet = spark.read.parquet(str(parquet_folder))
    assert from_parquet.schema.simpleString() == spark.createDataFrame([], crm.EXPORT_SCHEMA).schema.simpleString()
    for folder in (csv_folder, parquet_folder):
        assert (folder / "_SUCCESS").exists() and len([p for p in folder.glob("part-*")]) == 1
    expected = spark.createDataFrame(
        [
            ("a", 0, "High-value active", "Buys often", "Champions", 120.5, "model-r1", T0),
            ("b", 1, "Lapsed", "Gone quiet", "At Risk", 30.0, "model-r1", T0),
            ("c", 0, "High-value active", "Buys often", "Champions", None, "model-r1", T0),
            ("d", -1, "Unsegmented", "No purchase yet", "Other", None, "model-r1", T0),
        ],
        crm.EXPORT_SCHEMA,
    )
    assert_df_equality(from_csv, expected, ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(from_parquet, expected, ignore_row_order=True, ignore_nullable=True)

    assert serve_job.run(spark, cfg, "f2").sent == 0
    assert not (tmp_path / "exports" / "f2").exists()
