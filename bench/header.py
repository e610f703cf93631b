"""A benchmark's report head (the machine, the foreman under test, the command), progress lines, the report's way out.

The facts are gathered here once; each report (run.py's results.md,
soak.py's soak-results.md, queue_cost.py's stdout) lays them out its own way.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass

import procs


@dataclass(frozen=True)
class Machine:
    cpu: str  # /proc/cpuinfo's model name
    cores: int | None
    memory_gib: float
    kernel: str
    python: str
    tornado: str
    load1: float  # load average over 1 and 5 minutes, when the run starts
    load5: float


def machine() -> Machine:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory = float("nan")
    try:
        import tornado

        tornado_version = tornado.version
    except ImportError:
        tornado_version = "not importable here"
    load1, load5, _ = os.getloadavg()
    return Machine(
        cpu, os.cpu_count(), memory, platform.release(), platform.python_version(), tornado_version, load1, load5
    )


def git(*args: str) -> str:
    """`git args` in the repository: its output, or "" if git fails."""
    try:
        done = subprocess.run(["git", *args], cwd=procs.REPO, capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def foreman_under_test(rev: str | None, dirty_mark: str = "") -> str:
    """Which foreman/ runs: as committed at `rev` (`--foreman-rev`), or the working tree at its commit.

    `dirty_mark` wraps the warning about uncommitted changes (e.g. "**" to make it stand out).
    """
    if rev:
        return f"foreman/ as committed at {git('rev-parse', '--short', rev) or rev} (`--foreman-rev {rev}`)"
    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "foreman")
    return f"the working tree at commit {commit}" + (
        f", {dirty_mark}with uncommitted changes under foreman/{dirty_mark}" if dirty else " (foreman/ clean)"
    )


def date_item() -> str:
    return f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}"


def command_line() -> str:
    """This run's command, as one would type it from the current directory."""
    return shlex.join(["python", os.path.relpath(sys.argv[0], os.getcwd()), *sys.argv[1:]])


def command_item(quick: bool) -> str:
    return f"- command: `{command_line()}`{' (smoke run)' if quick else ''}"


def log(message: str) -> None:
    """Progress goes to stderr: stdout is for the report."""
    print(message, file=sys.stderr, flush=True)


def publish(report: str, path: str) -> None:
    """The report to stdout and to `path`; where it went to stderr."""
    print(report)
    with open(path, "w") as f:
        f.write(report + "\n")
    log(f"written to {os.path.relpath(path)}")
