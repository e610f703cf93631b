"""CORS preflights, passed to the target so that its own policy answers them.

Before a cross-origin request that a page could not make with a plain form
(one with a bearer token, or JSON's Content-Type), a browser asks first:
`OPTIONS` with `Origin` and `Access-Control-Request-Method`, and no
credentials. Ollama answers these from `OLLAMA_ORIGINS`; foreman relays the
question and the target's answer (its `Access-Control-*` headers included),
so web apps that Ollama lets in work through foreman too. A preflight needs
no token (browsers never send one with it), never queues, and is answered
for the routes foreman serves, with their path checks.
"""

from __future__ import annotations

from typing import Any

from tornado import httputil
from tornado.routing import Matcher, PathMatches, Rule

from foreman.handlers.base import BaseHandler
from foreman.handlers.relay import RelayHandler
from foreman.services import Services

# A preflight is a question about headers: it should not wait long.
PREFLIGHT_TIMEOUT = 30.0
#: The metrics label of every preflight, whichever route it asks about.
PREFLIGHT_ROUTE = "preflight"


def is_preflight(request: httputil.HTTPServerRequest) -> bool:
    """A CORS preflight as the Fetch standard defines it."""
    headers = request.headers
    return (
        request.method == "OPTIONS"
        and "Origin" in headers
        and "Access-Control-Request-Method" in headers
    )


class _PreflightTo(Matcher):
    """Matches a preflight for a path that one route's pattern matches."""

    def __init__(self, pattern: str) -> None:
        self._path = PathMatches(pattern)

    def match(self, request: httputil.HTTPServerRequest) -> dict[str, Any] | None:
        return self._path.match(request) if is_preflight(request) else None


class PreflightHandler(RelayHandler):
    """Relays one preflight to the target, for a route served by `served_by`."""

    SUPPORTED_METHODS = ("OPTIONS",)  # type: ignore[assignment]
    requires_auth = False

    def initialize(  # type: ignore[override]
        self, services: Services, route: str, served_by: type[BaseHandler]
    ) -> None:
        super().initialize(services, route)
        self.served_by = served_by

    def path_problem(self) -> str | None:
        # The path is checked as the route itself checks it: a preflight
        # puts it on the wire just the same.
        return self.served_by.bad_path_args(self.path_args)

    async def options(self, *args: str) -> None:
        await self.relay("OPTIONS", self.request.path, None, idle_timeout=PREFLIGHT_TIMEOUT)


def preflight_rules(
    routes: list[tuple[str, type[BaseHandler]]], services: Services
) -> list[Rule]:
    """One rule per route, taking that route's preflights; to go before the routes."""
    return [
        Rule(
            _PreflightTo(pattern),
            PreflightHandler,
            {"services": services, "route": PREFLIGHT_ROUTE, "served_by": handler},
        )
        for pattern, handler in routes
        # Foreman's own pages are same-origin: nothing of a target's policy applies.
        if not getattr(handler, "answers_preflights", False)
    ]
