"""The one module of foreman that uses private names of Tornado, checked at import.

Tornado's simple HTTP client cannot reuse a connection, cannot be cancelled
mid-request, hands a response head over only as text, swallows a malformed
head, and never finishes a request whose connection fails with an error
(a reset, a dead connection) once the answer's body has begun. Subclassing
its private per-request `_HTTPConnection` fixes all five. A stream does not say how much it has read that nobody asked for,
which decides whether a connection may be reused: that is read here too.
Nothing else in foreman touches Tornado's internals. If an upgrade of
Tornado removes what this module needs, foreman refuses to start with one
line naming the Tornado it was built for, instead of failing mid-request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import tornado
from tornado import httpclient, httputil, simple_httpclient
from tornado.httpclient import HTTPRequest
from tornado.iostream import BaseIOStream, IOStream

from foreman.target.contract import Upstream
from foreman.target.pool import ConnectionPool, reusable, still_idle

#: the Tornado release line this module was written against (see pyproject.toml)
BUILT_FOR = "6.6"


class IncompatibleTornado(ImportError):
    """The installed Tornado lacks a private name foreman relies on."""


def _missing_names() -> list[str]:
    wanted: list[tuple[object, str, str]] = [
        (simple_httpclient, "_HTTPConnection", "tornado.simple_httpclient._HTTPConnection"),
        (httpclient, "_RequestProxy", "tornado.httpclient._RequestProxy"),
    ]
    connection = getattr(simple_httpclient, "_HTTPConnection", None)
    if connection is not None:
        for name in (
            "_create_connection", "_on_end_request", "_handle_exception",
            "headers_received", "data_received", "on_connection_close",
        ):
            wanted.append((connection, name, f"_HTTPConnection.{name}"))
    wanted.append(
        (simple_httpclient.SimpleAsyncHTTPClient, "_connection_class", "SimpleAsyncHTTPClient._connection_class")
    )
    missing = [label for owner, name, label in wanted if not hasattr(owner, name)]
    # An instance attribute: look for it where the stream sets it up.
    if "_read_buffer_size" not in BaseIOStream.__init__.__code__.co_names:
        missing.append("BaseIOStream._read_buffer_size")
    proxy = getattr(httpclient, "_RequestProxy", None)
    if proxy is not None:
        # The connection finds foreman's request behind Tornado's proxy of it.
        try:
            probe = HTTPRequest("http://127.0.0.1/")
            if proxy(probe, None).request is not probe:
                missing.append("_RequestProxy.request")
        except Exception:
            missing.append("_RequestProxy.request")
    return missing


_MISSING = _missing_names()
if _MISSING:
    raise IncompatibleTornado(
        f"built for Tornado {BUILT_FOR}, but the installed Tornado {tornado.version} lacks "
        f"{', '.join(_MISSING)}; install tornado>={BUILT_FOR},<7"
    )


class UpstreamRequest(HTTPRequest):
    """A request that carries foreman's handle on it into Tornado's connection."""

    upstream: Upstream | None = None
    #: called with the status and headers once the response head is parsed
    on_head: Callable[[int, str, httputil.HTTPHeaders], None] | None = None


def buffered_bytes(stream: IOStream) -> int:
    """How many bytes Tornado has read from `stream` that nobody has asked for yet."""
    return stream._read_buffer_size


def _watch_for_head(stream: IOStream, upstream: Upstream) -> None:
    # Tornado swallows a malformed response head (it logs it and closes the
    # connection), which then looks exactly like a target that hung up
    # without answering. Noting that a head, or any byte, arrived tells the
    # two apart: one is worth retrying, the other is not. Tornado's HTTP/1
    # reader asks for the head, and only the head, with read_until_regex.
    read_head = stream.read_until_regex

    def note_arrival(future: asyncio.Future[bytes]) -> None:
        if future.cancelled():
            return
        if future.exception() is None:
            upstream.head_received = upstream.answered = True
        elif buffered_bytes(stream):
            # Closed before a blank line ended a head (a banner, half a
            # head): what came is still in the buffer.
            upstream.answered = True

    def read_head_noting_arrival(*args: Any, **kwargs: Any) -> Awaitable[bytes]:
        future = cast("asyncio.Future[bytes]", read_head(*args, **kwargs))
        future.add_done_callback(note_arrival)
        return future

    stream.read_until_regex = read_head_noting_arrival  # type: ignore[method-assign]


def _stop_watching(stream: IOStream) -> None:
    stream.__dict__.pop("read_until_regex", None)


class _PooledConnection(simple_httpclient._HTTPConnection):
    """Tornado's per-request client connection, made closable, observable and reusable."""

    tcp_client: ConnectionPool  # type: ignore[assignment]
    _version = ""
    _streaming_callback: Callable[[bytes], Awaitable[None] | None] | None = None
    _heard: Upstream | None = None

    def _upstream(self) -> Upstream | None:
        # self.request is Tornado's proxy of the request given to fetch().
        return getattr(getattr(self.request, "request", None), "upstream", None)

    def _create_connection(self, stream: IOStream):  # type: ignore[no-untyped-def]
        upstream = self._upstream()
        if upstream is not None:
            upstream.attach(stream)
            _watch_for_head(stream, upstream)
        return super()._create_connection(stream)

    async def headers_received(self, first_line, headers):  # type: ignore[no-untyped-def]
        self._version = first_line.version
        await super().headers_received(first_line, headers)
        upstream = self._upstream()
        if upstream is not None:
            upstream.last_heard = time.monotonic()
        code = first_line.code
        if not 100 <= code <= 599:
            # Tornado takes any number; a client would read it as 200 (or
            # choke on it). Raising here would log a traceback: refuse instead.
            self._refuse(upstream, f"answered with status {code}, which HTTP does not have")
            return
        if code >= 200:
            if upstream is not None:
                upstream.response_started = True
            # Hands over Tornado's parsed head, where a header_callback would
            # get it as text to parse again.
            on_head = getattr(self.request.request, "on_head", None)  # type: ignore[attr-defined]
            if on_head is not None:
                on_head(first_line.code, first_line.reason, headers)

    def _refuse(self, upstream: Upstream | None, reason: str) -> None:
        # Whatever Tornado already buffered may still be handed over after the
        # close: it goes nowhere, without a test per chunk in data_received.
        self._streaming_callback = _discard
        if upstream is not None:
            upstream.refuse(reason)
        self.stream.close()

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        # Called per chunk of every stream: skip the base class's redirect
        # check (foreman never follows redirects) and its proxy lookups.
        callback = self._streaming_callback
        if callback is None:
            callback = self._streaming_callback = self.request.streaming_callback
            self._heard = self._upstream()
        if self._heard is not None:
            self._heard.last_heard = time.monotonic()
        if callback is None:
            return super().data_received(chunk)
        return callback(chunk)  # type: ignore[no-any-return]

    def on_connection_close(self) -> None:
        # Tornado raises the stream's error here (a reset, or ETIMEDOUT from
        # keepalive when the target went to sleep mid-answer). Its HTTP/1
        # reader logs that as uncaught and swallows it, and the request never
        # finishes: the client's stream would hang forever. Fail the request
        # with the error instead, as Tornado does for a plain close.
        error = self.stream.error
        if self.final_callback is not None and error is not None:
            self._handle_exception(type(error), error, error.__traceback__)
            return
        super().on_connection_close()

    def _on_end_request(self) -> None:
        # The response was read to its end: detach the handle first, so a
        # client leaving now cannot close a connection another request holds.
        upstream = self._upstream()
        if upstream is not None:
            upstream.detach()
        _stop_watching(self.stream)
        assert self.code is not None and self.headers is not None
        # Kept only if the answer ended cleanly: nothing read past its end,
        # the request written out. Decided before detaching: a write still
        # pending would otherwise finish on a detached connection and fail.
        if reusable(self.code, self.request.method, self.headers, self._version) and still_idle(
            self.stream, buffered_bytes
        ):
            self.tcp_client.give_back(self.connection.detach())
        else:
            self.stream.close()


def _discard(chunk: bytes) -> None:
    return None


class PooledHTTPClient(simple_httpclient.SimpleAsyncHTTPClient):
    """Tornado's simple client, with keep-alive connections and closable requests."""

    def initialize(self, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self.tcp_client = ConnectionPool(self.tcp_client, buffered_bytes)  # type: ignore[assignment]

    @property
    def pool(self) -> ConnectionPool:
        return cast(ConnectionPool, self.tcp_client)

    def _connection_class(self) -> type:
        return _PooledConnection
