"""Run one tool in its own process and measure it from outside: peak resident memory and
CPU time of the whole process tree (for Spark, the Python driver and its JVM), sampled
from /proc every 100 ms, with an optional memory cap.

Measuring from the parent keeps the tools' own code free of instrumentation, counts the
JVM (which Python's ``resource`` module would not see), and lets a cap stop a tool that
is about to exhaust the machine: the outcome is then recorded as ``OOM``, as it would be
in a notebook, instead of taking the harness (or the machine) down with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 0.1
HEARTBEAT_SECONDS = 60.0  # a long run logs the tree's memory this often
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
PF_FORKNOEXEC = 0x40  # proc(5) flags: forked but has not called exec


@dataclass
class Outcome:
    """What the parent saw of one tool process."""

    returncode: int | None = None
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0  # user + system time of every process of the tree
    peak_rss: int = 0  # bytes, the tree's resident set summed over its processes
    peak_rss_by_command: dict[str, int] = field(default_factory=dict)  # e.g. python, java
    killed_for_memory: bool = False
    timed_out: bool = False
    samples: list[tuple[float, int]] = field(default_factory=list)  # (epoch seconds, tree RSS bytes)

    def peak_between(self, start: float, end: float) -> int | None:
        """The highest tree RSS sampled while a stage ran (one sample either side, so a
        stage shorter than the sampling interval still gets a value)."""
        inside = [rss for t, rss in self.samples if start - SAMPLE_SECONDS <= t <= end + SAMPLE_SECONDS]
        return max(inside) if inside else None


def _stat(pid: int) -> tuple[int, int, str, int, int] | None:
    """(parent pid, user + system clock ticks, command name, kernel flags, virtual size)
    of a process, or None if it is gone. The command may hold spaces and parentheses, so
    fields are split after the last ')'."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()  # fields[i] is field i + 3 of proc(5)
    return int(fields[1]), int(fields[11]) + int(fields[12]), comm, int(fields[6]), int(fields[20])


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def all_stats() -> dict[int, tuple[int, int, str, int, int]]:
    """``_stat`` of every live process."""
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None:
                stats[int(entry.name)] = found
    return stats


def process_tree(
    root: int, stats: dict[int, tuple[int, int, str, int, int]] | None = None
) -> dict[int, tuple[int, str, bool]]:
    """Every live process descended from ``root`` (and root): pid -> (CPU ticks, command,
    whether it is a not-yet-exec'd copy of its parent's address space).

    The JVM starts a command (Hadoop's local file system runs chmod, ls...) through
    posix_spawn: for a moment the child shares the parent's memory (CLONE_VM) under the
    name of the parent's thread, and its resident set is the whole JVM's. Counted, it
    doubled a 10 GiB driver at one sample and tripped the memory cap. Such a child, and a
    fresh fork that has not diverged yet, is flagged: PF_FORKNOEXEC and its parent's
    virtual size."""
    stats = all_stats() if stats is None else stats
    tree, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in stats and pid not in tree:
            parent, ticks, command, flags, vsize = stats[pid]
            copy = pid != root and bool(flags & PF_FORKNOEXEC) and parent in stats and stats[parent][4] == vsize
            tree[pid] = (ticks, command, copy)
            frontier.extend(child for child, found in stats.items() if found[0] == pid)
    return tree


class _Sampler(threading.Thread):
    """Samples the tree until the process ends; kills it when it exceeds the cap."""

    def __init__(self, proc: subprocess.Popen, label: str, cap: int | None, timeout: float | None) -> None:
        super().__init__(daemon=True)
        self.proc, self.label, self.cap, self.timeout = proc, label, cap, timeout
        self.outcome = Outcome()
        self.cpu_ticks: dict[int, int] = {}  # last seen per pid: a finished process keeps its time
        self.stopped = threading.Event()

    def run(self) -> None:
        started = last_beat = time.monotonic()
        while not self.stopped.is_set() and self.proc.poll() is None:
            self.sample()
            now = time.monotonic()
            if now - last_beat >= HEARTBEAT_SECONDS:
                rss = self.outcome.samples[-1][1] if self.outcome.samples else 0
                log.info("%s: running for %.0fs, memory %.2f GiB (peak %.2f GiB)", self.label, now - started,
                         rss / GIB, self.outcome.peak_rss / GIB)  # fmt: skip
                last_beat = now
            if self.timeout and now - started > self.timeout:
                self.outcome.timed_out = True
                self.kill(f"still running after {self.timeout:.0f}s")
            self.stopped.wait(SAMPLE_SECONDS)

    def sample(self) -> None:
        tree = process_tree(self.proc.pid)
        total = 0
        for pid, (ticks, command, copy) in tree.items():
            rss = 0 if copy else _rss(pid)
            total += rss
            self.cpu_ticks[pid] = ticks
            by_command = self.outcome.peak_rss_by_command
            by_command[command] = max(by_command.get(command, 0), rss)
        self.outcome.samples.append((time.time(), total))
        self.outcome.peak_rss = max(self.outcome.peak_rss, total)
        if self.cap and total > self.cap and not self.outcome.killed_for_memory:
            self.outcome.killed_for_memory = True
            self.kill(f"memory {total / GIB:.2f} GiB is over the {self.cap / GIB:.2f} GiB cap")

    def kill(self, why: str) -> None:
        log.warning("%s: %s: killing its process group", self.label, why)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def run_measured(
    command: Sequence[str], label: str, cwd: Path, cap_bytes: int | None = None, timeout: float | None = None
) -> Outcome:
    """Run ``command`` in a new process group (so the JVM a Spark driver starts is killed
    with it) and return what was measured. Its output goes to this process's output."""
    log.info("%s: starting %s", label, " ".join(command))
    started = time.monotonic()
    proc = subprocess.Popen(list(command), cwd=cwd, start_new_session=True)
    sampler = _Sampler(proc, label, cap_bytes, timeout)
    sampler.start()
    try:
        proc.wait()
    except BaseException:  # Ctrl-C on the harness: take the tool (and its JVM) down too
        sampler.kill("the harness was interrupted")
        raise
    finally:
        sampler.stopped.set()
        sampler.join()
    # Processes the tool left behind (none, normally) must not outlive the measurement.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    outcome = sampler.outcome
    outcome.returncode = proc.returncode
    outcome.wall_seconds = time.monotonic() - started
    outcome.cpu_seconds = sum(sampler.cpu_ticks.values()) / CLOCK_TICKS
    log.info("%s: exited with %s after %.1fs; peak memory %.2f GiB, CPU %.1fs", label, proc.returncode,
             outcome.wall_seconds, outcome.peak_rss / GIB, outcome.cpu_seconds)  # fmt: skip
    return outcome
