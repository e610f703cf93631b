"""A fast stand-in Ollama, for benchmarks only.

    python bench/target.py --port 11500

Just enough HTTP/1.1 (keep-alive, Content-Length request bodies) for:

- `GET /api/tags`: one model, `bench:latest`.
- `POST /api/chat`: `"stream"` (default true) and bench knobs in `"options"`:
  `num_predict` (chunks, default 10), `chunk_size` (content bytes per chunk,
  default 4), `chunk_interval` (seconds between chunks, default 0 = as fast
  as the reader takes them), `chunk_phase` (seconds; when given, chunks go
  out on a grid shared by all streams, at `phase + k * chunk_interval` on
  the target's clock, so many streams can be sent phase-locked or evenly
  spread whatever time their requests arrived), `chunk_start` (Unix time in
  seconds; no chunk before it, so many streams can all be open before any
  chunk flows). Streaming answers are chunked NDJSON, one line
  per HTTP chunk, each line stamped with `"sent_ns"` (time.time_ns() just
  before the write) so a client can compute arrival minus send; the last line
  has `"done": true`. Non-streaming: one small JSON document with
  Content-Length. A body larger than 1 MiB is not parsed (the soak's
  big-body phase sends 60 MB ones): it gets one small non-streaming answer.
- `POST /api/show`: a small show document for `bench:latest`; bench knob
  `"options": {"answer_size": N}` pads its `modelfile` to N bytes, for a
  whole-document answer of any size (the soak's never-reading phase).

Request bodies up to 128 MiB, buffered in one growing bytearray (linear in
the body's size, however many pieces it comes in).

One asyncio Protocol per connection, no framework, lines pre-formatted: the
point is that the target is never the bottleneck. The benchmark reads its CPU
from /proc; it also prints its CPU time when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import resource
import signal
import sys
import time

import procs

MODEL = "bench:latest"
TAGS = json.dumps(
    {
        "models": [
            {
                "name": MODEL,
                "model": MODEL,
                "modified_at": "2024-01-01T00:00:00Z",
                "size": 1,
                "digest": "0" * 64,
                "details": {"format": "gguf", "family": "bench", "parameter_size": "1", "quantization_level": "none"},
            }
        ]
    },
    separators=(",", ":"),
).encode()

_CREATED = b'"model":"bench:latest","created_at":"2024-01-01T00:00:00Z"'
LINE = b'{"sent_ns":%d,' + _CREATED + b',"message":{"role":"assistant","content":"%s"},"done":false}\n'
LAST = (
    b'{"sent_ns":%d,' + _CREATED + b',"message":{"role":"assistant","content":""},"done":true,'
    b'"done_reason":"stop","total_duration":1,"eval_count":%d}\n'
)
SINGLE = (
    b'{"sent_ns":%d,' + _CREATED + b',"message":{"role":"assistant","content":"%s"},"done":true,'
    b'"done_reason":"stop","total_duration":1,"eval_count":1}'
)
SHOW = (
    b'{"modelfile":"%s","parameters":"","template":"{{ .Prompt }}",'
    b'"details":{"format":"gguf","family":"bench","parameter_size":"1","quantization_level":"none"},'
    b'"model_info":{}}'
)
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}
MAX_HEAD = 64 << 10
MAX_BODY = 128 << 20
# Larger bodies are answered without being parsed: the target must not stall
# its own loop on a 60 MB document and blur what foreman did with it.
MAX_PARSED = 1 << 20
MAX_ANSWER_SIZE = 512 << 20
YIELD_EVERY = 64


class BadRequest(Exception):
    pass


class Connection(asyncio.Protocol):
    """One client connection; requests are answered in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf: bytes | bytearray = b""
        self.busy = False  # a streamed answer is being written
        self.closed = False
        self.paused = False
        self.resumed: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()
        self._wake()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def _wake(self) -> None:
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self.buf:
            self.buf = data
        else:
            # bytes + bytes copies the whole buffer each time: quadratic for a 60 MB body.
            if not isinstance(self.buf, bytearray):
                self.buf = bytearray(self.buf)
            self.buf += data
        if not self.busy:
            self.pump()

    def pump(self) -> None:
        try:
            self.process()
        except BadRequest as e:
            self.respond(400, b'{"error":"%s"}' % str(e).encode(), False)

    # ------------------------------------------------------------ requests

    def process(self) -> None:
        while not self.busy and not self.closed:
            buf = self.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise BadRequest("request head too large")
                return
            lines = buf[:end].split(b"\r\n")
            try:
                method, path, version = lines[0].split(b" ")
            except ValueError:
                raise BadRequest("bad request line") from None
            length = 0
            keep_alive = version == b"HTTP/1.1"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        raise BadRequest("bad Content-Length") from None
                elif name == b"connection":
                    tokens = value.strip().lower()
                    if b"close" in tokens:
                        keep_alive = False
                    elif b"keep-alive" in tokens:
                        keep_alive = True
                elif name == b"transfer-encoding":
                    raise BadRequest("chunked request bodies are not supported")
            if length > MAX_BODY:
                raise BadRequest("request body too large")
            if len(buf) < end + 4 + length:
                return
            body = buf[end + 4 : end + 4 + length]
            self.buf = buf[end + 4 + length :]
            self.dispatch(method, path.split(b"?")[0], body, keep_alive)

    def dispatch(self, method: bytes, path: bytes, body: bytes | bytearray, keep_alive: bool) -> None:
        if path == b"/api/tags":
            if method != b"GET":
                self.respond(405, b'{"error":"method not allowed"}', keep_alive)
            else:
                self.respond(200, TAGS, keep_alive)
            return
        if path not in (b"/api/chat", b"/api/show"):
            self.respond(404, b'{"error":"not found"}', keep_alive)
            return
        if method != b"POST":
            self.respond(405, b'{"error":"method not allowed"}', keep_alive)
            return
        if path == b"/api/show":
            self.show(body, keep_alive)
            return
        if len(body) > MAX_PARSED:
            self.respond(200, SINGLE % (time.time_ns(), b"xxxx"), keep_alive)
            return
        try:
            request = json.loads(body)
            options = request.get("options") or {}
            stream = request.get("stream", True) is not False
            chunks = max(0, int(options.get("num_predict", 10)))
            size = max(0, int(options.get("chunk_size", 4)))
            interval = max(0.0, float(options.get("chunk_interval", 0)))
            phase = options.get("chunk_phase")
            phase = None if phase is None else float(phase)
            begin = options.get("chunk_start")
            begin = None if begin is None else float(begin)
        except (ValueError, TypeError, AttributeError) as e:
            self.respond(400, json.dumps({"error": f"bad chat request: {e}"}).encode(), keep_alive)
            return
        content = b"x" * size
        if not stream:
            self.respond(200, SINGLE % (time.time_ns(), content), keep_alive)
            return
        self.busy = True
        self.task = asyncio.get_running_loop().create_task(
            self.stream(chunks, content, interval, phase, begin, keep_alive)
        )

    def show(self, body: bytes | bytearray, keep_alive: bool) -> None:
        size = 0
        if len(body) <= MAX_PARSED:
            try:
                options = json.loads(body).get("options") or {}
                size = min(MAX_ANSWER_SIZE, max(0, int(options.get("answer_size", 0))))
            except (ValueError, TypeError, AttributeError) as e:
                self.respond(400, json.dumps({"error": f"bad show request: {e}"}).encode(), keep_alive)
                return
        self.respond(200, SHOW % (b"x" * size), keep_alive)

    def respond(self, status: int, body: bytes, keep_alive: bool) -> None:
        assert self.transport is not None
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n" % (
            status,
            REASONS.get(status, b"Error"),
            len(body),
        )
        if not keep_alive:
            head += b"Connection: close\r\n"
        self.transport.write(head + b"\r\n" + body)
        if not keep_alive:
            self.transport.close()
            self.closed = True

    async def stream(
        self,
        chunks: int,
        content: bytes,
        interval: float,
        phase: float | None,
        begin: float | None,
        keep_alive: bool,
    ) -> None:
        transport = self.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        try:
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n"
            if not keep_alive:
                head += b"Connection: close\r\n"
            transport.write(head + b"\r\n")
            start = loop.time()
            if begin is not None:
                start += max(0.0, begin - time.time())
            if interval and phase is not None:
                start = phase + math.ceil((start - phase) / interval) * interval
            for i in range(chunks):
                if interval:
                    delay = start + i * interval - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)  # let other connections in
                if self.paused:
                    await self._writable()
                if self.closed:
                    return
                line = LINE % (time.time_ns(), content)
                transport.write(b"%x\r\n%s\r\n" % (len(line), line))
            if interval and chunks:
                delay = start + chunks * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if self.paused:
                await self._writable()
            if self.closed:
                return
            line = LAST % (time.time_ns(), chunks)
            transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line))
        except asyncio.CancelledError:
            return
        finally:
            self.task = None
            self.busy = False
        if not keep_alive:
            transport.close()
            self.closed = True
        elif self.buf:
            self.pump()

    async def _writable(self) -> None:
        while self.paused and not self.closed:
            self.resumed = asyncio.get_running_loop().create_future()
            await self.resumed
            self.resumed = None


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Connection, host, port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    print(f"bench target listening on http://{bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"bench target stopped; CPU {usage.ru_utime + usage.ru_stime:.3f}s", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Fast stand-in Ollama for benchmarks (loopback only).")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1 (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1", "localhost"], help="loopback address")
    args = parser.parse_args()
    procs.raise_open_file_limit()
    # Few long-lived objects and no reference cycles worth chasing: keep the
    # collector from adding its own pauses to the reference figures.
    gc.freeze()
    gc.set_threshold(50_000, 50, 50)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
