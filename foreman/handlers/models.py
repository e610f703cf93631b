"""What models the target has: `/api/tags` (the inventory), `/api/ps` (loaded now), `/api/show`."""

from __future__ import annotations

from foreman.handlers.base import (
    JSON,
    RETRY_AFTER_UNREACHABLE,
    BaseHandler,
    ForemanError,
    target_failure,
)
from foreman.handlers.model_route import model_route
from foreman.target import TargetError, TargetStatusError


class TagsHandler(BaseHandler):
    """The inventory, in the target's own bytes; the last-known one while it is down."""

    def get(self) -> None:
        inventory = self.services.inventory
        body = inventory.tags_body
        if body is None:
            reason = inventory.last_error or "the first poll has not finished"
            self.fail(
                ForemanError(
                    503,
                    f"no model inventory yet: {reason}",
                    {"Retry-After": str(RETRY_AFTER_UNREACHABLE)},
                )
            )
            return
        self.set_header("Content-Type", JSON)
        self.finish(body)


class RunningModelsHandler(BaseHandler):
    """What the target has loaded right now, so always asked live."""

    async def get(self) -> None:
        try:
            response = await self.services.target.fetch("/api/ps")
        except TargetStatusError as e:
            self.send_target_answer(e)
            return
        except TargetError as e:
            self.fail(target_failure(e))
            return
        self.set_status(response.status)
        self.send_target_body(response.headers.get("Content-Type", JSON), response.body)


routes = [
    (r"/api/tags", TagsHandler),
    (r"/api/ps", RunningModelsHandler),
    # Metadata: never waits behind generations. Also takes the legacy `name`.
    (r"/api/show", model_route("/api/show", queued=False, fields=("model", "name"))),
]
