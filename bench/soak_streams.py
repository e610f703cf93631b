"""The streams of a phase: many streamed chats at once, each of which must arrive whole."""

from __future__ import annotations

import asyncio
import collections
import math
import statistics
import time

import load
from api import stream_body
from soak_settings import Phase
from soak_watch import Timeline


async def run_streams(port: int, phase: Phase, timeline: Timeline) -> dict:
    """`phase.streams` streamed chats at once; each must end with its done:true line."""
    n = phase.streams
    clients = [load.Client(port) for _ in range(n)]
    outcomes: collections.Counter[str] = collections.Counter()
    connected: list[load.Client] = []
    for start in range(0, n, 100):
        batch = clients[start : start + 100]
        results = await asyncio.gather(*(asyncio.wait_for(c.connect(), 10) for c in batch), return_exceptions=True)
        for client, outcome in zip(batch, results):
            if isinstance(outcome, BaseException):
                outcomes[f"connect: {type(outcome).__name__}"] += 1
            else:
                connected.append(client)
    free = max(1, min(n, phase.concurrency - phase.stalled.get("c", 0)))
    # All at once when they all fit: no chunk before every request has been passed on. When they
    # queue, a common start would only keep the first ones' slots idle until then.
    begin = time.time() + 0.5 + n * 0.004 if free >= n else None
    start_by = begin if begin is not None else time.time()
    timeout = start_by - time.time() + phase.chunks * phase.interval * math.ceil(n / free) + 60
    pending = [
        asyncio.ensure_future(
            client.request(
                load.post(
                    "/api/chat", port,
                    stream_body(phase.chunks, 4, phase.interval, phase.interval * k / n, begin),
                ),
                "count",
                timeout=timeout,
            )
        )
        for k, client in enumerate(connected)
    ]
    timeline.mark("streams started")
    timeline.window = "streams running"
    started = time.perf_counter()
    answers = await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - started
    timeline.mark("streams done")
    timeline.window = "stalled only"
    for client in clients:
        client.close()
    waits: list[float] = []
    for result in answers:
        if isinstance(result, BaseException):
            outcomes[type(result).__name__] += 1
            continue
        raw = result.headers.get(b"x-foreman-queue-wait")
        if raw:
            waits.append(float(raw))
        if result.status != 200:
            outcomes[f"HTTP {result.status}"] += 1
        elif not result.done_ok:
            outcomes["no final done:true line"] += 1
        elif result.lines != phase.chunks + 1:
            outcomes[f"{result.lines} lines, not {phase.chunks + 1}"] += 1
        else:
            outcomes["ok"] += 1
    waits.sort()
    return {
        "streams": n,
        "ok": outcomes.pop("ok", 0),
        "failed": dict(outcomes),
        "wall_s": wall,
        "queue_wait_p50": statistics.median(waits) if waits else None,
        "queue_wait_max": waits[-1] if waits else None,
    }
