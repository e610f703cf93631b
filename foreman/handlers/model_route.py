"""Routes that name a model in their JSON body: the model is checked, then the request relayed.

A request whose body is not a JSON object with a model, or whose model the
target does not have, is answered before it queues or reaches the target.
"""

from __future__ import annotations

from collections.abc import Mapping

from foreman import json_fields
from foreman.handlers.base import RETRY_AFTER_UNREACHABLE, ForemanError
from foreman.handlers.relay import RelayHandler
from foreman.names import canonical
from foreman.shown import shown


def _refusal(error: json_fields.BodyError) -> ForemanError:
    """The 400 for a body that is not a JSON object."""
    if isinstance(error, json_fields.EmptyBody):
        return ForemanError(400, "request body is empty; expected a JSON object")
    if isinstance(error, json_fields.NotAnObject):
        return ForemanError(400, "request body must be a JSON object")
    return ForemanError(400, f"request body is not valid JSON: {error}")


async def body_fields(body: bytes, fields: tuple[str, ...]) -> Mapping[str, object]:
    """The top-level `fields` of a JSON object body, or a 400 saying what is wrong with it.

    A large body is walked, not parsed, and other clients are served meanwhile
    (foreman.json_fields).
    """
    try:
        return await json_fields.top_level_fields(body, fields)
    except json_fields.BodyError as e:
        raise _refusal(e) from None


class ModelRouteHandler(RelayHandler):
    """A POST route whose body names a model the target must have."""

    target_path = ""
    queued = True
    #: body fields that may name the model, in order of preference
    model_fields: tuple[str, ...] = ("model",)

    async def post(self) -> None:
        try:
            await self.check_model(await body_fields(self.body, self.model_fields))
        except ForemanError as e:
            self.fail(e)
            return
        if self._client_gone:  # left while its body was being checked
            return
        if self.queued:
            model = canonical(self.record.model) if self.record.model else None
            await self.relay_queued("POST", self.target_path, self.body, model)
        else:
            targets = self.services.targets
            if targets is not None and self.record.model:
                # Metadata of a model: from a machine that has it.
                self.machine = targets.holding(self.record.model)
            await self.relay("POST", self.target_path, self.body)

    async def check_model(self, fields: Mapping[str, object]) -> None:
        """Answers 400, 404 or 503 unless `fields` name a model the target has.

        A field's value is a string, or any other JSON value (a large body's
        walk gives only the truthiness of those; that is all that matters here).
        """
        model = next((fields[f] for f in self.model_fields if fields.get(f)), None)
        if not isinstance(model, str) or not model.strip():
            raise ForemanError(400, "model is required")
        self.record.model = model
        inventory = self.services.inventory
        targets = self.services.targets
        if targets is not None and targets.several:
            if await targets.find(model):
                return
            known = targets.any_inventory
        else:
            if await inventory.find(model):
                return
            known = inventory.tags_body is not None
        if not known:
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
