"""GET /healthz: is the target reachable, and what does foreman know."""

from __future__ import annotations

from foreman.handlers.base import BaseHandler
from foreman.targets import Targets
from foreman.timestamps import rfc3339


class HealthHandler(BaseHandler):
    """Never needs auth: service managers and load balancers probe it."""

    requires_auth = False

    def get(self) -> None:
        targets = self.services.targets
        if targets is not None and targets.several:
            self._several(targets)
            return
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


    def _several(self, targets: Targets) -> None:
        reachable = [m.reachable for m in targets.machines]
        if all(reachable):
            status = "ok"
        elif any(reachable):
            status = "partial"
        else:
            status = "degraded"
        self.set_status(503 if status == "degraded" else 200)
        self.write(
            {
                "status": status,
                "degraded": status == "degraded",
                "targets": [
                    {
                        "name": m.name,
                        "url": m.display_url,
                        "degraded": not m.reachable,
                        "last_poll": rfc3339(m.inventory.last_poll),
                        # The kind of failure only, as above.
                        "last_error": m.away_error or m.inventory.last_error,
                        "models": m.inventory.model_count,
                        "in_flight": m.in_flight,
                        "concurrency": m.concurrency,
                    }
                    for m in targets.machines
                ],
                "queue": self.services.queue.snapshot(),
            }
        )


routes: list[tuple[str, type[BaseHandler]]] = [(r"/healthz", HealthHandler)]
