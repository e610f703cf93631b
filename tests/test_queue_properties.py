"""FairQueue on its own: random workloads checked against its promises, and its edge paths.

The random workloads run on a simulated clock (`SimClock`): every request is a
task that sleeps until its arrival, takes a ticket, waits for its turn, holds
the slot for its service time and says it is done. Simulated time jumps to the
next wake-up only once every task is blocked, so a run is exact, reproducible
from its seed and takes milliseconds. Every call into the queue is followed by
a look at every ticket, so each grant is logged at the very call that made it.

The edge paths (target unreachable, timeouts, close) depend on the queue's own
timers and run in real time, in fractions of a second.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from foreman import queue as queue_module
from foreman.queue import (
    FIRST_BACKOFF,
    ClientLeft,
    ClientQueueFull,
    FairQueue,
    QueueClosed,
    QueueFull,
    QueueTimeout,
    Ticket,
)
from tests.helpers import until

# Large enough that nothing in a random workload is refused or times out.
ROOMY = 100_000
NEVER = 1e9


def granted(ticket: Ticket) -> bool:
    """Whether the ticket's current turn has been given (not refused, not cancelled)."""
    future = ticket.granted
    return future.done() and not future.cancelled() and future.exception() is None


# --- a simulated clock ---------------------------------------------------------------


