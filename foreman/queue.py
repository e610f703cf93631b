"""One fair, bounded queue in front of the target.

At most `concurrency` generation requests are at the target at once; up to
`max_queue` more wait, at most `max_per_client` of them from any one client,
so one client cannot fill the queue and lock the others out. Which waiting
request goes next is `foreman.scheduling.FairScheduler`'s choice: the client
that has had the least of the target's time (divided by its weight), first
in first out within a client, with a bounded preference for requests whose
model the target holds in memory. This module is the mechanism around that
policy: futures to wait on, deadlines, and waiting out an unreachable target.

An unreachable target is a transient state. A request whose turn comes while
the target cannot be reached goes back to the head of its client's line,
dispatch pauses, and one request at a time probes the target with capped
exponential backoff; any answer from the target (or a good poll) resumes
dispatch at once. A request fails only when its own wait runs past `timeout`.
A failure of an attempt that began before the target last proved reachable
says nothing about now (a connection that died while the target slept, found
out after it woke): the request goes back to its place without pausing.
Listeners hear when dispatch pauses and resumes (waking the target).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Collection
from typing import Any, Protocol

from foreman.scheduling import FairScheduler

# Probing an unreachable target: first retry after this, doubling up to the cap.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 15.0
# Service times remembered to estimate Retry-After for a full queue.
_SERVICE_SAMPLES = 32


class Placement(Protocol):
    """Where a request may go, with several targets (foreman.targets.Targets)."""

    def can_place(self, model: str | None) -> bool: ...
    def resident(self) -> Collection[str]: ...
    def take(self, model: str | None) -> Any: ...
    def give_back(self, machine: Any) -> None: ...
    def unreachable(self, machine: Any, error: str) -> None: ...
    def stuck(self, model: str | None) -> None: ...
    def unreachable_error(self, model: str | None) -> str | None: ...


class QueueError(Exception):
    """A request that will not get a turn; says how long to wait before retrying."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(QueueError):
    pass


class ClientQueueFull(QueueError):
    """This client already has as many requests waiting as one client may."""


class QueueTimeout(QueueError):
    """The request's wait ran past the queue's timeout."""

    def __init__(self, message: str, retry_after: int, target_unreachable: bool = False) -> None:
        super().__init__(message, retry_after)
        #: it was waiting for an unreachable target, not for a busy one
        self.target_unreachable = target_unreachable


class QueueClosed(QueueError):
    pass


class ClientLeft(Exception):
    """The client went away while waiting."""


class Ticket:
    """One request's place in the queue."""

    __slots__ = (
        "client", "weight", "model", "admitted", "deadline", "granted", "waited",
        "dispatched", "caused_load", "left", "_timer", "machine",
    )

    def __init__(
        self, client: str, weight: float, model: str | None, admitted: float, deadline: float
    ) -> None:
        self.client = client
        self.weight = weight
        #: the model it asks for (canonical), for affinity and load counting
        self.model = model
        self.admitted = admitted
        self.deadline = deadline
        self.granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: seconds between admission and the (last) turn
        self.waited = 0.0
        #: clock() when it was (last) given its turn
        self.dispatched: float | None = None
        #: its model was not resident when it was dispatched: it made the target load it
        self.caused_load = False
        self.left = False
        self._timer: asyncio.TimerHandle | None = None
        #: with several targets, the machine it was given a slot at
        self.machine: Any = None


