"""The scheduling simulator's engine: a simulated target, four policies, a discrete-event loop.

Time is simulated seconds; nothing sleeps. A request arrives, waits in the
policy, is dispatched into one of `concurrency` slots, holds the slot for a
model load (when its model is not resident) and then its service time, and
finishes. The target holds at most `max_loaded` models, least recently used
out first, and loads one model at a time.

What the target does is simplified where it does not matter for the
workloads we run: a model is evicted the moment another one is dispatched
(a request still generating on it carries on). With one slot, or one model,
that is exactly what a target holding one model at a time does.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from foreman.scheduling import FairScheduler


@dataclass(eq=False, slots=True)
class Request:
    """One request of a workload and, after a run, what happened to it (compared by identity)."""

    client: str
    kind: str
    service: float
    model: str | None = None
    weight: float = 1.0
    #: preset for open-loop clients; set when submitted for closed-loop ones
    arrival: float = math.nan
    #: its client had nothing waiting or in flight when it arrived
    newcomer: bool = False
    #: for a newcomer: seconds since its client's last answer ended (0: sent as that answer ended; inf: its first)
    idle_before: float = math.nan
    #: how many dispatches had happened when it arrived (to see who went ahead of a newcomer)
    dispatches_before: int = 0
    arrival_seq: int = 0
    dispatched: float | None = None
    #: the answer's first token: after the model load, if there was one
    started: float | None = None
    ended: float | None = None
    loaded: bool = False
    #: when fairness alone would have dispatched it but the policy chose another request
    passed_over: float | None = None
    #: dispatched while fairness alone would have dispatched another request (an affinity pick)
    out_of_turn: bool = False

    @property
    def hold(self) -> float:
        """Seconds it held a slot: what the scheduler is told as its service."""
        return self.ended - self.dispatched


@dataclass(frozen=True)
class ClientScript:
    """What one client sends.

    Open loop (`outstanding` None): each request at its preset arrival time.
    Closed loop: `outstanding` requests at `start`, then the next one the
    moment an answer ends, until the script runs out.
    """

    name: str
    kind: str
    requests: tuple[Request, ...]
    outstanding: int | None = None
    start: float = 0.0


@dataclass(frozen=True)
class Setup:
    """The target: its slots, its models' load times, how many it holds at once."""

    concurrency: int
    load_times: dict[str, float]
    max_loaded: int = 1


class Policy(Protocol):
    """What the engine needs from a scheduling policy (FairScheduler has it as is)."""

    waiting: int

    def add(self, item: Request, client: str, weight: float = 1.0, model: str | None = None) -> None: ...

    def pick(self, resident: Collection[str] = ()) -> Request | None: ...

    def finished(self, item: Request, service: float | None) -> None: ...


class Fifo:
    """One line for everyone: first come, first served."""

    def __init__(self) -> None:
        self._line: deque[Request] = deque()
        self.waiting = 0

    def add(self, item: Request, client: str, weight: float = 1.0, model: str | None = None) -> None:
        self._line.append(item)
        self.waiting += 1

    def pick(self, resident: Collection[str] = ()) -> Request | None:
        if not self._line:
            return None
        self.waiting -= 1
        return self._line.popleft()

    def finished(self, item: Request, service: float | None) -> None:
        pass


class RoundRobin:
    """Turns as foreman/queue.py on main gives them: clients with waiting requests in rotation, one request a turn.

    A client joins the end of the rotation when its first request starts
    waiting and goes back to the end after each turn while it has more;
    requests of one client go first in, first out. Weights and models are
    not looked at.
    """

    def __init__(self) -> None:
        self._rotation: deque[str] = deque()
        self._lines: dict[str, deque[Request]] = {}
        self.waiting = 0

    def add(self, item: Request, client: str, weight: float = 1.0, model: str | None = None) -> None:
        line = self._lines.get(client)
        if line is None:
            line = self._lines[client] = deque()
            self._rotation.append(client)
        line.append(item)
        self.waiting += 1

    def pick(self, resident: Collection[str] = ()) -> Request | None:
        if not self._rotation:
            return None
        client = self._rotation.popleft()
        line = self._lines[client]
        item = line.popleft()
        if line:
            self._rotation.append(client)
        else:
            del self._lines[client]
        self.waiting -= 1
        return item

    def finished(self, item: Request, service: float | None) -> None:
        pass


def policies(affinity: float) -> dict[str, Callable[[Callable[[], float]], Policy]]:
    """The four policies side by side, each made fresh for a run from the run's clock."""
    return {
        "FIFO": lambda clock: Fifo(),
        "round-robin (main)": lambda clock: RoundRobin(),
        "fair": lambda clock: FairScheduler(0.0, clock=clock),
        f"fair+affinity {affinity:g}s": lambda clock: FairScheduler(affinity, clock=clock),
    }


