"""Keep-alive connections to the target, reused across requests.

Tornado's simple HTTP client dials a new connection for every request and
closes it afterwards. On a busy front that is a TCP handshake (and, for an
https target, a TLS one) per request. `ConnectionPool` stands in for the
client's `TCPClient`: `connect` hands out an idle connection to the same
host when one is known good, and the client gives a connection back after a
response that leaves it reusable and that ended cleanly, with nothing left
over: a connection is never trusted to carry two answers apart otherwise.

Every connection dialled gets TCP keepalive and a user timeout
(`foreman.target.keepalive`), so a target that vanished from the network is
found dead in seconds, pooled or not.
"""

from __future__ import annotations

import select
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from tornado import httputil
from tornado.http1connection import is_transfer_encoding_chunked
from tornado.iostream import IOStream
from tornado.tcpclient import TCPClient

from foreman.target.keepalive import keep_alive

# Idle connections kept per target; more are closed when handed back.
MAX_IDLE_PER_HOST = 64

_PoolKey = tuple[str, int, bool]
# Any of these on an idle connection means it cannot carry a new request:
# the target closed it, reset it, or sent bytes nobody asked for.
_NOT_IDLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL


#: how many bytes a stream has read that nobody asked for (Tornado keeps that private)
BufferedBytes = Callable[[IOStream], int]


class ConnectionPool:
    """A `TCPClient` look-alike that reuses idle connections."""

    def __init__(self, tcp_client: TCPClient, buffered: BufferedBytes) -> None:
        self._tcp_client = tcp_client
        self._buffered = buffered
        self._idle: dict[_PoolKey, deque[IOStream]] = {}
        # Where each connection handed out leads, to file it when it comes back.
        self._keys: weakref.WeakKeyDictionary[IOStream, _PoolKey] = weakref.WeakKeyDictionary()
        #: connections dialled and reused, for tests and benchmarks
        self.dialled = 0
        self.reused = 0

    async def connect(self, host: str, port: int, **kwargs: Any) -> IOStream:
        key = (host, port, kwargs.get("ssl_options") is not None)
        idle = self._idle.get(key)
        while idle:
            stream = idle.pop()
            if still_idle(stream, self._buffered):
                self.reused += 1
                self._keys[stream] = key
                return stream
            stream.close()
        stream = await self._tcp_client.connect(host, port, **kwargs)
        keep_alive(stream.socket)
        self.dialled += 1
        self._keys[stream] = key
        return stream

    def give_back(self, stream: IOStream) -> None:
        """Keep `stream` for a later request (its response ended cleanly: see `still_idle`)."""
        key = self._keys.pop(stream, None)
        if key is None or stream.closed():
            stream.close()
            return
        stream.set_close_callback(None)
        idle = self._idle.setdefault(key, deque())
        idle.append(stream)
        while len(idle) > MAX_IDLE_PER_HOST:
            idle.popleft().close()

    def close(self) -> None:
        for idle in self._idle.values():
            for stream in idle:
                stream.close()
        self._idle.clear()
        self._tcp_client.close()


def reusable(code: int, method: str, headers: httputil.HTTPHeaders, version: str) -> bool:
    """Whether a connection can carry another request after this response."""
    connection = headers.get("Connection", "").lower()
    if version != "HTTP/1.1" or "close" in connection:
        return False
    if method == "HEAD" or code in (204, 304) or 100 <= code < 200:
        return True
    # A body that ends when the connection closes leaves nothing to reuse.
    return "Content-Length" in headers or is_transfer_encoding_chunked(headers)


def still_idle(stream: IOStream, buffered: BufferedBytes) -> bool:
    """Whether a connection is open, with nothing left over from its last request.

    Left over means bytes Tornado read past the end of the last answer (a
    body after the answer to a HEAD: the next request would take them for
    its own answer), bytes waiting on the socket, or a request not yet
    written out (a target that answered before reading the whole body).

    poll(), not select(): select() cannot look at a descriptor numbered 1024
    or more, which is exactly where a busy foreman's connections end up.
    """
    if stream.closed() or stream.writing() or buffered(stream):
        return False
    poller = select.poll()
    try:
        poller.register(stream.socket, _NOT_IDLE)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False
