"""What a running job tells its operator: each stage's start, row counts and time, and,
for the loops that take minutes (the k sweep, stability refits), one line per step
with the time left.

On a terminal Spark's own console progress bar also shows the tasks of the running
step (see ``spark.session_conf``); in CI and in log files it stays off, so the logs
hold only these lines.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("custseg.progress")


def interactive() -> bool:
    """A person is watching: stderr is a terminal and this is not a CI run."""
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextmanager
def stage(name: str) -> Iterator[dict[str, int]]:
    """Log a stage's start and end; the caller fills the yielded dict with row counts,
    which the end line shows (``features done in 6.1s: 2,000 customers``)."""
    counts: dict[str, int] = {}
    started = time.perf_counter()
    log.info("%s: started", name)
    try:
        yield counts
    except BaseException:
        log.info("%s: failed after %.1fs", name, time.perf_counter() - started)
        raise
    shown = ", ".join(f"{value:,} {key}" for key, value in counts.items())
    log.info("%s: done in %.1fs%s", name, time.perf_counter() - started, f": {shown}" if shown else "")


class Steps:
    """A loop of ``total`` similar steps; ``step`` logs one line with the step's time
    and an estimate of the time left."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total, self.done = what, total, 0
        self.started = self.last = time.perf_counter()

    def step(self, detail: str) -> None:
        now = time.perf_counter()
        self.done += 1
        left = (now - self.started) / self.done * (self.total - self.done)
        log.info("%s %d/%d: %s (%.1fs%s)", self.what, self.done, self.total, detail, now - self.last,
                 f"; about {left:.0f}s left" if self.done < self.total else "")  # fmt: skip
        self.last = now
