"""Every route foreman serves; each module exports its own `routes`."""

from __future__ import annotations

from foreman.handlers import chat, health, models
from foreman.handlers.base import NotFoundHandler

routes = [*health.routes, *models.routes, *chat.routes]

__all__ = ["routes", "NotFoundHandler"]
