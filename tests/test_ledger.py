"""The status page's ledger on a simulated clock: the last hundred requests, an hour by the minute."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.record import RequestRecord
from foreman.ledger import MAX_CLIENTS_PER_MINUTE, MINUTES, OTHER_CLIENTS, RECENT, Ledger

# A minute boundary, so tests can say which minute a moment falls in.
T0 = 1_800_000_000.0 - 1_800_000_000.0 % 60


class Clocks:
    """A wall clock and a monotonic one that move together, as the real ones do."""

    def __init__(self, wall: float = T0) -> None:
        self.wall = wall
        self.monotonic = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.monotonic += seconds

    def ledger(self) -> Ledger:
        return Ledger(clock=lambda: self.wall, monotonic=lambda: self.monotonic)


def finished(
    clocks: Clocks,
    *,
    client: str = "alice",
    model: str | None = "llama3.2",
    target: str | None = "mac",
    route: str = "/api/chat",
    took: float = 1.0,
    service: float | None = None,
    tokens: int | None = None,
    eval_seconds: float | None = None,
    load: bool = False,
    status: int = 200,
) -> RequestRecord:
    """A record of a request that ends now, having taken `took` seconds."""
    record = RequestRecord("POST", route, route, "127.0.0.1", started=clocks.monotonic - took)
    record.client, record.model, record.target = client, model, target
    record.eval_count = tokens
    record.eval_duration = None if eval_seconds is None else int(eval_seconds * 1e9)
    record.model_load = load
    if service is not None:
        record.dispatched = clocks.monotonic - service
    record.status = status
    record.finished = clocks.monotonic
    record.service = service
    return record


def test_recent_keeps_the_last_hundred_newest_first() -> None:
    clocks = Clocks()
    ledger = clocks.ledger()
    for i in range(RECENT + 20):
        clocks.advance(0.5)
        ledger.observe(finished(clocks, client=f"c{i}"))
    recent = ledger.recent()
    assert len(recent) == RECENT
    assert [r.client for r in recent[:3]] == ["c119", "c118", "c117"]
    assert recent[-1].client == "c20"
    assert recent[0].ended == clocks.wall


def test_only_requests_that_named_a_model_or_queued_are_kept() -> None:
    clocks = Clocks()
    ledger = clocks.ledger()
    ledger.observe(finished(clocks, model=None, target=None, route="/foreman/status"))
    ledger.observe(finished(clocks, model=None, target="mac", route="preflight"))
    # Clients' health checks, every few seconds: they would bury the generations.
    ledger.observe(finished(clocks, model=None, target="mac", route="/api/version"))
    ledger.observe(finished(clocks, model=None, target="mac", route="/"))
    assert ledger.recent() == []
    ledger.observe(finished(clocks, model="nope", target=None, status=404))
    ledger.observe(finished(clocks, model="llama3.2", target="mac", route="/api/show"))
    assert [(r.route, r.status) for r in ledger.recent()] == [("/api/show", 200), ("/api/chat", 404)]


def test_a_request_is_placed_on_the_wall_clock_when_it_ended() -> None:
    clocks = Clocks()
    ledger = clocks.ledger()
    record = finished(clocks, took=3.0)
    clocks.advance(2.0)  # observed a little after it ended
    ledger.observe(record)
    [entry] = ledger.recent()
    assert entry.ended == pytest.approx(clocks.wall - 2.0)
    assert entry.duration == pytest.approx(3.0)


def test_tokens_per_second_is_the_targets_generation_speed() -> None:
    clocks = Clocks()
    ledger = clocks.ledger()
    ledger.observe(finished(clocks, took=10.0, tokens=200, eval_seconds=4.0))
    ledger.observe(finished(clocks, tokens=None))
    ledger.observe(finished(clocks, tokens=5, eval_seconds=None))
    assert [r.tokens_per_second for r in ledger.recent()] == [None, None, 50.0]


def test_history_is_sixty_minutes_oldest_first_ending_with_this_one() -> None:
    clocks = Clocks(T0 + 30)
    ledger = clocks.ledger()
    points = ledger.history()
    assert len(points) == MINUTES
    starts = [start for start, _, _ in points]
    assert starts[-1] == T0 and starts[0] == T0 - 59 * 60
    assert all(b - a == 60 for a, b in zip(starts, starts[1:]))
    # The current minute covers the seconds it has had so far; the others a whole minute.
    assert points[-1][2] == pytest.approx(30.0) and points[0][2] == 60.0


def test_a_minute_counts_requests_loads_depth_and_tokens() -> None:
    clocks = Clocks(T0 + 10)
    ledger = clocks.ledger()
    ledger.note_depth(3)
    ledger.note_depth(1)
    ledger.observe(finished(clocks, tokens=120, eval_seconds=0.5, load=True))
    ledger.observe(finished(clocks, tokens=60, eval_seconds=0.5))
    clocks.advance(20)  # 30 s into the minute
    _, minute, covered = ledger.history()[-1]
    assert (minute.requests, minute.model_loads, minute.queue_depth) == (2, 1, 3)
    assert minute.tokens / covered == pytest.approx(180 / 30)


def test_a_long_generations_tokens_are_spread_over_the_minutes_it_ran() -> None:
    clocks = Clocks(T0 + 30)
    ledger = clocks.ledger()
    clocks.advance(120)  # it generated from T0+30 to T0+150: 30 s, 60 s and 30 s of three minutes
    ledger.observe(finished(clocks, took=125, tokens=1200, eval_seconds=120))
    tokens = [minute.tokens for _, minute, _ in ledger.history()[-3:]]
    assert tokens == pytest.approx([300, 600, 300])


def test_minutes_older_than_an_hour_are_dropped() -> None:
    clocks = Clocks(T0)
    ledger = clocks.ledger()
    ledger.observe(finished(clocks, client="early", service=5.0))
    clocks.advance(59 * 60)
    assert ledger.hour_by_client() == {"early": (5.0, 1)}
    clocks.advance(60)
    ledger.observe(finished(clocks, client="late", service=1.0))
    assert ledger.hour_by_client() == {"late": (1.0, 1)}
    assert sum(minute.requests for _, minute, _ in ledger.history()) == 1
    assert ledger.minutes_kept == 1


def test_a_flood_of_clients_shares_one_row_past_the_limit() -> None:
    clocks = Clocks()
    ledger = clocks.ledger()
    for i in range(MAX_CLIENTS_PER_MINUTE + 50):
        ledger.observe(finished(clocks, client=f"10.0.{i // 256}.{i % 256}", service=1.0))
    hour = ledger.hour_by_client()
    assert len(hour) == MAX_CLIENTS_PER_MINUTE + 1
    assert hour[OTHER_CLIENTS] == (50.0, 50)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_the_hour_by_client_is_the_sum_of_the_last_hours_requests(seed: int) -> None:
    rng = random.Random(seed)
    clocks = Clocks(T0 + rng.uniform(0, 60))
    ledger = clocks.ledger()
    happened: list[tuple[float, str, float]] = []
    for _ in range(rng.randint(1, 200)):
        clocks.advance(rng.expovariate(1 / 40))
        client, service = rng.choice(["alice", "bob", "carol"]), round(rng.uniform(0, 30), 3)
        ledger.observe(finished(clocks, client=client, service=service))
        happened.append((clocks.wall, client, service))
        ledger.note_depth(rng.randint(0, 9))
    # What the last hour's minutes hold: the requests that ended in them.
    oldest = (clocks.wall // 60 - MINUTES + 1) * 60
    expected: dict[str, list[float]] = {}
    for ended, client, service in happened:
        if ended >= oldest:
            total = expected.setdefault(client, [0.0, 0])
            total[0] += service
            total[1] += 1
    hour = ledger.hour_by_client()
    assert hour.keys() == expected.keys()
    for client, (service, requests) in expected.items():
        assert hour[client][0] == pytest.approx(service)
        assert hour[client][1] == requests
    assert sum(minute.requests for _, minute, _ in ledger.history()) == sum(r for _, r in expected.values())
    assert ledger.minutes_kept <= MINUTES
    assert len(ledger.recent()) == min(RECENT, len(happened))
