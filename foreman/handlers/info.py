"""Routes about the server itself: `/` and `/api/version`, relayed as they are."""

from __future__ import annotations

from foreman.handlers.relay import RelayHandler
from foreman.ollama import TargetError, TargetStatusError

# What Ollama answers on `/`; clients probe it to see whether a server is up.
OLLAMA_IS_RUNNING = b"Ollama is running"


class VersionHandler(RelayHandler):
    """The target's version: metadata, so never queued."""

    async def get(self) -> None:
        await self.relay(self.request.method, "/api/version", None)

    head = get


class RootHandler(RelayHandler):
    """`GET /` as the target answers it, or foreman's own answer while it is down.

    Health probes of clients (and of their libraries) ask `/` whether Ollama
    is up; foreman is, and will wait the target out, so it says so, with a
    header that tells the truth.
    """

    async def get(self) -> None:
        try:
            response = await self.target.fetch("/")
        except TargetStatusError as e:
            self.send_target_answer(e)
            return
        except TargetError:
            self.set_header("X-Foreman-Target", "unreachable")
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            # For HEAD, Tornado sends the length of this body but not the body.
            self.finish(OLLAMA_IS_RUNNING)
            return
        self.set_header("Content-Type", response.headers.get("Content-Type", "text/plain; charset=utf-8"))
        self.finish(response.body)

    head = get


routes = [(r"/", RootHandler), (r"/api/version", VersionHandler)]
