"""Building the Tornado application from its collaborators."""

from __future__ import annotations

import tornado.web

from foreman.activity import Activity
from foreman.auth import TokenSet
from foreman.config import Config
from foreman.handlers import NotFoundHandler, routes
from foreman.inventory import Inventory
from foreman.logs import log_request
from foreman.ollama import Target
from foreman.queue import FairQueue


def make_app(
    config: Config,
    target: Target,
    inventory: Inventory,
    activity: Activity | None = None,
    queue: FairQueue | None = None,
) -> tornado.web.Application:
    collaborators = {
        "config": config,
        "target": target,
        "inventory": inventory,
        "activity": activity or Activity(),
        # Admin tokens are good for every route; without FOREMAN_TOKENS the
        # ordinary routes stay open.
        "tokens": TokenSet(config.tokens + config.admin_tokens if config.tokens else ()),
        "admins": TokenSet(config.admin_tokens),
        "queue": queue or FairQueue(config.concurrency, config.max_queue, config.queue_timeout),
    }
    return tornado.web.Application(
        [(pattern, handler, collaborators) for pattern, handler in routes],
        default_handler_class=NotFoundHandler,
        default_handler_args=collaborators,
        log_function=log_request,
    )