class FairQueue:
    def __init__(
        self,
        concurrency: int,
        max_queue: int,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_per_client: int | None = None,
        affinity: float = 0.0,
        resident: Callable[[], Collection[str]] = frozenset,
        placement: Placement | None = None,
    ) -> None:
        self.concurrency = concurrency
        self.max_queue = max_queue
        #: waiting requests one client may have; None: only `max_queue` bounds them
        self.max_per_client = max_per_client
        self.timeout = timeout
        self._clock = clock
        self._scheduler: FairScheduler[Ticket] = FairScheduler(affinity, clock)
        # What the target holds in memory now, asked at each dispatch.
        self._resident = resident
        # Several targets: which one a picked request goes to, and what each holds.
        # The queue's own pause and probe are then unused: each machine is
        # waited out on its own, and the others go on serving.
        self._placement = placement
        if placement is not None:
            self._resident = placement.resident
        self._holding: set[Ticket] = set()
        self._on_dispatch: list[Callable[[Ticket], None]] = []
        self._on_release: list[Callable[[Ticket, float], None]] = []
        self._on_pause: list[Callable[[], None]] = []
        self._on_resume: list[Callable[[bool], None]] = []
        self.closed = False
        # Set while the target is unreachable: no new turns but probes.
        self.paused = False
        #: the last connection error, while the target is unreachable
        self.last_error: str | None = None
        self._backoff = 0.0
        self._probe_timer: asyncio.TimerHandle | None = None
        self._probe: Ticket | None = None
        # clock() when the target last proved reachable: failures of attempts
        # begun before then are stale.
        self._reachable_at = -math.inf
        self._service_times: deque[float] = deque(maxlen=_SERVICE_SAMPLES)
        #: dispatches of a request whose model the target did not hold
        self.model_loads = 0

    @property
    def waiting(self) -> int:
        return self._scheduler.waiting

    @property
    def in_flight(self) -> int:
        return len(self._holding)

    @property
    def stalled(self) -> bool:
        """Dispatch is paused for an unreachable target and requests wait for it (or one probes it)."""
        return self.paused and (self.waiting > 0 or self._probe is not None)

    @property
    def scheduler(self) -> FairScheduler[Ticket]:
        """The policy, for what it knows of each client (service, waiting)."""
        return self._scheduler

    def snapshot(self) -> dict[str, int]:
        return {
            "waiting": self.waiting,
            "in_flight": self.in_flight,
            "concurrency": self.concurrency,
            "max_queue": self.max_queue,
        }

    def on_dispatch(self, listener: Callable[[Ticket], None]) -> None:
        """Call `listener` with each ticket given its turn."""
        self._on_dispatch.append(listener)

    def on_release(self, listener: Callable[[Ticket, float], None]) -> None:
        """Call `listener` with each ticket that gave its slot back, and its service seconds."""
        self._on_release.append(listener)

    def on_pause(self, listener: Callable[[], None]) -> None:
        """Call `listener` when dispatch pauses because the target is unreachable."""
        self._on_pause.append(listener)

    def on_resume(self, listener: Callable[[bool], None]) -> None:
        """Call `listener` when a pause ends: with True when the target answered,
        False when nothing waits for it any more or foreman shuts down."""
        self._on_resume.append(listener)

    # --- a request's life --------------------------------------------------

    def admit(self, client: str, weight: float = 1.0, model: str | None = None) -> Ticket:
        """Take a place in the queue, or be refused at once."""
        if self.closed:
            raise _shutting_down()
        own = self._scheduler.waiting_of(client)
        if self.max_per_client is not None and own >= self.max_per_client:
            # A place of its own frees when its next request goes: about one
            # turn of each client with requests waiting away.
            raise ClientQueueFull(
                f"too many requests from this client waiting in foreman's queue "
                f"({own}); retry when some have finished",
                self._estimate(self._scheduler.backlogged),
            )
        if self.waiting >= self.max_queue and not self._free_slot():
            raise QueueFull(
                f"foreman's queue is full ({self.max_queue} requests waiting); retry later",
                self.retry_after(),
            )
        now = self._clock()
        ticket = Ticket(client, weight, model, now, now + self.timeout)
        self._scheduler.add(ticket, client, weight, model)
        self._arm_deadline(ticket)
        self._dispatch()
        if self._placement is not None and not ticket.granted.done():
            self._placement.stuck(model)
        return ticket

    async def turn(self, ticket: Ticket) -> None:
        """Wait until `ticket` may go to the target.

        Raises QueueTimeout, QueueClosed, or ClientLeft after `leave()`.
        """
        try:
            await ticket.granted
        except asyncio.CancelledError:
            if ticket.left:
                raise ClientLeft() from None
            # The waiting task itself was cancelled: give up the place.
            self.leave(ticket)
            raise
        ticket.waited = self._clock() - ticket.admitted

    def leave(self, ticket: Ticket) -> None:
        """The client went away: give up the place or the slot."""
        ticket.left = True
        if ticket in self._holding:
            self._release(ticket)
        elif self._remove(ticket):
            ticket.granted.cancel()

    def done(self, ticket: Ticket, service_time: float | None = None) -> None:
        """The request is over (or failed for a reason retrying cannot fix).

        `service_time` given: it was answered, and took that long (a sample
        for Retry-After estimates).
        """
        if service_time is not None:
            self._service_times.append(service_time)
        if ticket in self._holding:
            self._release(ticket)

    def unreachable(self, ticket: Ticket, error: str) -> None:
        """The target could not be reached for `ticket`: back to the head of its client's line."""
        if self._placement is not None:
            self._unreachable_at(ticket, error)
            return
        failed_probe = ticket is self._probe
        stale = ticket.dispatched is not None and ticket.dispatched < self._reachable_at
        if ticket in self._holding:
            self._holding.discard(ticket)
            if failed_probe:
                self._probe = None
            ticket.granted = asyncio.get_running_loop().create_future()
            if ticket.caused_load:
                # Nothing reached the target: no model was loaded for it.
                self.model_loads -= 1
                ticket.caused_load = False
            if self.closed:
                self._scheduler.finished(ticket, None)
                ticket.granted.set_exception(_shutting_down())
                return
            self._scheduler.retry(ticket)
            self._arm_deadline(ticket)
        if stale and not self.paused:
            # Sent before the target last answered: it is back, try again now.
            self._dispatch()
            return
        self.last_error = error
        if not self.paused or failed_probe:
            self._backoff = min(MAX_BACKOFF, self._backoff * 2 or FIRST_BACKOFF)
            self._set_paused(True)
        self._schedule_probe()

    def _unreachable_at(self, ticket: Ticket, error: str) -> None:
        # Several targets: the machine is away, the request waits for another
        # (or for it), and the others go on serving.
        if ticket not in self._holding:
            return
        machine = ticket.machine
        self._holding.discard(ticket)
        self._placement.give_back(machine)  # type: ignore[union-attr]
        ticket.machine = None
        ticket.granted = asyncio.get_running_loop().create_future()
        if ticket.caused_load:
            self.model_loads -= 1
            machine.model_loads -= 1
            ticket.caused_load = False
        if self.closed:
            self._scheduler.finished(ticket, None)
            ticket.granted.set_exception(_shutting_down())
            return
        self._scheduler.retry(ticket)
        self._arm_deadline(ticket)
        self._placement.unreachable(machine, error)  # type: ignore[union-attr]
        self._dispatch()
        if not ticket.granted.done():
            self._placement.stuck(ticket.model)  # type: ignore[union-attr]

    def reachable(self) -> None:
        """The target answered: resume dispatch at once."""
        if self._placement is not None:
            self._dispatch()
            return
        self._backoff = 0.0
        self.last_error = None
        self._reachable_at = self._clock()
        # A probe that got through is an ordinary request from now on: the
        # next outage may send a probe of its own while it runs.
        self._probe = None
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        if self.paused:
            self._set_paused(False, reachable=True)
            self._dispatch()

    def close(self) -> None:
        """Refuse new requests and answer every waiting one (shutdown)."""
        self.closed = True
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        if self.paused:
            self._set_paused(False)
        for ticket in self._scheduler.drain():
            self._disarm_deadline(ticket)
            ticket.granted.set_exception(_shutting_down())

    def retry_after(self) -> int:
        """Whole seconds until a place is likely free, from recent service times."""
        return self._estimate(self.waiting + 1)

    def _estimate(self, turns: int) -> int:
        """Whole seconds (at least 1) that `turns` more turns likely take."""
        if not self._service_times:
            return 1
        mean = sum(self._service_times) / len(self._service_times)
        return max(1, math.ceil(mean * turns / self.concurrency))

    # --- bookkeeping -------------------------------------------------------

    def _set_paused(self, paused: bool, reachable: bool = False) -> None:
        self.paused = paused
        if paused:
            for listener in self._on_pause:
                listener()
        else:
            for resumed in self._on_resume:
                resumed(reachable)

    def _free_slot(self) -> bool:
        return not self.paused and not self.waiting and self.in_flight < self.concurrency

    def _arm_deadline(self, ticket: Ticket) -> None:
        delay = max(0.0, ticket.deadline - self._clock())
        ticket._timer = asyncio.get_running_loop().call_later(delay, self._expire, ticket)

    def _disarm_deadline(self, ticket: Ticket) -> None:
        if ticket._timer is not None:
            ticket._timer.cancel()
            ticket._timer = None

    def _remove(self, ticket: Ticket) -> bool:
        if not self._scheduler.remove(ticket):
            return False
        self._disarm_deadline(ticket)
        return True

    def _grant_next(self) -> Ticket | None:
        resident = self._resident()
        placement = self._placement
        ticket = self._scheduler.pick(resident, None if placement is None else placement.can_place)
        if ticket is None:
            return None
        self._disarm_deadline(ticket)
        ticket.dispatched = self._clock()
        if placement is not None:
            machine = ticket.machine = placement.take(ticket.model)
            resident = machine.resident()
        ticket.caused_load = ticket.model is not None and ticket.model not in resident
        if ticket.caused_load:
            self.model_loads += 1
            if placement is not None:
                ticket.machine.model_loads += 1
        self._holding.add(ticket)
        for listener in self._on_dispatch:
            listener(ticket)
        ticket.granted.set_result(None)
        return ticket

    def _dispatch(self) -> None:
        if self._placement is not None:
            # Each machine's slots bound it; the scheduler picks only what one can take.
            while self.waiting and self._grant_next() is not None:
                pass
            return
        while not self.paused and self.waiting and self.in_flight < self.concurrency:
            self._grant_next()

    def _release(self, ticket: Ticket) -> None:
        self._holding.discard(ticket)
        if self._placement is not None and ticket.machine is not None:
            self._placement.give_back(ticket.machine)
        # Service: from the turn to the end of the answer (or the client leaving).
        service = self._clock() - (ticket.dispatched or self._clock())
        self._scheduler.finished(ticket, service)
        for listener in self._on_release:
            listener(ticket, service)
        if ticket is self._probe:
            self._probe = None
        if self.paused:
            self._schedule_probe()
        else:
            self._dispatch()

    def _schedule_probe(self) -> None:
        # One probe at a time: while one is at the target, plan no other.
        if self._probe_timer is None and self._probe is None and not self.closed:
            self._probe_timer = asyncio.get_running_loop().call_later(self._backoff, self._send_probe)

    def _send_probe(self) -> None:
        self._probe_timer = None
        if not self.paused:
            return
        if not self.waiting:
            # Nothing waits: the next request tries the target itself.
            self._set_paused(False)
        elif self.in_flight < self.concurrency:
            self._probe = self._grant_next()
        # else: every slot is busy; the next release plans the probe.

    def _expire(self, ticket: Ticket) -> None:
        ticket._timer = None
        if not self._scheduler.remove(ticket):
            return
        waited = _duration(self.timeout)
        away = None if self._placement is None else self._placement.unreachable_error(ticket.model)
        if away is not None:
            message = f"gave up after waiting {waited} for the targets that have its model, which are unreachable: {away}"
            error = QueueTimeout(message, 1, target_unreachable=True)
        elif self.paused and self.last_error:
            message = (
                f"gave up after waiting {waited} for the target, which is unreachable: {self.last_error}"
            )
            error = QueueTimeout(message, max(1, math.ceil(self._backoff)), target_unreachable=True)
        else:
            message = f"gave up after waiting {waited} for a turn; the target is busy"
            error = QueueTimeout(message, self.retry_after())
        ticket.granted.set_exception(error)


def _shutting_down() -> QueueClosed:
    return QueueClosed("foreman is shutting down; retry shortly", 1)


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
