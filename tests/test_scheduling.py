"""The scheduling policy on a simulated clock: fairness bound, weights, newcomers, affinity.

A small discrete-event simulation drives `FairScheduler` exactly as the queue
does: requests arrive, a free slot takes `pick()`, a request holds its slot
for its service time (plus a model load when its model is not resident) and
then reports `finished()`. Every workload is seeded; each property is checked
over many seeds.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict
from dataclasses import dataclass, field

import pytest

from foreman.scheduling import FairScheduler

SEEDS = range(40)


@dataclass(eq=False)
class Req:
    client: str
    arrival: float
    service: float
    model: str | None = None
    weight: float = 1.0
    dispatched: float | None = None
    ended: float | None = None
    loaded: bool = False
    #: when a slot that fairness would have given it went to another request
    passed_over: float | None = None


@dataclass
class Sim:
    concurrency: int = 1
    affinity: float = 0.0
    load_time: float = 0.0
    max_loaded: int = 1
    now: float = 0.0
    resident: OrderedDict[str, None] = field(default_factory=OrderedDict)
    loads: int = 0
    log: list[Req] = field(default_factory=list)

    def run(self, requests: list[Req]) -> list[Req]:
        scheduler: FairScheduler[Req] = FairScheduler(self.affinity, clock=lambda: self.now)
        arrivals = sorted(requests, key=lambda r: r.arrival)
        endings: list[tuple[float, int, Req]] = []
        running = 0
        i = 0
        order = 0
        while i < len(arrivals) or endings:
            next_arrival = arrivals[i].arrival if i < len(arrivals) else float("inf")
            next_end = endings[0][0] if endings else float("inf")
            self.now = min(next_arrival, next_end)
            while endings and endings[0][0] <= self.now:
                _, _, done = heapq.heappop(endings)
                done.ended = self.now
                scheduler.finished(done, done.ended - done.dispatched)
                running -= 1
            while i < len(arrivals) and arrivals[i].arrival <= self.now:
                r = arrivals[i]
                scheduler.add(r, r.client, r.weight, r.model)
                i += 1
            while running < self.concurrency and scheduler.waiting:
                fair = scheduler.fair_choice()
                r = scheduler.pick(self.resident.keys())
                assert r is not None, "work-conserving: a slot is free and a request waits"
                if fair is not r and fair.passed_over is None:
                    fair.passed_over = self.now
                r.dispatched = self.now
                hold = r.service
                if r.model is not None:
                    if r.model in self.resident:
                        self.resident.move_to_end(r.model)
                    else:
                        r.loaded = True
                        self.loads += 1
                        hold += self.load_time
                        self.resident[r.model] = None
                        while len(self.resident) > self.max_loaded:
                            self.resident.popitem(last=False)
                running += 1
                order += 1
                heapq.heappush(endings, (self.now + hold, order, r))
                self.log.append(r)
        return self.log


def backlog(client: str, count: int, service, weight: float = 1.0, model: str | None = None) -> list[Req]:
    return [Req(client, 0.0, service(k), model, weight) for k in range(count)]


def service_received(log: list[Req], client: str, at: float, weight: float) -> float:
    """Seconds of service `client` had received by time `at`, divided by its weight."""
    total = 0.0
    for r in log:
        if r.client == client and r.dispatched is not None and r.dispatched < at:
            total += min(at, r.ended) - r.dispatched
    return total / weight


def max_gap(log: list[Req], a: tuple[str, float], b: tuple[str, float], until: float) -> float:
    """The largest |S_a/w_a - S_b/w_b| over any interval within [0, until]."""
    times = sorted({0.0, until, *(r.dispatched for r in log), *(r.ended for r in log)})
    times = [t for t in times if t <= until]
    diffs = [service_received(log, a[0], t, a[1]) - service_received(log, b[0], t, b[1]) for t in times]
    return max(diffs) - min(diffs)


def both_backlogged_until(requests: list[Req], clients: tuple[str, str]) -> float:
    """The time the first of the two clients ran out of waiting requests."""
    return min(max(r.dispatched for r in requests if r.client == c) for c in clients)


@pytest.mark.parametrize("seed", SEEDS)
def test_service_gap_between_backlogged_clients_is_bounded(seed: int) -> None:
    rng = random.Random(seed)
    wa, wb = rng.choice([1.0, 2.0, 3.0]), rng.choice([1.0, 0.5, 2.0])
    requests = backlog("a", 40, lambda k: rng.uniform(0.5, 8.0), wa) + backlog(
        "b", 40, lambda k: rng.uniform(0.5, 2.0), wb
    )
    # Others come and go around them.
    requests += [Req(f"c{k}", rng.uniform(0, 60), rng.uniform(0.1, 4.0)) for k in range(15)]
    log = Sim(concurrency=1).run(requests)
    t_max = max(r.service for r in requests)
    until = both_backlogged_until(requests, ("a", "b"))
    assert max_gap(log, ("a", wa), ("b", wb), until) <= 2 * t_max


def test_a_client_with_four_times_longer_requests_gets_half_the_time() -> None:
    requests = backlog("essays", 30, lambda k: 8.0) + backlog("questions", 200, lambda k: 2.0)
    log = Sim().run(requests)
    until = both_backlogged_until(requests, ("essays", "questions"))
    essays = service_received(log, "essays", until, 1)
    questions = service_received(log, "questions", until, 1)
    assert abs(essays - questions) <= 2 * 8.0
    done_by = [r for r in log if r.dispatched < until]
    count = {c: sum(r.client == c for r in done_by) for c in ("essays", "questions")}
    assert 3.0 <= count["questions"] / count["essays"] <= 5.0


@pytest.mark.parametrize("seed", SEEDS)
def test_weights_two_to_one_within_one_request_over_any_twelve(seed: int) -> None:
    rng = random.Random(seed)
    service = rng.uniform(0.5, 5.0)
    requests = backlog("heavy", 60, lambda k: service, 2.0) + backlog("light", 60, lambda k: service, 1.0)
    rng.shuffle(requests)
    for k, r in enumerate(requests):
        r.arrival = k * 1e-6  # arrival order shuffled, all before the first slot frees
    log = Sim(concurrency=1).run(requests)
    until = both_backlogged_until(requests, ("heavy", "light"))
    order = [r.client for r in log if r.dispatched < until]
    for start in range(len(order) - 11):
        window = order[start : start + 12]
        assert abs(window.count("heavy") - 8) <= 1, (start, window)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_newcomer_goes_at_the_next_free_slot(seed: int) -> None:
    rng = random.Random(seed)
    concurrency = rng.choice([1, 2, 3])
    requests = backlog("busy1", 50, lambda k: rng.uniform(0.5, 3.0)) + backlog(
        "busy2", 50, lambda k: rng.uniform(0.5, 3.0), 2.0
    )
    newcomers = [Req(f"new{k}", rng.uniform(1, 40), rng.uniform(0.5, 2.0)) for k in range(6)]
    log = Sim(concurrency=concurrency).run(requests + newcomers)
    for n in newcomers:
        # Every dispatch after its arrival and before its own must be of an
        # earlier newcomer: nobody already backlogged goes first.
        ahead = [r for r in log if n.arrival <= r.dispatched < n.dispatched]
        assert all(r in newcomers and r.arrival <= n.arrival for r in ahead), (n, ahead)


def test_a_client_just_served_does_not_jump_ahead_when_it_comes_back() -> None:
    """A closed-loop client (one request at a time, resubmitting at once) gets its share, not more."""
    sim = Sim()
    scheduler: FairScheduler[str] = FairScheduler(0.0, clock=lambda: sim.now)
    for k in range(10):
        scheduler.add(f"b{k}", "b")
    served = {"a": 0.0, "b": 0.0}
    scheduler.add("a0", "a")
    for k in range(1, 12):
        item = scheduler.pick()
        client = item[0]
        service = 4.0 if client == "a" else 1.0
        served[client] += service
        scheduler.finished(item, service)
        if client == "a":
            scheduler.add(f"a{k}", "a")  # the loop sends its next request right away
    assert abs(served["a"] - served["b"]) <= 4.0 * 2


def test_an_idle_client_does_not_bank_credit() -> None:
    scheduler: FairScheduler[str] = FairScheduler(0.0, clock=lambda: 0.0)
    for k in range(20):
        scheduler.add(f"a{k}", "a")
    for _ in range(10):
        scheduler.finished(scheduler.pick(), 1.0)
    # b was idle the whole time: it comes back level with a, not ten seconds behind.
    for k in range(20):
        scheduler.add(f"b{k}", "b")
    order = []
    for _ in range(10):
        item = scheduler.pick()
        order.append(item[0])
        scheduler.finished(item, 1.0)
    assert order.count("b") <= 6


def two_models(seed: int) -> list[Req]:
    rng = random.Random(seed)
    return backlog("x", 25, lambda k: rng.uniform(1.0, 3.0), model="llama") + backlog(
        "y", 25, lambda k: rng.uniform(1.0, 3.0), model="qwen"
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_affinity_halves_model_loads_and_bounds_the_extra_wait(seed: int) -> None:
    budget, load = 30.0, 5.0
    off = Sim(affinity=0.0, load_time=load)
    off.run(two_models(seed))
    on = Sim(affinity=budget, load_time=load)
    log = on.run(two_models(seed))
    assert on.loads <= 0.5 * off.loads
    longest = max(r.service for r in log) + load
    for r in log:
        # Passed over from its fair turn for at most the budget, then one slot at most.
        if r.passed_over is not None:
            assert r.dispatched - r.passed_over <= budget + longest


@pytest.mark.parametrize("seed", SEEDS)
def test_affinity_zero_always_picks_the_fair_choice(seed: int) -> None:
    rng = random.Random(seed)
    scheduler: FairScheduler[Req] = FairScheduler(0.0, clock=lambda: 0.0)
    for r in two_models(seed):
        scheduler.add(r, r.client, r.weight, r.model)
    while scheduler.waiting:
        fair = scheduler.fair_choice()
        picked = scheduler.pick(resident={rng.choice(["llama", "qwen"])})
        assert picked is fair
        scheduler.finished(picked, picked.service)


def test_retry_keeps_the_place_and_takes_the_charge_back() -> None:
    scheduler: FairScheduler[str] = FairScheduler(0.0, clock=lambda: 0.0)
    for item in ("a1", "a2", "b1"):
        scheduler.add(item, item[0])
    first = scheduler.pick()
    assert first == "a1"
    scheduler.retry(first)
    assert scheduler.counter_of("a") == 0.0
    assert scheduler.pick() == "a1"


def test_removed_requests_are_never_picked() -> None:
    scheduler: FairScheduler[str] = FairScheduler(0.0, clock=lambda: 0.0)
    for k in range(5):
        scheduler.add(f"a{k}", "a")
        scheduler.add(f"b{k}", "b")
    assert scheduler.remove("a0") and scheduler.remove("b3") and not scheduler.remove("zz")
    picked = []
    while (item := scheduler.pick()) is not None:
        picked.append(item)
        scheduler.finished(item, 1.0)
    expected = ({f"a{k}" for k in range(5)} | {f"b{k}" for k in range(5)}) - {"a0", "b3"}
    assert sorted(picked) == sorted(expected)
    assert scheduler.waiting == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_affinity_keeps_the_service_gap_bounded(seed: int) -> None:
    """Newcomers that keep a model resident must not let its backlogged client run away."""
    rng = random.Random(seed)
    budget, load = 30.0, 10.0
    requests = backlog("essays", 30, lambda k: rng.uniform(60, 120), model="llama")
    requests += backlog("questions", 200, lambda k: rng.uniform(2, 10), model="qwen")
    requests += [
        Req(f"chat{k}", rng.uniform(0, 2000), rng.uniform(1, 5), model="llama") for k in range(40)
    ]
    sim = Sim(affinity=budget, load_time=load)
    log = sim.run(requests)
    t_max = max(r.service for r in requests) + load
    until = both_backlogged_until(requests, ("essays", "questions"))
    assert max_gap(log, ("essays", 1.0), ("questions", 1.0), until) <= 2 * (t_max + budget)


@pytest.mark.parametrize("seed", range(3))
def test_the_fair_choice_is_always_the_least_served_even_after_clients_are_forgotten(seed: int) -> None:
    """Many clients come and go (idle ones are forgotten); the heap's top stays the true minimum.

    Looks inside the scheduler on purpose: the check is of its own bookkeeping.
    """
    rng = random.Random(seed)
    now = [0.0]
    scheduler: FairScheduler[int] = FairScheduler(affinity=30.0, clock=lambda: now[0])
    running: list[int] = []
    models = ["m1", "m2", "m3"]
    n = 0
    for _ in range(20_000):
        now[0] += 0.1
        if rng.random() < 0.6:
            scheduler.add(n, f"c{rng.randrange(1000)}", 1.0, rng.choice(models))
            n += 1
        if running and rng.random() < 0.5:
            scheduler.finished(running.pop(rng.randrange(len(running))), rng.uniform(0.1, 5))
        if rng.random() < 0.05 and scheduler.waiting:
            scheduler.remove(rng.choice(list(scheduler._entries)))
        if len(running) < 2 and scheduler.waiting:
            live = [c for c in scheduler._clients.values() if c.waiting]
            truth = min(live, key=lambda c: c.key())
            assert scheduler._top(scheduler._heap).key() == truth.key()
            fair = truth.head()
            resident = frozenset(rng.sample(models, 1))
            item = scheduler.pick(resident)
            entry = scheduler._running[item]
            # Only the fair request, or one whose model is resident, ever goes.
            assert entry is fair or entry.model in resident
            running.append(item)


# --- several targets: only what some target can take now --------------------


def test_pick_with_placeable_skips_what_no_target_can_take_without_blocking_others() -> None:
    clock = [0.0]
    scheduler: FairScheduler[str] = FairScheduler(0.0, lambda: clock[0])
    scheduler.add("a1", "a", model="away")
    scheduler.add("a2", "a", model="here")
    scheduler.add("b1", "b", model="away")
    scheduler.add("c1", "c", model="here")
    placeable = lambda model: model == "here"  # noqa: E731
    # The fair client's own later request first, then another client's head; never "away".
    assert scheduler.pick((), placeable) == "a2"
    assert scheduler.pick((), placeable) == "c1"
    assert scheduler.pick((), placeable) is None
    assert scheduler.waiting == 2
    # When the away model's target returns, they go in fair order.
    everything = lambda model: True  # noqa: E731
    assert {scheduler.pick((), everything), scheduler.pick((), everything)} == {"a1", "b1"}


def test_pick_with_placeable_is_random_order_safe() -> None:
    rng = random.Random(11)
    scheduler: FairScheduler[int] = FairScheduler(0.0, lambda: 0.0)
    models = ["m0", "m1", "m2"]
    added: dict[int, str] = {}
    for i in range(300):
        model = rng.choice(models)
        added[i] = model
        scheduler.add(i, f"client{rng.randrange(8)}", model=model)
    picked = []
    for round_ in range(400):
        allowed = set(rng.sample(models, rng.randrange(len(models) + 1)))
        item = scheduler.pick((), lambda model, allowed=allowed: model in allowed)
        if item is None:
            # Nothing waiting can go: every waiting request is for a model not allowed.
            continue
        assert added[item] in allowed
        picked.append(item)
        scheduler.finished(item, 1.0)
    assert len(set(picked)) == len(picked)
    assert scheduler.waiting == 300 - len(picked)