class SimClock:
    """Simulated time for tasks on the real loop.

    `sleep()` returns a future that resolves when simulated time reaches the
    wake-up; `at()` runs a callback then. `run()` lets the loop run until
    `settled()` says every task is blocked, then jumps to the next wake-up.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._wakeups: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    def at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._wakeups, (when, next(self._order), callback))

    def sleep(self, delay: float) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        self.at(self.now + delay, lambda: future.done() or future.set_result(None))
        return future

    async def run(self, settled: Callable[[], bool]) -> None:
        while True:
            while not settled():
                await asyncio.sleep(0)
            if not self._wakeups:
                return
            self.now = self._wakeups[0][0]
            while self._wakeups and self._wakeups[0][0] == self.now:
                _, _, callback = heapq.heappop(self._wakeups)
                callback()


# --- the model: requests, and what the test knows of the queue ---------------------------


@dataclass(eq=False)
class Request:
    client: str
    number: int  # the client's 1st, 2nd, ... request
    arrival: float
    service: float
    patience: float | None  # hangs up this long after admission, if set
    ticket: Ticket | None = None
    #: what the task awaits right now
    blocker: asyncio.Future | None = None
    finished: bool = False
    admitted_at: int | None = None  # index in World.log
    granted_at: int | None = None
    # simulated times, for the service each client received
    admitted_time: float | None = None
    granted_time: float | None = None
    released_time: float | None = None
    left_time: float | None = None
    grants: int = 0
    outcome: str | None = None  # "served", "left waiting", "left holding", "refused"

    def __repr__(self) -> str:
        return f"{self.client}#{self.number}"


@dataclass
class World:
    """The queue under test and the test's own account of it, checked after every call."""

    queue: FairQueue
    clock: SimClock
    log: list[tuple[str, Request]] = field(default_factory=list)
    waiting: list[Request] = field(default_factory=list)  # in admission order
    holding: set[Request] = field(default_factory=set)
    max_waiting: int = 0
    #: admissions of a client while another client had its whole share waiting
    admitted_beside_full: int = 0
    refusals: Counter = field(default_factory=Counter)  # by exception name

    def call(self, method: Callable, *args) -> None:
        method(*args)
        self.observe()

    def observe(self) -> None:
        """Log every grant the last call made, then check the invariants."""
        q = self.queue
        newly = [r for r in self.waiting if granted(r.ticket)]
        for r in newly:
            self.waiting.remove(r)
            self.holding.add(r)
            r.grants += 1
            r.granted_at = len(self.log)
            r.granted_time = self.clock.now
            self.log.append(("grant", r))
        for r in self.waiting:
            assert not r.ticket.granted.done(), f"{r} was answered while it should wait"
        self.max_waiting = max(self.max_waiting, q.waiting)
        assert q.in_flight <= q.concurrency, f"{q.in_flight} in flight, concurrency {q.concurrency}"
        assert q.in_flight == len(self.holding), (
            f"queue says {q.in_flight} in flight, the test counts {sorted(map(repr, self.holding))}"
        )
        assert q.waiting == len(self.waiting), (
            f"queue says {q.waiting} waiting, the test counts {self.waiting}"
        )
        # No slot stays idle while a request waits.
        if q.waiting:
            assert q.in_flight == q.concurrency, f"{q.waiting} wait with only {q.in_flight} in flight"
        # No client holds more than its share of the waiting places.
        if q.max_per_client is not None and self.waiting:
            client, most = Counter(r.client for r in self.waiting).most_common(1)[0]
            assert most <= q.max_per_client, f"{client} has {most} waiting, share {q.max_per_client}"

    def admit(self, r: Request) -> bool:
        """Ask for a place; whether it was given. Refused exactly when the test expects it."""
        q = self.queue
        per_client = Counter(w.client for w in self.waiting)
        own = per_client[r.client]
        share = q.max_per_client
        if share is None or own < share:
            expected = QueueFull if len(self.waiting) >= q.max_queue else None
        else:
            expected = ClientQueueFull
        try:
            ticket = q.admit(r.client)
        except (ClientQueueFull, QueueFull) as e:
            assert type(e) is expected, (
                f"{r} refused with {type(e).__name__}: {own} of its own and "
                f"{len(self.waiting)} in all waiting"
            )
            assert e.retry_after >= 1
            self.refusals[type(e).__name__] += 1
            r.outcome = "refused"
            self.log.append(("refuse", r))
            self.observe()
            return False
        r.ticket = ticket
        r.admitted_at = len(self.log)
        r.admitted_time = self.clock.now
        self.log.append(("admit", r))
        self.waiting.append(r)
        self.observe()
        assert expected is None, (
            f"{r} admitted with {own} of its own and {len(self.waiting) - 1} in all waiting"
        )
        if share is not None and any(n >= share for c, n in per_client.items() if c != r.client):
            self.admitted_beside_full += 1
        return True

    def hang_up(self, r: Request) -> None:
        """The client goes away: while waiting, or while its request is at the target."""
        if r in self.waiting:
            self.waiting.remove(r)
            r.outcome = "left waiting"
            r.left_time = self.clock.now
        elif r in self.holding:
            self.holding.remove(r)
            r.outcome = "left holding"
            r.released_time = self.clock.now
        else:
            return  # already served
        self.log.append(("leave", r))
        self.call(self.queue.leave, r.ticket)

    def settled(self, requests: list[Request]) -> bool:
        """Whether every request's task has finished or waits on something not yet done."""
        return all(
            r.finished or (r.blocker is not None and not r.blocker.done()) for r in requests
        )


async def life(world: World, r: Request) -> None:
    """One request, as RelayHandler.relay_queued lives it."""
    try:
        await _live(world, r)
    finally:
        r.finished = True  # also when an assertion failed: the run must not wait for it


async def _live(world: World, r: Request) -> None:
    q, clock = world.queue, world.clock
    r.blocker = clock.sleep(r.arrival)
    await r.blocker
    if not world.admit(r):
        return
    if r.patience is not None:
        clock.at(clock.now + r.patience, lambda: world.hang_up(r))
    r.blocker = r.ticket.granted
    try:
        await q.turn(r.ticket)
    except ClientLeft:
        assert r.outcome == "left waiting", f"{r}: ClientLeft but the client did not leave"
        world.call(q.done, r.ticket)  # relay_queued's `finally`: must change nothing
        return
    assert r.grants == 1 and r.outcome in (None, "left holding"), (r, r.grants, r.outcome)
    r.blocker = clock.sleep(r.service)
    await r.blocker
    if r in world.holding:
        world.holding.remove(r)
        r.outcome = "served"
        r.released_time = clock.now
    # After a hang-up this is the second release of the slot: it must change nothing.
    world.call(q.done, r.ticket, r.service)


