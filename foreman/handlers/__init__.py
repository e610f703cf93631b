"""Every route foreman serves; each module exports its own `routes`."""

from __future__ import annotations

from foreman.handlers import generation, health, info, manage, models, openai
from foreman.handlers.base import NotFoundHandler

routes = [
    *health.routes,
    *info.routes,
    *models.routes,
    *generation.routes,
    *manage.routes,
    *openai.routes,
]

__all__ = ["routes", "NotFoundHandler"]
