"""Clients that upload big request bodies: the body (many small JSON objects) and the uploading connection.

Used by the `upload` phase (send most of a body, then close) and the `bigbody`
phase (send a whole 60 MB body; hold part of one). An `Upload` hands foreman
its payload as fast as foreman takes it, in slices of one shared buffer, so
that a hundred 8 MiB uploads do not cost the load generator a copy each.
"""

from __future__ import annotations

import asyncio
import time

import procs

HOST = procs.HOST
MODEL = "bench:latest"
UNKNOWN_MODEL = "no-such-model:latest"
SMALL_OBJECT = b'{"role":"user","content":"x"}'
STEP = 256 << 10  # bytes handed to the transport at a time


def many_small_objects(size: int, model: str) -> bytes:
    """A chat body of about `size` bytes, almost all of it small message objects.

    The model is named last, after the messages: a reader that wants only the
    model has to go through the whole body to find it (the worst case).
    """
    head = b'{"messages":['
    tail = b'],"stream":false,"model":"%s"}' % model.encode()
    unit = SMALL_OBJECT + b","
    count = max(1, (size - len(head) - len(tail) + 1) // len(unit))
    return head + unit * (count - 1) + SMALL_OBJECT + tail


def post_head(port: int, length: int, path: str = "/api/chat") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (path.encode(), HOST.encode(), port, length)
    )


def partial_upload(port: int, declared: int, sent: int) -> memoryview:
    """A POST promising a body of `declared` bytes, with only its first `sent` bytes."""
    body = many_small_objects(sent + 1024, MODEL)[:sent]
    return memoryview(post_head(port, declared) + body)


class Upload(asyncio.Protocol):
    """One client sending `payload` as fast as foreman takes it; then closing (FIN) or holding the connection.

    Whatever foreman answers meanwhile is kept (its first bytes); the
    connection's end is noted, whoever ended it.
    """

    def __init__(self, payload: memoryview, close_when_sent: bool) -> None:
        loop = asyncio.get_running_loop()
        self.payload = payload
        self.close_when_sent = close_when_sent
        self.transport: asyncio.Transport | None = None
        self.sent = 0  # bytes handed to the kernel or the transport's buffer
        self.paused = False
        self.opened = 0.0
        self.sent_at: float | None = None  # every byte handed over
        self.closed_at: float | None = None
        self.closed_by_us = False
        self.error = ""
        self.received = 0
        self.head = b""
        self.done: asyncio.Future[None] = loop.create_future()  # all sent, or the connection ended first
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.opened = time.monotonic()
        self._pump()

    def _pump(self) -> None:
        transport = self.transport
        assert transport is not None
        while not self.paused and self.sent < len(self.payload) and not transport.is_closing():
            piece = self.payload[self.sent : self.sent + STEP]
            self.sent += len(piece)
            transport.write(piece)
        if self.sent >= len(self.payload) and self.sent_at is None:
            self.sent_at = time.monotonic()
            if not self.done.done():
                self.done.set_result(None)
            if self.close_when_sent and not transport.is_closing():
                self.closed_by_us = True
                transport.close()  # graceful: what is buffered still goes out, then FIN

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        # Not from inside this callback: closing the transport here, with its
        # buffer just emptied, makes asyncio report the connection lost twice.
        asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self._pump()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if len(self.head) < 120:
            self.head += data[: 120 - len(self.head)]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = time.monotonic()
        if exc is not None:
            self.error = type(exc).__name__
        for future in (self.done, self.lost):
            if not future.done():
                future.set_result(None)

    @property
    def ended_by_server(self) -> bool:
        return self.closed_at is not None and not self.closed_by_us

    def first_line(self) -> str:
        if not self.received:
            return "nothing" + (f" ({self.error})" if self.error else "")
        line = self.head.split(b"\r\n", 1)[0].decode(errors="replace")
        return f"`{line}`"

    def taken(self) -> int:
        """Bytes the kernel has taken so far (not still in the transport's buffer)."""
        return self.sent - (self.transport.get_write_buffer_size() if self.transport is not None else 0)

    def close(self) -> None:
        if self.closed_at is None and self.transport is not None:
            self.closed_by_us = True
            self.transport.abort()


async def open_uploads(payload: memoryview, count: int, port: int, close_when_sent: bool) -> tuple[list[Upload], int]:
    """`count` uploads of `payload`, connected 50 at a time; returns them and how many failed to connect."""
    loop = asyncio.get_running_loop()
    opened: list[Upload] = []
    failed = 0
    for start in range(0, count, 50):
        batch = [Upload(payload, close_when_sent) for _ in range(min(50, count - start))]
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(loop.create_connection(lambda u=u: u, HOST, port), 10) for u in batch),
            return_exceptions=True,
        )
        for upload, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed += 1
            else:
                opened.append(upload)
    return opened, failed


async def wait_uploads(group: list[Upload], until_closed: bool, limit: float = 60.0, idle: float = 2.0) -> int:
    """Wait until every upload of `group` has handed over all its payload (or, `until_closed`, has closed).

    Gives up when foreman has taken nothing from any of them for `idle` s (it
    stopped reading: a body made to wait), or after `limit` s; returns how
    many were still waiting then.
    """
    futures = [u.lost if until_closed else u.done for u in group]
    deadline = time.monotonic() + limit
    taken, moved = -1, time.monotonic()
    for _ in range(int(limit / 0.1) + 2):
        pending = [f for f in futures if not f.done()]
        if not pending:
            return 0
        now = time.monotonic()
        total = sum(u.taken() for u in group)
        if total != taken:
            taken, moved = total, now
        elif now - moved >= idle or now >= deadline:
            return len(pending)
        await asyncio.wait(pending, timeout=0.1)
    return sum(1 for f in futures if not f.done())
