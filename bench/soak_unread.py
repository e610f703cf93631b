"""Phase `unread`: clients that ask for a big whole-document answer and never read it.

K clients each ask `/api/show` for a document of tens of MB (bench/target.py's
`answer_size` knob) on a socket with a 4 KiB receive buffer, and never read.
foreman holds a whole JSON document until it is complete, then writes it; the
question is whether FOREMAN_CLIENT_TIMEOUT (short here) applies to that write:
does foreman let go of the connection, and of the memory, once the client has
taken nothing for that long? Whether foreman has closed a connection is read
from foreman's own side of it (/proc/net/tcp): a client that does not read
cannot see the end of a connection whose data it has not taken.
"""

from __future__ import annotations

import asyncio
import collections
import json
import statistics
import time

import load
import procs
import soak_foreman
from header import log
from soak_foreman import Source, exit_text, log_summary, mib
from soak_settings import NOT_READING_RCVBUF, Settings
from soak_stalls import Stall, connect_stall, first_line
from soak_uploads import MODEL
from soak_watch import Timeline, Watch, latency_rows, peak_between, rss_at, rss_series, unanswered

WINDOWS = ("documents held", "after close")
DRAIN = 2.0  # seconds the clients finally read, to see what foreman had sent them
ANSWER_WAIT = 30.0  # seconds for every answer to begin (foreman holds each whole document first)


async def run_unread(s: Settings, source: Source) -> dict:
    cfg = s.unread
    timeout = f"{cfg.client_timeout:g}s"
    child, port = await soak_foreman.start("foreman-unread", 1000, source, {"FOREMAN_CLIENT_TIMEOUT": timeout})
    out: dict = {"client_timeout": timeout}
    watch: Watch | None = None
    clients: list[Stall] = []
    try:
        pid = child.pid
        out["warmup_errors"], out["baseline_rss"], out["baseline_fds"] = await soak_foreman.baseline(child, port, s)
        log(f"  baseline RSS {out['baseline_rss'] / 1024:.1f} MiB")
        body = json.dumps({"model": MODEL, "options": {"answer_size": cfg.document}}).encode()
        request = load.post("/api/show", port, body)

        timeline = Timeline(time.monotonic(), window=WINDOWS[0])
        out["timeline"] = timeline
        held_for = cfg.client_timeout + cfg.beyond
        watch = Watch(pid, port, timeline, held_for + ANSWER_WAIT + DRAIN + cfg.settle + 60)
        outcomes = await asyncio.gather(
            *(connect_stall(Stall("unread", request, paused=True), port) for _ in range(cfg.clients)),
            return_exceptions=True,
        )
        clients = [c for c in outcomes if isinstance(c, Stall)]
        out["failed_open"] = len(outcomes) - len(clients)
        timeline.mark("asked")
        asked = timeline.events["asked"]
        peer_ports = {c.transport.get_extra_info("sockname")[1]: c for c in clients if c.transport is not None}

        # Until foreman has closed every one of them, or the timeout and `beyond` more have passed since
        # the last answer began (foreman's send queue not empty), or since asking if none has.
        began: dict[int, float] = {}
        released: dict[int, float] = {}
        for _ in range(int((held_for + ANSWER_WAIT) / 0.25) + 2):
            peers = procs.tcp_peers(port)
            now = timeline.now()
            for peer in peer_ports:
                state, queued = peers.get(peer, (0, 0))
                if peer not in began and queued:
                    began[peer] = now
                if peer not in released and state != procs.TCP_ESTABLISHED:
                    released[peer] = now
            if len(released) == len(peer_ports):
                break
            if all(p in began or p in released for p in peer_ports):
                if now - max(began.values(), default=asked) >= held_for:
                    break
            elif now - asked >= ANSWER_WAIT + held_for:
                break
            await asyncio.sleep(0.25)
        out["began"] = sorted(t - asked for t in began.values())
        out["released"] = sorted(t - asked for t in released.values())
        # From the moment foreman began writing each answer to the moment it let go of the connection.
        out["released_after_begun"] = sorted(released[p] - began[p] for p in released if p in began)
        timeline.mark("hold over")
        out["rss_hold_over"] = procs.rss_kib([pid])
        out["fds_hold_over"] = procs.open_fds(pid)
        log(f"  foreman closed {len(released)} of {len(peer_ports)}; RSS {out['rss_hold_over'] / 1024:.0f} MiB")

        # Now read, briefly: what had foreman sent them, and did it end the connection?
        for c in clients:
            if c.transport is not None and c.closed_at is None:
                c.transport.resume_reading()
        await asyncio.sleep(DRAIN)
        out["drained"] = [(first_line(c), c.received, c.closed_at is not None and not c.closed_by_us) for c in clients]
        for c in clients:
            c.close()
        timeline.mark("closed")
        timeline.window = WINDOWS[1]
        await asyncio.sleep(cfg.settle)
        await soak_foreman.final_readings(out, child, watch, s.sigterm_wait)
    finally:
        for c in clients:
            c.close()
        if watch is not None:
            await watch.stop()
        child.stop()
        out["log"] = child.log_text()
    return out


