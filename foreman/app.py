"""Building the Tornado application from foreman's services."""

from __future__ import annotations

import tornado.web

from foreman.config import Config
from foreman.handlers import NotFoundHandler, routes
from foreman.handlers.preflight import preflight_rules
from foreman.logs import log_request
from foreman.services import Services


def inbound_tokens(config: Config) -> list[str]:
    """Tokens good for the API: admins' too; none (no auth) without FOREMAN_TOKENS."""
    return [*config.tokens, *config.admin_tokens] if config.tokens else []


def make_app(services: Services) -> tornado.web.Application:
    return tornado.web.Application(
        [
            # CORS preflights first: they go to the target whatever the route.
            *preflight_rules(routes, services),
            # Each handler knows its route pattern: a metrics label of bounded size.
            *((pattern, handler, {"services": services, "route": pattern}) for pattern, handler in routes),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services, "route": "other"},
        log_function=log_request,
    )
