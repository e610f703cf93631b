"""What models the target has: `/api/tags` (the inventory), `/api/ps` (loaded now), `/api/show`.

A browser's request (one with `Origin`) to `/api/tags` or `/api/ps` is
relayed instead, so that it gets the target's CORS answer: without the
target's `Access-Control-Allow-Origin` the browser would hide the answer
from the page, and only the target knows which origins it allows.
"""

from __future__ import annotations

from foreman.handlers.base import (
    JSON,
    RETRY_AFTER_UNREACHABLE,
    ForemanError,
    target_failure,
)
from foreman.handlers.model_route import model_route
from foreman.handlers.relay import RelayHandler
from foreman.target import TargetError, TargetStatusError

# A browser's metadata request is relayed with the usual metadata deadline.
_METADATA_TIMEOUT = 30.0


class CorsRelayed(RelayHandler):
    """A GET foreman answers itself, except for a browser, whose request is relayed."""

    async def relayed_for_browser(self, path: str) -> bool:
        """Relay a request that has an `Origin` to `path` on the target; whether it did."""
        if "Origin" not in self.request.headers:
            return False
        await self.relay("GET", path, None, idle_timeout=_METADATA_TIMEOUT)
        return True


class TagsHandler(CorsRelayed):
    """The inventory, in the target's own bytes; the last-known one while it is down."""

    async def get(self) -> None:
        if await self.relayed_for_browser("/api/tags"):
            return
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


class RunningModelsHandler(CorsRelayed):
    """What the target has loaded right now, so always asked live."""

    async def get(self) -> None:
        if await self.relayed_for_browser("/api/ps"):
            return
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
