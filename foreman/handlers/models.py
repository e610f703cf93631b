"""What models the target has: `/api/tags` (the inventory), `/api/ps` (loaded now), `/api/show`.

A browser's request (one with `Origin`) to `/api/tags` or `/api/ps` is
relayed instead, so that it gets the target's CORS answer: without the
target's `Access-Control-Allow-Origin` the browser would hide the answer
from the page, and only the target knows which origins it allows.
"""

from __future__ import annotations

import asyncio

from foreman import union
from foreman.handlers.base import (
    JSON,
    RETRY_AFTER_UNREACHABLE,
    ForemanError,
    target_failure,
)
from foreman.handlers.model_route import model_route
from foreman.handlers.relay import RelayHandler
from foreman.target import TargetError, TargetStatusError
from foreman.targets import Targets

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
        targets = self.services.targets
        if targets is not None and targets.several:
            known = [m.inventory.tags_body for m in targets.machines if m.inventory.tags_body is not None]
            body = union.tags_body(known) if known else None
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
        targets = self.services.targets
        if targets is not None and targets.several:
            await self._union(targets)
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


    async def _union(self, targets: Targets) -> None:
        # Several targets: every model some reachable one holds in memory.
        asked = [m for m in targets.machines if m.reachable]
        if not asked:
            self.fail(
                ForemanError(
                    503, "no target is reachable to say which models it holds",
                    {"Retry-After": str(RETRY_AFTER_UNREACHABLE)},
                )
            )
            return
        answers = await asyncio.gather(
            *(m.target.fetch("/api/ps") for m in asked), return_exceptions=True
        )
        documents = []
        for answer in answers:
            if isinstance(answer, BaseException):
                continue
            try:
                documents.append(answer.json())
            except ValueError:
                continue
        if asked and not documents:
            first = next(a for a in answers if isinstance(a, BaseException))
            if isinstance(first, TargetError):
                self.fail(target_failure(first))
                return
        self.set_header("Content-Type", JSON)
        self.finish(union.ps_body(documents))


routes = [
    (r"/api/tags", TagsHandler),
    (r"/api/ps", RunningModelsHandler),
    # Metadata: never waits behind generations. Also takes the legacy `name`.
    (r"/api/show", model_route("/api/show", queued=False, fields=("model", "name"))),
]