def workload(rng: random.Random, hangups: bool) -> tuple[int, list[Request]]:
    """Random clients: some send one request, some a burst, some a trickle."""
    concurrency = rng.randint(1, 4)
    requests = []
    for c in range(rng.randint(6, 12)):
        client = f"c{c}"
        count = rng.choice([1, 1, 2, 3, 4, 6, 9])
        burst = rng.random() < 0.4
        start = rng.randint(0, 30)
        arrivals = sorted(start if burst else rng.randint(0, 60) for _ in range(count))
        for number, arrival in enumerate(arrivals, 1):
            patience = None
            if hangups and rng.random() < 0.25:
                patience = rng.randint(0, 40)
            requests.append(Request(client, number, arrival, rng.randint(0, 12), patience))
    rng.shuffle(requests)  # task start order breaks ties between equal arrivals
    return concurrency, requests


def check_fairness(requests: list[Request], concurrency: int) -> None:
    """For any two clients continuously backlogged (a request waiting) over an
    interval, the target time each received in it differs by at most 2·T_max
    with one slot, (c+1)·T_max with c slots (a request's length is not known
    when it is dispatched, so c of them can start on an estimate at once)."""
    served = [r for r in requests if r.granted_time is not None]
    if not served:
        return
    t_max = max(r.released_time - r.granted_time for r in served)
    bound = (concurrency + 1) * t_max
    clients = sorted({r.client for r in requests})

    def backlogged(client: str, t: float) -> bool:
        return any(
            r.client == client and r.admitted_time is not None and r.admitted_time <= t
            and next(e for e in (r.granted_time, r.left_time, NEVER) if e is not None) > t
            for r in requests
        )

    def service(client: str, t: float) -> float:
        return sum(
            max(0.0, min(t, r.released_time) - r.granted_time)
            for r in served if r.client == client
        )

    times = sorted({t for r in requests for t in (r.admitted_time, r.granted_time, r.released_time) if t is not None})
    for i, a in enumerate(clients):
        for b in clients[i + 1 :]:
            span: list[float] = []
            for t in times:
                if backlogged(a, t) and backlogged(b, t):
                    span.append(t)
                    continue
                _check_span(span, a, b, service, bound, t)
                span = []
            _check_span(span, a, b, service, bound, None)


def _check_span(span, a, b, service, bound, end) -> None:
    if not span:
        return
    points = span + ([end] if end is not None else [])
    diffs = [service(a, t) - service(b, t) for t in points]
    gap = max(diffs) - min(diffs)
    assert gap <= bound + 1e-9, f"{a} and {b} both backlogged from {span[0]}: service gap {gap} > {bound}"


def check_fifo_within_clients(log: list[tuple[str, Request]]) -> None:
    admitted: dict[str, list[Request]] = {}
    turns: dict[str, list[Request]] = {}
    for kind, r in log:
        if kind == "admit":
            admitted.setdefault(r.client, []).append(r)
        elif kind == "grant":
            turns.setdefault(r.client, []).append(r)
    for client, order in turns.items():
        expected = [r for r in admitted[client] if r.granted_at is not None]
        assert order == expected, f"{client}: turns {order}, admitted {expected}"


async def simulate(
    seed: int, hangups: bool, max_queue: int = ROOMY, max_per_client: int | None = None
) -> tuple[World, list[Request]]:
    """Run one random workload to its end on a simulated clock."""
    concurrency, requests = workload(random.Random(seed), hangups)
    clock = SimClock()
    q = FairQueue(
        concurrency, max_queue=max_queue, timeout=NEVER, clock=clock, max_per_client=max_per_client
    )
    world = World(q, clock)
    tasks = [asyncio.ensure_future(life(world, r)) for r in requests]
    await asyncio.wait_for(clock.run(lambda: world.settled(requests)), 10)
    for task in tasks:
        if task.done():
            task.result()  # an assertion inside a request's life fails the test here
    stuck = [r for r, task in zip(requests, tasks) if not task.done()]
    assert not stuck, f"never finished: {stuck}; waiting {world.waiting}, holding {world.holding}"
    return world, requests


