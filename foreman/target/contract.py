"""What handlers and the poller need from the target, independent of the HTTP client.

`Target` is the seam: the handlers, the inventory and the tests depend on it,
not on Tornado's client. A relayed answer flows into a `Sink`; an `Upstream`
is the handle that lets foreman end a relayed request at any moment.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from tornado import httputil
from tornado.iostream import IOStream

from foreman.target.errors import TargetUnusable

#: writes a request body to the target piece by piece: `await producer(write)`
BodyProducer = Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]]


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


class Sink(Protocol):
    """Where a relayed response goes, as it arrives."""

    def start(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        """Called once, with the target's status line and end-to-end headers, before any body."""

    def write(self, chunk: bytes) -> Awaitable[object] | None:
        """Called per body chunk; the next chunk is not read until a returned awaitable resolves."""


class Upstream:
    """A handle on one request's connection to the target, and what is known of its progress.

    Tornado cannot cancel an in-flight fetch (a cancelled future leaves the
    socket open and the target generating). The handle is given the stream
    as soon as it is connected, so `close()` ends the request at once, even
    while the target has not sent a byte.
    """

    def __init__(self) -> None:
        self.closed = False
        #: a connection to the target was established (name resolved, TCP and TLS done)
        self.connected = False
        #: the target's header block arrived (even if it then failed to parse)
        self.head_received = False
        #: some bytes of an answer arrived, a complete head or not (it is there, and talking)
        self.answered = False
        #: why foreman refused the target's answer and closed the connection, or None
        self.refused: str | None = None
        #: the target's status and headers were parsed and passed on
        self.response_started = False
        #: time.monotonic() of the last sign of life from the target
        self.last_heard = time.monotonic()
        #: the target fell silent for longer than allowed and was cut off
        self.went_silent = False
        self._stream: IOStream | None = None

    def attach(self, stream: IOStream) -> None:
        """The request has its connection (fresh or reused)."""
        self.connected = True
        if self.closed:
            stream.close()
            return
        self._stream = stream

    def close(self) -> None:
        self.closed = True
        self._drop_stream()

    def cut_off_silent_target(self) -> None:
        """Close the connection because the target stopped sending (not the client's doing)."""
        self.went_silent = True
        self._drop_stream()

    def refuse(self, reason: str) -> None:
        """Close the connection: the answer cannot be used, whatever else arrives.

        `reason` completes "the target <url> ..." in the error the caller
        sees, e.g. "sent an answer larger than 8 MiB".
        """
        if self.refused is None:
            self.refused = reason
        self._drop_stream()

    def detach(self) -> None:
        """Let go of the stream once its response is over (it may be reused)."""
        self._stream = None

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class Target(Protocol):
    """What foreman needs from an Ollama server."""

    display_url: str

    async def fetch(self, path: str, timeout: float | None = None) -> TargetResponse:
        """GET a small JSON document (tags, ps); non-2xx raises TargetStatusError.

        `timeout` (seconds, connecting included) overrides the client's own.
        """

    async def relay(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: httputil.HTTPHeaders,
        sink: Sink,
        upstream: Upstream,
        body_producer: BodyProducer | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        """Send a client's request on and feed the answer, whatever its status, to `sink`.

        The body is `body`, or what `body_producer` writes (an upload streamed
        through). `idle_timeout` overrides how long the target may stay silent.
        """

    def close(self) -> None:
        """Release connections; the client is unusable afterwards."""
