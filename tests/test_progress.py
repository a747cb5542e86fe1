"""Stage and step lines: what an operator reads while a job runs."""

from __future__ import annotations

import logging
import re

import pytest

from custseg import progress


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "custseg.progress"]


def test_stage_logs_start_then_time_and_row_counts(caplog):
    with caplog.at_level(logging.INFO), progress.stage("features") as counts:
        counts["customers"] = 2000
        counts["quarantined"] = 3
    start, end = messages(caplog)
    assert start == "features: started"
    assert re.fullmatch(r"features: done in \d+\.\ds: 2,000 customers, 3 quarantined", end)


def test_failed_stage_says_so_and_reraises(caplog):
    with caplog.at_level(logging.INFO), pytest.raises(ValueError), progress.stage("segment"):
        raise ValueError("boom")
    assert re.fullmatch(r"segment: failed after \d+\.\ds", messages(caplog)[-1])


def test_steps_count_up_and_estimate_the_time_left(caplog):
    steps = progress.Steps("k sweep", 3)
    with caplog.at_level(logging.INFO):
        for k in (2, 3, 4):
            steps.step(f"k={k}")
    lines = messages(caplog)
    assert [line.split(" (")[0] for line in lines] == ["k sweep 1/3: k=2", "k sweep 2/3: k=3", "k sweep 3/3: k=4"]
    assert all("left)" in line for line in lines[:2]) and "left" not in lines[2]


def test_ci_is_never_interactive(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert not progress.interactive()
