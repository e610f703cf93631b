"""The churn: stalled connections of one kind opened and closed, round after round; does RSS stay flat?"""

from __future__ import annotations

import asyncio

import procs
import soak_foreman
from api import health
from header import log
from soak_foreman import Source, exit_text, log_summary, mib
from soak_settings import KIND_NAMES, Settings
from soak_stalls import open_stalls


async def run_churn(s: Settings, source: Source) -> dict:
    """Open and close stalled connections of one kind, round after round: does RSS stay flat?

    One foreman (FOREMAN_CONCURRENCY=1000). Per kind: one round to settle, then
    `churn_rounds` rounds of `count` connections opened, held 0.5 s, closed.
    Memory that each such connection leaves behind shows as RSS growing with the rounds.
    """
    child, port = await soak_foreman.start("foreman-churn", 1000, source)
    out: dict = {"kinds": []}
    try:
        pid = child.pid
        out["warmup_errors"], out["baseline_rss"], out["baseline_fds"] = await soak_foreman.baseline(child, port, s)

        async def one_round(kind: str, count: int) -> int:
            group, failed = await open_stalls(kind, count, port)
            await asyncio.sleep(0.5)
            for st in group:
                st.close()
            await asyncio.sleep(0.3)
            return failed

        for kind, count in s.churn_sizes:
            failed = await one_round(kind, count)
            await asyncio.sleep(1.0)
            before = procs.rss_kib([pid])
            steps = []
            for _ in range(s.churn_rounds):
                failed += await one_round(kind, count)
                steps.append(procs.rss_kib([pid]))
            await asyncio.sleep(1.0)
            after = procs.rss_kib([pid])
            queue = (await health(port))["queue"]
            total = count * s.churn_rounds
            half = len(steps) // 2
            out["kinds"].append({
                "kind": kind, "count": count, "total": total, "failed": failed,
                "before": before, "steps": steps, "after": after,
                # Over the second half of the rounds: the first ones raise the allocator's high-water mark.
                "per_conn_kib": (
                    (steps[-1] - steps[half - 1]) / (count * (len(steps) - half)) if half else float("nan")
                ),
                "fds": procs.open_fds(pid), "queue": (queue["waiting"], queue["in_flight"]),
            })
            log(f"  churn ({kind}): {total} connections, RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB")
        out["rss_end"] = procs.rss_kib([pid])
        out["fds_end"] = procs.open_fds(pid)
        out["exit_after_sigterm"] = await soak_foreman.sigterm_exit(child, s.sigterm_wait)
    finally:
        child.stop()
        out["log"] = child.log_text()
    return out


def churn_section(out: dict, s: Settings) -> list[str]:
    base = out["baseline_rss"]
    lines = [
        "## Churn: stalled connections opened and closed, round after round",
        "",
        (f"One fresh foreman (FOREMAN_CONCURRENCY=1000), baseline {mib(base)} and {out['baseline_fds']} fds "
        f"after the warm-up. Per kind: one round to settle, then {s.churn_rounds} rounds of N connections "
        "opened, held 0.5 s and closed by the client. A kind that leaves memory behind shows RSS growing with "
        "every round; memory that is only not given back to the system (the allocator's high-water mark) "
        "shows as a step in the first rounds, then a plateau. *Growth per connection* is taken over the "
        "second half of the rounds."),
        "",
        ("| kind | N per round | connections | RSS before | RSS after each round | RSS 1 s after | "
        "growth per connection, 2nd half | fds after | queue (waiting, in_flight) after |"),
        "|---|---:|---:|---|---|---|---:|---:|---|",
    ]
    for k in out["kinds"]:
        steps = " → ".join(f"{v / 1024:.1f}" for v in k["steps"])
        failed = f" ({k['failed']} failed to open)" if k["failed"] else ""
        lines.append(
            f"| ({k['kind']}) {KIND_NAMES[k['kind']]} | {k['count']} | {k['total']}{failed} | {mib(k['before'])} | "
            f"{steps} MiB | {mib(k['after'])} | {k['per_conn_kib']:.2f} KiB | {k['fds']} | {k['queue']} |"
        )
    lines += [
        "",
        (f"At the end: RSS {mib(out['rss_end'])} ({(out['rss_end'] - base) / 1024:+.1f} MiB vs baseline), "
        f"{out['fds_end']} fds. SIGTERM then: {exit_text(out['exit_after_sigterm'], s.sigterm_wait)}"),
        "",
    ]
    lines += log_summary(out)
    return lines