def unread_section(out: dict, s: Settings) -> list[str]:
    cfg = s.unread
    timeline: Timeline = out["timeline"]
    base = out["baseline_rss"]
    asked, hold_over, closed = (timeline.events[k] for k in ("asked", "hold over", "closed"))
    peak = peak_between(timeline, asked, hold_over)
    began = out["began"]
    last_began = began[-1] if began else 0.0
    at_timeout = rss_at(timeline, asked + last_began + cfg.client_timeout + 1)
    released = out["released"]
    after_begun = out["released_after_begun"]
    clients = len(out["drained"])

    def vs_base(kib: int | None) -> str:
        return "?" if kib is None else f"{mib(kib)} ({(kib - base) / 1024:+.1f} MiB vs baseline)"

    began_text = (
        f"foreman began writing {len(began)} of the {clients} answers {began[0]:.1f} to {began[-1]:.1f} s after "
        "they were asked for (it holds each whole document first)"
        if began else f"foreman began writing none of the {clients} answers"
    )
    if released:
        closed_text = (
            f"foreman closed **{len(released)} of {clients}** connections, "
            f"{released[0]:.1f} / {statistics.median(released):.1f} / {released[-1]:.1f} s "
            "(min / median / max) after they asked"
            + (f", {after_begun[0]:.1f} / {statistics.median(after_begun):.1f} / {after_begun[-1]:.1f} s after "
               "it began writing the answer" if after_begun else "")
        )
    else:
        closed_text = f"foreman closed **none of the {clients}** connections"
    got = collections.Counter(
        (line, ended) for line, _, ended in out["drained"]
    )
    got_text = "; ".join(
        f"{line}, then {'EOF from foreman' if ended else 'still open'} x{n}" for (line, ended), n in got.most_common(4)
    )
    received = sorted(r for _, r, _ in out["drained"])
    lines = [
        f"## Phase `unread`: {cfg.clients} clients never read a {cfg.document / 1e6:g} MB whole-document answer",
        "",
        (f"A fresh foreman with FOREMAN_CLIENT_TIMEOUT={out['client_timeout']} (FOREMAN_CONCURRENCY=1000). "
        f"{cfg.clients} clients each send `POST /api/show` for bench:latest, whose answer the target pads to "
        f"{cfg.document / 1e6:g} MB of `application/json`, on a socket with a "
        f"{NOT_READING_RCVBUF // 1024} KiB receive buffer, and never read. They are held until foreman has "
        f"closed them all, or until {cfg.client_timeout + cfg.beyond:g} s (the timeout and {cfg.beyond:g} s more) "
        f"after the last answer began, then read for {DRAIN:g} s and closed. When foreman began writing an "
        "answer (bytes in its send queue) and whether it closed the connection are read from foreman's side of "
        "each connection in /proc/net/tcp. Meanwhile another client (127.0.0.2) sends a tiny chat every 0.5 s and "
        "`GET /healthz` every 50 ms."),
        "",
        "| when | RSS | open fds |",
        "|---|---|---:|",
        f"| baseline after warm-up | {mib(base)} | {out['baseline_fds']} |",
        "| peak sampled while held (every 0.25 s) | "
        + (f"{vs_base(peak[1])} at {peak[0] - asked:.1f} s | {peak[2]} |" if peak else "? | |"),
        f"| peak (VmHWM, whole life) | {mib(out['hwm_rss'])} | |",
        *(row for _, row in sorted([
            (last_began + cfg.client_timeout + 1,
             f"| the timeout and 1 s more after the last answer began ({last_began + cfg.client_timeout + 1:.1f} s) | "
             f"{vs_base(at_timeout[1] if at_timeout else None)} | {at_timeout[2] if at_timeout else '?'} |"),
            (hold_over - asked,
             f"| **end of the hold ({hold_over - asked:.1f} s)** | **{vs_base(out['rss_hold_over'])}** | "
             f"{out['fds_hold_over']} |"),
        ])),
        f"| {cfg.settle:g} s after the clients closed | {vs_base(out['rss_end'])} | {out['fds_end']} |",
        "",
        f"RSS from asking on, every second: {rss_series(timeline, asked, closed, 1.0)}.",
        "",
        f"- {began_text}.",
        f"- {closed_text}" + (f"; {out['failed_open']} failed to connect" if out["failed_open"] else "") + ".",
        (f"- reading at last for {DRAIN:g} s: {got_text or 'nothing'}; bytes received in those {DRAIN:g} s "
        + (f"{received[0] / 1e6:.1f} to {received[-1] / 1e6:.1f} MB." if received else "–")),
        f"- SIGTERM then, with every client gone: {exit_text(out['exit_after_sigterm'], s.sigterm_wait)}",
        "",
        "### Other clients meanwhile (each request on a fresh connection)",
        "",
        *latency_rows(out["probes"], Watch.sources, WINDOWS),
        "",
    ]
    lines += unanswered(out["probes_unfinished"])
    lines += log_summary(out)
    return lines
