"""What the queue costs: dispatch time per request and memory per waiting request.

    python bench/queue_cost.py

1. FairQueue alone: 100 clients push 20,000 requests through concurrency 1;
   CPU time per admit + turn + done (tasks and all). Then the scheduler under
   a standing queue: 100 clients with 1,000 and 10,000 requests waiting over
   three models (affinity on), CPU per admit + dispatch + done with no task
   around them: the figure issue 9 of 12 bounds at 50 µs, and the same at
   both depths if nothing is linear in the number waiting.
2. foreman as a real process in front of the stand-in (also a process): 1,000
   requests wait while the target holds one generation; foreman's RSS before
   and after, per waiting request. Then the same 1,000 go through a target
   that answers at once, for the end-to-end time per queued request.

Numbers go to stdout; copy them into progress.md with the date and machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from foreman.queue import FairQueue  # noqa: E402

import header  # noqa: E402
import procs  # noqa: E402
from api import health  # noqa: E402

CHAT = {"model": "llama3.2", "stream": False, "messages": [{"role": "user", "content": "hi"}]}


async def queue_alone(requests: int = 20_000, clients: int = 100) -> float:
    queue = FairQueue(concurrency=1, max_queue=requests, timeout=3600)
    rng = random.Random(1)

    async def one(client: str) -> None:
        ticket = queue.admit(client)
        await queue.turn(ticket)
        queue.done(ticket, 0.0)

    start = time.process_time()
    await asyncio.gather(*(one(f"c{rng.randrange(clients)}") for _ in range(requests)))
    return (time.process_time() - start) / requests


async def standing_queue(waiting: int, clients: int = 100, rounds: int = 20_000) -> float:
    """CPU seconds per admit + dispatch + done while `waiting` requests stand in line."""
    rng = random.Random(2)
    models = ("registry.ollama.ai/library/a:latest", "registry.ollama.ai/library/b:latest",
              "registry.ollama.ai/library/c:latest")
    resident = frozenset(models[:1])
    queue = FairQueue(concurrency=1, max_queue=waiting + rounds + 10, timeout=3600,
                      affinity=30.0, resident=lambda: resident)
    granted = []
    queue.on_dispatch(granted.append)
    for _ in range(waiting + 1):
        queue.admit(f"c{rng.randrange(clients)}", 1.0, rng.choice(models))
    plan = [(f"c{rng.randrange(clients)}", rng.choice(models)) for _ in range(rounds)]
    start = time.process_time()
    for client, model in plan:
        queue.admit(client, 1.0, model)
        queue.done(granted[-1])  # the slot frees: the next one is picked
    elapsed = time.process_time() - start
    assert queue.waiting == waiting, queue.waiting
    return elapsed / rounds


async def post(port: int, body: dict) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    await writer.drain()
    return reader, writer


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split()[1])


async def through_foreman(logdir: str, waiting: int = 1000) -> tuple[float, float, float]:
    # A long pause per chunk keeps the first generation at the target while the rest wait.
    stub, stub_port = await procs.start_stub(logdir, chunk_delay=3600)
    # foreman's own defaults but for the queue's length: concurrency 1, log level info, poll every 30 s.
    foreman, port = await procs.start_foreman(
        "foreman", stub_port, logdir, concurrency=1, max_queue=waiting + 10,
        extra_env={"FOREMAN_LOG_LEVEL": "info", "FOREMAN_POLL_INTERVAL": "30s"},
    )
    try:
        baseline = procs.rss_kib([foreman.pid])
        connections = [await post(port, CHAT)]
        connections += await asyncio.gather(*(post(port, CHAT) for _ in range(waiting)))
        while (await health(port))["queue"]["waiting"] < waiting:
            await asyncio.sleep(0.05)
        loaded = procs.rss_kib([foreman.pid])
        for _, writer in connections:
            writer.close()
        while (await health(port))["queue"]["waiting"] or (await health(port))["queue"]["in_flight"]:
            await asyncio.sleep(0.05)
    finally:
        stub.stop()

    # Same foreman, a target that answers at once: time per queued request.
    stub, _ = await procs.start_stub(logdir, chunk_delay=0, port=stub_port)
    try:
        cpu_before = procs.stat_cpu_seconds(foreman.pid)
        start_time = time.perf_counter()
        connections = await asyncio.gather(*(post(port, CHAT) for _ in range(waiting)))
        codes = await asyncio.gather(*(read_response(reader) for reader, _ in connections))
        elapsed = time.perf_counter() - start_time
        cpu = procs.stat_cpu_seconds(foreman.pid) - cpu_before
        assert codes == [200] * waiting, set(codes)
        for _, writer in connections:
            writer.close()
    finally:
        for process in (foreman, stub):
            process.stop()
    return (loaded - baseline) / waiting, elapsed / waiting, cpu / waiting


async def main(logdir: str) -> None:
    m = header.machine()
    print(f"machine: {m.cpu}, {m.cores} cores, Python {m.python}")
    per_dispatch = await queue_alone()
    print(f"FairQueue alone: {per_dispatch * 1e6:.1f} µs CPU per admit+turn+done (20,000 requests, 100 clients)")
    for waiting in (1_000, 10_000):
        cost = await standing_queue(waiting)
        print(f"FairQueue with {waiting:,} waiting (100 clients, 3 models, affinity on): "
              f"{cost * 1e6:.1f} µs CPU per admit+dispatch+done")
    kib_per_waiter, wall_per_request, cpu_per_request = await through_foreman(logdir)
    print(f"foreman process: {kib_per_waiter:.1f} KiB RSS per waiting request (1,000 waiting)")
    print(
        f"foreman process: {wall_per_request * 1e3:.2f} ms wall, {cpu_per_request * 1e3:.2f} ms foreman CPU "
        "per queued request end to end (1,000 requests, concurrency 1, instant target)"
    )


if __name__ == "__main__":
    procs.run_with_children("queue_cost", main)
