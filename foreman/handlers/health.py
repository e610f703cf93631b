"""GET /healthz: is the target reachable, and what does foreman know."""

from __future__ import annotations

import datetime

from foreman.handlers.base import BaseHandler


def rfc3339(moment: datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HealthHandler(BaseHandler):
    """Never needs auth: service managers and load balancers probe it."""

    requires_auth = False

    def get(self) -> None:
        inventory = self.services.inventory
        self.set_status(503 if inventory.degraded else 200)
        self.write(
            {
                "status": "degraded" if inventory.degraded else "ok",
                "degraded": inventory.degraded,
                "target": self.services.target.display_url,
                "last_poll": rfc3339(inventory.last_poll),
                # Only the kind of failure and the status: this route needs no
                # token, so what the target said stays in the log.
                "last_error": inventory.last_error,
                "models": inventory.model_count,
                "queue": self.services.queue.snapshot(),
            }
        )


routes: list[tuple[str, type[BaseHandler]]] = [(r"/healthz", HealthHandler)]
