"""Helpers the tests share: reading NDJSON streams, subprocess environments."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

from tornado.httpclient import HTTPRequest

ROOT = Path(__file__).resolve().parent.parent
# Executables installed beside the interpreter running the tests (the venv).
BIN = Path(sys.executable).parent


def ndjson(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


class StreamReader:
    """Reads a streamed response chunk by chunk, letting a test await each line."""

    def __init__(self) -> None:
        self.lines: list[dict] = []
        self.raw = b""
        self._pending = b""
        self._changed = asyncio.Event()
        self.status: int | None = None
        self.headers: dict[str, str] = {}

    def on_header(self, line: str) -> None:
        if self.status is None and line.startswith("HTTP/"):
            self.status = int(line.split()[1])
        elif ":" in line:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def on_chunk(self, chunk: bytes) -> None:
        self.raw += chunk
        self._pending += chunk
        *complete, self._pending = self._pending.split(b"\n")
        self.lines.extend(json.loads(line) for line in complete if line.strip())
        self._changed.set()

    async def wait_lines(self, count: int, timeout: float = 10.0) -> None:
        async def wait() -> None:
            while len(self.lines) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    def request(self, url: str, body: dict, **kwargs) -> HTTPRequest:
        return HTTPRequest(
            url,
            method="POST",
            body=json.dumps(body),
            header_callback=self.on_header,
            streaming_callback=self.on_chunk,
            request_timeout=kwargs.pop("request_timeout", 120),
            **kwargs,
        )


def subprocess_env() -> dict[str, str]:
    """The environment for a foreman subprocess: this venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOREMAN_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env



async def raw_post(url: str, path: str, body: dict, headers: dict[str, str] | None = None):
    """Send a POST over a bare socket and return the open stream.

    The test decides when to read and when to hang up, which Tornado's HTTP
    client cannot do (closing the client leaves its connections open).
    """
    from urllib.parse import urlsplit

    from tornado.tcpclient import TCPClient

    parts = urlsplit(url)
    stream = await TCPClient().connect(parts.hostname, parts.port)
    payload = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(payload)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    await stream.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
    return stream


def free_port() -> int:
    """A loopback port nothing listens on (a target that is away, a port to start a child on)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tokens_file(tmp_path: Path, text: str) -> str:
    """A tokens file holding `text` (FOREMAN_TOKENS_FILE), in the test's directory."""
    path = tmp_path / "tokens"
    path.write_text(text)
    return str(path)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Gate:
    """The stand-in's `pace`: lets it send `open_lines` lines of each stream, then holds the rest."""

    def __init__(self, open_lines: int) -> None:
        self.open_lines = open_lines
        self.released = asyncio.Event()

    async def __call__(self, index: int) -> None:
        if index >= self.open_lines:
            await self.released.wait()


async def until(predicate, timeout: float = 10.0) -> None:
    """Wait until `predicate()` holds, checking often; fail after a generous `timeout`."""

    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout)


async def serve_raw(behaviour):
    """A loopback TCP server that answers each request with `behaviour(head, writer)`.

    For targets that misbehave below HTTP: half answers, garbage, hang-ups.
    Returns the asyncio server and its base URL.
    """
    import re

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            # Read the body too: closing a socket with unread input sends a
            # reset, which would discard what the client has not read yet.
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            if length:
                await reader.readexactly(int(length.group(1)))
            await behaviour(head, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def last_request(stub, path: str):
    """The last request the stand-in got for `path` (foreman also asks it /api/ps and /api/tags)."""
    return next(r for r in reversed(stub.requests) if r.path == path)
