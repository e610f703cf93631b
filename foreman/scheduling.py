"""Which waiting request goes to the target next: fair by target time, with model affinity.

This is the queue's policy and nothing else: no asyncio, no timers, a clock
handed in, so a simulator (bench/schedule.py) and property tests drive the
very class foreman runs.

Fairness is start-time fair queueing in seconds of target time. Each client
has a counter: the service it has received (seconds holding a slot at the
target) divided by its weight. A free slot goes to the head request of the
backlogged client with the lowest counter; requests of one client go first
in, first out. A request is charged an estimate when it is dispatched (the
client's recent mean service) and corrected to its real service when it
ends, so with one slot the counters are exact.

A client that becomes backlogged with nothing in flight does not bank credit
from its idle time: its counter is raised to the lowest counter of the
backlogged clients. If that raised it (it had not been served more than the
least served), it is a newcomer and goes at the next free slot, newcomers in
the order they came. A client that was just served has a higher counter than
that, so it waits its turn: a closed loop of long requests cannot jump ahead.
It is never kept more than about one of its requests ahead, though: having
had the target to itself while nobody else wanted it costs nothing later.

Model affinity: when the fair choice is a request for a model the target
does not hold in memory and another client's head request is for one it
does, that one may go first, but only while the fair request has been
passed over for less than `affinity` seconds (counting the time the resident
request will likely take), and only for a client whose counter is not more
than `affinity` ahead of the fair one; then the fair request goes.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item", bound=Hashable)

# Weight given to each new service time in a client's running mean.
_MEAN_WEIGHT = 0.25
# Idle clients are forgotten once their counter no longer matters (see _forget_idle).
_PRUNE_EVERY = 1024


@dataclass(eq=False, slots=True)
class _Entry(Generic[Item]):
    item: Item
    client: _Client[Item]
    model: str | None
    seq: int
    #: the counter charged at dispatch, taken back or corrected later
    charged: float = 0.0
    #: its client was a newcomer when it was dispatched (restored by a retry)
    newcomer: bool = False
    #: clock() when affinity first passed this request over while it was the fair choice
    passed_since: float | None = None


@dataclass(eq=False, slots=True)
class _Client(Generic[Item]):
    name: str
    weight: float
    counter: float = 0.0
    #: back from idle and not ahead of anyone: goes at the next free slot
    newcomer: bool = False
    waiting: OrderedDict[Item, _Entry[Item]] = field(default_factory=OrderedDict)
    in_flight: int = 0
    mean_service: float | None = None
    #: total seconds of service and requests finished, for metrics and status
    service: float = 0.0
    served: int = 0
    #: bumped whenever the client's place in a heap changes; older heap rows are stale
    version: int = 0

    def key(self) -> tuple[int, float, int]:
        # Newcomers first (in arrival order), then the least served.
        head = next(iter(self.waiting.values()))
        return (0 if self.newcomer else 1, self.counter, head.seq)

    def head(self) -> _Entry[Item]:
        return next(iter(self.waiting.values()))


class FairScheduler(Generic[Item]):
    """Orders waiting requests by their clients' weighted service, with bounded model affinity."""

    def __init__(self, affinity: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        #: seconds a fair request may be passed over for a resident model; 0 turns affinity off
        self.affinity = affinity
        self._clock = clock
        self._clients: dict[str, _Client[Item]] = {}
        self._entries: dict[Item, _Entry[Item]] = {}
        self._running: dict[Item, _Entry[Item]] = {}
        # Backlogged clients by key; rows of an old version are skipped.
        self._heap: list[tuple[tuple[int, float, int], int, str]] = []
        # The same, per model of the client's head request, for affinity.
        self._by_model: dict[str, list[tuple[tuple[int, float, int], int, str]]] = {}
        self._seq = itertools.count()
        # Row versions come from one counter: a client forgotten and seen again
        # must never match a row left from its earlier self.
        self._versions = itertools.count(1)
        self._picks = 0
        # Everyone's recent mean service: the estimate for a client with none of its own.
        self._mean_service: float | None = None
        #: the counter of the last dispatched client: where idle clients come back to
        self.virtual_time = 0.0
        #: requests waiting, over all clients
        self.waiting = 0
        #: clients with a request waiting
        self.backlogged = 0

    # --- what the queue tells it ----------------------------------------------

    def add(self, item: Item, client: str, weight: float = 1.0, model: str | None = None) -> None:
        """A request starts waiting behind its client's earlier ones."""
        state = self._clients.get(client)
        if state is None:
            # Unknown (or forgotten): as if it had been idle since the beginning.
            state = self._clients[client] = _Client(client, weight, counter=float("-inf"))
        state.weight = weight
        if not state.waiting and not state.in_flight:
            # Back from idle: level with the least served, never below.
            level = self._lowest_backlogged()
            if level is None:
                level = self.virtual_time
            state.newcomer = state.counter <= level
            # ...and never more than about one request above it: a client that
            # had the slots to itself while nobody waited owes nothing for it.
            ceiling = level + (state.mean_service or 0.0) / state.weight
            state.counter = min(max(state.counter, level), ceiling)
        entry = _Entry(item, state, model, next(self._seq))
        self._entries[item] = entry
        was_head = not state.waiting
        state.waiting[item] = entry
        self.waiting += 1
        if was_head:
            self.backlogged += 1
            self._reindex(state)

    def retry(self, item: Item) -> None:
        """A dispatched request could not reach the target: uncharge it, first in its client's line."""
        entry = self._running.pop(item)
        state = entry.client
        state.in_flight -= 1
        state.counter -= entry.charged
        entry.charged = 0.0
        state.newcomer = state.newcomer or entry.newcomer
        self._entries[item] = entry
        if not state.waiting:
            self.backlogged += 1
        state.waiting[item] = entry
        state.waiting.move_to_end(item, last=False)
        self.waiting += 1
        self._reindex(state)

    def remove(self, item: Item) -> bool:
        """A waiting request leaves (its client hung up, or it timed out)."""
        entry = self._entries.pop(item, None)
        if entry is None:
            return False
        state = entry.client
        was_head = state.head() is entry
        del state.waiting[item]
        self.waiting -= 1
        if not state.waiting:
            self.backlogged -= 1
        if was_head:
            self._reindex(state)
        return True

    def finished(self, item: Item, service: float | None) -> None:
        """A dispatched request ended after `service` seconds at the target (None: unknown)."""
        entry = self._running.pop(item, None)
        if entry is None:
            return
        state = entry.client
        state.in_flight -= 1
        if service is not None:
            state.counter += service / state.weight - entry.charged
            state.service += service
            state.served += 1
            state.mean_service = _running_mean(state.mean_service, service)
            self._mean_service = _running_mean(self._mean_service, service)
        if state.waiting:
            self._reindex(state)

    # --- the decision ----------------------------------------------------------

    def pick(
        self, resident: Collection[str] = (), placeable: Callable[[str | None], bool] | None = None
    ) -> Item | None:
        """The request to dispatch now, or None if nothing waits. It is charged and counted running.

        With `placeable` (several targets), only a request whose model some
        target can take now may go: when the fair choice's cannot, the least
        served client whose head request's can goes instead, so one model
        waiting for its machine does not hold up the others.
        """
        fair = self._top(self._heap)
        if fair is None:
            return None
        if placeable is not None and not placeable(fair.head().model):
            # The least served client's own later request may go (its line is
            # at most FOREMAN_MAX_QUEUE_PER_CLIENT long), else another client's head.
            own = next((e for e in fair.waiting.values() if placeable(e.model)), None)
            if own is not None:
                return self._dispatch(own)
            fair = self._best_placeable(placeable)
            if fair is None:
                return None
        chosen = fair.head()
        if self.affinity > 0 and chosen.model is not None and chosen.model not in resident:
            nearby = self._best_resident(resident)
            # Only a client not already ahead by more than the budget, and only
            # while what the fair request has been passed over for, plus what
            # the resident request will likely take, stays within the budget.
            if nearby is not None and nearby.counter <= fair.counter + self.affinity:
                now = self._clock()
                if chosen.passed_since is None:
                    chosen.passed_since = now
                expected = nearby.mean_service or 0.0
                if now - chosen.passed_since + expected < self.affinity:
                    chosen = nearby.head()
        return self._dispatch(chosen)

    def drain(self) -> list[Item]:
        """Take every waiting request out (shutdown), in no particular order."""
        items = list(self._entries)
        for item in items:
            self.remove(item)
        return items

    def fair_choice(self) -> Item | None:
        """The request fairness alone would dispatch next (for tests and the simulator)."""
        fair = self._top(self._heap)
        return None if fair is None else fair.head().item

    # --- what it knows, for metrics and status ----------------------------------

    def waiting_of(self, client: str) -> int:
        state = self._clients.get(client)
        return len(state.waiting) if state else 0

    def waiting_by_client(self) -> dict[str, tuple[float, int]]:
        """(weight, requests waiting) of each client with a request waiting."""
        return {name: (s.weight, len(s.waiting)) for name, s in self._clients.items() if s.waiting}

    def service_of(self, client: str) -> tuple[float, int]:
        """Seconds of service and requests finished for `client` since it was last forgotten."""
        state = self._clients.get(client)
        return (state.service, state.served) if state else (0.0, 0)

    def counter_of(self, client: str) -> float:
        state = self._clients.get(client)
        return state.counter if state else self.virtual_time

    # --- bookkeeping -------------------------------------------------------------

    def _dispatch(self, entry: _Entry[Item]) -> Item:
        state = entry.client
        del self._entries[entry.item]
        del state.waiting[entry.item]
        self.waiting -= 1
        if not state.waiting:
            self.backlogged -= 1
        self.virtual_time = max(self.virtual_time, state.counter)
        estimate = state.mean_service
        if estimate is None:
            estimate = self._mean_service or 0.0
        entry.charged = estimate / state.weight
        state.counter += entry.charged
        entry.newcomer, state.newcomer = state.newcomer, False
        state.in_flight += 1
        self._running[entry.item] = entry
        self._reindex(state)
        self._picks += 1
        if self._picks % _PRUNE_EVERY == 0:
            self._forget_idle()
        return entry.item

    def _reindex(self, state: _Client[Item]) -> None:
        if len(self._heap) > 4 * len(self._clients) + 64:
            self._compact()
        state.version = next(self._versions)
        if not state.waiting:
            return
        key = state.key()
        row = (key, state.version, state.name)
        heapq.heappush(self._heap, row)
        model = state.head().model
        if model is not None:
            heapq.heappush(self._by_model.setdefault(model, []), row)

    def _top(self, heap: list[tuple[tuple[int, float, int], int, str]]) -> _Client[Item] | None:
        while heap:
            _, version, name = heap[0]
            state = self._clients.get(name)
            if state is not None and state.version == version and state.waiting:
                return state
            heapq.heappop(heap)
        return None

    def _best_resident(self, resident: Collection[str]) -> _Client[Item] | None:
        best: _Client[Item] | None = None
        for model in resident:
            heap = self._by_model.get(model)
            if not heap:
                continue
            state = self._top(heap)
            if state is None:
                del self._by_model[model]
            elif best is None or state.key() < best.key():
                best = state
        return best

    def _best_placeable(self, placeable: Callable[[str | None], bool]) -> _Client[Item] | None:
        # One look per model some head request names: bounded by the models, not the waiting.
        best: _Client[Item] | None = None
        for model, heap in list(self._by_model.items()):
            if not placeable(model):
                continue
            state = self._top(heap)
            if state is None:
                del self._by_model[model]
            elif best is None or state.key() < best.key():
                best = state
        return best

    def _compact(self) -> None:
        # Rows of old versions pile up below the top; rebuild from the live ones.
        live = [state for state in self._clients.values() if state.waiting]
        self._heap = []
        self._by_model = {}
        for state in live:
            row = (state.key(), state.version, state.name)
            self._heap.append(row)
            model = state.head().model
            if model is not None:
                self._by_model.setdefault(model, []).append(row)
        heapq.heapify(self._heap)
        for heap in self._by_model.values():
            heapq.heapify(heap)

    def _lowest_backlogged(self) -> float | None:
        state = self._top(self._heap)
        return None if state is None else state.counter

    def _forget_idle(self) -> None:
        # An idle client whose counter is at or below where it would be raised
        # to anyway carries nothing worth keeping; one above it must be kept,
        # or it could come back ahead of the clients it was just ahead of.
        stale = [
            name
            for name, state in self._clients.items()
            if not state.waiting and not state.in_flight and state.counter <= self.virtual_time
        ]
        for name in stale:
            del self._clients[name]
        for model, heap in list(self._by_model.items()):
            if self._top(heap) is None:
                del self._by_model[model]


def _running_mean(mean: float | None, sample: float) -> float:
    return sample if mean is None else mean + _MEAN_WEIGHT * (sample - mean)
