"""Generations: chat, generate and embeddings. The model is checked, then the request queues."""

from __future__ import annotations

from foreman.handlers.model_route import model_route

routes = [
    (r"/api/chat", model_route("/api/chat")),
    (r"/api/generate", model_route("/api/generate")),
    (r"/api/embed", model_route("/api/embed")),
    (r"/api/embeddings", model_route("/api/embeddings")),
]
