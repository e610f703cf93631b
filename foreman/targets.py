"""Several targets: one `Machine` per configured Ollama server, and `Targets`, all of them.

Each machine has what one target had before: its own client (keep-alive
pool), its own inventory poller (degraded state, resident models), its own
slots and its own waker. The one FairQueue asks `Targets` (its placement)
where a picked request may go: a reachable machine whose inventory has the
model and that has a free slot, preferring one that holds the model in
memory, then the one with the fewest requests in flight.

A machine a request could not reach is away: no request goes to it, and it
is probed (a poll of its inventory) with capped exponential backoff, and
woken where a wake address is set, while requests wait, until a poll
succeeds or an answer begins. With one target none of this is used: the
queue's own pause and probe do the waiting, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable

from foreman.config.targets_file import TargetSpec
from foreman.inventory import Inventory
from foreman.names import canonical
from foreman.target import TargetClient
from foreman.wake import Waker

log = logging.getLogger("foreman.targets")

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 15.0


class Machine:
    """One target with its own client, poller, slots and waker."""

    def __init__(
        self,
        spec: TargetSpec,
        *,
        poll_interval: float,
        idle_timeout: float,
        track_resident: bool,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.concurrency = spec.concurrency
        self.target = TargetClient(spec.url, spec.token, spec.display_url, idle_timeout=idle_timeout)
        self.inventory = Inventory(self.target, poll_interval, track_resident=track_resident)
        self.waker: Waker | None = None
        #: requests at this machine now
        self.in_flight = 0
        #: dispatches of a request whose model this machine did not hold
        self.model_loads = 0
        #: a request could not reach it since it last answered
        self.away = False
        self.away_error: str | None = None
        self._backoff = 0.0
        self._probe: asyncio.TimerHandle | None = None
        self._on_back: list[Callable[[], None]] = []
        self.inventory.on_success(self.answered)

    @property
    def display_url(self) -> str:
        return self.target.display_url

    @property
    def reachable(self) -> bool:
        return not self.away and not self.inventory.degraded

    @property
    def free(self) -> int:
        return self.concurrency - self.in_flight

    def has(self, model: str) -> bool:
        return self.inventory.has(model)

    def resident(self) -> Collection[str]:
        return self.inventory.resident.current()

    def on_back(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever the machine answers (a poll, or an answer beginning)."""
        self._on_back.append(listener)

    def answered(self) -> None:
        """It answered: it is reachable; stop probing and waking it."""
        was_away = self.away
        self.away = False
        self.away_error = None
        self._backoff = 0.0
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self.waker is not None and self.waker.waking:
            self.waker.stop(outage_over=True)
        if was_away:
            log.info("target %s answers again", self.name)
        for listener in self._on_back:
            listener()

    def unreachable(self, error: str, wanted: Callable[[], bool]) -> None:
        """A request could not reach it: away until it answers; probe (and wake) it while `wanted`."""
        if not self.away:
            log.warning("target %s is unreachable: %s", self.name, error)
        self.away = True
        self.away_error = error
        self.probe(wanted)

    def probe(self, wanted: Callable[[], bool]) -> None:
        """Poll it again after the backoff (and wake it) while requests wait for it."""
        if self._probe is not None:
            return
        if self.waker is not None:
            self.waker.start()
        self._backoff = min(MAX_BACKOFF, self._backoff * 2 or FIRST_BACKOFF)

        def again() -> None:
            self._probe = None
            if not wanted():
                if self.waker is not None:
                    self.waker.stop(outage_over=False)
                return
            poll = self.inventory.refresh()

            def polled(done: asyncio.Future[bool]) -> None:
                if not done.result():
                    self.probe(wanted)

            poll.add_done_callback(polled)

        self._probe = asyncio.get_running_loop().call_later(self._backoff, again)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        self.inventory.stop()
        self.target.close()
        if self.waker is not None:
            self.waker.close()


class Targets:
    """Every machine, in the configured order; the queue's placement with more than one."""

    def __init__(self, machines: Iterable[Machine]) -> None:
        self.machines = list(machines)
        self.by_name = {m.name: m for m in self.machines}
        self._waiting: Callable[[], int] = lambda: 0

    def __len__(self) -> int:
        return len(self.machines)

    @property
    def several(self) -> bool:
        return len(self.machines) > 1

    @property
    def first(self) -> Machine:
        return self.machines[0]

    def watch_waiting(self, waiting: Callable[[], int]) -> None:
        """How many requests wait in the queue: probing an away machine stops when none do."""
        self._waiting = waiting

    def any_reachable(self) -> Machine:
        """A machine to ask what any will answer (/api/version, /): a reachable one if any is."""
        return next((m for m in self.machines if m.reachable), self.first)

    def holding(self, model: str) -> Machine | None:
        """A machine whose inventory has `model`, a reachable one first."""
        having = [m for m in self.machines if m.has(model)]
        return next((m for m in having if m.reachable), having[0] if having else None)

    async def find(self, model: str) -> bool:
        """Whether any machine has `model`; on a miss, every machine is re-polled once (with its floor)."""
        if any(m.has(model) for m in self.machines):
            return True
        found = await asyncio.gather(*(m.inventory.find(model) for m in self.machines))
        return any(found)

    @property
    def any_inventory(self) -> bool:
        return any(m.inventory.tags_body is not None for m in self.machines)

    # --- the queue's placement ------------------------------------------------

    def _candidates(self, model: str | None) -> Iterable[Machine]:
        for m in self.machines:
            if m.free > 0 and m.reachable and (model is None or m.has(model)):
                yield m

    def can_place(self, model: str | None) -> bool:
        return next(iter(self._candidates(model)), None) is not None

    def resident(self) -> frozenset[str]:
        """Models held in memory by a machine that could take one more request now."""
        held: set[str] = set()
        for m in self.machines:
            if m.free > 0 and m.reachable:
                held.update(m.resident())
        return frozenset(held)

    def take(self, model: str | None) -> Machine:
        """The machine a picked request goes to (can_place was true); it holds a slot there."""
        best = min(
            self._candidates(model),
            key=lambda m: (model is None or canonical(model) not in m.resident(), m.in_flight),
        )
        best.in_flight += 1
        return best

    def give_back(self, machine: Machine) -> None:
        machine.in_flight -= 1

    def unreachable(self, machine: Machine, error: str) -> None:
        machine.unreachable(error, wanted=lambda: self._waiting() > 0)

    def stuck(self, model: str | None) -> None:
        """A request waits for `model`: probe (and wake) the away machines that have it."""
        for m in self.machines:
            if not m.reachable and (model is None or m.has(model)):
                m.probe(wanted=lambda: self._waiting() > 0)

    def unreachable_error(self, model: str | None) -> str | None:
        """Why a request for `model` could not go anywhere, when every machine that has it is away."""
        having = [m for m in self.machines if model is None or m.has(model)]
        if having and not any(m.reachable for m in having):
            return "; ".join(
                f"{m.name}: {m.away_error or m.inventory.last_error or 'unreachable'}" for m in having
            )
        return None

    def waking_summary(self, model: str | None) -> str:
        wakers = [m for m in self.machines if (model is None or m.has(model)) and m.waker is not None]
        if not wakers:
            return "no wake packet was sent (no wake address is set for those targets)"
        return "; ".join(f"{m.name}: {m.waker.summary()}" for m in wakers if m.waker is not None)