class Target:
    """Slots are counted by the engine; this knows the models: what is resident, loads, their cost."""

    def __init__(self, setup: Setup) -> None:
        self._setup = setup
        # Model -> the time it is (or was) ready; least recently used first.
        self._resident: OrderedDict[str, float] = OrderedDict()
        self._loader_free = 0.0
        self.loads = 0

    @property
    def resident(self) -> list[str]:
        return list(self._resident)

    def serve(self, request: Request, now: float) -> None:
        """Dispatch `request` now: when its answer starts and ends."""
        start = now
        model = request.model
        if model is not None:
            if model in self._resident:
                self._resident.move_to_end(model)
                start = max(now, self._resident[model])  # still loading for an earlier request
            else:
                # One load at a time; evict the least recently used beyond max_loaded.
                begin = max(now, self._loader_free)
                start = self._loader_free = begin + self._setup.load_times[model]
                self._resident[model] = start
                while len(self._resident) > self._setup.max_loaded:
                    self._resident.popitem(last=False)
                request.loaded = True
                self.loads += 1
        request.dispatched = now
        request.started = start
        request.ended = start + request.service


@dataclass
class ClientTrace:
    """What the engine saw of one client: when it was backlogged (had a request waiting)."""

    name: str
    kind: str
    weight: float = 1.0
    waiting: int = 0
    in_flight: int = 0
    last_end: float = -math.inf
    backlogged: list[tuple[float, float]] = field(default_factory=list)
    _since: float = 0.0

    def starts_waiting(self, now: float) -> None:
        self.waiting += 1
        if self.waiting == 1:
            # Backlogged again at the instant it stopped: one interval, not two.
            if self.backlogged and self.backlogged[-1][1] >= now:
                self._since = self.backlogged.pop()[0]
            else:
                self._since = now

    def stops_waiting(self, now: float) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.backlogged.append((self._since, now))


@dataclass
class Run:
    """One policy on one seeded workload: every request as it went, the clients' traces, the loads."""

    requests: list[Request]
    clients: dict[str, ClientTrace]
    loads: int
    #: requests in the order they were dispatched
    dispatch_log: list[Request]


# Events at the same instant: answers end first (freeing slots and letting
# closed-loop clients resubmit), then arrivals, then free slots are filled.
_END, _ARRIVAL = 0, 1


def simulate(
    scripts: Sequence[ClientScript], setup: Setup, make_policy: Callable[[Callable[[], float]], Policy]
) -> Run:
    """Run one workload through one policy on a simulated clock; the scripts' requests are copied, not changed."""
    now = 0.0
    policy = make_policy(lambda: now)
    target = Target(setup)
    fair_choice = getattr(policy, "fair_choice", None)
    order = itertools.count()
    events: list[tuple[float, int, int, Request]] = []
    pending: dict[str, deque[Request]] = {}
    traces: dict[str, ClientTrace] = {}
    requests: list[Request] = []
    dispatch_log: list[Request] = []
    arrivals = itertools.count()

    for script in scripts:
        weight = script.requests[0].weight if script.requests else 1.0
        traces[script.name] = ClientTrace(script.name, script.kind, weight)
        copies = [_fresh(r) for r in script.requests]
        requests.extend(copies)
        if script.outstanding is None:
            for r in copies:
                heapq.heappush(events, (r.arrival, _ARRIVAL, next(order), r))
        else:
            line = pending[script.name] = deque(copies)
            for _ in range(min(script.outstanding, len(line))):
                r = line.popleft()
                r.arrival = script.start
                heapq.heappush(events, (r.arrival, _ARRIVAL, next(order), r))

    running = 0
    while events:
        now = events[0][0]
        while events and events[0][0] == now:
            _, what, _, r = heapq.heappop(events)
            trace = traces[r.client]
            if what == _END:
                running -= 1
                trace.in_flight -= 1
                trace.last_end = now
                policy.finished(r, r.hold)
                line = pending.get(r.client)
                if line:
                    follow = line.popleft()
                    follow.arrival = now
                    heapq.heappush(events, (now, _ARRIVAL, next(order), follow))
            else:
                r.newcomer = trace.waiting == 0 and trace.in_flight == 0
                if r.newcomer:
                    r.idle_before = now - trace.last_end
                r.dispatches_before = len(dispatch_log)
                r.arrival_seq = next(arrivals)
                trace.starts_waiting(now)
                policy.add(r, r.client, r.weight, r.model)
        while running < setup.concurrency and policy.waiting:
            fair = fair_choice() if fair_choice is not None else None
            r = policy.pick(target.resident)
            if r is None:
                raise AssertionError(f"not work-conserving: a slot is free and {policy.waiting} wait")
            if fair is not None and fair is not r:
                r.out_of_turn = True
                if fair.passed_over is None:
                    fair.passed_over = now
            target.serve(r, now)
            dispatch_log.append(r)
            trace = traces[r.client]
            trace.stops_waiting(now)
            trace.in_flight += 1
            running += 1
            heapq.heappush(events, (r.ended, _END, next(order), r))
    return Run(requests, traces, target.loads, dispatch_log)


def _fresh(r: Request) -> Request:
    return Request(r.client, r.kind, r.service, r.model, r.weight, r.arrival)
