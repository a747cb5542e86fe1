"""The thin spark-submit entry points in jobs/."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from custseg import cli

JOBS = sorted((Path(__file__).resolve().parent.parent / "jobs").glob("*.py"))


def test_no_entry_point_shadows_a_standard_library_module():
    # spark-submit puts the script's folder first on sys.path: a jobs/profile.py would
    # replace the standard library's `profile`, which pyspark imports, and break every job
    shadowing = [p.name for p in JOBS if p.stem in sys.stdlib_module_names]
    assert not shadowing, f"rename {shadowing}: they shadow standard library modules"


def test_every_entry_point_runs_a_known_stage_and_every_stage_has_one():
    stages = {re.search(r'main\(\["([\w-]+)"', p.read_text()).group(1) for p in JOBS}
    assert stages == set(cli.STAGES)
