"""The four scenarios, run against one mode at a time (direct, nginx or foreman).

`Rig` owns the processes: the target for the whole run, nginx and foreman
started fresh per scenario. Each `sN_run(rig, mode, ...)` measures one mode
once and returns a flat dict of figures for that round; `interleave` runs
every mode round after round, rotating the order, so that drift of the
machine over the run falls on all modes alike.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import load
import nginx
import procs
from api import TINY, health, stream_body, wait_until
from header import log

MODES = ("direct", "nginx", "foreman")
# foreman in front of two bench targets (run.py --targets 2); not a column of
# the main tables, reported next to one-target foreman in a section of its own.
TWO_TARGETS = "foreman2"


@dataclass(frozen=True)
class Settings:
    rounds: int = 5
    s1_requests: int = 2000
    s1_warmup: int = 200
    s2_chunks: int = 20_000
    s2_chunk_size: int = 4
    s3_streams: int = 200
    s3_chunks: int = 100
    s3_interval: float = 0.05
    s4_requests: int = 1000
    s4_connections: int = 100
    s4_waiters: int = 999


FULL = Settings()
QUICK = replace(FULL, rounds=2, s1_requests=300, s1_warmup=50, s3_chunks=20, s4_waiters=500)


# ---------------------------------------------------------------- the rig


class Rig:
    """The target for the whole run; nginx and foreman started fresh per scenario."""

    def __init__(
        self, logdir: str, nginx: str | None, notes: list[str], foreman_source: str | None, targets: int = 1
    ) -> None:
        self.logdir = logdir
        self.targets = targets
        self.second_target: procs.Child | None = None
        self.second_target_port = 0
        self.foreman_source = foreman_source
        self.nginx_bin = nginx
        self.notes = notes
        self.target: procs.Child | None = None
        self.target_port = 0
        self.proxies: dict[str, procs.Child] = {}
        self.ports: dict[str, int] = {}
        self.foreman_logs: list[tuple[str, str]] = []  # (scenario, line)
        self.mode_seconds: dict[tuple[str, str], float] = {}

    @property
    def modes(self) -> tuple[str, ...]:
        base = MODES if self.nginx_bin else ("direct", "foreman")
        return (*base, TWO_TARGETS) if TWO_TARGETS in self.proxies else base

    async def start_target(self) -> None:
        self.target, self.target_port = await procs.start_target(self.logdir)
        self.ports["direct"] = self.target_port
        if self.targets > 1:
            self.second_target, self.second_target_port = await procs.start_target(self.logdir, "target-2")

    def stop_targets(self) -> None:
        for child in (self.target, self.second_target):
            if child is not None:
                child.stop()

    async def start_foreman(self, name: str, concurrency: int, max_queue: int) -> tuple[procs.Child, int]:
        return await procs.start_foreman(
            name, self.target_port, self.logdir, concurrency, max_queue, self.foreman_source
        )

    async def start_proxies(
        self, scenario: str, concurrency: int = 1000, max_queue: int = 100_000, two_targets: bool = False
    ) -> None:
        """nginx and foreman for one scenario; with `two_targets` (and a second target), also
        foreman in front of both targets (FOREMAN_OLLAMA_URL with both URLs), as mode TWO_TARGETS."""
        if self.nginx_bin:
            self.proxies["nginx"], self.ports["nginx"] = await nginx.start_nginx(
                self.nginx_bin, self.target_port, self.logdir
            )
        child, port = await self.start_foreman(f"foreman-{scenario}", concurrency, max_queue)
        self.proxies["foreman"], self.ports["foreman"] = child, port
        if two_targets and self.second_target is not None:
            urls = f"http://{procs.HOST}:{self.target_port},http://{procs.HOST}:{self.second_target_port}"
            child, port = await procs.start_foreman(
                f"foreman2-{scenario}", self.target_port, self.logdir, concurrency, max_queue,
                self.foreman_source, extra_env={"FOREMAN_OLLAMA_URL": urls},
            )
            self.proxies[TWO_TARGETS], self.ports[TWO_TARGETS] = child, port

    def stop_proxies(self, scenario: str) -> None:
        for mode, child in list(self.proxies.items()):
            child.stop()
            if mode in ("foreman", TWO_TARGETS):
                self.collect_foreman_log(scenario, child)
            del self.proxies[mode]
            self.ports.pop(mode, None)

    def collect_foreman_log(self, scenario: str, child: procs.Child) -> None:
        for line in child.log_text().splitlines():
            if line.strip():
                self.foreman_logs.append((scenario, line.strip()))
        code = child.popen.returncode
        if code not in (0, None):
            how = "was killed: it had not exited 3 s after SIGTERM" if code == -signal.SIGKILL else f"exited {code}"
            self.foreman_logs.append((scenario, f"[bench] {child.name} {how}"))

    def check(self) -> None:
        assert self.target is not None
        self.target.check()
        if self.second_target is not None:
            self.second_target.check()
        for child in self.proxies.values():
            child.check()

    def pids(self, mode: str) -> list[int]:
        """The processes whose CPU and memory count as the proxy (the target's for direct)."""
        if mode == "direct":
            assert self.target is not None
            return [self.target.pid]
        return self.proxies[mode].pids()

    def peak_rss_mb(self) -> dict[str, float | None]:
        """Each running proxy's peak RSS over its life (VmHWM), in MB."""
        return {mode: procs.peak_rss_kib(self.pids(mode)) * 1.024 / 1000 for mode in self.proxies}

    def target_cpu(self) -> float:
        """CPU of every target (both with two targets: the work is split between them)."""
        assert self.target is not None
        pids = [self.target.pid] + ([self.second_target.pid] if self.second_target is not None else [])
        return procs.cpu_seconds(pids)


class Meter:
    """CPU of the proxy, the target and this process, and wall time, over one measured run."""

    def __init__(self, rig: Rig, mode: str) -> None:
        self.rig, self.mode = rig, mode
        self.pids = rig.pids(mode)

    def __enter__(self) -> Meter:  # noqa: PYI034 (final class; Self needs 3.11 typing)
        gc.collect()
        gc.disable()  # the load generator's own collections would add noise to every mode
        self.proxy0 = procs.cpu_seconds(self.pids)
        self.target0 = self.rig.target_cpu()
        self.self0 = procs.self_cpu_seconds()
        self.wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.proxy = procs.cpu_seconds(self.pids) - self.proxy0
        self.target = self.rig.target_cpu() - self.target0
        self.client = procs.self_cpu_seconds() - self.self0
        gc.enable()


async def bounded(coroutine: Awaitable[dict], seconds: float, what: str) -> dict:
    try:
        return await asyncio.wait_for(coroutine, seconds)
    except TimeoutError:
        log(f"  {what}: did not finish within {seconds:g}s")
        return {"errors": 1, "timeout": True}


async def interleave(
    rig: Rig,
    scenario: str,
    rounds: int,
    run: Callable[[str], Awaitable[dict]],
    limit: float,
    warmup: Callable[[str], Awaitable[object]] | None = None,
) -> dict[str, list[dict]]:
    """Run `run(mode)` for every mode, `rounds` times, rotating the order each round."""
    results: dict[str, list[dict]] = {mode: [] for mode in rig.modes}
    modes = list(rig.modes)
    if warmup is not None:
        for mode in modes:
            started = time.perf_counter()
            await bounded(warmup(mode), limit, f"{scenario} {mode} warm-up")  # type: ignore[arg-type]
            rig.mode_seconds[(scenario, mode)] = rig.mode_seconds.get((scenario, mode), 0) + time.perf_counter() - started
    for r in range(rounds):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        for mode in order:
            rig.check()
            started = time.perf_counter()
            result = await bounded(run(mode), limit, f"{scenario} {mode} round {r + 1}")
            elapsed = time.perf_counter() - started
            rig.mode_seconds[(scenario, mode)] = rig.mode_seconds.get((scenario, mode), 0) + elapsed
            results[mode].append(result)
            log(f"  {scenario} round {r + 1}/{rounds} {mode:7s} {elapsed:6.2f}s  {brief(result)}")
    return results


def brief(result: dict) -> str:
    shown = []
    for key, value in result.items():
        if isinstance(value, float):
            shown.append(f"{key}={value:.4g}")
        elif isinstance(value, int) and key in ("errors", "late"):
            shown.append(f"{key}={value}")
    return " ".join(shown)


# ---------------------------------------------------------------- S1 latency


async def s1_run(rig: Rig, mode: str, requests: int, seconds: float = 120.0) -> dict:
    port = rig.ports[mode]
    request = load.post("/api/chat", port, TINY)
    client = load.Client(port)
    await client.connect()
    times: list[int] = []
    errors = 0
    deadline = time.monotonic() + seconds
    with Meter(rig, mode) as meter:
        for _ in range(requests):
            started = time.perf_counter_ns()
            try:
                response = await client.request(request, timeout=10)
            except (TimeoutError, OSError):
                errors += 1
                continue
            if response.status == 200:
                times.append(time.perf_counter_ns() - started)
            else:
                errors += 1
            if time.monotonic() > deadline:
                break
    client.close()
    times.sort()
    done = len(times) + errors
    return {
        "p50_ms": load.percentile(times, 0.5) / 1e6,
        "p99_ms": load.percentile(times, 0.99) / 1e6,
        "rps": done / meter.wall,
        "proxy_cpu_us": meter.proxy / done * 1e6 if mode != "direct" else None,
        "target_cpu_us": meter.target / done * 1e6,
        "client_cpu_us": meter.client / done * 1e6,
        "errors": errors,
        "requests": done,
    }


# ---------------------------------------------------------------- S2 relay


async def s2_run(rig: Rig, mode: str, chunks: int, size: int) -> dict:
    port = rig.ports[mode]
    client = load.Client(port)
    await client.connect()
    request = load.post("/api/chat", port, stream_body(chunks, size))
    errors = 0
    with Meter(rig, mode) as meter:
        try:
            response = await client.request(request, "count", timeout=300)
            ok = response.status == 200 and response.lines == chunks + 1 and response.done_ok
        except (TimeoutError, OSError):
            ok = False
    client.close()
    if not ok:
        errors = 1
    return {
        "wall_ms": meter.wall * 1e3,
        "chunks_per_s": chunks / meter.wall,
        "relay_cpu_us": meter.proxy / chunks * 1e6,  # direct: the target's own
        "target_cpu_us": meter.target / chunks * 1e6,
        "client_cpu_us": meter.client / chunks * 1e6,
        "errors": errors,
    }


# ---------------------------------------------------------------- S3 fan-in


async def s3_run(rig: Rig, mode: str, streams: int, chunks: int, interval: float, spread: bool) -> dict:
    """All streams are opened first; chunks start flowing together at a common start time."""
    port = rig.ports[mode]
    clients = [load.Client(port) for _ in range(streams)]
    await asyncio.gather(*(client.connect() for client in clients))
    begin = time.time() + 0.3 + streams * 0.004  # time for a proxy to pass every request on
    requests = [
        load.post(
            "/api/chat", port, stream_body(chunks, 4, interval, interval * k / streams if spread else 0.0, begin)
        )
        for k in range(streams)
    ]
    timeout = begin - time.time() + chunks * interval + 60
    pending = [
        asyncio.ensure_future(client.request(request, "stamps", timeout=timeout))
        for client, request in zip(clients, requests)
    ]
    await asyncio.sleep(max(0.0, begin - time.time()))
    with Meter(rig, mode) as meter:
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
    for client in clients:
        client.close()
    delays: list[int] = []
    errors = late = 0
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            errors += 1
            continue
        if outcome.status != 200 or outcome.lines != chunks + 1 or not outcome.done_ok:
            errors += 1
        if outcome.first_sent_ns > (begin + 2 * interval) * 1e9:  # grid rounding + a burst's writes
            late += 1
        delays.extend(outcome.delays_ns)
    delays.sort()
    return {
        "p50_ms": load.percentile(delays, 0.5) / 1e6,
        "p99_ms": load.percentile(delays, 0.99) / 1e6,
        "max_ms": delays[-1] / 1e6 if delays else float("nan"),
        "proxy_cpu_pct": meter.proxy / meter.wall * 100 if mode != "direct" else None,
        "target_cpu_pct": meter.target / meter.wall * 100,
        "client_cpu_pct": meter.client / meter.wall * 100,
        "wall_s": meter.wall,
        "late": late,
        "errors": errors,
    }


# ---------------------------------------------------------------- S4 queue


async def s4_run(rig: Rig, mode: str, requests: int, connections: int) -> dict:
    port = rig.ports[mode]
    request = load.post("/api/chat", port, TINY)
    clients = [load.Client(port) for _ in range(connections)]
    await asyncio.gather(*(client.connect() for client in clients))
    per_connection = [requests // connections + (1 if i < requests % connections else 0) for i in range(connections)]
    statuses: dict[int | str, int] = {}

    async def worker(client: load.Client, count: int) -> None:
        for _ in range(count):
            try:
                response = await client.request(request, timeout=60)
                key: int | str = response.status
            except (TimeoutError, OSError) as e:
                key = type(e).__name__
            statuses[key] = statuses.get(key, 0) + 1

    with Meter(rig, mode) as meter:
        await asyncio.gather(*(worker(client, count) for client, count in zip(clients, per_connection)))
    for client in clients:
        client.close()
    errors = sum(n for key, n in statuses.items() if key != 200)
    return {
        "wall_per_req_ms": meter.wall / requests * 1e3,
        "rps": requests / meter.wall,
        "proxy_cpu_ms": meter.proxy / requests * 1e3 if mode != "direct" else None,
        "target_cpu_ms": meter.target / requests * 1e3,
        "client_cpu_ms": meter.client / requests * 1e3,
        "errors": errors,
        "statuses": {str(k): v for k, v in statuses.items()},
    }


async def s4_memory(rig: Rig, waiters: int, round_no: int) -> dict:
    """A fresh foreman (concurrency 1): RSS before and while `waiters` requests wait behind a held one."""
    child, port = await rig.start_foreman(f"foreman-S4-memory-{round_no}", 1, waiters + 10)
    clients: list[load.Client] = []
    try:
        warm = load.Client(port)
        for _ in range(50):
            await warm.request(load.post("/api/chat", port, TINY), timeout=10)
        warm.close()
        await asyncio.sleep(0.3)
        before = procs.rss_kib([child.pid])
        held = load.Client(port)
        clients.append(held)
        await held.connect()
        held.send(load.post("/api/chat", port, stream_body(2, 4, 3600.0)))
        if not await wait_until(lambda: _queue_is(port, "in_flight", 1), 10):
            raise procs.StartError("the held generation never reached the target")
        request = load.post("/api/chat", port, TINY)
        for start in range(0, waiters, 100):
            batch = [load.Client(port) for _ in range(min(100, waiters - start))]
            await asyncio.gather(*(client.connect() for client in batch))
            for client in batch:
                client.send(request, "collect")
            clients.extend(batch)
        reached = await wait_until(lambda: _queue_is(port, "waiting", waiters), 60)
        snapshot = (await health(port))["queue"]
        await asyncio.sleep(0.3)
        during = procs.rss_kib([child.pid])
        return {
            "rss_before_kib": before,
            "rss_waiting_kib": during,
            "waiting": snapshot["waiting"],
            "per_waiter_kb": (during - before) * 1.024 / max(1, snapshot["waiting"]),
            "errors": 0 if reached else 1,
        }
    finally:
        for client in clients:
            client.close()
        await asyncio.sleep(0.2)
        child.stop()
        rig.collect_foreman_log("S4", child)


async def _queue_is(port: int, field: str, value: int) -> bool:
    return (await health(port))["queue"][field] >= value
