"""POST /api/chat: validate the model, then relay to the target."""

from __future__ import annotations

import json

from foreman.handlers.base import RETRY_AFTER_UNREACHABLE, ForemanError
from foreman.handlers.relay import RelayHandler


def json_object(body: bytes) -> dict[str, object]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    if not body.strip():
        raise ForemanError(400, "request body is empty; expected a JSON object")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise ForemanError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(document, dict):
        raise ForemanError(400, "request body must be a JSON object")
    return document


class ModelRouteHandler(RelayHandler):
    """A generation route: the body names a model the target must have."""

    target_path = ""

    async def post(self) -> None:
        try:
            await self.check_model(json_object(self.request.body))
        except ForemanError as e:
            self.fail(e)
            return
        await self.relay_queued("POST", self.target_path, self.request.body)

    async def check_model(self, document: dict[str, object]) -> None:
        model = document.get("model")
        if not isinstance(model, str) or not model.strip():
            raise ForemanError(400, "model is required")
        self.log_model = model
        if await self.inventory.find(model):
            return
        if self.inventory.tags_body is None:
            raise ForemanError(
                503,
                f"cannot check model '{model}': no model inventory yet ({self.inventory.last_error})",
                {"Retry-After": str(RETRY_AFTER_UNREACHABLE)},
            )
        raise ForemanError(404, f"model '{model}' not found")


class ChatHandler(ModelRouteHandler):
    """Chat with a model; streams NDJSON unless the body says `"stream": false`."""

    target_path = "/api/chat"


routes = [(r"/api/chat", ChatHandler)]
