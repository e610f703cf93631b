"""Accepting connections on foreman's listening sockets, pausing when accept() cannot.

Tornado's own accept loop (what `HTTPServer.add_sockets` installs) lets an
error from accept() escape. Out of file descriptors, accept() fails with
EMFILE while the connection stays in the backlog, so the listening socket
stays readable and the loop calls the failing accept again at once: 100 % CPU
and a traceback per call, with the connections already open starved. This
loop stops watching a socket whose accept() fails for lack of resources,
looks again a moment later, and says so at most once a second.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
from typing import Any
import time
from collections.abc import Callable

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

log = logging.getLogger("foreman.accept")

# How long a socket whose accept() failed is left alone before trying again.
ACCEPT_PAUSE = 0.25
# At most one line about failing accepts per this many seconds.
LOG_INTERVAL = 1.0
# Connections accepted per readable event, so a flood cannot starve the loop
# (the listen backlog Tornado uses, as its own loop does).
_BATCH = 128
# accept() errors about one pending connection (it was reset or refused on
# its way in): skip it and take the next. Anything else (EMFILE, ENFILE,
# ENOBUFS, ENOMEM, or what we do not know) pauses the socket.
_CONNECTION_GONE = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED", "EPROTO", "EPERM", "ENETDOWN", "ENETUNREACH", "EHOSTDOWN",
        "EHOSTUNREACH", "ENONET", "ENOPROTOOPT", "EOPNOTSUPP",
    )
    if hasattr(errno, name)
)


class Acceptor:
    """Accepts on `sockets` and hands each connection to `server`."""

    def __init__(
        self,
        server: HTTPServer,
        sockets: list[socket.socket],
        pause: float = ACCEPT_PAUSE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._server = server
        self._sockets = list(sockets)
        self._pause = pause
        self._clock = clock
        self._loop: IOLoop | None = None
        # Paused sockets and the timeout that resumes each.
        self._resume_timers: dict[socket.socket, object] = {}
        # Lines about pauses: when the last was logged, and whether a pause
        # was reported whose end has not been.
        self._last_logged: float | None = None
        self._pause_announced = False
        self._stopped = False

    def start(self) -> None:
        """Start accepting on every socket (on the current IOLoop)."""
        self._loop = IOLoop.current()
        for sock in self._sockets:
            self._watch(sock)

    def stop(self) -> None:
        """Stop accepting and close the listening sockets; open connections stay."""
        if self._stopped:
            return
        self._stopped = True
        for sock in self._sockets:
            timer = self._resume_timers.pop(sock, None)
            if timer is not None:
                self._io_loop().remove_timeout(timer)
            elif self._loop is not None:
                self._loop.remove_handler(sock)
            sock.close()

    def _io_loop(self) -> IOLoop:
        assert self._loop is not None, "start() first"
        return self._loop

    def _watch(self, sock: socket.socket) -> None:
        self._io_loop().add_handler(sock, self._accept, IOLoop.READ)

    def _accept(self, sock: socket.socket, events: int) -> None:
        for _ in range(_BATCH):
            if self._stopped:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                break  # nothing more waiting
            except OSError as e:
                if e.errno in _CONNECTION_GONE:
                    continue
                self._pause_socket(sock, e)
                return
            self._hand_over(connection, address)
        self._resumed()

    def _hand_over(self, connection: socket.socket, address: tuple[Any, ...]) -> None:
        try:
            stream = IOStream(
                connection,
                max_buffer_size=self._server.max_buffer_size,
                read_chunk_size=self._server.read_chunk_size,
            )
            self._server.handle_stream(stream, address)
        except Exception:
            # One broken connection must not stop the loop from accepting others.
            log.exception("could not start serving a connection from %s", address)
            connection.close()

    def _pause_socket(self, sock: socket.socket, error: OSError) -> None:
        loop = self._io_loop()
        loop.remove_handler(sock)
        self._resume_timers[sock] = loop.call_later(self._pause, self._resume, sock)
        if not self._may_log():
            return
        if error.errno == errno.EMFILE:
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            reason = f"{error.strerror} (open-file limit {limit})"
        else:
            reason = error.strerror or str(error)
        log.warning(
            "cannot accept new connections: %s; trying again every %gs, "
            "still serving the connections already open",
            reason,
            self._pause,
        )
        self._pause_announced = True

    def _resume(self, sock: socket.socket) -> None:
        del self._resume_timers[sock]
        if not self._stopped:
            self._watch(sock)

    def _resumed(self) -> None:
        """A round of accepts ended without failing: say so, if a pause was said."""
        if self._pause_announced and not self._resume_timers and self._may_log():
            log.info("accepting new connections again")
            self._pause_announced = False

    def _may_log(self) -> bool:
        """Whether a line may be logged now (at most one a LOG_INTERVAL); if so, counts it."""
        now = self._clock()
        if self._last_logged is not None and now - self._last_logged < LOG_INTERVAL:
            return False
        self._last_logged = now
        return True
