"""One phase of the soak (`wide` or `queue`): stalled connections held, streams run, normal requests timed.

The order: a fresh foreman, warmed up (baseline); the stalled connections
opened; the streams; the stalled connections held until `--hold` or until
foreman has ended them all; the never-reading clients allowed to read; every
connection closed, then a few seconds watched (`--after`).
"""

from __future__ import annotations

import asyncio
import time

import procs
import soak_foreman
from api import wait_until
from header import log
from soak_foreman import Source, exit_text, log_summary, mib
from soak_settings import KINDS, MAX_QUEUE, PROBE_EVERY, SAMPLE_EVERY, Phase, Settings
from soak_stalls import Stall, all_settled, open_stalls, stall_rows
from soak_streams import run_streams
from soak_watch import Prober, Sampler, Timeline, latency_rows, rss_at


async def run_phase(phase: Phase, s: Settings, source: Source) -> dict:
    child, port = await soak_foreman.start(f"foreman-{phase.key}", phase.concurrency, source)
    stalls: dict[str, list[Stall]] = {kind: [] for kind in KINDS}
    out: dict = {"phase": phase}
    sampler: Sampler | None = None
    prober: Prober | None = None
    try:
        pid = child.pid
        out["warmup_errors"], out["baseline_rss"], out["baseline_fds"] = await soak_foreman.baseline(child, port, s)
        log(f"  baseline RSS {out['baseline_rss'] / 1024:.1f} MiB, {out['baseline_fds']} fds")

        timeline = Timeline(time.monotonic())
        out["timeline"] = timeline
        limit = s.hold + 300 + s.after
        sampler = Sampler(pid, port, timeline, limit)
        prober = Prober(port, phase.probe_sources, timeline, limit)
        cpu0, self0 = procs.cpu_seconds([pid]), procs.self_cpu_seconds()

        # (c) first: in the queue phase they must hold their slots before the streams come.
        failed_open: dict[str, int] = {}
        for kind in ("c", "a", "b", "d"):
            stalls[kind], failed_open[kind] = await open_stalls(kind, phase.stalled.get(kind, 0), port)
        timeline.mark("stalled opened")
        out["failed_open"] = failed_open
        log(f"  stalled open: {', '.join(f'({k}) {len(stalls[k])}' for k in KINDS)}")
        held = len(stalls["c"])

        async def slots_held() -> bool:
            q = sampler.queue_now() if sampler else None
            return q is not None and q[1] >= held

        await wait_until(slots_held, 15, step=0.1)
        await asyncio.sleep(1.0)
        out["rss_stalled_before_streams"] = procs.rss_kib([pid])

        log(f"  {phase.streams} streams of {phase.chunks} chunks every {phase.interval * 1e3:g} ms")
        out["streams"] = await asyncio.wait_for(run_streams(port, phase, timeline), 300)
        log(f"  streams: {out['streams']['ok']} ok, failed {out['streams']['failed'] or 'none'}, "
            f"{out['streams']['wall_s']:.1f}s")
        out["rss_streams_done"] = procs.rss_kib([pid])
        out["cpu_load_s"] = procs.cpu_seconds([pid]) - cpu0
        out["self_cpu_load_s"] = procs.self_cpu_seconds() - self0
        out["load_wall_s"] = timeline.now()

        # Hold the stalled connections until `hold` after they were opened, or until foreman ended them all.
        opened_at = timeline.events["stalled opened"]

        async def all_ended() -> bool:
            q = sampler.queue_now() if sampler else None
            sockets_done = all(st.closed_at is not None for k in ("a", "b", "d") for st in stalls[k])
            return sockets_done and q is not None and q[1] == 0

        remaining = opened_at + s.hold - timeline.now()
        log(f"  holding the stalled connections up to {max(0.0, remaining):.0f}s more")
        if remaining > 0:
            await wait_until(all_ended, remaining, step=0.25)
        timeline.mark("hold over")
        out["queue_at_hold_end"] = sampler.queue_now()
        out["rss_before_close"] = procs.rss_kib([pid])

        # What became of the clients that never read: let them read for up to 2 s.
        for st in stalls["c"]:
            st.ended_before_drain = st.closed_at is not None
            if st.transport is not None and st.closed_at is None:
                st.transport.resume_reading()
        if stalls["c"]:
            await wait_until(lambda: all_settled(stalls["c"]), 2.0, step=0.1)
        out["drain_eof"] = sum(1 for st in stalls["c"] if st.closed_at is not None)
        out["drain_complete"] = sum(1 for st in stalls["c"] if st.closed_at is None and st.answer_complete)

        for kind in KINDS:
            for st in stalls[kind]:
                st.close()
        timeline.mark("closed")
        timeline.window = "after close"
        out["probes_unfinished"] = await prober.stop()
        closed_at = timeline.events["closed"]

        async def queue_empty() -> bool:
            q = sampler.queue_now() if sampler else None
            return q is not None and q == (0, 0) and timeline.queue[-1][0] > closed_at

        await wait_until(queue_empty, s.after, step=0.1)
        rest = closed_at + s.after - timeline.now()
        if rest > 0:
            await asyncio.sleep(rest)
        out["rss_end"] = procs.rss_kib([pid])
        out["fds_end"] = procs.open_fds(pid)
        out["hwm_rss"] = procs.peak_rss_kib([pid])
        await sampler.stop()
        sampler = None
        out["stalls"] = stalls
        out["probes"] = prober.results
        out["exit_after_sigterm"] = await soak_foreman.sigterm_exit(child, s.sigterm_wait)
    finally:
        for kind in KINDS:
            for st in stalls[kind]:
                st.close()
        if prober is not None:
            await prober.stop()
        if sampler is not None:
            await sampler.stop()
        child.stop()
        out["log"] = child.log_text()
        out["exit_code"] = child.popen.returncode
    return out


