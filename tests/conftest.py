"""Fixtures: a stand-in Ollama on a loopback port and a real foreman in front of it.

Both run on the test's IOLoop and are reached over real sockets. Sync client
libraries (the `ollama` package, curl) run in a thread or a subprocess so
the loop keeps serving while they wait.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from foreman import config
from foreman.server import Foreman, raise_open_file_limit
from foreman.stub import StubOllama

# Hypothesis, for every property test in the suite (their own @settings only
# add to this). Under CI each test's examples are derived from its name, so a
# red run stays red on a rerun and on a laptop instead of turning green by
# chance; elsewhere they are random, to keep finding new cases. A failure
# prints the falsifying example and a @reproduce_failure blob either way. No
# deadline: the machine may be busy, and a slow example is not a wrong one.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("dev", database=None, deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "dev")

# Tests hold hundreds of connections in one process (client, foreman and the
# stand-in each hold one per stream).
raise_open_file_limit()


@pytest.fixture(autouse=True)
def no_uncaught_exceptions(caplog) -> Iterator[None]:
    """Whatever a test does, nothing in foreman (or the stand-in) may crash with a traceback."""
    yield
    crashes = [
        r for r in caplog.get_records("call")
        if r.levelno >= logging.ERROR and r.exc_info and r.name.startswith(("tornado", "foreman", "asyncio"))
    ]
    assert not crashes, "\n".join(f"{r.name}: {r.getMessage()}" for r in crashes)


@pytest.fixture
def stub(io_loop) -> Iterator[StubOllama]:
    server = StubOllama()
    server.listen()
    yield server
    io_loop.run_sync(server.stop)


def foreman_config(target_url: str, **env: str) -> config.Config:
    environ = {
        "FOREMAN_OLLAMA_URL": target_url,
        "FOREMAN_LISTEN": "127.0.0.1:0",
        # Tests poll on demand; a periodic poll would race their assertions.
        "FOREMAN_POLL_INTERVAL": "1h",
        # Model affinity asks the target's /api/ps besides; tests see only the
        # requests they cause, unless they are about affinity and turn it on.
        "FOREMAN_MODEL_AFFINITY": "0",
        "FOREMAN_SHUTDOWN_GRACE": "5s",
    }
    environ.update(env)
    return config.load(environ)


@dataclass
class Front:
    """A running foreman, as a test sees it."""

    foreman: Foreman
    url: str
    clients: list[SimpleAsyncHTTPClient] = field(default_factory=list)

    @property
    def inventory(self):
        return self.foreman.inventory

    async def ready(self) -> None:
        """Wait for the first poll of the target to finish."""
        assert self.foreman.first_poll is not None
        await self.foreman.first_poll

    def client(self, max_clients: int = 10) -> SimpleAsyncHTTPClient:
        http = SimpleAsyncHTTPClient(force_instance=True, max_clients=max_clients)
        self.clients.append(http)
        return http

    async def fetch(self, path: str, **kwargs) -> HTTPResponse:
        kwargs.setdefault("raise_error", False)
        kwargs.setdefault("request_timeout", 60)
        if isinstance(kwargs.get("body"), (dict, list)):
            kwargs["body"] = json.dumps(kwargs["body"])
        return await self.client().fetch(HTTPRequest(self.url + path, **_split(kwargs)), raise_error=kwargs["raise_error"])


def _split(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k != "raise_error"}


@pytest.fixture
def start_foreman(io_loop, stub) -> Iterator[Callable[..., Front]]:
    """Start a foreman in front of `stub` (or another target), with FOREMAN_* overrides."""
    fronts: list[Front] = []

    def start(target_url: str | None = None, **env: str) -> Front:
        instance = Foreman(foreman_config(target_url or stub.url, **env))
        instance.start()
        front = Front(instance, instance.urls[0])
        fronts.append(front)
        return front

    yield start
    for front in fronts:
        for http in front.clients:
            http.close()
        io_loop.run_sync(lambda f=front: f.foreman.drain(0), timeout=30)


@pytest.fixture
def foreman(start_foreman) -> Front:
    return start_foreman()
