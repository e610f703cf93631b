"""Routes that name a model in their JSON body: the model is checked, then the request relayed.

A request whose body is not a JSON object with a model, or whose model the
target does not have, is answered before it queues or reaches the target.
"""

from __future__ import annotations

import json

from foreman.handlers.base import RETRY_AFTER_UNREACHABLE, ForemanError
from foreman.handlers.relay import RelayHandler
from foreman.names import canonical
from foreman.shown import shown


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
    """A POST route whose body names a model the target must have."""

    target_path = ""
    queued = True
    #: body fields that may name the model, in order of preference
    model_fields: tuple[str, ...] = ("model",)

    async def post(self) -> None:
        try:
            await self.check_model(json_object(self.body))
        except ForemanError as e:
            self.fail(e)
            return
        if self.queued:
            model = canonical(self.record.model) if self.record.model else None
            await self.relay_queued("POST", self.target_path, self.body, model)
        else:
            await self.relay("POST", self.target_path, self.body)

    async def check_model(self, document: dict[str, object]) -> None:
        model = next((document[f] for f in self.model_fields if document.get(f)), None)
        if not isinstance(model, str) or not model.strip():
            raise ForemanError(400, "model is required")
        self.record.model = model
        inventory = self.services.inventory
        if await inventory.find(model):
            return
        if inventory.tags_body is None:
            raise ForemanError(
                503,
                f"cannot check model '{shown(model)}': no model inventory yet "
                f"({inventory.last_error})",
                {"Retry-After": str(RETRY_AFTER_UNREACHABLE)},
            )
        # Ollama's wording; the name as the client sent it, but bounded and escaped.
        raise ForemanError(404, f"model '{shown(model)}' not found")


def model_route(path: str, *, queued: bool = True, fields: tuple[str, ...] = ("model",)) -> type:
    """A `ModelRouteHandler` for one target path."""
    return type(
        "ModelRoute" + path.replace("/", "_"),
        (ModelRouteHandler,),
        {"target_path": path, "queued": queued, "model_fields": fields},
    )

