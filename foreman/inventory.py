"""The model inventory: what the target has, kept fresh by a poller.

The poller fetches `/api/tags` once at start-up and then every poll
interval. A failed poll keeps the last-known inventory and marks foreman
degraded; the next good poll clears it. Polls never overlap: a periodic
tick and any number of on-demand re-polls that arrive while a poll runs all
share that poll.

A client asking for a model the inventory lacks (a typo, in a loop) must
not hammer the target: a miss re-polls only if the last poll ended more than
`MISS_REPOLL_FLOOR` ago, and otherwise is answered from what that poll found.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable

from tornado.ioloop import PeriodicCallback

from foreman.names import canonical
from foreman.resident import ResidentModels
from foreman.target import Target, TargetError, TargetStatusError, TargetUnusable

log = logging.getLogger("foreman.inventory")

# Seconds after a poll ends during which a miss is answered from it.
MISS_REPOLL_FLOOR = 1.0
# A poll's deadline, connecting included. Ollama lists its models in
# milliseconds; a target gone dark (asleep, off the network) must show in
# /healthz within seconds, even when the poll went out on a pooled
# connection that died with it.
POLL_TIMEOUT = 5.0


class Inventory:
    def __init__(
        self,
        target: Target,
        poll_interval: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        track_resident: bool = False,
    ) -> None:
        self._target = target
        self._clock = clock
        #: clock() when the last poll ended, or None before any
        self._last_poll_ended: float | None = None
        self._interval = poll_interval
        self._timer: PeriodicCallback | None = None
        self._poll: asyncio.Future[bool] | None = None
        self._names: frozenset[str] = frozenset()
        self._on_success: list[Callable[[], None]] = []
        #: the target's /api/tags body exactly as it sent it, or None before the first good poll
        self.tags_body: bytes | None = None
        self.last_poll: datetime.datetime | None = None
        self.last_error: str | None = None
        self.polls_tried = 0
        self.degraded = True
        #: the models the target holds in memory, from /api/ps and foreman's dispatches
        self.resident = ResidentModels()
        # Asking /api/ps is only worth it when the queue uses the answer (model affinity).
        self._track_resident = track_resident
        self._ps: asyncio.Future[None] | None = None

    @property
    def tracks_resident(self) -> bool:
        """Whether the target's /api/ps is asked (with each poll, and after a load)."""
        return self._track_resident

    @property
    def model_count(self) -> int:
        return len(self._names)

    @property
    def since_last_poll(self) -> float | None:
        """Seconds since the last poll ended (None before any)."""
        ended = self._last_poll_ended
        return None if ended is None else self._clock() - ended

    def start(self) -> asyncio.Future[bool]:
        """Poll now, then every interval; returns the first poll."""
        first = self.refresh()
        self._timer = PeriodicCallback(self.refresh, self._interval * 1000)
        self._timer.start()
        return first

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def on_success(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every successful poll."""
        self._on_success.append(listener)

    def has(self, name: str) -> bool:
        return canonical(name) in self._names

    async def find(self, name: str) -> bool:
        """Whether the target has `name`, re-polling on a miss unless a poll just ended."""
        if self.has(name):
            return True
        if self._poll is not None and not self._poll.done():
            await self._poll
        elif (since := self.since_last_poll) is None or since > MISS_REPOLL_FLOOR:
            await self.refresh()
        return self.has(name)

    def refresh(self) -> asyncio.Future[bool]:
        """Poll unless a poll is running, and return the running poll.

        Resolves to whether the poll succeeded; never raises.
        """
        if self._poll is None or self._poll.done():
            self._poll = asyncio.ensure_future(self._poll_once())
        return self._poll

    async def _poll_once(self) -> bool:
        try:
            response = await self._target.fetch("/api/tags", timeout=POLL_TIMEOUT)
            names = _model_names(response.json())
        except TargetStatusError as e:
            # What the target said goes to the log only: /healthz shows last_error
            # to anyone, and an error body can name local paths.
            self._record_failure(str(e), detail=f"its answer began {e.excerpt}")
            return False
        except TargetError as e:
            self._record_failure(str(e))
            return False
        except Exception as e:  # a poll must never kill the poller
            log.exception("unexpected error while polling the target")
            self._record_failure(f"unexpected error ({type(e).__name__}); see foreman's log")
            return False
        else:
            self._record_success(response.body, names)
            for listener in self._on_success:
                listener()
            await self.refresh_resident()
            return True
        finally:
            self.polls_tried += 1
            self._last_poll_ended = self._clock()

    def refresh_resident(self) -> asyncio.Future[None]:
        """Ask the target what it holds in memory, unless that is being asked already."""
        if self._ps is None or self._ps.done():
            if not self._track_resident:
                self._ps = asyncio.get_running_loop().create_future()
                self._ps.set_result(None)
            else:
                self._ps = asyncio.ensure_future(self._ask_resident())
        return self._ps

    async def _ask_resident(self) -> None:
        try:
            response = await self._target.fetch("/api/ps")
            self.resident.reported(response.json())
        except TargetError as e:
            # Not worth a warning: the poll of /api/tags says whether the target is up,
            # and without /api/ps foreman only guesses worse which model is loaded.
            log.debug("asking the target which models it holds failed: %s", e)

    def _record_success(self, body: bytes, names: frozenset[str]) -> None:
        if self.degraded and self.polls_tried:
            log.info("target %s is reachable again", self._target.display_url)
        if names != self._names:
            log.info("inventory: %d models", len(names))
        self.tags_body = body
        self._names = names
        self.last_poll = datetime.datetime.now(datetime.UTC)
        self.last_error = None
        self.degraded = False

    def _record_failure(self, error: str, detail: str | None = None) -> None:
        """Note a failed poll; `error` is shown by /healthz, `detail` only logged."""
        if not self.degraded or not self.polls_tried or error != self.last_error:
            if detail:
                log.warning("polling the target failed: %s; %s", error, detail)
            else:
                log.warning("polling the target failed: %s", error)
        self.last_error = error
        self.degraded = True


def _model_names(document: object) -> frozenset[str]:
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise TargetUnusable("the target's /api/tags is not an object with a 'models' list")
    names: set[str] = set()
    for entry in document["models"]:
        if not isinstance(entry, dict):
            continue
        for key in ("name", "model"):
            value = entry.get(key)
            if isinstance(value, str) and value:
                names.add(canonical(value))
    return frozenset(names)
