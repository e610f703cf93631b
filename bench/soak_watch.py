"""What is watched while a phase runs: foreman's RSS, open files and /healthz queue, and normal requests' latency.

`Sampler` and `Prober` serve every phase; `Watch` bundles them for the
phases that look at one fault at a time (soak_upload_cut.py, soak_unread.py,
soak_big_body.py): RSS, a normal chat every 0.5 s and /healthz every 50 ms
from another client.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import dataclass, field

import load
import procs
from api import TINY, health
from soak_settings import HEALTH_EVERY, HEALTH_PROBE_EVERY, OTHER_CLIENT, PROBE_EVERY, SAMPLE_EVERY


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
    """A request (by default a small non-streaming chat) every `every` s on a fresh connection, from each source.

    One goes out every tick whether or not the previous ones have been
    answered, so a stalled server shows as the latency of those sent into the stall.
    """

    def __init__(
        self,
        port: int,
        sources: tuple[tuple[str, str | None], ...],
        timeline: Timeline,
        limit: float,
        request: bytes | None = None,
        every: float = PROBE_EVERY,
    ) -> None:
        self.port, self.sources, self.timeline, self.every = port, sources, timeline, every
        self.request = request if request is not None else load.post("/api/chat", port, TINY)
        self.results: list[Probe] = []
        self.pending: set[asyncio.Future[None]] = set()
        self.stopping = asyncio.Event()
        self.loop_task = asyncio.ensure_future(self._loop(int(limit / every) + 1))

    async def _loop(self, ticks: int) -> None:
        for _ in range(ticks):
            for label, address in self.sources:
                task = asyncio.ensure_future(self._one(label, address))
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)
            try:
                await asyncio.wait_for(self.stopping.wait(), self.every)
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


CHAT_PROBE = ("normal chat (127.0.0.2)", OTHER_CLIENT)
HEALTH_PROBE = ("/healthz (127.0.0.2)", OTHER_CLIENT)


class Watch:
    """RSS and fds (Sampler), a normal chat every 0.5 s and /healthz every 50 ms, from 127.0.0.2."""

    sources = (CHAT_PROBE, HEALTH_PROBE)

    def __init__(self, pid: int, port: int, timeline: Timeline, limit: float) -> None:
        self.sampler = Sampler(pid, port, timeline, limit)
        self.chats = Prober(port, (CHAT_PROBE,), timeline, limit)
        self.healthz = Prober(
            port, (HEALTH_PROBE,), timeline, limit, request=load.get("/healthz", port), every=HEALTH_PROBE_EVERY
        )

    async def stop(self) -> int:
        """Stop sampling and probing (bounded); how many probes never got an answer. Safe to call twice."""
        unfinished = await self.chats.stop() + await self.healthz.stop()
        await self.sampler.stop()
        return unfinished

    @property
    def probes(self) -> list[Probe]:
        return self.chats.results + self.healthz.results


# ---------------------------------------------------------------- report


def ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms"


def rss_at(timeline: Timeline, t: float) -> tuple[float, int, int] | None:
    """The memory sample nearest to `t` (within a second)."""
    nearest = min(timeline.memory, key=lambda m: abs(m[0] - t), default=None)
    return nearest if nearest is not None and abs(nearest[0] - t) <= 1.0 else None


def peak_between(timeline: Timeline, start: float, end: float) -> tuple[float, int, int] | None:
    """The memory sample with the highest RSS from `start` to `end` (seconds on the timeline)."""
    return max((m for m in timeline.memory if start <= m[0] <= end), key=lambda m: m[1], default=None)


def rss_series(timeline: Timeline, start: float, end: float, step: float) -> str:
    """RSS every `step` seconds from `start` to `end`, as `t=0 s 30.1 → t=1 s 80.2 … MiB` (times from `start`)."""
    points = []
    for i in range(int((end - start) / step) + 1):
        sample = rss_at(timeline, start + i * step)
        if sample is not None:
            points.append(f"{i * step:g} s: {sample[1] / 1024:.0f}")
    return " → ".join(points) + " MiB" if points else "?"


WINDOWS = ("before streams", "streams running", "stalled only", "after close")


def latency_rows(
    probes: list[Probe], sources: tuple[tuple[str, str | None], ...], windows: tuple[str, ...] = WINDOWS
) -> list[str]:
    rows = [
        "| client | while | requests | not 200 | p50 | p99 | max | of which connect, max | queue wait max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
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


def unanswered(count: int) -> list[str]:
    """A line for the report when some of the other client's requests were never answered."""
    return [f"**{count} requests of the other client had no answer when the phase ended.**", ""] if count else []
