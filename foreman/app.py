"""Building the Tornado application from its collaborators."""

from __future__ import annotations

from dataclasses import dataclass

import tornado.web

from foreman.activity import Activity
from foreman.auth import FailedAuthLog, TokenSet
from foreman.config import Config
from foreman.handlers import NotFoundHandler, routes
from foreman.inventory import Inventory
from foreman.logs import log_request
from foreman.metrics import Metrics
from foreman.ollama import Target
from foreman.queue import FairQueue


def inbound_tokens(config: Config) -> list[str]:
    """Tokens good for the API: admins' too; none (no auth) without FOREMAN_TOKENS."""
    return [*config.tokens, *config.admin_tokens] if config.tokens else []


@dataclass
class Collaborators:
    """What handlers share; reach them as route kwargs, never as globals."""

    config: Config
    target: Target
    inventory: Inventory
    activity: Activity
    queue: FairQueue
    tokens: TokenSet
    admins: TokenSet
    metrics: Metrics
    auth_failures: FailedAuthLog


def make_app(parts: Collaborators) -> tornado.web.Application:
    shared = vars(parts)
    return tornado.web.Application(
        # Each handler knows its route pattern: a metrics label of bounded size.
        [(pattern, handler, {**shared, "route": pattern}) for pattern, handler in routes],
        default_handler_class=NotFoundHandler,
        default_handler_args={**shared, "route": "other"},
        log_function=log_request,
    )
