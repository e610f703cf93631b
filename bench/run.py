"""What foreman costs, next to a direct connection and nginx.

    python bench/run.py                     # full run, a few minutes
    python bench/run.py --quick             # smoke run, under a minute
    python bench/run.py --foreman-rev HEAD  # foreman/ as committed, not the working tree
    python bench/run.py --only S1 S3 --rounds 3 --skip-nginx --output /tmp/r.md
    python bench/run.py --targets 2         # also foreman in front of two targets (S1, S3)

Starts the fast stand-in target (bench/target.py), nginx (installed with
apt-get if missing, skipped with a note if that fails) and foreman as child
processes on loopback, then runs four scenarios against each of direct /
nginx / foreman, interleaved round by round so that machine drift cancels,
and reports medians across rounds. The load generator is this process
(bench/load.py). The report goes to stdout and to bench/results.md; progress
goes to stderr.

- S1 latency: sequential tiny non-streaming chats on one keep-alive connection.
- S2 relay: one long stream at full speed; wall time and CPU per chunk.
- S3 fan-in: many concurrent streams at token speed; added delay per chunk,
  CPU %, peak RSS. Run twice: chunks of all streams phase-locked (bursts, as
  one batched decoder produces them) and spread evenly over the interval.
- S4 queue: tiny requests from many connections, foreman with
  FOREMAN_CONCURRENCY=1; dispatch cost per request, peak RSS, and memory per
  waiting request (a held generation keeps the others waiting).

With --targets 2 a second bench target starts, and S1 and S3 also run a
foreman given both targets' URLs (mode "foreman2"), interleaved with the
others; a section of its own sets its added delay and CPU per request next
to one-target foreman's (the aim: no worse than with one). Without the flag
the run and its report are as before.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import time
from collections.abc import Awaitable
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import header
import nginx
import procs
import report
from header import log
from scenarios import (
    FULL,
    QUICK,
    Rig,
    Settings,
    bounded,
    brief,
    interleave,
    s1_run,
    s2_run,
    s3_run,
    s4_memory,
    s4_run,
)


async def run(args: argparse.Namespace, settings: Settings, logdir: str) -> str:
    notes: list[str] = []
    if args.skip_nginx:
        nginx_bin = None
        notes.append("nginx skipped (--skip-nginx)")
    else:
        nginx_bin = nginx.find_or_install_nginx(notes)
    nginx_note = "skipped" if nginx_bin is None else ""
    for note in notes:
        log(note)
    source = procs.export_foreman(args.foreman_rev, os.path.join(logdir, "src")) if args.foreman_rev else None
    head = report.machine_header(nginx_bin, settings, args.quick, args.foreman_rev)
    if args.targets > 1:
        notes.append(
            f"--targets {args.targets}: a second bench target; S1 and S3 also run foreman in front of both "
            "(see 'Two targets'); target CPU counts both targets"
        )
    rig = Rig(logdir, nginx_bin, notes, source, targets=args.targets)
    two_targets = args.targets > 1
    s = settings
    sections: list[str] = []
    several: dict[str, dict[str, list[dict]]] = {}  # scenario -> results, for --targets 2
    started = time.perf_counter()
    try:
        await rig.start_target()
        log(f"target on 127.0.0.1:{rig.target_port}")
        wanted = set(args.only or ["S1", "S2", "S3", "S4"])

        if "S1" in wanted:
            log("S1 latency")
            await rig.start_proxies("S1", two_targets=two_targets)
            try:
                r1 = await interleave(
                    rig, "S1", s.rounds, lambda m: s1_run(rig, m, s.s1_requests), 180,
                    warmup=lambda m: s1_run(rig, m, s.s1_warmup),
                )
            finally:
                rig.stop_proxies("S1")
            sections.append(report.report_s1(r1, rig.modes, nginx_note, s))
            several["S1"] = r1

        if "S2" in wanted:
            log("S2 relay")
            await rig.start_proxies("S2")
            try:
                r2 = await interleave(
                    rig, "S2", s.rounds, lambda m: s2_run(rig, m, s.s2_chunks, s.s2_chunk_size), 300,
                    warmup=lambda m: s2_run(rig, m, 2000, s.s2_chunk_size),
                )
            finally:
                rig.stop_proxies("S2")
            sections.append(report.report_s2(r2, rig.modes, nginx_note, s))

        if "S3" in wanted:
            log("S3 fan-in")
            await rig.start_proxies("S3", two_targets=two_targets)
            variants: dict[str, dict[str, list[dict]]] = {}
            try:
                limit = s.s3_chunks * s.s3_interval + 120
                for name, spread in (("bursts", False), ("spread", True)):
                    variants[name] = await interleave(
                        rig, f"S3 {name}", s.rounds,
                        functools.partial(s3_fan_in, rig, s, spread),
                        limit,
                        warmup=functools.partial(s3_warmup, rig, spread),
                    )
                rss3 = rig.peak_rss_mb()
            finally:
                rig.stop_proxies("S3")
            sections.append(report.report_s3(variants, rss3, rig.modes, nginx_note, s))
            several.update({f"S3 {name}": results for name, results in variants.items()})

        if "S4" in wanted:
            log("S4 queue")
            await rig.start_proxies("S4", concurrency=1, max_queue=max(1000, s.s4_requests) * 2)
            memory: list[dict] = []
            try:
                r4 = await interleave(
                    rig, "S4", s.rounds, lambda m: s4_run(rig, m, s.s4_requests, s.s4_connections), 300,
                    warmup=lambda m: s4_run(rig, m, 100, 10),
                )
                rss4 = rig.peak_rss_mb()
            finally:
                rig.stop_proxies("S4")
            for r in range(s.rounds):
                started_memory = time.perf_counter()
                result = await bounded(s4_memory(rig, s.s4_waiters, r + 1), 180, f"S4 memory round {r + 1}")
                memory.append(result)
                elapsed = time.perf_counter() - started_memory
                rig.mode_seconds[("S4 memory", "foreman")] = rig.mode_seconds.get(("S4 memory", "foreman"), 0) + elapsed
                log(f"  S4 memory round {r + 1}/{s.rounds} {elapsed:6.2f}s  {brief(result)}")
            sections.append(report.report_s4(r4, memory, rss4, rig.modes, nginx_note, s))
        if two_targets and several:
            sections.append(report.report_two_targets(several, s))
    finally:
        rig.stop_proxies("end")
        rig.stop_targets()
    total = time.perf_counter() - started
    return "\n".join(head + [""] + report.notes_section(notes) + report.sections_joined(sections) + report.timing(rig, total) + report.logs_section(rig))


def s3_fan_in(rig: Rig, s: Settings, spread: bool, mode: str) -> Awaitable[dict]:
    return s3_run(rig, mode, s.s3_streams, s.s3_chunks, s.s3_interval, spread)


def s3_warmup(rig: Rig, spread: bool, mode: str) -> Awaitable[dict]:
    return s3_run(rig, mode, 20, 5, 0.01, spread)


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark foreman against a direct connection and nginx (loopback).")
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer rounds and requests, under a minute")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 5, --quick 2)")
    parser.add_argument("--only", nargs="+", choices=["S1", "S2", "S3", "S4"], help="run only these scenarios")
    parser.add_argument(
        "--foreman-rev",
        metavar="REV",
        help="benchmark foreman/ as committed at this git revision (e.g. HEAD) instead of the working tree",
    )
    parser.add_argument(
        "--targets",
        type=int,
        choices=[1, 2],
        default=1,
        help="2: also run S1 and S3 with foreman in front of two bench targets, reported next to one (default 1)",
    )
    parser.add_argument("--skip-nginx", action="store_true", help="do not run (or install) nginx")
    parser.add_argument("--output", default=os.path.join(procs.BENCH, "results.md"), help="where to write the report")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = replace(settings, rounds=max(1, args.rounds))
    # The load generator's long-lived objects out of the collector's way: fewer pauses in the figures.
    gc.collect()
    gc.freeze()
    text = procs.run_with_children("bench", lambda logdir: run(args, settings, logdir))
    header.publish(text, args.output)


if __name__ == "__main__":
    main()
