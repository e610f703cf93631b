"""What is in flight, so a shutdown can wait for it."""

from __future__ import annotations

import asyncio
from typing import Protocol

from foreman.record import RequestRecord


class InFlight(Protocol):
    """A request being served, which a drain can end when its grace is over."""

    #: what the request is and has done so far (the status page shows it)
    record: RequestRecord

    def cut_for_shutdown(self) -> None: ...


class Activity:
    """Counts requests being served and says when a drain has begun."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.draining = False
        #: the handlers serving those requests, so a drain can end the stragglers
        self.handlers: set[InFlight] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self, handler: InFlight) -> None:
        self.in_flight += 1
        self.handlers.add(handler)
        self._idle.clear()

    def end(self, handler: InFlight) -> None:
        self.handlers.discard(handler)
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False if `timeout` ran out first."""
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