def phase_section(out: dict, s: Settings) -> list[str]:
    phase: Phase = out["phase"]
    timeline: Timeline = out["timeline"]
    closed_at = timeline.events["closed"]
    base = out["baseline_rss"]
    peak = max(timeline.memory, key=lambda m: m[1]) if timeline.memory else None
    after1, after5 = rss_at(timeline, closed_at + 1), rss_at(timeline, closed_at + 5)
    after_end = out["rss_end"]
    streams = out["streams"]
    q_peak_wait = max((w for _, w, _ in timeline.queue), default=0)
    q_peak_flight = max((f for _, _, f in timeline.queue), default=0)
    zero = next((t for t, w, f in timeline.queue if t > closed_at and w == 0 and f == 0), None)
    fds_peak = max((m[2] for m in timeline.memory), default=0)

    def delta(kib: int | None) -> str:
        if kib is None:
            return "?"
        return f"{mib(kib)} ({(kib - base) / 1024:+.1f} MiB, {(kib - base) / base * 100:+.0f}% vs baseline)"

    lines = [
        f"## Phase `{phase.key}`: {phase.title}",
        "",
        f"foreman with FOREMAN_CONCURRENCY={phase.concurrency}, FOREMAN_MAX_QUEUE={MAX_QUEUE}, "
        f"FOREMAN_LOG_LEVEL=warning; stalled: "
        + ", ".join(f"({k}) {phase.stalled[k]}" for k in KINDS if phase.stalled.get(k))
        + f"; {phase.streams} streams of {phase.chunks} chunks every {phase.interval * 1e3:g} ms "
        f"({phase.chunks * phase.interval:g} s each at the target).",
        "",
        "### Memory and file descriptors (foreman process)",
        "",
        "| when | RSS | open fds |",
        "|---|---|---:|",
        (f"| baseline: after warm-up ({s.warmup_requests} chats, {s.warmup_streams} short streams) | "
        f"{mib(base)} | {out['baseline_fds']} |"),
        f"| stalled connections open, before the streams | {delta(out['rss_stalled_before_streams'])} | |",
        f"| peak sampled (every {SAMPLE_EVERY:g} s) | "
        + (f"{delta(peak[1])} at t={peak[0]:.1f} s | {fds_peak} (peak) |" if peak else "? | |"),
        f"| peak (VmHWM, whole life) | {mib(out['hwm_rss'])} | |",
        f"| streams done, stalled still open | {delta(out['rss_streams_done'])} | |",
        f"| end of hold, just before closing | {delta(out['rss_before_close'])} | |",
        f"| 1 s after closing everything | {delta(after1[1] if after1 else None)} | {after1[2] if after1 else '?'} |",
        (f"| **5 s after closing everything** | **{delta(after5[1] if after5 else None)}** | "
        f"{after5[2] if after5 else '?'} |"),
        *([f"| {s.after:g} s after closing | {delta(after_end)} | {out['fds_end']} |"] if s.after > 5.5 else []),
        "",
        f"SIGTERM then, with every client gone: {exit_text(out['exit_after_sigterm'], s.sigterm_wait)}",
        "",
        "### Streams",
        "",
        (f"- {streams['ok']} of {streams['streams']} ended with their `done:true` line and every chunk; "
        f"failed: {', '.join(f'{k} x{v}' for k, v in streams['failed'].items()) or 'none'}; "
        f"all done in {streams['wall_s']:.1f} s."),
        (f"- foreman CPU from the first stalled connection to the last stream: {out['cpu_load_s']:.1f} s over "
        f"{out['load_wall_s']:.1f} s ({out['cpu_load_s'] / out['load_wall_s'] * 100:.0f}% of one core); "
        f"the load generator (this process) used {out['self_cpu_load_s'] / out['load_wall_s'] * 100:.0f}%."),
    ]
    if streams["queue_wait_max"] is not None:
        lines.append(
            f"- queue wait of the streams (X-Foreman-Queue-Wait): median {streams['queue_wait_p50']:.2f} s, "
            f"max {streams['queue_wait_max']:.2f} s."
        )
    lines += [
        f"- /healthz queue during the phase: waiting up to {q_peak_wait}, in_flight up to {q_peak_flight}; "
        f"at the end of the hold (waiting, in_flight) = {out['queue_at_hold_end']}; "
        + (f"back to (0, 0) {zero - closed_at:.1f} s after closing." if zero is not None
           else "**not back to (0, 0)** by the end of the phase.")
        + (f" ({timeline.health_errors} /healthz samples failed.)" if timeline.health_errors else ""),
        "",
        f"### Normal requests (a tiny non-streaming chat every {PROBE_EVERY:g} s on a fresh connection)",
        "",
        *latency_rows(out["probes"], phase.probe_sources),
        "",
        (f"*before streams*: while the stalled connections are opened and settle — including the "
         f"{phase.stalled.get('c', 0)} never-reading streams, which the target feeds at full speed until every "
         "buffer between it and the client is full. *stalled only*: after the streams, while the stalled "
         "connections are held."),
        "",
    ]
    if out["probes_unfinished"]:
        lines += [f"**{out['probes_unfinished']} normal requests had no answer when the phase ended.**", ""]
    lines += ["### Stalled connections", "", *stall_rows(out, s.hold), ""]
    lines += log_summary(out)
    return lines
