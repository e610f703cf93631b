"""Ollama's OpenAI-compatible API under /v1, with errors in OpenAI's shape.

Streaming answers there are server-sent events; the relay passes each event
on as the target produces it, `data: [DONE]` included.
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

from foreman import union
from foreman.targets import Targets

import json

from foreman.handlers.model_route import ModelRouteHandler
from foreman.handlers.relay import RelayHandler
from foreman.names import plain
from foreman.shown import shown

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
}


def openai_error(status: int, message: str) -> str:
    error_type = _ERROR_TYPES.get(status, "api_error")
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": None}},
        separators=(",", ":"),
    )


class OpenAIErrors:
    """Mixed into /v1 handlers: foreman's own errors as OpenAI clients expect them."""

    def error_document(self, status: int, message: str) -> str:
        return openai_error(status, message)


class ModelsHandler(OpenAIErrors, RelayHandler):
    """`GET /v1/models` and `GET /v1/models/{model}`: metadata, relayed as asked."""

    @classmethod
    def bad_path_args(cls, args: list[str]) -> str | None:
        # The model goes on the wire as part of the path, under the target
        # URL's prefix and with foreman's bearer: `..`, `%2e%2e` or a backslash
        # there could leave the prefix at a proxy that normalises paths.
        if args and not plain(args[0]):
            return f"invalid model name '{shown(args[0])}'"
        return None

    async def get(self, model: str | None = None) -> None:
        targets = self.services.targets
        if targets is not None and targets.several:
            if model is None and "Origin" not in self.request.headers:
                await self._union(targets)
                return
            if model is not None:
                self.machine = targets.holding(unquote(model))
        # The raw path keeps the client's own encoding of the model name,
        # which prepare() has checked is a plain name once decoded.
        await self.relay("GET", self.request.path, None)

    async def _union(self, targets: Targets) -> None:
        # Several targets: one list, every model once, away targets' from their last poll.
        asked = [m for m in targets.machines if m.reachable]
        answers = await asyncio.gather(
            *(m.target.fetch("/v1/models") for m in asked), return_exceptions=True
        )
        documents = []
        for answer in answers:
            if not isinstance(answer, BaseException):
                try:
                    documents.append(answer.json())
                except ValueError:
                    pass
        known = [m.inventory.tags_body for m in targets.machines if m.inventory.tags_body is not None]
        self.set_header("Content-Type", "application/json")
        self.finish(union.v1_models_body(documents, union.tags_body(known)))


class OpenAIModelRouteHandler(OpenAIErrors, ModelRouteHandler):
    """A /v1 generation route: the model in the body is validated, then queued."""


def openai_route(path: str) -> type:
    return type("OpenAIRoute" + path.replace("/", "_"), (OpenAIModelRouteHandler,), {"target_path": path})


routes = [
    (r"/v1/models", ModelsHandler),
    (r"/v1/models/(.+)", ModelsHandler),
    (r"/v1/chat/completions", openai_route("/v1/chat/completions")),
    (r"/v1/completions", openai_route("/v1/completions")),
    (r"/v1/embeddings", openai_route("/v1/embeddings")),
]
