"""Phase `bigbody`: one big JSON body of many small objects, then many connections each holding part of a body.

Two questions. Does parsing a 60 MB body (to find its model) stall every
other client, /healthz included, and how much memory does it take? The body
is sent twice, naming a model the target does not have, then bench:latest.
And what do M unfinished bodies of 8 MiB each cost while they are held:
does foreman keep them all in memory, or make them wait, or refuse some?
/healthz is timed every 50 ms from another client, so a stall of the event
loop shows as the longest /healthz answer.
"""

from __future__ import annotations

import asyncio
import collections
import time

import load
import procs
import soak_foreman
from header import log
from soak_foreman import Source, exit_text, log_summary, mib
from soak_settings import Settings
from soak_uploads import (
    MODEL,
    UNKNOWN_MODEL,
    Upload,
    many_small_objects,
    open_uploads,
    partial_upload,
    wait_uploads,
)
from soak_watch import CHAT_PROBE, HEALTH_PROBE, Probe, Timeline, Watch, latency_rows, ms, peak_between, unanswered

IDLE = "idle, before"
BETWEEN = "between"
AFTER = "after close"
BIG_TIMEOUT = 120.0  # seconds a big body may take to be answered
SETTLE_BETWEEN = 2.0


def body_window(model: str) -> str:
    return f"big body, {'unknown model' if model == UNKNOWN_MODEL else 'known model'}"


def holders_window(s: Settings) -> str:
    return f"{s.big_body.holders} x {s.big_body.held_mib} MiB held"


async def send_big(port: int, request: bytes) -> dict:
    """One big request on its own connection: status, seconds, the start of the answer."""
    client = load.Client(port)
    started = time.perf_counter()
    try:
        response = await client.request(request, timeout=BIG_TIMEOUT)
        answer = {"status": str(response.status), "body": response.body[:160].decode(errors="replace"),
                  "body_bytes": len(response.body)}
    except Exception as e:  # noqa: BLE001 (recorded as the outcome)
        answer = {"status": type(e).__name__, "body": str(e)[:160], "body_bytes": 0}
    finally:
        client.close()
    answer["seconds"] = time.perf_counter() - started
    return answer


async def run_big_body(s: Settings, source: Source) -> dict:
    cfg = s.big_body
    child, port = await soak_foreman.start("foreman-bigbody", 1000, source)
    out: dict = {"big": []}
    watch: Watch | None = None
    holders: list[Upload] = []
    try:
        pid = child.pid
        out["warmup_errors"], out["baseline_rss"], out["baseline_fds"] = await soak_foreman.baseline(child, port, s)
        log(f"  baseline RSS {out['baseline_rss'] / 1024:.1f} MiB")
        timeline = Timeline(time.monotonic(), window=IDLE)
        out["timeline"] = timeline
        watch = Watch(pid, port, timeline, 2 * BIG_TIMEOUT + cfg.hold + cfg.settle + 120)
        await asyncio.sleep(1.0)  # the other client's latency with nothing else going on

        for model in (UNKNOWN_MODEL, MODEL):
            # Built before the window opens: the load generator's own work stays out of the figures.
            body = many_small_objects(cfg.body, model)
            out["body_bytes"] = len(body)
            request = load.post("/api/chat", port, body)
            del body
            window = body_window(model)
            timeline.window = window
            started = timeline.now()
            answer = await send_big(port, request)
            del request
            ended = timeline.now()
            timeline.window = BETWEEN
            await asyncio.sleep(SETTLE_BETWEEN)
            peak = peak_between(timeline, started, ended + 0.5)
            out["big"].append({"model": model, "window": window, **answer, "peak": peak,
                               "rss_after": procs.rss_kib([pid]), "started": started, "ended": ended})
            log(f"  {window}: {answer['status']} in {answer['seconds']:.1f}s, "
                f"RSS peak {peak[1] / 1024 if peak else 0:.0f} MiB")

        payload = partial_upload(port, (cfg.held_mib + 1) << 20, cfg.held_mib << 20)
        timeline.window = holders_window(s)
        timeline.mark("holders")
        holders, out["holders_failed"] = await open_uploads(payload, cfg.holders, port, close_when_sent=False)
        out["holders_waiting"] = await wait_uploads(holders, until_closed=False)
        timeline.mark("holders sent")
        out["rss_holders_sent"] = procs.rss_kib([pid])
        await asyncio.sleep(cfg.hold)
        timeline.mark("hold over")
        out["rss_hold_over"] = procs.rss_kib([pid])
        out["fds_hold_over"] = procs.open_fds(pid)
        out["holders_sent_all"] = sum(1 for h in holders if h.sent_at is not None)
        out["holders_answers"] = collections.Counter(h.first_line() for h in holders if h.received)
        out["holders_ended"] = sum(1 for h in holders if h.ended_by_server)
        out["holders_count"] = len(holders)
        log(f"  {len(holders)} holders: RSS {out['rss_hold_over'] / 1024:.0f} MiB")
        for h in holders:
            h.close()
        timeline.mark("closed")
        timeline.window = AFTER
        await asyncio.sleep(cfg.settle)
        await soak_foreman.final_readings(out, child, watch, s.sigterm_wait)
    finally:
        for h in holders:
            h.close()
        if watch is not None:
            await watch.stop()
        child.stop()
        out["log"] = child.log_text()
    return out


