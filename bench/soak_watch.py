"""What is watched while a phase runs: foreman's RSS, open files and /healthz queue, and normal requests' latency."""

from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass, field

import load
import procs
from api import TINY, health
from soak_settings import HEALTH_EVERY, PROBE_EVERY, SAMPLE_EVERY


@dataclass
class Timeline:
    """What is sampled during a phase; times in seconds since the phase's load began."""

    t0: float
    memory: list[tuple[float, int, int]] = field(default_factory=list)  # t, RSS KiB, open fds
    queue: list[tuple[float, int, int]] = field(default_factory=list)  # t, waiting, in_flight
    health_errors: int = 0
    events: dict[str, float] = field(default_factory=dict)
    window: str = "before streams"

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, event: str) -> None:
        self.events[event] = self.now()


class Sampler:
    """Foreman's RSS and fds every 0.25 s, /healthz every 0.5 s, until stopped or `limit` seconds."""

    def __init__(self, pid: int, port: int, timeline: Timeline, limit: float) -> None:
        self.pid, self.port, self.timeline, self.limit = pid, port, timeline, limit
        self.stopping = asyncio.Event()
        self.tasks = [
            asyncio.ensure_future(self._memory()),
            asyncio.ensure_future(self._queue()),
        ]

    async def _pause(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _memory(self) -> None:
        for _ in range(int(self.limit / SAMPLE_EVERY) + 1):
            self.timeline.memory.append((self.timeline.now(), procs.rss_kib([self.pid]), procs.open_fds(self.pid)))
            if await self._pause(SAMPLE_EVERY):
                return

    async def _queue(self) -> None:
        for _ in range(int(self.limit / HEALTH_EVERY) + 1):
            started = time.monotonic()
            try:
                snapshot = (await asyncio.wait_for(health(self.port), 10))["queue"]
                self.timeline.queue.append((self.timeline.now(), snapshot["waiting"], snapshot["in_flight"]))
            except Exception:  # noqa: BLE001 (a sample is lost, and counted)
                self.timeline.health_errors += 1
            if await self._pause(max(0.0, HEALTH_EVERY - (time.monotonic() - started))):
                return

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait(self.tasks, timeout=15)
        for task in self.tasks:
            task.cancel()

    def queue_now(self) -> tuple[int, int] | None:
        return self.timeline.queue[-1][1:] if self.timeline.queue else None


@dataclass
class Probe:
    source: str
    window: str
    t: float
    ms: float
    status: str
    queue_wait: float | None
    connect_ms: float | None


class Prober:
    """A small non-streaming chat every 0.5 s on a fresh connection, from each source."""

    def __init__(self, port: int, sources: tuple[tuple[str, str | None], ...], timeline: Timeline, limit: float) -> None:
        self.port, self.sources, self.timeline = port, sources, timeline
        self.request = load.post("/api/chat", port, TINY)
        self.results: list[Probe] = []
        self.pending: set[asyncio.Future[None]] = set()
        self.stopping = asyncio.Event()
        self.loop_task = asyncio.ensure_future(self._loop(int(limit / PROBE_EVERY) + 1))

    async def _loop(self, ticks: int) -> None:
        for _ in range(ticks):
            for label, address in self.sources:
                task = asyncio.ensure_future(self._one(label, address))
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)
            try:
                await asyncio.wait_for(self.stopping.wait(), PROBE_EVERY)
                return
            except TimeoutError:
                pass

    async def _one(self, label: str, address: str | None) -> None:
        window, t = self.timeline.window, self.timeline.now()
        client = load.Client(self.port, local_host=address)
        started = time.perf_counter()
        queue_wait = connect_ms = None
        try:
            await asyncio.wait_for(client.connect(), 10)
            connect_ms = (time.perf_counter() - started) * 1e3
            response = await asyncio.wait_for(client.request(self.request, timeout=60), 65)
            status = str(response.status)
            raw = response.headers.get(b"x-foreman-queue-wait")
            queue_wait = float(raw) if raw else None
        except Exception as e:  # noqa: BLE001 (recorded as the outcome)
            status = type(e).__name__
        finally:
            client.close()
        elapsed = (time.perf_counter() - started) * 1e3
        self.results.append(Probe(label, window, t, elapsed, status, queue_wait, connect_ms))

    async def stop(self) -> int:
        """Stop sending; wait for those in flight (bounded); returns how many never answered."""
        self.stopping.set()
        await asyncio.wait([self.loop_task], timeout=5)
        unfinished = 0
        if self.pending:
            _, still = await asyncio.wait(list(self.pending), timeout=70)
            unfinished = len(still)
            for task in still:
                task.cancel()
        return unfinished


# ---------------------------------------------------------------- report


def ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms"


def rss_at(timeline: Timeline, t: float) -> tuple[float, int, int] | None:
    """The memory sample nearest to `t` (within a second)."""
    nearest = min(timeline.memory, key=lambda m: abs(m[0] - t), default=None)
    return nearest if nearest is not None and abs(nearest[0] - t) <= 1.0 else None


def latency_rows(probes: list[Probe], sources: tuple[tuple[str, str | None], ...]) -> list[str]:
    rows = [
        "| client | while | requests | not 200 | p50 | p99 | max | of which connect, max | queue wait max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    windows = ("before streams", "streams running", "stalled only", "after close")
    for label, _ in sources:
        for window in windows:
            chosen = [p for p in probes if p.source == label and p.window == window]
            if not chosen:
                continue
            good = sorted(p.ms for p in chosen if p.status == "200")
            bad = collections.Counter(p.status for p in chosen if p.status != "200")
            waits = [p.queue_wait for p in chosen if p.queue_wait is not None]
            connects = [p.connect_ms for p in chosen if p.connect_ms is not None]
            bad_text = str(sum(bad.values())) + (f" ({', '.join(f'{k} x{v}' for k, v in bad.items())})" if bad else "")
            rows.append(
                f"| {label} | {window} | {len(chosen)} | {bad_text} | {ms(load.percentile(good, 0.5))} | "
                f"{ms(load.percentile(good, 0.99))} | {ms(good[-1] if good else None)} | "
                f"{ms(max(connects) if connects else None)} | "
                f"{f'{max(waits):.3f} s' if waits else '–'} |"
            )
    return rows
