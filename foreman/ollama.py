"""The client foreman uses to talk to its one Ollama server (the target).

Handlers and the poller depend on the `Target` protocol, not on Tornado's
HTTP client. `TargetClient` implements it with one shared
`SimpleAsyncHTTPClient` configured for multi-minute streams and many
concurrent ones.

Failures are classified, because what to do next depends on the kind:

- `TargetUnreachable`: no response at all (refused, reset or closed before
  any response byte, DNS failure, connect timeout). Nothing reached a model,
  so the request may be retried.
- `TargetTimeout`: connected, but no answer before a deadline.
- `TargetUnusable`: the target sent something foreman cannot relay
  (malformed HTTP, a broken-off response, a non-JSON inventory).
- `TargetStatusError`: the target answered with a non-2xx status (only raised
  by `fetch`; `relay` passes such answers through unchanged).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from tornado import httputil
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import IOStream, StreamClosedError
from tornado.simple_httpclient import (
    HTTPTimeoutError,
    SimpleAsyncHTTPClient,
    _HTTPConnection,
)

from foreman.pool import ConnectionPool, reusable

# Headers that describe one connection rather than the message (RFC 9110
# 7.6.1); forwarding them would corrupt the framing of the other hop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Never forwarded to the target: Host must be the target's own (Ollama on
# loopback answers a foreign Host with 403), the client's Authorization is
# for foreman, and the length is recomputed for the body actually sent.
_NOT_FORWARDED_UPSTREAM = HOP_BY_HOP | {"host", "authorization", "content-length", "expect"}

# Dropped from the target's answer: the relay re-frames the body itself.
_NOT_RELAYED_DOWNSTREAM = HOP_BY_HOP | {"content-length"}

CONNECT_TIMEOUT = 10.0
# A model load can take minutes before the first byte.
DEFAULT_IDLE_TIMEOUT = 600.0
METADATA_TIMEOUT = 30.0
# One HTTP client per process; the queue (when there is one) bounds how many
# requests reach it, so this only has to be larger than any sane load.
MAX_CONNECTIONS = 1024
# A stream that runs for hours must not trip Tornado's body limit, which with
# a streaming_callback is the only one that applies.
MAX_STREAMED_BODY = 1 << 50


class TargetError(Exception):
    """Something went wrong talking to the target."""


class TargetUnreachable(TargetError):
    """No response at all: safe to retry, nothing reached a model."""


class TargetTimeout(TargetError):
    """Connected, but the target did not answer before a deadline."""


class TargetUnusable(TargetError):
    """The target sent something that cannot be relayed or understood."""


class TargetStatusError(TargetError):
    """The target answered with a non-2xx status."""

    def __init__(self, status: int, body: bytes, content_type: str | None) -> None:
        super().__init__(f"target answered {status}: {body[:200]!r}")
        self.status = status
        self.body = body
        self.content_type = content_type


class Cancelled(TargetError):
    """The request was cancelled by foreman (its client went away)."""


@dataclass(frozen=True)
class TargetResponse:
    status: int
    headers: httputil.HTTPHeaders
    body: bytes

    def json(self) -> object:
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise TargetUnusable(f"target sent a body that is not JSON: {e}") from e


#: writes a request body to the target piece by piece: `await producer(write)`
BodyProducer = Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]]


class Sink(Protocol):
    """Where a relayed response goes, as it arrives."""

    def start(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        """Called once, with the target's status line and end-to-end headers, before any body."""

    def write(self, chunk: bytes) -> Awaitable[None] | None:
        """Called per body chunk; the next chunk is not read until a returned awaitable resolves."""


