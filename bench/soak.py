"""Soak: hundreds of streams and a few hundred stalled connections against one foreman.

    python bench/soak.py                    # full run, about 3-4 minutes
    python bench/soak.py --quick            # under a minute
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

Reports figures, asserts nothing. The report goes to stdout and to
bench/soak-results.md; progress goes to stderr. Everything is on loopback,
every loop is bounded in count and time, and every child process is killed on
exit (procs.py).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import gc
import math
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import load
import procs
from scenarios import HERE, REPO, TINY, health, log, stream_body

HOST = procs.HOST
OTHER_CLIENT = "127.0.0.2"  # still loopback: a second client address for foreman's fair queue
MAX_QUEUE = 100_000
PROBE_EVERY = 0.5
SAMPLE_EVERY = 0.25
HEALTH_EVERY = 0.5
NOT_READING_RCVBUF = 4096
# (c)'s answer: far more than every buffer between the target and the client
# (loopback autotuning allows several MiB per socket), so that it really stalls.
NOT_READING_CHUNKS = 2000
NOT_READING_CHUNK_SIZE = 8192
BODY_PROMISED = 1000

KINDS = ("a", "b", "c", "d")
RECORD_START = re.compile(r"^(\d{4}-\d\d-\d\d[ T][\d:,.]+ ?|\{)")
KIND_NAMES = {
    "a": "idle: connects, sends nothing",
    "b": f"POST headers with Content-Length: {BODY_PROMISED}, body never sent",
    "c": (
        f"streamed chat ({NOT_READING_CHUNKS} x {NOT_READING_CHUNK_SIZE // 1024} KiB chunks), "
        f"SO_RCVBUF {NOT_READING_RCVBUF // 1024} KiB, never reads"
    ),
    "d": "half a header line (`...HTTP/1.1\\r\\nHost: 127.0`), then nothing",
}


@dataclass(frozen=True)
class Phase:
    key: str
    title: str
    concurrency: int
    streams: int
    chunks: int
    interval: float
    stalled: dict[str, int]
    probe_sources: tuple[tuple[str, str | None], ...]  # (label, local address)


@dataclass(frozen=True)
class Settings:
    phases: tuple[Phase, ...]
    warmup_requests: int = 200
    warmup_streams: int = 50
    hold: float = 75.0  # longer than FOREMAN_CLIENT_TIMEOUT's default 60 s
    after: float = 10.0
    churn_rounds: int = 10
    churn_sizes: tuple[tuple[str, int], ...] = (("a", 200), ("b", 200), ("d", 200), ("c", 50))
    sigterm_wait: float = 5.0


OTHER = ("other client (127.0.0.2)", OTHER_CLIENT)
SAME = ("load's own address (127.0.0.1)", None)

FULL = Settings(
    phases=(
        Phase(
            "wide", "FOREMAN_CONCURRENCY=1000: 300 token-speed streams and 400 stalled connections",
            1000, 300, 200, 0.05, {"a": 100, "b": 100, "c": 100, "d": 100}, (OTHER,),
        ),
        Phase(
            "queue", "FOREMAN_CONCURRENCY=4: 200 queued streams, two slots held by clients that never read",
            4, 200, 50, 0.002, {"a": 50, "b": 50, "c": 2, "d": 50}, (OTHER, SAME),
        ),
    ),
)
QUICK = Settings(
    phases=(
        Phase(
            "wide", "FOREMAN_CONCURRENCY=1000: 100 token-speed streams and 200 stalled connections",
            1000, 100, 100, 0.05, {"a": 50, "b": 50, "c": 50, "d": 50}, (OTHER,),
        ),
        Phase(
            "queue", "FOREMAN_CONCURRENCY=4: 60 queued streams, two slots held by clients that never read",
            4, 60, 50, 0.002, {"a": 25, "b": 25, "c": 2, "d": 25}, (OTHER, SAME),
        ),
    ),
    warmup_requests=100,
    warmup_streams=20,
    hold=8.0,
    after=5.0,
    churn_rounds=4,
    churn_sizes=(("a", 100), ("b", 100), ("d", 100), ("c", 20)),
)


# ---------------------------------------------------------------- stalled connections


class Stall(asyncio.Protocol):
    """One stalled client: sends `payload` (maybe nothing), then only watches what happens."""

    def __init__(self, kind: str, payload: bytes, paused: bool) -> None:
        self.kind = kind
        self.payload = payload
        self.paused = paused
        self.transport: asyncio.Transport | None = None
        self.opened = 0.0
        self.first_data: float | None = None
        self.closed_at: float | None = None  # when the connection ended, whoever ended it
        self.closed_by_us = False
        self.ended_before_drain = False  # (c): the connection was gone before we started reading
        self.received = 0
        self.head = b""
        self.tail = b""
        self.error = ""
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.opened = time.monotonic()
        if self.paused:
            transport.pause_reading()
        if self.payload:
            transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        if self.first_data is None:
            self.first_data = time.monotonic()
        self.received += len(data)
        self.tail = (self.tail + data)[-64:]
        if len(self.head) < 120:
            self.head += data[: 120 - len(self.head)]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = time.monotonic()
        if exc is not None:
            self.error = type(exc).__name__
        if not self.lost.done():
            self.lost.set_result(None)

    @property
    def answer_complete(self) -> bool:
        """A streamed answer that arrived whole: its done:true line and the terminating chunk."""
        return self.tail.endswith(b"0\r\n\r\n") and b'"done":true' in self.tail

    @property
    def ended_by_server(self) -> bool:
        return self.closed_at is not None and not self.closed_by_us

    def close(self) -> None:
        if self.closed_at is None and self.transport is not None:
            self.closed_by_us = True
            self.transport.abort()


def stall_payload(kind: str, port: int) -> bytes:
    if kind == "a":
        return b""
    if kind == "b":
        return (
            b"POST /api/chat HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (HOST.encode(), port, BODY_PROMISED)
        )
    if kind == "c":
        return load.post("/api/chat", port, stream_body(NOT_READING_CHUNKS, NOT_READING_CHUNK_SIZE, 0.0))
    return b"POST /api/chat HTTP/1.1\r\nHost: 127.0"


async def open_stall(kind: str, port: int) -> Stall:
    loop = asyncio.get_running_loop()
    stall = Stall(kind, stall_payload(kind, port), paused=kind == "c")
    if kind == "c":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Before connect, so that the window offered in the handshake is small too.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NOT_READING_RCVBUF)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), 10)
            await loop.create_connection(lambda: stall, sock=sock)
        except BaseException:
            sock.close()
            raise
    else:
        await asyncio.wait_for(loop.create_connection(lambda: stall, HOST, port), 10)
    return stall


async def open_stalls(kind: str, count: int, port: int) -> tuple[list[Stall], int]:
    """Open `count` stalled connections of one kind, 50 at a time; returns them and the failures."""
    opened: list[Stall] = []
    failed = 0
    for start in range(0, count, 50):
        batch = await asyncio.gather(
            *(open_stall(kind, port) for _ in range(min(50, count - start))), return_exceptions=True
        )
        for outcome in batch:
            if isinstance(outcome, Stall):
                opened.append(outcome)
            else:
                failed += 1
        await asyncio.sleep(0.05)
    return opened, failed


# ---------------------------------------------------------------- sampling


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


# ---------------------------------------------------------------- streams


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


# ---------------------------------------------------------------- warm-up


async def warm_up(port: int, s: Settings) -> int:
    """Tiny chats on 10 connections and a few short streams; returns the errors."""
    errors = 0
    clients = [load.Client(port) for _ in range(10)]
    request = load.post("/api/chat", port, TINY)

    async def chats(client: load.Client, count: int) -> int:
        bad = 0
        for _ in range(count):
            try:
                response = await client.request(request, timeout=10)
                bad += response.status != 200
            except Exception:  # noqa: BLE001
                bad += 1
        return bad

    errors += sum(await asyncio.gather(*(chats(c, s.warmup_requests // 10) for c in clients)))
    for client in clients:
        client.close()
    streams = [load.Client(port) for _ in range(s.warmup_streams)]
    outcomes = await asyncio.gather(
        *(c.request(load.post("/api/chat", port, stream_body(20, 4, 0.005)), "count", timeout=30) for c in streams),
        return_exceptions=True,
    )
    errors += sum(1 for o in outcomes if isinstance(o, BaseException) or not o.done_ok)
    for client in streams:
        client.close()
    return errors


# ---------------------------------------------------------------- one phase


async def run_phase(phase: Phase, s: Settings, target_port: int, logdir: str, source: str | None, env: dict[str, str]) -> dict:
    port = procs.free_port()
    child = procs.start_foreman(
        f"foreman-{phase.key}", port, target_port, logdir, phase.concurrency, MAX_QUEUE, source, env
    )
    stalls: dict[str, list[Stall]] = {kind: [] for kind in KINDS}
    out: dict = {"phase": phase}
    sampler: Sampler | None = None
    prober: Prober | None = None
    try:
        await procs.wait_http_ready(child, port, "/healthz")
        pid = child.pid
        out["warmup_errors"] = await warm_up(port, s)
        await asyncio.sleep(1.0)
        out["baseline_rss"] = procs.rss_kib([pid])
        out["baseline_fds"] = procs.open_fds(pid)
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

        await wait_until(slots_held, 15)
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
            await wait_until(lambda: _all_settled(stalls["c"]), 2.0)
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

        await wait_until(queue_empty, s.after)
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
        out["exit_after_sigterm"] = await sigterm_exit(child, s.sigterm_wait)
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


async def run_churn(s: Settings, target_port: int, logdir: str, source: str | None, env: dict[str, str]) -> dict:
    """Open and close stalled connections of one kind, round after round: does RSS stay flat?

    One foreman (FOREMAN_CONCURRENCY=1000). Per kind: one round to settle, then
    `churn_rounds` rounds of `count` connections opened, held 0.5 s, closed.
    Memory that each such connection leaves behind shows as RSS growing with the rounds.
    """
    port = procs.free_port()
    child = procs.start_foreman("foreman-churn", port, target_port, logdir, 1000, MAX_QUEUE, source, env)
    out: dict = {"kinds": []}
    try:
        await procs.wait_http_ready(child, port, "/healthz")
        pid = child.pid
        out["warmup_errors"] = await warm_up(port, s)
        await asyncio.sleep(1.0)
        out["baseline_rss"] = procs.rss_kib([pid])
        out["baseline_fds"] = procs.open_fds(pid)

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
        out["exit_after_sigterm"] = await sigterm_exit(child, s.sigterm_wait)
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


async def _all_settled(group: list[Stall]) -> bool:
    return all(st.closed_at is not None or st.answer_complete for st in group)


async def sigterm_exit(child: procs.Child, wait: float) -> float | None:
    """SIGTERM with nothing in flight: seconds until foreman exits, None if it has not after `wait`.

    foreman drains on SIGTERM: it waits up to FOREMAN_SHUTDOWN_GRACE (30 s) for
    the requests it counts as in flight. With every client gone, it should exit at once.
    """
    if not child.alive():
        return None
    started = time.monotonic()
    child.popen.send_signal(signal.SIGTERM)
    for _ in range(int(wait / 0.05) + 1):
        if not child.alive():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


async def wait_until(check, seconds: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / step) + 2):
        if await check():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(step, left))
    return False


# ---------------------------------------------------------------- report


def mib(kib: float | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


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


def stall_rows(out: dict, hold: float) -> list[str]:
    stalls: dict[str, list[Stall]] = out["stalls"]
    timeline: Timeline = out["timeline"]
    phase: Phase = out["phase"]
    rows = [
        ("| kind | what the client does | opened | ended by foreman while held | "
        "time to end (from connect: min / median / max) | what the client got first | still open when we closed |"),
        "|---|---|---:|---:|---|---|---:|",
    ]
    for kind in KINDS:
        wanted = phase.stalled.get(kind, 0)
        if not wanted:
            continue
        group = stalls[kind]
        opened = f"{len(group)}" + (f" ({out['failed_open'][kind]} failed)" if out["failed_open"].get(kind) else "")
        if kind == "c":
            ended, times, got, still = c_outcome(out, timeline)
        else:
            ended_group = [st for st in group if st.ended_by_server]
            ended = str(len(ended_group))
            durations = sorted(st.closed_at - st.opened for st in ended_group)  # type: ignore[operator]
            times = (
                f"{durations[0]:.1f} / {statistics.median(durations):.1f} / {durations[-1]:.1f} s"
                if durations else "–"
            )
            heads = collections.Counter(first_line(st) for st in ended_group)
            got = "; ".join(f"{h} x{n}" for h, n in heads.most_common(3)) or "–"
            still = str(sum(1 for st in group if not st.ended_by_server))
        rows.append(f"| ({kind}) | {KIND_NAMES[kind]} | {opened} | {ended} | {times} | {got} | {still} |")
    rows.append("")
    rows.append(
        f"Held for up to {hold:g} s after opening (less if foreman ended every one sooner); "
        f"the hold ended at {timeline.events['hold over'] - timeline.events['stalled opened']:.1f} s."
    )
    return rows


def first_line(st: Stall) -> str:
    if not st.received:
        return "nothing, then " + ("a reset" if st.error else "EOF")
    line = st.head.split(b"\r\n", 1)[0].decode(errors="replace")
    return f"`{line}`"


def c_outcome(out: dict, timeline: Timeline) -> tuple[str, str, str, str]:
    """For the never-reading clients: foreman's in-flight count says when it let go of them."""
    group: list[Stall] = out["stalls"]["c"]
    held = len(group)
    done_at = timeline.events.get("streams done", 0.0)
    opened_at = timeline.events["stalled opened"]
    hold_over = timeline.events["hold over"]
    after = [(t, inflight) for t, _, inflight in timeline.queue if done_at <= t <= hold_over]
    released = next((t for t, inflight in after if inflight == 0), None)
    ended_before_drain = sum(1 for st in group if st.ended_before_drain)
    eof = out["drain_eof"]
    if released is not None:
        ended = f"all {held} (in_flight 0 at {released - opened_at:.0f} s)"
        times = f"≤ {released - opened_at:.0f} s (from /healthz in_flight)"
    else:
        last = after[-1][1] if after else "?"
        ended = f"0 (in_flight still {last} at the end of the hold)"
        times = "–"
    complete = out["drain_complete"]
    rest = held - eof - complete
    parts = []
    if eof:
        parts.append(f"{eof} got the bytes foreman had sent, then EOF (dropped)")
    if complete:
        parts.append(f"{complete} got the whole answer with done:true (never dropped)")
    if rest:
        parts.append(
            f"{rest} still receiving after 2 s"
            + (" (what foreman had handed to the kernel before letting go)" if released is not None else "")
        )
    got = "when finally reading at the end: " + "; ".join(parts)
    if ended_before_drain:
        got += f" ({ended_before_drain} had ended before)"
    still = "0 on foreman's side" if released is not None else str(held - eof)
    return ended, times, got, still


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


