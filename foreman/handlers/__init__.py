"""Every route foreman serves; each module exports its own `routes`."""

from __future__ import annotations

from foreman.handlers import generation, health, manage, metrics, models, openai, server_info, status
from foreman.handlers.base import BaseHandler, NotFoundHandler

routes: list[tuple[str, type[BaseHandler]]] = [
    *health.routes,
    *metrics.routes,
    *status.routes,
    *server_info.routes,
    *models.routes,
    *generation.routes,
    *manage.routes,
    *openai.routes,
]

__all__ = ["routes", "NotFoundHandler"]
