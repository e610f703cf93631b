"""Soak: hundreds of streams and stalled connections, big and abandoned bodies, against one foreman.

    python bench/soak.py                    # full run, about 5 minutes
    python bench/soak.py --quick            # about two minutes
    python bench/soak.py --quick --only upload unread bigbody
    python bench/soak.py --foreman-rev HEAD # foreman/ as committed, not the working tree
    python bench/soak.py --hold 20 --env FOREMAN_CLIENT_TIMEOUT=10s

Starts the fast stand-in target (bench/target.py) and a real foreman process
on loopback, then runs two phases, each against a fresh foreman:

- `wide`: FOREMAN_CONCURRENCY=1000 (nothing waits): hundreds of token-speed
  streams at once;
- `queue`: FOREMAN_CONCURRENCY=4: a burst of short streams that must wait
  their turn, with two of the four slots held by clients that never read.

In each phase:

1. baseline: foreman's RSS after a warm-up (tiny chats and short streams);
2. load: stalled connections of four kinds are opened and held — (a) connect
   and send nothing, (b) send a POST's headers with a Content-Length and never
   the body, (c) send a streamed chat with a 4 KiB receive buffer and never
   read, (d) send half a header line and stop — then the streams run. All the
   while a small non-streaming chat goes out every 0.5 s on a fresh
   connection (a "normal request"; from 127.0.0.2, a different client to
   foreman's fair queue, and in the queue phase also from 127.0.0.1, the load's
   own address) and its latency is recorded. The stalled connections are held
   until `--hold` seconds after they were opened, or until foreman has ended
   them all;
3. after: every connection is closed; RSS, open file descriptors and
   /healthz's queue are sampled for a few seconds.

Then a churn of stalled connections (soak_churn.py), and three phases that
each look at one fault, each against a fresh foreman, with RSS sampled and
another client's tiny chat (every 0.5 s) and /healthz (every 50 ms) timed:

- `upload` (soak_upload_cut.py): rounds of connections that each send most
  of a big body, then close: is their memory given back?
- `unread` (soak_unread.py): clients ask for a whole-document answer of tens
  of MB and never read it, FOREMAN_CLIENT_TIMEOUT short: are they dropped,
  and their answers' memory freed?
- `bigbody` (soak_big_body.py): a 60 MB JSON body of many small objects
  (an unknown model, then a known one), then many connections each holding
  8 MiB of an unfinished body: RSS, answers, and the longest stall of others.

Reports figures, asserts nothing. The report goes to stdout and to
bench/soak-results.md; progress goes to stderr. Everything is on loopback,
every loop is bounded in count and time, and every child process is killed on
exit (procs.py).

The code is one module per part of a phase: soak_settings.py (the sizes),
soak_foreman.py (the foreman under soak), soak_stalls.py (the stalled
clients), soak_streams.py, soak_watch.py (RSS, /healthz and normal requests
sampled), soak_phase.py (one `wide` or `queue` phase), soak_churn.py,
soak_uploads.py (big request bodies), soak_upload_cut.py, soak_unread.py,
soak_big_body.py; this file runs them in order and writes the report.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import header
import procs
from header import log
from soak_big_body import big_body_section, run_big_body
from soak_churn import churn_section, run_churn
from soak_foreman import Source
from soak_phase import phase_section, run_phase
from soak_settings import FULL, QUICK, Settings
from soak_unread import run_unread, unread_section
from soak_upload_cut import run_upload_cut, upload_cut_section

# The phases that look at one fault each: key, what it does, how it runs, its report section.
FAULT_PHASES: tuple[tuple[str, str, Callable[..., Awaitable[dict]], Callable[[dict, Settings], list[str]]], ...] = (
    ("upload", "clients that leave mid-upload, round after round", run_upload_cut, upload_cut_section),
    ("unread", "clients that never read a big whole-document answer", run_unread, unread_section),
    ("bigbody", "a big JSON body, then many unfinished ones held", run_big_body, big_body_section),
)
FAULT_PHASE_LIMIT = 420.0  # seconds


def report_head(quick: bool, rev: str | None, env: dict[str, str]) -> list[str]:
    m = header.machine()
    return [
        "# foreman soak: streams, stalled connections, big and abandoned bodies",
        "",
        header.date_item(),
        (f"- machine: {m.cpu}, {m.cores} cores, {m.memory_gib:.0f} GiB RAM, Linux {m.kernel}; "
        f"load average at start {m.load1:.2f} / {m.load5:.2f}"),
        f"- Python {m.python}, Tornado {m.tornado}; foreman: {header.foreman_under_test(rev, dirty_mark='**')}",
        header.command_item(quick)
        + (f"; extra foreman environment: {', '.join(f'`{k}={v}`' for k, v in env.items())}" if env else ""),
        ("- target: bench/target.py (fast stand-in Ollama). Load generator, target and foreman share this "
        "machine's cores; everything on loopback. Figures are one run, not medians: read them as orders "
        "of magnitude."),
        ("- normal requests come from 127.0.0.2 (another client to foreman's fair queue); in the queue phase "
        "also from 127.0.0.1, the address the streams come from (behind them in first-come order)."),
        "",
    ]


async def run(args: argparse.Namespace, s: Settings, logdir: str, env: dict[str, str]) -> str:
    foreman_dir = procs.export_foreman(args.foreman_rev, os.path.join(logdir, "src")) if args.foreman_rev else None
    lines = report_head(args.quick, args.foreman_rev, env)
    started = time.perf_counter()
    target, target_port = await procs.start_target(logdir)
    source = Source(target_port, logdir, foreman_dir, env)
    try:
        log(f"target on 127.0.0.1:{target_port}")
        for phase in s.phases:
            if args.only and phase.key not in args.only:
                continue
            log(f"phase {phase.key}: {phase.title}")
            t = time.perf_counter()
            try:
                out = await asyncio.wait_for(run_phase(phase, s, source), s.hold + 240)
            except TimeoutError:
                lines += [f"## Phase `{phase.key}`", "", "**Did not finish within its time limit.**", ""]
                log(f"  phase {phase.key} did not finish in time")
                continue
            log(f"  phase {phase.key} done in {time.perf_counter() - t:.0f}s")
            keep_log(args.keep_logs, phase.key, out["log"])
            lines += phase_section(out, s)
            target.check()
        if not args.only or "churn" in args.only:
            log("phase churn: stalled connections opened and closed, round after round")
            t = time.perf_counter()
            try:
                churned = await asyncio.wait_for(run_churn(s, source), 180)
            except TimeoutError:
                lines += ["## Churn", "", "**Did not finish within its time limit.**", ""]
            else:
                log(f"  phase churn done in {time.perf_counter() - t:.0f}s")
                keep_log(args.keep_logs, "churn", churned["log"])
                lines += churn_section(churned, s)
        for key, title, runner, section in FAULT_PHASES:
            if args.only and key not in args.only:
                continue
            log(f"phase {key}: {title}")
            t = time.perf_counter()
            try:
                result = await asyncio.wait_for(runner(s, source), FAULT_PHASE_LIMIT)
            except TimeoutError:
                lines += [f"## Phase `{key}`", "", "**Did not finish within its time limit.**", ""]
                log(f"  phase {key} did not finish in time")
                continue
            log(f"  phase {key} done in {time.perf_counter() - t:.0f}s")
            keep_log(args.keep_logs, key, result["log"])
            lines += section(result, s)
            target.check()
    finally:
        target.stop()
    lines.append(f"Total run time {time.perf_counter() - started:.0f} s.")
    return "\n".join(lines)


def keep_log(directory: str | None, name: str, text: str) -> None:
    if directory:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"foreman-{name}.log"), "w") as f:
            f.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Soak foreman with streams, stalled connections, big and abandoned bodies (loopback)."
    )
    parser.add_argument("--quick", action="store_true", help="smaller and shorter: about two minutes")
    parser.add_argument("--hold", type=float, help="seconds to hold the stalled connections (default 75, --quick 8)")
    parser.add_argument("--after", type=float, help="seconds to watch RSS after closing (default 10, --quick 5)")
    parser.add_argument(
        "--only", nargs="+", choices=["wide", "queue", "churn", *(key for key, *_ in FAULT_PHASES)],
        help="run only these phases",
    )
    parser.add_argument("--keep-logs", metavar="DIR", help="also write foreman's full log of each phase here")
    parser.add_argument("--foreman-rev", metavar="REV", help="run foreman/ as committed at this git revision")
    parser.add_argument(
        "--env", action="append", default=[], metavar="FOREMAN_X=VALUE",
        help="extra environment for foreman (repeatable), e.g. FOREMAN_CLIENT_TIMEOUT=10s "
        "(the unread phase sets its own FOREMAN_CLIENT_TIMEOUT over it)",
    )
    parser.add_argument(
        "--output", default=os.path.join(procs.BENCH, "soak-results.md"), help="where to write the report"
    )
    args = parser.parse_args()
    s = QUICK if args.quick else FULL
    if args.hold is not None:
        s = replace(s, hold=max(1.0, min(args.hold, 600.0)))
    if args.after is not None:
        s = replace(s, after=max(5.0, min(args.after, 120.0)))
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("FOREMAN_"):
            parser.error(f"--env wants FOREMAN_NAME=VALUE, not {item!r}")
        env[name] = value
    # The load generator's long-lived objects out of the collector's way: fewer pauses in the figures.
    gc.collect()
    gc.freeze()
    text = procs.run_with_children("soak", lambda logdir: run(args, s, logdir, env))
    header.publish(text, args.output)


if __name__ == "__main__":
    main()
