"""GET /metrics: Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from foreman.handlers.base import BaseHandler


class MetricsHandler(BaseHandler):
    """Behind the API's auth unless FOREMAN_METRICS_PUBLIC=1."""

    @property
    def requires_auth(self) -> bool:  # type: ignore[override]
        return not self.config.metrics_public

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.services.metrics.exposition())


routes: list[tuple[str, type[BaseHandler]]] = [(r"/metrics", MetricsHandler)]