@pytest.mark.parametrize("hangups", [False, True], ids=["all-stay", "some-hang-up"])
@pytest.mark.parametrize("seed", range(25))
async def test_random_workload_keeps_every_promise(io_loop, seed, hangups) -> None:
    world, requests = await simulate(seed, hangups)
    q = world.queue

    # Every request ends exactly once: served, or left.
    outcomes = Counter(r.outcome for r in requests)
    assert None not in outcomes, [r for r in requests if r.outcome is None]
    for r in requests:
        if r.outcome == "left waiting":
            assert r.grants == 0, f"{r} left while waiting but was granted"
            assert r.ticket.granted.cancelled()
        else:
            assert r.grants == 1, f"{r} ({r.outcome}) was granted {r.grants} times"
    assert sum(kind == "grant" for kind, _ in world.log) == outcomes["served"] + outcomes["left holding"]
    if not hangups:
        assert outcomes == {"served": len(requests)}

    # Nothing left behind.
    assert q.waiting == 0 and q.in_flight == 0 and not q.paused

    check_fairness(requests, q.concurrency)
    check_fifo_within_clients(world.log)


async def test_sim_clock_workloads_are_busy(io_loop) -> None:
    """The random workloads do queue things up (else the properties say little)."""
    deepest = [(await simulate(seed, hangups=False))[0].max_waiting for seed in range(25)]
    assert min(deepest) >= 2, deepest
    assert sum(d >= 10 for d in deepest) >= 10, deepest
    # ...and hang-ups happen both while waiting and while at the target.
    outcomes = Counter()
    for seed in range(25):
        outcomes.update(r.outcome for r in (await simulate(seed, hangups=True))[1])
    assert outcomes["left waiting"] >= 10 and outcomes["left holding"] >= 10, outcomes


# --- bounded: one client's share of the waiting places, and the whole queue ----------------


def bounds(seed: int, total: bool) -> tuple[int, int]:
    """(max_queue, max_per_client) for a bounded run: small, so that both bind."""
    rng = random.Random(10_000 + seed)
    return (rng.randint(3, 12) if total else ROOMY), rng.randint(1, 3)


@pytest.mark.parametrize("total", [False, True], ids=["share-only", "share-and-total"])
@pytest.mark.parametrize("hangups", [False, True], ids=["all-stay", "some-hang-up"])
@pytest.mark.parametrize("seed", range(25))
async def test_bounded_workload_refuses_exactly_beyond_the_bounds(io_loop, seed, hangups, total) -> None:
    """A client with its whole share waiting is refused (ClientQueueFull) and no
    one else is; others are refused only when the whole queue is full.

    World.admit checks every admission and refusal against the bounds as they
    stood at that moment, and observe() that no client ever exceeds its share.
    """
    max_queue, share = bounds(seed, total)
    world, requests = await simulate(seed, hangups, max_queue=max_queue, max_per_client=share)
    q = world.queue

    outcomes = Counter(r.outcome for r in requests)
    assert None not in outcomes, [r for r in requests if r.outcome is None]
    for r in requests:
        if r.outcome == "refused":
            assert r.ticket is None and r.grants == 0
        elif r.outcome != "left waiting":
            assert r.grants == 1, f"{r} ({r.outcome}) was granted {r.grants} times"
    assert q.waiting == 0 and q.in_flight == 0 and not q.paused

    # What was admitted is still served fairly and in order.
    check_fairness(requests, q.concurrency)
    check_fifo_within_clients(world.log)