def exit_text(seconds: float | None, wait: float) -> str:
    if seconds is not None:
        return f"foreman exited after {seconds:.2f} s."
    return (
        f"**foreman was still running {wait:g} s later** (it drains for up to FOREMAN_SHUTDOWN_GRACE, 30 s, "
        "while it counts a request in flight: something was still counted although no client was left); "
        "it was then killed."
    )


def log_summary(out: dict) -> list[str]:
    """foreman's log records, grouped by shape; a traceback is shown by its last line and foreman's frame."""
    lines = [line for line in out["log"].splitlines() if line.strip()]
    records: list[list[str]] = []
    for line in lines:
        if records and not RECORD_START.match(line):
            records[-1].append(line)
        else:
            records.append([line])
    shapes: collections.Counter[str] = collections.Counter()
    example: dict[str, str] = {}
    for record in records:
        text = record[0][:200]
        if len(record) > 1:
            frames = [r.strip() for r in record if r.strip().startswith('File "') and "/foreman/" in r]
            text += f" … {record[-1].strip()[:80]}" + (f" (in {frames[-1][:120]})" if frames else "")
        shape = re.sub(r"\d+(\.\d+)?", "N", RECORD_START.sub("", text))
        shapes[shape] += 1
        example.setdefault(shape, text)
    rows = [f"### foreman's log (level warning): {len(records)} records, {len(lines)} lines", ""]
    for shape, count in shapes.most_common(6):
        rows.append(f"- x{count}: `{example[shape]}`")
    if len(shapes) > 6:
        rows.append(f"- … and {len(shapes) - 6} other kinds of record")
    rows.append("")
    return rows


