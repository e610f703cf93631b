"""What the benchmarks send and ask: the chat bodies bench/target.py understands, foreman's /healthz.

`stream_body`'s options are bench/target.py's knobs (see its docstring);
`wait_until` polls a condition such as a /healthz figure, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import load

MESSAGES = [{"role": "user", "content": "hi"}]
TINY = json.dumps({"model": "bench:latest", "stream": False, "messages": MESSAGES}).encode()


def stream_body(
    chunks: int, size: int = 4, interval: float = 0.0, phase: float | None = None, begin: float | None = None
) -> bytes:
    options: dict[str, object] = {"num_predict": chunks, "chunk_size": size, "chunk_interval": interval}
    if phase is not None:
        options["chunk_phase"] = phase
    if begin is not None:
        options["chunk_start"] = begin
    return json.dumps({"model": "bench:latest", "messages": MESSAGES, "options": options}).encode()


async def health(port: int) -> dict:
    client = load.Client(port)
    try:
        response = await client.request(load.get("/healthz", port), timeout=10)
        return json.loads(response.body)
    finally:
        client.close()


async def wait_until(check: Callable[[], Awaitable[bool]], seconds: float, step: float = 0.05) -> bool:
    """Whether `check()` came true within `seconds`, asking every `step` seconds (a bounded number of times)."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / step) + 2):
        if await check():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(step, left))
    return False
