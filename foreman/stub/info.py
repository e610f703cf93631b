"""The stand-in's read-only routes: ``/``, ``/api/version``, ``/api/tags``, ``/api/ps``."""

from __future__ import annotations

from foreman.stub.base import STUB_VERSION, Route, StubHandler
from foreman.stub.catalog import ps_entry, tag_entry


class RootHandler(StubHandler):
    """GET / (and HEAD): Ollama's liveness line; the one route that needs no token."""

    methods = ("GET", "HEAD")
    open_methods = ("GET", "HEAD")

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(b"Ollama is running")

    head = get


class VersionHandler(StubHandler):
    """GET /api/version."""

    methods = ("GET", "HEAD")

    def get(self) -> None:
        self.send_json({"version": STUB_VERSION})

    head = get


class TagsHandler(StubHandler):
    """GET /api/tags: the inventory, after ``tags_hold``, or ``tags_status`` if set."""

    methods = ("GET", "HEAD")

    async def get(self) -> None:
        if self.request.method == "GET":
            self.stub.bump("tags_polls")
        if self.stub.tags_hold is not None:
            await self.stub.tags_hold.wait()
        if self.stub.tags_status is not None:
            self.send_json_error(self.stub.tags_status, "stub error")
            return
        self.send_json({"models": [tag_entry(name) for name in self.stub.models]})

    head = get


class PsHandler(StubHandler):
    """GET /api/ps: the models runs have loaded, in load order."""

    methods = ("GET",)

    def get(self) -> None:
        self.send_json({"models": [ps_entry(name) for name in self.stub.loaded]})


ROUTES = [
    Route("/", RootHandler),
    Route("/api/version", VersionHandler),
    Route("/api/tags", TagsHandler),
    Route("/api/ps", PsHandler),
]