async def test_bounded_workloads_reach_the_bounds(io_loop) -> None:
    """The bounded runs do refuse, and do admit others beside a client at its share."""
    refusals: Counter = Counter()
    beside_full = 0
    for total in (False, True):
        for seed in range(25):
            max_queue, share = bounds(seed, total)
            world, _ = await simulate(seed, False, max_queue=max_queue, max_per_client=share)
            refusals.update(world.refusals)
            beside_full += world.admitted_beside_full
    assert refusals["ClientQueueFull"] >= 25 and refusals["QueueFull"] >= 10, refusals
    assert beside_full >= 25, beside_full


async def test_a_client_at_its_share_is_refused_while_others_are_admitted(io_loop) -> None:
    now = [0.0]  # a still clock: every request takes no time, so the order is exact
    q = FairQueue(concurrency=1, max_queue=10, timeout=60, max_per_client=2, clock=lambda: now[0])
    for _ in range(4):
        q.done(q.admit("old"), 3.0)
    a1 = q.admit("a")
    assert granted(a1)  # at the target: not waiting, not counted
    a2, a3 = q.admit("a"), q.admit("a")
    b1 = q.admit("b")
    with pytest.raises(ClientQueueFull) as refused:
        q.admit("a")
    assert "(2)" in str(refused.value)
    # A place frees when a's next request goes: about one turn (3 s) of each
    # of the two clients waiting away.
    assert refused.value.retry_after == 6
    assert q.waiting == 3
    b2 = q.admit("b")
    with pytest.raises(ClientQueueFull) as refused:
        q.admit("b")
    assert refused.value.retry_after == 6

    # A place of its own frees up when its turn comes, or when it leaves.
    q.done(a1)
    assert granted(b1)  # b had no turn yet: it goes first
    q.done(b1)
    assert granted(a2)
    a4 = q.admit("a")
    with pytest.raises(ClientQueueFull):
        q.admit("a")
    q.leave(a3)
    a5 = q.admit("a")
    assert q.waiting == 3 and {t.client for t in (a4, a5, b2)} == {"a", "b"}


# --- leaving ----------------------------------------------------------------------------


async def test_leaving_while_waiting_frees_the_place_and_is_never_granted(io_loop) -> None:
    q = FairQueue(concurrency=1, max_queue=2, timeout=60)
    a = q.admit("a")
    assert granted(a)
    b, c = q.admit("b"), q.admit("c")
    with pytest.raises(QueueFull):
        q.admit("d")
    waits = {t: asyncio.ensure_future(q.turn(t)) for t in (b, c)}
    await asyncio.sleep(0)

    q.leave(b)
    assert q.waiting == 1
    with pytest.raises(ClientLeft):
        await waits[b]
    q.done(b)  # what relay_queued's `finally` does; nothing to release
    assert q.in_flight == 1 and q.waiting == 1
    # Its place is free: another request fits.
    d = q.admit("d")
    assert q.waiting == 2

    q.done(a, 0.1)
    await waits[c]
    assert granted(c) and not granted(b) and not granted(d)
    assert q.in_flight == 1 and q.waiting == 1

    # Leaving while at the target gives up the slot at once; the later done() is harmless.
    q.leave(c)
    assert granted(d) and q.in_flight == 1 and q.waiting == 0
    q.done(c, 0.1)
    assert q.in_flight == 1
    q.done(d, 0.1)
    assert q.in_flight == 0 and q.waiting == 0
    assert not granted(b)


async def test_a_client_that_leaves_and_comes_back_goes_to_the_back(io_loop) -> None:
    q = FairQueue(concurrency=1, max_queue=10, timeout=60)
    a = q.admit("a")
    b1, c1 = q.admit("b"), q.admit("c")
    q.leave(b1)
    b2 = q.admit("b")
    q.done(a)
    assert granted(c1) and not granted(b2)
    q.done(c1)
    assert granted(b2) and not granted(b1)


# --- the target unreachable -----------------------------------------------------------------


