"""The load generator's HTTP/1.1 client: keep-alive, one request at a time per connection.

An asyncio Protocol with a small incremental parser (Content-Length and
chunked bodies), cheap enough per request and per chunk that the same client
measures a direct connection, nginx and foreman alike. Streamed NDJSON bodies
are handled per line in one of two ways:

- `count`: count lines and keep the last one (no per-line work beyond a scan);
- `stamps`: for each line, arrival time minus the `"sent_ns"` stamp the
  target put in it (both `time.time_ns()` on this machine), in nanoseconds.
  The arrival time is taken once per read from the socket.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_CLOSE = range(7)
_STAMP = b'"sent_ns":'


@dataclass
class Response:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""  # collect mode only
    lines: int = 0
    last_line: bytes = b""
    delays_ns: list[int] = field(default_factory=list)  # stamps mode only
    first_sent_ns: int = 0  # stamps mode only: the first line's send stamp
    close: bool = False

    @property
    def done_ok(self) -> bool:
        """A stream that ended with Ollama's final `"done":true` line (and no error line)."""
        return b'"done":true' in self.last_line and b'"error"' not in self.last_line


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.state = _HEAD
        self.remaining = 0
        self.future: asyncio.Future[Response] | None = None
        self.response = Response()
        self.mode = "collect"
        self.parts: list[bytes] = []
        self.partial = b""
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        future = self.future
        if future is not None and not future.done():
            if self.state == _UNTIL_CLOSE:
                self._finish()
            else:
                future.set_exception(ConnectionError(f"connection closed mid-response ({exc or 'EOF'})"))
        if not self.lost.done():
            self.lost.set_result(None)

    # ------------------------------------------------------------ parsing

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf + data if self.buf else data
        pos = 0
        end = len(buf)
        while pos < end and self.future is not None:
            state = self.state
            if state == _CHUNK_SIZE:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    break
                size = int(buf[pos:i].split(b";", 1)[0], 16)
                pos = i + 2
                if size:
                    self.remaining = size
                    self.state = _CHUNK_DATA
                else:
                    self.state = _TRAILER
            elif state == _CHUNK_DATA:
                take = min(self.remaining, end - pos)
                self._body(buf[pos : pos + take], now)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if end - pos < 2:
                    break
                pos += 2
                self.state = _CHUNK_SIZE
            elif state == _HEAD:
                i = buf.find(b"\r\n\r\n", pos)
                if i < 0:
                    break
                self._head(buf[pos:i])
                pos = i + 4
            elif state == _LENGTH:
                take = min(self.remaining, end - pos)
                self._body(buf[pos : pos + take], now)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self._finish()
            elif state == _TRAILER:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    break
                blank = i == pos
                pos = i + 2
                if blank:
                    self._finish()
            else:  # _UNTIL_CLOSE
                self._body(buf[pos:], now)
                pos = end
        self.buf = buf[pos:] if pos < end else b""

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        response = self.response
        response.status = int(lines[0].split(b" ", 2)[1])
        headers = response.headers
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        response.close = b"close" in headers.get(b"connection", b"").lower()
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self.state = _CHUNK_SIZE
        elif b"content-length" in headers:
            self.remaining = int(headers[b"content-length"])
            self.state = _LENGTH
            if not self.remaining:
                self._finish()
        elif response.status in (204, 304):
            self._finish()
        else:
            response.close = True
            self.state = _UNTIL_CLOSE

    def _body(self, data: bytes, now: int) -> None:
        mode = self.mode
        if mode == "collect":
            self.parts.append(data)
            return
        if self.partial:
            data = self.partial + data
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        if not cut:
            return
        complete = data[:cut]
        response = self.response
        if mode == "stamps":
            delays = response.delays_ns
            for line in complete.split(b"\n")[:-1]:
                i = line.find(_STAMP)
                if i >= 0:
                    i += len(_STAMP)
                    j = line.find(b",", i)
                    sent = int(line[i:j])
                    delays.append(now - sent)
                    if not response.first_sent_ns:
                        response.first_sent_ns = sent
                response.lines += 1
        else:
            response.lines += complete.count(b"\n")
        start = complete.rfind(b"\n", 0, cut - 1) + 1
        response.last_line = complete[start : cut - 1]

    def _finish(self) -> None:
        response = self.response
        if self.mode == "collect":
            response.body = b"".join(self.parts)
        elif self.partial:
            response.lines += 1
            response.last_line = self.partial
        future = self.future
        self.future = None
        self.state = _HEAD
        self.parts = []
        self.partial = b""
        self.response = Response()
        if response.close and self.transport is not None:
            self.closed = True  # before connection_lost: the next request must reconnect
            self.transport.close()
        if future is not None and not future.done():
            future.set_result(response)

    # ------------------------------------------------------------ requests

    def send(self, request: bytes, mode: str) -> asyncio.Future[Response]:
        assert self.transport is not None and self.future is None
        self.mode = mode
        self.future = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.future


class Client:
    """One keep-alive connection to 127.0.0.1:port, reopened if the server closes it.

    `local_host` binds the client end to another loopback address (e.g.
    127.0.0.2), so that a server that tells clients apart by address sees a
    different client.
    """

    def __init__(self, port: int, local_host: str | None = None) -> None:
        self.port = port
        self.local_host = local_host
        self._conn: _Conn | None = None
        self.connects = 0

    async def connect(self) -> None:
        if self._conn is None or self._conn.closed:
            local = (self.local_host, 0) if self.local_host else None
            _, conn = await asyncio.get_running_loop().create_connection(_Conn, HOST, self.port, local_addr=local)
            self._conn = conn
            self.connects += 1

    async def request(self, request: bytes, mode: str = "collect", timeout: float = 30.0) -> Response:
        """Send pre-built request bytes; the answer's body per `mode` (collect, count, stamps)."""
        await self.connect()
        assert self._conn is not None
        future = self._conn.send(request, mode)
        # Cheaper than asyncio.wait_for, which wraps every request in a task.
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            future.cancel()

        timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            return await future
        except asyncio.CancelledError:
            self.close()
            if expired:
                raise TimeoutError(f"no complete answer within {timeout:g}s") from None
            raise
        except BaseException:
            self.close()  # the connection is in an unknown state: do not reuse it
            raise
        finally:
            timer.cancel()

    def send(self, request: bytes, mode: str = "count") -> asyncio.Future[Response]:
        """Send without waiting (the connection must be open); the caller awaits or abandons the future."""
        assert self._conn is not None and not self._conn.closed
        return self._conn.send(request, mode)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if conn.future is not None and not conn.future.done():
                conn.future.cancel()
            if conn.transport is not None:
                conn.transport.close()


def post(path: str, port: int, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        path.encode(),
        HOST.encode(),
        port,
        len(body),
        body,
    )


def get(path: str, port: int) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (path.encode(), HOST.encode(), port)


def percentile(sorted_values: list[float] | list[int], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return float(sorted_values[rank])