def header(command: str, s: Settings, quick: bool, rev: str | None, env: dict[str, str]) -> list[str]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
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
        tornado_version = "?"

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
            return done.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    if rev:
        which = f"foreman/ as committed at {git('rev-parse', '--short', rev) or rev} (`--foreman-rev {rev}`)"
    else:
        dirty = git("status", "--porcelain", "--", "foreman")
        which = f"the working tree at commit {git('rev-parse', '--short', 'HEAD') or '?'}" + (
            ", **with uncommitted changes under foreman/**" if dirty else " (foreman/ clean)"
        )
    load1, load5, _ = os.getloadavg()
    return [
        "# foreman soak: hundreds of streams and stalled connections",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        (f"- machine: {model}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, Linux {platform.release()}; "
        f"load average at start {load1:.2f} / {load5:.2f}"),
        f"- Python {platform.python_version()}, Tornado {tornado_version}; foreman: {which}",
        f"- command: `{command}`{' (smoke run)' if quick else ''}"
        + (f"; extra foreman environment: {', '.join(f'`{k}={v}`' for k, v in env.items())}" if env else ""),
        ("- target: bench/target.py (fast stand-in Ollama). Load generator, target and foreman share this "
        "machine's cores; everything on loopback. Figures are one run, not medians: read them as orders "
        "of magnitude."),
        ("- normal requests come from 127.0.0.2 (another client to foreman's fair queue); in the queue phase "
        "also from 127.0.0.1, the address the streams come from (behind them in first-come order)."),
        "",
    ]