async def test_unreachable_request_keeps_its_place_while_one_probe_at_a_time_goes(io_loop) -> None:
    loop = asyncio.get_running_loop()
    q = FairQueue(concurrency=2, max_queue=100, timeout=60)
    order: list[Ticket] = []

    def wait_turn(ticket: Ticket) -> asyncio.Future:
        async def wait() -> None:
            await q.turn(ticket)
            order.append(ticket)

        return asyncio.ensure_future(wait())

    a1, b1 = q.admit("a"), q.admit("b")
    await asyncio.gather(wait_turn(a1), wait_turn(b1))
    assert order == [a1, b1]
    order.clear()
    c1, a2, d1 = q.admit("c"), q.admit("a"), q.admit("d")
    waits = [wait_turn(t) for t in (c1, a2, d1)]

    # b1's turn came, but the target could not be reached: back to the head.
    paused_at = loop.time()
    q.unreachable(b1, "boom")
    assert q.paused and q.last_error == "boom"
    assert q.in_flight == 1 and q.waiting == 4
    assert not b1.granted.done()
    b1_wait = wait_turn(b1)  # relay_queued waits for its turn again
    # A request that ends while paused starts no other, and a newcomer waits too.
    q.done(a1, 0.1)
    e1 = q.admit("e")
    waits.append(wait_turn(e1))
    assert q.in_flight == 0 and q.waiting == 5
    await asyncio.sleep(FIRST_BACKOFF / 2)
    assert order == [] and q.paused

    # After the backoff one probe goes, though both slots are free: the head, b1.
    await until(lambda: order != [], timeout=5)
    assert loop.time() - paused_at >= FIRST_BACKOFF - 0.05
    await asyncio.sleep(0.2)
    assert order == [b1]
    assert q.paused and q.in_flight == 1 and q.waiting == 4
    await b1_wait

    # The probe fails too: b1 is back at the head, and nothing else goes.
    q.unreachable(b1, "still boom")
    assert q.paused and q.last_error == "still boom" and q.in_flight == 0 and q.waiting == 5
    b1_wait = wait_turn(b1)
    await asyncio.sleep(0.2)
    assert order == [b1]

    # The target answers: dispatch resumes at once, b1 first.
    q.reachable()
    assert not q.paused and q.last_error is None
    assert granted(b1) and granted(c1)
    assert not any(granted(t) for t in (a2, d1, e1))
    assert q.in_flight == 2 and q.waiting == 3
    await b1_wait
    await asyncio.sleep(0)
    assert order == [b1, b1, c1]

    finished: list[Ticket] = []
    while len(finished) < 5:
        await until(lambda: any(granted(t) and t not in finished for t in (b1, c1, a2, d1, e1)), timeout=1)
        for ticket in [t for t in (b1, c1, a2, d1, e1) if granted(t) and t not in finished]:
            finished.append(ticket)
            q.done(ticket, 0.1)
    await asyncio.gather(*waits)
    # d and e had nothing at the target yet: they go before a, which already had a turn.
    assert order[:3] == [b1, b1, c1] and set(order[3:]) == {a2, d1, e1}
    assert order[-1] is a2
    assert q.in_flight == 0 and q.waiting == 0 and not q.paused


async def test_probes_back_off_doubling_to_the_cap(io_loop, monkeypatch) -> None:
    # Scaled down from 0.5 s doubling to 15 s, to keep the test short.
    monkeypatch.setattr(queue_module, "FIRST_BACKOFF", 0.1)
    monkeypatch.setattr(queue_module, "MAX_BACKOFF", 0.3)
    loop = asyncio.get_running_loop()
    q = FairQueue(concurrency=3, max_queue=100, timeout=60)
    a = q.admit("a")
    b = q.admit("b")  # in flight throughout: a probe goes even while others are at the target
    c = q.admit("c")
    others = [q.admit(x) for x in "deff"]
    await q.turn(a)
    failed_at = loop.time()
    q.unreachable(a, "boom")
    gaps = []
    for _ in range(4):
        await until(lambda: granted(a), timeout=5)
        gaps.append(loop.time() - failed_at)
        assert not any(granted(t) for t in others), "more than one probe at a time"
        assert q.in_flight == 3 and q.paused
        failed_at = loop.time()
        q.unreachable(a, "boom")
    assert gaps[0] == pytest.approx(0.1, abs=0.06), gaps
    assert gaps[1] == pytest.approx(0.2, abs=0.06), gaps
    assert gaps[2] == pytest.approx(0.3, abs=0.06), gaps
    assert gaps[3] == pytest.approx(0.3, abs=0.06), gaps
    q.reachable()
    assert granted(a) and q.in_flight == 3
    for t in (a, b, c):
        q.done(t)
    assert all(granted(t) for t in others[:3]) and not granted(others[3])