def longest(probes: list[Probe], source: str, window: str) -> str:
    answered = [p.ms for p in probes if p.source == source and p.window == window and p.status == "200"]
    failed = sum(1 for p in probes if p.source == source and p.window == window and p.status != "200")
    return (ms(max(answered)) if answered else "–") + (f" ({failed} not 200)" if failed else "")


def big_body_section(out: dict, s: Settings) -> list[str]:
    cfg = s.big_body
    timeline: Timeline = out["timeline"]
    base = out["baseline_rss"]
    health_label = HEALTH_PROBE[0]
    chat_label = CHAT_PROBE[0]

    def vs_base(kib: int | None) -> str:
        return "?" if kib is None else f"{mib(kib)} ({(kib - base) / 1024:+.1f} MiB vs baseline)"

    size_mb = out["body_bytes"] / 1e6
    lines = [
        f"## Phase `bigbody`: a {size_mb:.0f} MB JSON body, then {cfg.holders} x {cfg.held_mib} MiB unfinished bodies",
        "",
        (f"A fresh foreman (FOREMAN_CONCURRENCY=1000, FOREMAN_MAX_BODY at its default). First a `POST /api/chat` "
        f"of {size_mb:.0f} MB: `{{\"messages\":[...]` of about {cfg.body // 30 / 1e6:.0f} million small objects "
        f"(`{{\"role\":\"user\",\"content\":\"x\"}}`) with the model named last, once for a model the target does "
        f"not have, then for bench:latest (the target answers a body over 1 MiB without parsing it); each on its "
        f"own connection, {SETTLE_BETWEEN:g} s apart. Then {cfg.holders} connections each send "
        f"{cfg.held_mib} MiB of a body promised {cfg.held_mib + 1} MiB long and hold it for {cfg.hold:g} s, "
        f"then close. Meanwhile another client (127.0.0.2) sends `GET /healthz` every 50 ms and a tiny chat every "
        "0.5 s, each on a fresh connection: the longest /healthz answer is the longest stall of foreman's loop "
        "(to within 50 ms)."),
        "",
        "| step | answer | took | RSS peak (every 0.25 s) | RSS 2 s later | longest /healthz | longest normal chat |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    for big in out["big"]:
        answer = f"{big['status']}: `{big['body'][:100]}`" if big["body"] else big["status"]
        peak = big["peak"]
        lines.append(
            f"| {size_mb:.0f} MB body, model `{big['model']}` | {answer} | {big['seconds']:.1f} s | "
            f"{vs_base(peak[1]) if peak else '?'} | {vs_base(big['rss_after'])} | "
            f"{longest(out['probes'], health_label, big['window'])} | "
            f"{longest(out['probes'], chat_label, big['window'])} |"
        )
    held = holders_window(s)
    holders_peak = peak_between(timeline, timeline.events["holders"], timeline.events["closed"])
    answers = out["holders_answers"]
    lines.append(
        f"| {cfg.holders} x {cfg.held_mib} MiB bodies held {cfg.hold:g} s | "
        f"{out['holders_sent_all']} of {out['holders_count']} sent all"
        + (f" ({out['holders_waiting']} left waiting: foreman stopped reading them)" if out["holders_waiting"] else "")
        + "; answers: "
        + (", ".join(f"{a} x{n}" for a, n in answers.most_common(3)) if answers else "none")
        + f"; {out['holders_ended']} ended by foreman | "
        f"{timeline.events['holders sent'] - timeline.events['holders']:.1f} s to send | "
        f"{vs_base(holders_peak[1]) if holders_peak else '?'} | {cfg.settle:g} s after closing: "
        f"{vs_base(out['rss_end'])} | {longest(out['probes'], health_label, held)} | "
        f"{longest(out['probes'], chat_label, held)} |"
    )
    lines += [
        "",
        (f"Baseline {mib(base)} after the warm-up; peak (VmHWM, whole life) {mib(out['hwm_rss'])}; at the end of "
        f"the hold {vs_base(out['rss_hold_over'])} with {out['fds_hold_over']} fds; {cfg.settle:g} s after "
        f"closing {out['fds_end']} fds"
        + (f"; {out['holders_failed']} holders failed to connect" if out["holders_failed"] else "")
        + f". SIGTERM then: {exit_text(out['exit_after_sigterm'], s.sigterm_wait)}"),
        "",
        "### Other clients meanwhile (each request on a fresh connection)",
        "",
        *latency_rows(
            out["probes"], Watch.sources, (IDLE, *(b["window"] for b in out["big"]), BETWEEN, held, AFTER)
        ),
        "",
    ]
    lines += unanswered(out["probes_unfinished"])
    lines += log_summary(out)
    return lines
