"""The target client classifies what can go wrong, against real misbehaving servers."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct

import pytest
from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError
from tornado.netutil import Resolver
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError

from foreman.target import (
    TargetClient,
    TargetStatusError,
    TargetTimeout,
    TargetUnreachable,
    TargetUnusable,
    Upstream,
)
from foreman.target import keepalive
from foreman.target.failures import classify
from tests.helpers import free_port, serve_raw


class Collect:
    """A sink that keeps what it is given."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.received = asyncio.Event()

    def start(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        self.status, self.headers = status, headers

    def write(self, chunk: bytes) -> None:
        self.body += chunk
        self.received.set()


def client(url: str, **kwargs) -> TargetClient:
    return TargetClient(url, None, url, **kwargs)


CHAT = b'{"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}'


async def relay(target: TargetClient, sink: Collect | None = None) -> Collect:
    sink = sink or Collect()
    await target.relay("POST", "/api/chat", CHAT, HTTPHeaders(), sink, Upstream())
    return sink


async def test_refused_is_unreachable(io_loop) -> None:
    target = client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TargetUnreachable, match="cannot connect"):
        await target.fetch("/api/tags")
    with pytest.raises(TargetUnreachable):
        await relay(target)


class FakeResolver(Resolver):
    """Answers name lookups without asking any DNS server: fails, or never answers."""

    def initialize(self, behaviour: str) -> None:  # Resolver is Configurable: no __init__
        self.behaviour = behaviour
        self.asked: list[str] = []

    async def resolve(self, host, port, family=socket.AF_UNSPEC):
        self.asked.append(host)
        if self.behaviour == "fail":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        await asyncio.Event().wait()  # a sleeping Mac's .local name: no answer at all


async def test_name_lookup_failure_is_unreachable(io_loop) -> None:
    resolver = FakeResolver("fail")
    target = client("http://my-mac.local:11434", resolver=resolver)
    with pytest.raises(TargetUnreachable, match="name lookup failed"):
        await target.fetch("/api/tags")
    with pytest.raises(TargetUnreachable, match="name lookup failed"):
        await relay(target)
    assert resolver.asked == ["my-mac.local", "my-mac.local"]


async def test_name_lookup_timeout_is_unreachable_not_a_timeout(io_loop) -> None:
    # Classified by the stage that failed: nothing was connected, so the
    # queue may wait the target out (a 504 would give up on it).
    target = client("http://my-mac.local:11434", resolver=FakeResolver("hang"), connect_timeout=0.3)
    with pytest.raises(TargetUnreachable, match="resolving"):
        await target.fetch("/api/tags")
    with pytest.raises(TargetUnreachable, match="resolving"):
        await relay(target)


async def test_tls_handshake_timeout_is_unreachable_not_a_timeout(io_loop) -> None:
    accepted = []

    async def never_speaks_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # keep the socket open, say nothing

    server = await asyncio.start_server(never_speaks_tls, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = client(f"https://127.0.0.1:{port}", connect_timeout=0.3)
    with pytest.raises(TargetUnreachable, match="TLS handshake"):
        await target.fetch("/api/tags")
    with pytest.raises(TargetUnreachable, match="TLS handshake"):
        await relay(target)
    assert accepted
    for writer in accepted:
        writer.close()
    server.close()


async def test_closed_before_any_response_is_unreachable(io_loop) -> None:
    async def hang_up(head, writer) -> None:
        pass

    server, url = await serve_raw(hang_up)
    with pytest.raises(TargetUnreachable):
        await relay(client(url))
    server.close()


async def test_reset_before_any_response_is_unreachable(io_loop) -> None:
    async def reset(head, writer) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST

    server, url = await serve_raw(reset)
    with pytest.raises(TargetUnreachable, match="reset"):
        await relay(client(url))
    with pytest.raises(TargetUnreachable, match="reset"):
        await client(url).fetch("/api/tags")
    server.close()


async def test_dropped_connection_attempt_is_unreachable(io_loop) -> None:
    # A listener whose accept queue is full drops SYNs, as a sleeping Mac does:
    # the connection attempt gets no answer at all.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):  # more than the queue holds; the rest are dropped too
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        target = client(f"http://127.0.0.1:{port}", connect_timeout=0.5)
        with pytest.raises(TargetUnreachable, match="timed out while connecting"):
            await target.fetch("/api/tags")
        with pytest.raises(TargetUnreachable, match="timed out while connecting"):
            await relay(target)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def connected() -> Upstream:
    upstream = Upstream()
    upstream.connected = True  # a fresh or a pooled connection: nothing of an answer yet
    return upstream


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET)),
        # keepalive or TCP_USER_TIMEOUT found the connection dead (the target asleep)
        TimeoutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)),
        OSError(errno.EHOSTUNREACH, os.strerror(errno.EHOSTUNREACH)),
        StreamClosedError(),
        HTTPStreamClosedError("Stream closed"),
    ],
    ids=["reset", "dead", "host-unreachable", "closed", "closed-http"],
)
def test_a_connection_that_fails_before_any_answer_is_unreachable(error) -> None:
    failure = classify(error, connected(), "http://mac:11434")
    assert isinstance(failure, TargetUnreachable), failure
    if isinstance(error, TimeoutError):
        assert "went dead" in str(failure)