class Upstream:
    """A handle on one relayed request's connection to the target.

    Tornado cannot cancel an in-flight fetch (a cancelled future leaves the
    socket open and the target generating). The handle is given the stream
    as soon as it is connected, so `close()` ends the request at once, even
    while the target has not sent a byte.
    """

    def __init__(self) -> None:
        self.closed = False
        #: the target's header block arrived (even if it then failed to parse)
        self.head_received = False
        #: the target's status and headers were parsed and passed on
        self.response_started = False
        #: time.monotonic() of the last sign of life from the target
        self.last_heard = time.monotonic()
        #: the target fell silent for longer than allowed and was cut off
        self.went_silent = False
        self._stream: IOStream | None = None

    def attach(self, stream: IOStream) -> None:
        if self.closed:
            stream.close()
            return
        self._stream = stream
        # Tornado swallows a malformed response head (it logs it and closes
        # the connection), which then looks exactly like a target that hung up
        # without answering. Noting that a head arrived tells the two apart:
        # one is worth retrying, the other is not.
        read_head = stream.read_until_regex

        def read_head_noting_arrival(*args: Any, **kwargs: Any) -> Awaitable[bytes]:
            future = cast("asyncio.Future[bytes]", read_head(*args, **kwargs))
            future.add_done_callback(self._note_head)
            return future

        stream.read_until_regex = read_head_noting_arrival  # type: ignore[method-assign]

    def _note_head(self, future: asyncio.Future[bytes]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.head_received = True

    def close(self) -> None:
        self.closed = True
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def cut_off_silent_target(self) -> None:
        """Close the connection because the target stopped sending (not the client's doing)."""
        self.went_silent = True
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def detach(self) -> None:
        """Let go of the stream once its response is over (it may be reused)."""
        if self._stream is not None:
            self._stream.__dict__.pop("read_until_regex", None)
            self._stream = None


class _UpstreamRequest(HTTPRequest):
    upstream: Upstream | None = None
    #: called with the status and headers once the response head is parsed
    on_head: Callable[[int, str, httputil.HTTPHeaders], None] | None = None


class _PooledConnection(_HTTPConnection):
    """Tornado's per-request client connection, made closable and reusable."""

    tcp_client: ConnectionPool  # type: ignore[assignment]
    _version = ""

    def _upstream(self) -> Upstream | None:
        # self.request is Tornado's proxy of the request given to fetch().
        return getattr(getattr(self.request, "request", None), "upstream", None)

    def _create_connection(self, stream: IOStream):  # type: ignore[no-untyped-def]
        upstream = self._upstream()
        if upstream is not None:
            upstream.attach(stream)
        return super()._create_connection(stream)

    async def headers_received(self, first_line, headers):  # type: ignore[no-untyped-def]
        self._version = first_line.version
        await super().headers_received(first_line, headers)
        upstream = self._upstream()
        if upstream is not None:
            upstream.last_heard = time.monotonic()
        if first_line.code >= 200:
            if upstream is not None:
                upstream.response_started = True
            # Hands over Tornado's parsed head, where a header_callback would
            # get it as text to parse again.
            on_head = getattr(self.request.request, "on_head", None)  # type: ignore[attr-defined]
            if on_head is not None:
                on_head(first_line.code, first_line.reason, headers)

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

    _streaming_callback: Callable[[bytes], Awaitable[None] | None] | None = None
    _heard: Upstream | None = None

    def _on_end_request(self) -> None:
        # The response was read to its end: detach the handle first, so a
        # client leaving now cannot close a connection another request holds.
        upstream = self._upstream()
        if upstream is not None:
            upstream.detach()
        assert self.code is not None and self.headers is not None
        if reusable(self.code, self.request.method, self.headers, self._version):
            self.tcp_client.give_back(self.connection.detach())
        else:
            self.stream.close()


class _Client(SimpleAsyncHTTPClient):
    def initialize(self, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self.tcp_client = ConnectionPool(self.tcp_client)  # type: ignore[assignment]

    def _connection_class(self) -> type:
        return _PooledConnection


class Target(Protocol):
    """What foreman needs from an Ollama server."""

    display_url: str

    async def fetch(self, path: str) -> TargetResponse:
        """GET a small JSON document (tags, ps); non-2xx raises TargetStatusError."""

    async def relay(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: httputil.HTTPHeaders,
        sink: Sink,
        upstream: Upstream,
        body_producer: BodyProducer | None = None,
    ) -> None:
        """Send a client's request on and feed the answer, whatever its status, to `sink`.

        The body is `body`, or what `body_producer` writes (an upload streamed through).
        """

    def close(self) -> None:
        """Release connections; the client is unusable afterwards."""


def forwardable_headers(headers: httputil.HTTPHeaders) -> httputil.HTTPHeaders:
    """The client's headers that may go to the target (end-to-end, not credentials)."""
    named_in_connection = _connection_tokens(headers.get_list("Connection"))
    out = httputil.HTTPHeaders()
    for name, value in headers.get_all():
        lower = name.lower()
        if lower in _NOT_FORWARDED_UPSTREAM or lower in named_in_connection:
            continue
        out.add(name, value)
    return out


def _connection_tokens(values: Iterable[str]) -> set[str]:
    return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


class _SilenceWatch:
    """Cuts a relayed request off when the target falls silent for too long.

    Chunks only stamp `Upstream.last_heard`; the timer looks at the stamp
    when it fires and sleeps again for the rest, so a busy stream costs no
    timer per chunk.
    """

    def __init__(self, upstream: Upstream, timeout: float) -> None:
        self._upstream = upstream
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(timeout, self._check)

    def _check(self) -> None:
        silent_for = time.monotonic() - self._upstream.last_heard
        if silent_for >= self._timeout:
            self._timer = None
            self._upstream.cut_off_silent_target()
        else:
            self._timer = self._loop.call_later(self._timeout - silent_for, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class TargetClient:
    """The `Target` over HTTP, with one shared client for the whole process."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        display_url: str,
        metadata_timeout: float = METADATA_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.display_url = display_url
        self._token = token
        self._metadata_timeout = metadata_timeout
        self._idle_timeout = idle_timeout
        self._http = _Client(
            force_instance=True,
            max_clients=MAX_CONNECTIONS,
            max_body_size=MAX_STREAMED_BODY,
            defaults={"connect_timeout": CONNECT_TIMEOUT},
        )

    def close(self) -> None:
        self._http.close()

    async def fetch(self, path: str) -> TargetResponse:
        headers = httputil.HTTPHeaders({"Accept": "application/json", "Connection": "keep-alive"})
        self._authorize(headers)
        upstream = Upstream()
        request = _UpstreamRequest(
            self.base_url + path,
            headers=headers,
            request_timeout=self._metadata_timeout,
            follow_redirects=False,
            decompress_response=True,
        )
        request.upstream = upstream
        try:
            response = await self._http.fetch(request, raise_error=False)
        except Exception as e:
            raise self._classify(e, upstream) from e
        finally:
            upstream.detach()
        if not 200 <= response.code < 300:
            raise TargetStatusError(
                response.code, response.body or b"", response.headers.get("Content-Type")
            )
        return TargetResponse(response.code, response.headers, response.body or b"")

    async def relay(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: httputil.HTTPHeaders,
        sink: Sink,
        upstream: Upstream,
        body_producer: BodyProducer | None = None,
    ) -> None:
        outgoing = forwardable_headers(headers)
        if body_producer is not None and "Content-Length" in headers:
            # Tornado sends a produced body chunked unless told its length.
            outgoing["Content-Length"] = headers["Content-Length"]
        # Without it Tornado asks the target to close after each response.
        outgoing["Connection"] = "keep-alive"
        if "Content-Type" not in outgoing and (body or body_producer):
            # Tornado would label the body a form; say only that it is bytes.
            outgoing["Content-Type"] = "application/octet-stream"
        self._authorize(outgoing)

        def on_head(code: int, reason: str, response_headers: httputil.HTTPHeaders) -> None:
            upstream.response_started = True
            sink.start(code, reason, _downstream_headers(response_headers))

        request = _UpstreamRequest(
            self.base_url + _as_sent(path),
            method=method,
            headers=outgoing,
            body=body,
            body_producer=cast(Any, body_producer),
            # No overall deadline: a generation may stream for many minutes.
            request_timeout=0,
            follow_redirects=False,
            decompress_response=False,
            allow_nonstandard_methods=True,
            streaming_callback=sink.write,
        )
        request.upstream = upstream
        request.on_head = on_head
        if upstream.closed:
            raise Cancelled("the client went away before the request was sent")
        watchdog = _SilenceWatch(upstream, self._idle_timeout)
        try:
            await self._http.fetch(request, raise_error=False)
        except Exception as e:
            if upstream.closed:
                raise Cancelled("the client went away") from e
            if upstream.went_silent:
                raise TargetTimeout(
                    f"the target {self.display_url} sent nothing for {self._idle_timeout:g}s"
                    " (FOREMAN_TARGET_IDLE_TIMEOUT)"
                ) from e
            raise self._classify(e, upstream) from e
        finally:
            watchdog.stop()
            upstream.detach()

    def _authorize(self, headers: httputil.HTTPHeaders) -> None:
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"

    def _classify(self, error: BaseException, upstream: Upstream) -> TargetError:
        where = self.display_url
        if isinstance(error, TargetError):
            return error
        if upstream.response_started:
            return TargetUnusable(f"the target {where} broke off its response: {_describe(error)}")
        if upstream.head_received or isinstance(error, httputil.HTTPInputError):
            return TargetUnusable(f"the target {where} sent a malformed HTTP response")
        if isinstance(error, HTTPTimeoutError):
            if "connect" in str(error).lower() or "queue" in str(error).lower():
                return TargetUnreachable(f"cannot connect to the target {where}: connection timed out")
            return TargetTimeout(f"the target {where} did not answer in time")
        if isinstance(error, ssl.SSLError):
            # A certificate problem is a configuration error; retrying cannot fix it.
            return TargetUnusable(f"TLS with the target {where} failed: {_describe(error)}")
        if isinstance(error, (OSError, StreamClosedError, HTTPClientError)):
            return TargetUnreachable(f"cannot connect to the target {where}: {_describe(error)}")
        return TargetUnusable(f"talking to the target {where} failed: {_describe(error)}")


def _as_sent(path: str) -> str:
    """A client's path, for Tornado's client to put on the wire as the client sent it.

    Tornado's server decodes a request line as Latin-1 and its client encodes
    one as UTF-8: raw UTF-8 in a path would arrive double-encoded.
    """
    if path.isascii():
        return path
    raw = path.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Not UTF-8 either: percent-encode the bytes that are not ASCII.
        return urllib.parse.quote(raw, safe="".join(map(chr, range(33, 127))))


def _describe(error: BaseException) -> str:
    if isinstance(error, socket.gaierror):
        return f"name lookup failed ({error.strerror or error})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, HTTPClientError):
        return error.message or str(error)
    return str(error) or type(error).__name__


def _downstream_headers(headers: httputil.HTTPHeaders) -> list[tuple[str, str]]:
    named = _connection_tokens(headers.get_list("Connection"))
    return [
        (k, v)
        for k, v in headers.get_all()
        if k.lower() not in _NOT_RELAYED_DOWNSTREAM and k.lower() not in named
    ]