async def test_a_probe_that_got_through_does_not_block_the_next_outages_probes(io_loop, monkeypatch) -> None:
    monkeypatch.setattr(queue_module, "FIRST_BACKOFF", 0.05)
    q = FairQueue(concurrency=2, max_queue=100, timeout=60)
    a, b = q.admit("a"), q.admit("b")
    c = q.admit("c")
    await q.turn(a)
    q.unreachable(a, "boom")
    await until(lambda: granted(a), timeout=5)  # a goes again, as the probe
    q.reachable()  # ...and the target answered it: a is now a long answer
    q.done(b)
    assert granted(c)
    # A new outage while a's answer runs: c fails, and a probe must go for it.
    q.unreachable(c, "boom again")
    assert q.paused and not granted(c)
    await until(lambda: granted(c), timeout=5)
    q.done(a)
    q.done(c)


# --- timeouts and close ---------------------------------------------------------------------


@pytest.mark.parametrize("history", [False, True], ids=["no-service-times", "slow-service"])
async def test_a_request_that_never_gets_a_turn_times_out(io_loop, history) -> None:
    loop = asyncio.get_running_loop()
    q = FairQueue(concurrency=1, max_queue=10, timeout=0.2)
    if history:
        for _ in range(3):
            old = q.admit("old")
            q.done(old, 4.0)
    a = q.admit("a")  # never finishes
    b = q.admit("b")
    started = loop.time()
    with pytest.raises(QueueTimeout) as raised:
        await q.turn(b)
    assert 0.15 <= loop.time() - started < 2
    assert raised.value.retry_after >= (4 if history else 1)
    assert "0.2s" in str(raised.value)
    assert q.waiting == 0 and q.in_flight == 1
    q.done(a)
    assert q.in_flight == 0 and not granted(b)


async def test_waiting_out_an_unreachable_target_times_out_naming_the_error(io_loop) -> None:
    q = FairQueue(concurrency=1, max_queue=10, timeout=0.2)
    a = q.admit("a")
    await q.turn(a)
    q.unreachable(a, "connection refused")  # the probe (0.5 s) comes after the deadline
    with pytest.raises(QueueTimeout) as raised:
        await q.turn(a)
    assert "connection refused" in str(raised.value)
    assert raised.value.retry_after >= 1
    assert q.waiting == 0 and q.in_flight == 0


async def test_close_answers_every_waiting_request(io_loop) -> None:
    q = FairQueue(concurrency=1, max_queue=10, timeout=60)
    a = q.admit("a")
    waiting = [q.admit(c) for c in "bbcd"]
    waits = [asyncio.ensure_future(q.turn(t)) for t in waiting]
    await asyncio.sleep(0)
    q.close()
    results = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 1)
    for result in results:
        assert isinstance(result, QueueClosed), result
        assert result.retry_after >= 1
    assert q.waiting == 0
    assert q.in_flight == 1, "the request in flight is left to finish"
    with pytest.raises(QueueClosed):
        q.admit("e")
    q.done(a)
    assert q.in_flight == 0
    assert not any(granted(t) for t in waiting)