# ---------------------------------------------------------------- main


async def run(args: argparse.Namespace, s: Settings, logdir: str, env: dict[str, str]) -> str:
    command = shlex.join(["python", os.path.relpath(sys.argv[0], os.getcwd()), *sys.argv[1:]])
    source = procs.export_foreman(args.foreman_rev, os.path.join(logdir, "src")) if args.foreman_rev else None
    lines = header(command, s, args.quick, args.foreman_rev, env)
    started = time.perf_counter()
    target_port = procs.free_port()
    target = procs.start_target(target_port, logdir)
    try:
        await procs.wait_http_ready(target, target_port, "/api/tags")
        log(f"target on 127.0.0.1:{target_port}")
        for phase in s.phases:
            if args.only and phase.key not in args.only:
                continue
            log(f"phase {phase.key}: {phase.title}")
            t = time.perf_counter()
            try:
                out = await asyncio.wait_for(run_phase(phase, s, target_port, logdir, source, env), s.hold + 240)
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
                churned = await asyncio.wait_for(run_churn(s, target_port, logdir, source, env), 180)
            except TimeoutError:
                lines += ["## Churn", "", "**Did not finish within its time limit.**", ""]
            else:
                log(f"  phase churn done in {time.perf_counter() - t:.0f}s")
                keep_log(args.keep_logs, "churn", churned["log"])
                lines += churn_section(churned, s)
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
    parser = argparse.ArgumentParser(description="Soak foreman with streams and stalled connections (loopback).")
    parser.add_argument("--quick", action="store_true", help="smaller and shorter: under a minute")
    parser.add_argument("--hold", type=float, help="seconds to hold the stalled connections (default 75, --quick 8)")
    parser.add_argument("--after", type=float, help="seconds to watch RSS after closing (default 10, --quick 5)")
    parser.add_argument("--only", nargs="+", choices=["wide", "queue", "churn"], help="run only these phases")
    parser.add_argument("--keep-logs", metavar="DIR", help="also write foreman's full log of each phase here")
    parser.add_argument("--foreman-rev", metavar="REV", help="run foreman/ as committed at this git revision")
    parser.add_argument(
        "--env", action="append", default=[], metavar="FOREMAN_X=VALUE",
        help="extra environment for foreman (repeatable), e.g. FOREMAN_CLIENT_TIMEOUT=10s",
    )
    parser.add_argument("--output", default=os.path.join(HERE, "soak-results.md"), help="where to write the report")
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
    procs.raise_open_file_limit()

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="foreman-soak-") as logdir:
        try:
            report = asyncio.run(run(args, s, logdir, env))
        except procs.StartError as e:
            print(f"soak: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("soak: interrupted; child processes stopped", file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            procs.stop_all()
    print(report)
    with open(args.output, "w") as f:
        f.write(report + "\n")
    log(f"written to {os.path.relpath(args.output)}")


if __name__ == "__main__":
    main()
