"""Routes about the server itself: `/` and `/api/version`, relayed as they are."""

from __future__ import annotations

from foreman.handlers.relay import RelayHandler
from foreman.handlers.sink import ClientSink
from foreman.target import TargetError

# What Ollama answers on `/`; clients probe it to see whether a server is up.
OLLAMA_IS_RUNNING = b"Ollama is running"
# A probe of `/` should not hang for FOREMAN_TARGET_IDLE_TIMEOUT.
ROOT_TIMEOUT = 30.0


class VersionHandler(RelayHandler):
    """The target's version: metadata, so never queued."""

    async def get(self) -> None:
        await self.relay(self.request.method or "GET", "/api/version", None)

    head = get


class RootHandler(RelayHandler):
    """`GET /` and `HEAD /` as the target answers them, or foreman's own answer while it is down.

    Health probes of clients (and of their libraries) ask `/` whether Ollama
    is up; foreman is, and will wait the target out, so it says so, with a
    header that tells the truth.
    """

    async def get(self) -> None:
        await self.relay(self.request.method or "GET", "/", None, idle_timeout=ROOT_TIMEOUT)

    head = get

    def answer_failure(
        self, error: TargetError, sink: ClientSink, method: str, path: str, status: int = 502
    ) -> None:
        if sink.sent or status != 502:
            super().answer_failure(error, sink, method, path, status)
            return
        self.clear()
        self.set_header("X-Foreman-Target", "unreachable")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        # For HEAD, Tornado sends the length of this body but not the body.
        self.finish(OLLAMA_IS_RUNNING)


routes = [(r"/", RootHandler), (r"/api/version", VersionHandler)]