def test_only_foremans_own_deadline_on_a_connection_is_a_timeout() -> None:
    # Tornado's request timeout: the connection is alive, the target silent.
    assert isinstance(classify(HTTPTimeoutError("Timeout"), connected(), "x"), TargetTimeout)
    # Once an answer began, a dead connection breaks it off: not retried.
    started = connected()
    started.response_started = started.answered = True
    dead = TimeoutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
    assert isinstance(classify(dead, started, "x"), TargetUnusable)


async def test_connections_to_the_target_have_keepalive_and_a_user_timeout(io_loop, stub) -> None:
    target = client(stub.url)
    stream = await target.pool.connect("127.0.0.1", stub.port)
    sock = stream.socket
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == keepalive.IDLE
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == keepalive.INTERVAL
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == keepalive.PROBES
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == keepalive.USER_TIMEOUT * 1000
        # Found dead within about 30 s either way.
        assert keepalive.IDLE + keepalive.INTERVAL * keepalive.PROBES <= 30
    finally:
        stream.close()
        target.close()


async def test_non_http_reply_is_unusable(io_loop) -> None:
    async def garbage(head, writer) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()

    server, url = await serve_raw(garbage)
    with pytest.raises(TargetUnusable, match="malformed"):
        await relay(client(url))
    with pytest.raises(TargetUnusable):
        await client(url).fetch("/api/tags")
    server.close()


async def test_broken_off_mid_response_is_unusable_and_marked_started(io_loop) -> None:
    sink = Collect()

    async def half(head, writer) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"e\r\n{\"done\":false}\r\n"
        )
        await writer.drain()
        # Hang up only once the chunk was relayed: Tornado drops bytes that
        # arrive in the same read as the close (see progress.md).
        await sink.received.wait()

    server, url = await serve_raw(half)
    upstream = Upstream()
    with pytest.raises(TargetUnusable, match="broke off"):
        await client(url).relay("POST", "/api/chat", CHAT, HTTPHeaders(), sink, upstream)
    assert upstream.response_started
    assert sink.status == 200 and sink.body == b'{"done":false}'
    server.close()


async def test_reset_mid_response_breaks_it_off_instead_of_hanging(io_loop) -> None:
    # A connection that fails with an error once the body has begun (a reset
    # here; ETIMEDOUT when the target fell asleep mid-answer): Tornado alone
    # never finished such a request.
    sink = Collect()

    async def half_then_reset(head, writer) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"e\r\n{\"done\":false}\r\n"
        )
        await writer.drain()
        await sink.received.wait()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST

    server, url = await serve_raw(half_then_reset)
    upstream = Upstream()
    with pytest.raises(TargetUnusable, match="broke off"):
        await asyncio.wait_for(client(url).relay("POST", "/api/chat", CHAT, HTTPHeaders(), sink, upstream), 10)
    assert upstream.response_started and sink.body == b'{"done":false}'
    server.close()


async def test_no_answer_before_deadline_is_timeout(io_loop) -> None:
    never = asyncio.Event()

    async def silent(head, writer) -> None:
        await never.wait()

    server, url = await serve_raw(silent)
    with pytest.raises(TargetTimeout, match="did not answer"):
        await client(url, metadata_timeout=0.5).fetch("/api/tags")
    never.set()
    server.close()


async def test_error_status_is_status_error_for_fetch_and_relayed_for_relay(io_loop, stub) -> None:
    stub.tags_status = 500
    with pytest.raises(TargetStatusError) as caught:
        await client(stub.url).fetch("/api/tags")
    assert caught.value.status == 500
    stub.chat_status = 500
    sink = await relay(client(stub.url))
    assert sink.status == 500 and b"error" in sink.body


async def test_hop_by_hop_and_length_headers_are_not_relayed_back(io_loop) -> None:
    async def answer(head, writer) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
            b"Connection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-End: kept\r\n\r\n{}"
        )
        await writer.drain()

    server, url = await serve_raw(answer)
    sink = await relay(client(url))
    names = {name.lower() for name, _ in sink.headers}
    assert names == {"content-type", "x-end"}
    assert sink.body == b"{}"
    server.close()


async def test_closing_upstream_before_connect_cancels(io_loop, stub) -> None:
    from foreman.target import Cancelled

    upstream = Upstream()
    upstream.close()
    with pytest.raises(Cancelled):
        await client(stub.url).relay("POST", "/api/chat", b"{}", HTTPHeaders(), Collect(), upstream)
    assert stub.chats_started == 0
