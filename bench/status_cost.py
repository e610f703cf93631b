"""What reading the status costs: CPU per status document, and its size, while many requests run.

    python bench/status_cost.py [--streams 500] [--recent 100]

The stand-in and foreman run in this process (loopback). `--streams`
streaming chats from as many named clients are held mid-answer (each has
sent a few chunks), 100 more requests have finished (a full `recent`), and
then the status document is built and encoded 200 times each: CPU time per
build and per encoding (what every page or `foreman status` refresh costs
foreman) and the bytes it comes to.

Numbers go to stdout; copy them into progress.md with the date and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tornado.tcpclient import TCPClient  # noqa: E402

from foreman import config  # noqa: E402
from foreman.server import Foreman, raise_open_file_limit  # noqa: E402
from foreman.status.document import status_document  # noqa: E402
from foreman.stub import StubOllama  # noqa: E402

BUILDS = 200


async def open_stream(port: int, token: str) -> object:
    stream = await TCPClient().connect("127.0.0.1", port)
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "a b c d e f g h"}]})
    head = (
        f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    await stream.write(head.encode() + body.encode())
    await stream.read_until(b"said")  # the second line: the answer is under way
    return stream


async def main(streams: int, finished: int) -> None:
    raise_open_file_limit()
    logging.disable(logging.INFO)  # one request line each would drown the figures
    stub = StubOllama()
    stub.listen()
    with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as tokens:
        tokens.write("".join(f"tok-{i} name=client{i}\n" for i in range(streams)))
    front = Foreman(config.load({
        "FOREMAN_OLLAMA_URL": stub.url, "FOREMAN_LISTEN": "127.0.0.1:0", "FOREMAN_POLL_INTERVAL": "1h",
        "FOREMAN_TOKENS_FILE": tokens.name, "FOREMAN_CONCURRENCY": str(streams),
        "FOREMAN_MAX_QUEUE": str(streams + finished),
    }))
    front.start()
    await front.first_poll
    port = int(front.urls[0].rsplit(":", 1)[1])
    for i in range(finished):
        done = await open_stream(port, f"tok-{i % streams}")
        await done.read_until_close()  # type: ignore[attr-defined]
    release = asyncio.Event()

    async def hold(index: int) -> None:
        if index >= 2:
            await release.wait()

    stub.pace = hold
    held = await asyncio.gather(*(open_stream(port, f"tok-{i}") for i in range(streams)))
    services = front.services
    document = status_document(services)
    start = time.process_time()
    for _ in range(BUILDS):
        document = status_document(services)
    per_build = (time.process_time() - start) / BUILDS
    start = time.process_time()
    for _ in range(BUILDS):
        encoded = json.dumps(document, separators=(",", ":")).encode()
    per_encoding = (time.process_time() - start) / BUILDS
    print(f"{len(document['in_flight'])} requests in flight, {len(document['clients'])} clients, "
          f"{len(document['recent'])} recent")
    print(f"status document: {per_build * 1e3:.2f} ms CPU per build, {per_encoding * 1e3:.2f} ms to encode, "
          f"{len(encoded) / 1024:.0f} KiB as JSON")
    release.set()
    for stream in held:
        stream.close()  # type: ignore[attr-defined]
    await front.drain(0)
    await stub.stop()
    os.unlink(tokens.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--recent", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.streams, args.recent))