async def test_close_while_paused_answers_the_requeued_request_too(io_loop, monkeypatch) -> None:
    monkeypatch.setattr(queue_module, "FIRST_BACKOFF", 0.05)
    q = FairQueue(concurrency=1, max_queue=10, timeout=60)
    a = q.admit("a")
    await q.turn(a)
    b = q.admit("b")
    q.unreachable(a, "boom")
    waits = [asyncio.ensure_future(q.turn(t)) for t in (a, b)]
    await asyncio.sleep(0)
    q.close()
    results = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 1)
    assert all(isinstance(r, QueueClosed) for r in results), results
    await asyncio.sleep(0.2)
    assert q.in_flight == 0 and q.waiting == 0


# --- regressions: bugs found by this file, fixed in foreman/queue.py ---------------------------


async def test_a_cancelled_wait_gives_up_its_place(io_loop) -> None:
    q = FairQueue(concurrency=1, max_queue=10, timeout=60)
    a = q.admit("a")
    b, c = q.admit("b"), q.admit("c")
    wait_b = asyncio.ensure_future(q.turn(b))
    await asyncio.sleep(0)
    wait_b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait_b
    q.done(b)  # relay_queued's `finally`
    q.done(a, 0.1)  # raised InvalidStateError before the fix
    assert granted(c)
    assert q.in_flight == 1 and q.waiting == 0


async def test_a_request_requeued_after_close_is_answered_at_once(io_loop) -> None:
    loop = asyncio.get_running_loop()
    q = FairQueue(concurrency=1, max_queue=10, timeout=0.5)
    a = q.admit("a")
    await q.turn(a)
    q.close()  # SIGTERM while a is at the target...
    q.unreachable(a, "connection refused")  # ...and the target goes away
    started = loop.time()
    with pytest.raises(QueueClosed):
        await q.turn(a)  # was QueueTimeout after 0.5 s before the fix
    assert loop.time() - started < 0.25
    assert q.waiting == 0


# --- a target that slept: stale failures, pause and resume ------------------------------------


async def test_a_failure_begun_before_the_target_answered_does_not_pause(io_loop) -> None:
    # a went out on a pooled connection that died while the target slept; the
    # kernel says so only after b, sent later, has been answered.
    q = FairQueue(concurrency=2, max_queue=10, timeout=60)
    a = q.admit("a")
    await q.turn(a)
    await asyncio.sleep(0.01)
    b = q.admit("b")
    await q.turn(b)
    q.reachable()  # b's answer began
    q.unreachable(a, "the connection went dead")
    assert not q.paused and q.last_error is None
    assert granted(a) and q.in_flight == 2, "tried again at once, keeping its place"
    # A failure of an attempt begun after that proof pauses as before.
    q.unreachable(a, "cannot connect")
    assert q.paused and q.last_error == "cannot connect"
    q.reachable()
    for t in (a, b):
        q.done(t)


async def test_listeners_hear_pause_and_resume_and_why(io_loop, monkeypatch) -> None:
    monkeypatch.setattr(queue_module, "FIRST_BACKOFF", 0.05)
    q = FairQueue(concurrency=1, max_queue=10, timeout=60)
    heard: list[str] = []
    q.on_pause(lambda: heard.append("pause"))
    q.on_resume(lambda reachable: heard.append("back" if reachable else "idle"))
    a = q.admit("a")
    await q.turn(a)
    assert not q.stalled
    q.unreachable(a, "boom")
    assert heard == ["pause"] and q.stalled
    await until(lambda: granted(a), timeout=2)  # the probe
    assert q.stalled, "a probe at the target still waits for it"
    q.reachable()
    assert heard == ["pause", "back"] and not q.stalled
    q.done(a)
    # Nothing waits when the next probe is due: the pause ends without the target.
    c = q.admit("c")
    await q.turn(c)
    q.unreachable(c, "boom")
    q.leave(c)
    await until(lambda: not q.paused, timeout=2)
    assert heard == ["pause", "back", "pause", "idle"]
    # Shutdown ends a pause too.
    b = q.admit("b")
    await q.turn(b)
    q.unreachable(b, "boom")
    waiting = asyncio.ensure_future(q.turn(b))
    q.close()
    assert heard[-2:] == ["pause", "idle"] and not q.paused
    with pytest.raises(QueueClosed):
        await waiting
