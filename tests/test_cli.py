"""What a user sees when something is missing or wrong: exit code 2, one line that says
what to fix, no traceback, and no secret anywhere in the output."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from custseg import standalone
from tests.test_e2e import run_cli

SECRET = "s3cr3t-Zq9x-7731"


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
    assert f'"sc://127.0.0.1:{port}/;token=***"' in everything  # the config line, masked
