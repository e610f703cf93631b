"""What the queue costs: dispatch time per request and memory per waiting request.

    python bench/queue_cost.py

1. FairQueue alone: 100 clients push 20,000 requests through concurrency 1;
   CPU time per admit + turn + done.
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
import platform
import random
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from foreman.queue import FairQueue  # noqa: E402

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def start(argv: list[str], env: dict[str, str], ready: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL
    )
    assert process.stderr is not None
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        if not line:
            raise RuntimeError(f"{argv} exited before it was ready")
        if ready in line:
            break
    asyncio.ensure_future(drain(process.stderr))
    return process


async def drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


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


async def health(port: int) -> dict:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


async def through_foreman(waiting: int = 1000) -> tuple[float, float, float]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    stub_port, port = free_port(), free_port()
    # A long pause per chunk keeps the first generation at the target while the rest wait.
    stub = await start(
        [sys.executable, "-m", "foreman", "stub", "--listen", f"127.0.0.1:{stub_port}", "--chunk-delay", "3600"],
        env, "listening",
    )
    foreman_env = dict(
        env,
        FOREMAN_OLLAMA_URL=f"http://127.0.0.1:{stub_port}",
        FOREMAN_LISTEN=f"127.0.0.1:{port}",
        FOREMAN_MAX_QUEUE=str(waiting + 10),
    )
    foreman = await start([sys.executable, "-m", "foreman"], foreman_env, "foreman listening")
    try:
        while True:
            try:
                if not (await health(port))["degraded"]:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.1)
        baseline = rss_kib(foreman.pid)
        connections = [await post(port, CHAT)]
        connections += await asyncio.gather(*(post(port, CHAT) for _ in range(waiting)))
        while (await health(port))["queue"]["waiting"] < waiting:
            await asyncio.sleep(0.05)
        loaded = rss_kib(foreman.pid)
        for _, writer in connections:
            writer.close()
        while (await health(port))["queue"]["waiting"] or (await health(port))["queue"]["in_flight"]:
            await asyncio.sleep(0.05)
    finally:
        stub.send_signal(signal.SIGTERM)
        await stub.wait()

    # Same foreman, a target that answers at once: time per queued request.
    stub = await start(
        [sys.executable, "-m", "foreman", "stub", "--listen", f"127.0.0.1:{stub_port}", "--chunk-delay", "0"],
        env, "listening",
    )
    try:
        cpu_before = cpu_seconds(foreman.pid)
        start_time = time.perf_counter()
        connections = await asyncio.gather(*(post(port, CHAT) for _ in range(waiting)))
        codes = await asyncio.gather(*(read_response(reader) for reader, _ in connections))
        elapsed = time.perf_counter() - start_time
        cpu = cpu_seconds(foreman.pid) - cpu_before
        assert codes == [200] * waiting, set(codes)
        for _, writer in connections:
            writer.close()
    finally:
        for process in (foreman, stub):
            process.send_signal(signal.SIGTERM)
            await process.wait()
    return (loaded - baseline) / waiting, elapsed / waiting, cpu / waiting


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    per_dispatch = await queue_alone()
    print(f"FairQueue alone: {per_dispatch * 1e6:.1f} µs CPU per admit+turn+done (20,000 requests, 100 clients)")
    kib_per_waiter, wall_per_request, cpu_per_request = await through_foreman()
    print(f"foreman process: {kib_per_waiter:.1f} KiB RSS per waiting request (1,000 waiting)")
    print(
        f"foreman process: {wall_per_request * 1e3:.2f} ms wall, {cpu_per_request * 1e3:.2f} ms foreman CPU "
        "per queued request end to end (1,000 requests, concurrency 1, instant target)"
    )


if __name__ == "__main__":
    asyncio.run(main())
