"""The model inventory: polling, degradation and recovery (name cases: test_names.py)."""

from __future__ import annotations

import asyncio
import json

from tests.helpers import until


async def test_first_poll_fills_inventory(foreman, stub) -> None:
    await foreman.ready()
    assert not foreman.inventory.degraded
    for name in stub.models:
        assert foreman.inventory.has(name)
    assert foreman.inventory.model_count == len(stub.models)


async def test_tags_served_from_inventory_in_targets_bytes(foreman, stub) -> None:
    await foreman.ready()
    polls = stub.tags_polls
    response = await foreman.fetch("/api/tags")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert "Etag" not in response.headers  # Ollama sends none
    assert [m["name"] for m in json.loads(response.body)["models"]] == stub.models
    # Served from the inventory, not fetched again.
    assert stub.tags_polls == polls
    direct = await foreman.client().fetch(stub.url + "/api/tags")
    assert response.body == direct.body


async def test_tags_before_any_successful_poll_is_503(start_foreman, stub) -> None:
    await stub.stop()
    front = start_foreman()
    await front.ready()
    response = await front.fetch("/api/tags")
    assert response.code == 503
    assert "Retry-After" in response.headers
    assert "no model inventory yet" in json.loads(response.body)["error"]


async def test_poller_degrades_keeps_inventory_and_recovers(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_POLL_INTERVAL="100ms")
    await front.ready()
    health = await front.fetch("/healthz")
    assert health.code == 200
    assert json.loads(health.body)["status"] == "ok"

    port = int(stub.url.rsplit(":", 1)[1])
    await stub.stop()
    await until(lambda: front.inventory.degraded)
    health = await front.fetch("/healthz")
    body = json.loads(health.body)
    assert health.code == 503
    assert body["status"] == "degraded" and body["degraded"] is True
    assert body["last_error"] and "cannot connect" in body["last_error"]
    assert body["models"] == len(stub.models)
    assert body["last_poll"] is not None
    # The last-known inventory is still served while the target is down.
    tags = await front.fetch("/api/tags")
    assert tags.code == 200
    assert len(json.loads(tags.body)["models"]) == len(stub.models)

    stub.listen(port)
    await until(lambda: not front.inventory.degraded)
    health = await front.fetch("/healthz")
    assert health.code == 200
    assert json.loads(health.body)["last_error"] is None


async def test_healthz_fields_and_no_credentials(start_foreman, stub) -> None:
    url_with_credentials = stub.url.replace("http://", "http://user:secret@")
    front = start_foreman(url_with_credentials, FOREMAN_TOKENS="tok-1")
    await front.ready()
    response = await front.fetch("/healthz")  # no Authorization: healthz is open
    body = json.loads(response.body)
    assert response.code == 200
    assert set(body) >= {"status", "degraded", "target", "last_poll", "last_error", "models"}
    assert body["target"] == stub.url
    assert "secret" not in response.body.decode() and "tok-1" not in response.body.decode()
    assert body["last_poll"].endswith("Z")


async def test_misses_during_a_poll_wait_for_it_and_cause_no_other(foreman, stub) -> None:
    await foreman.ready()
    polls = stub.tags_polls
    stub.tags_hold = asyncio.Event()  # the poll hangs until every miss has arrived
    running = foreman.foreman.inventory.refresh()
    await stub.wait_for(lambda: stub.tags_polls == polls + 1)
    body = {"model": "not-there", "messages": [{"role": "user", "content": "hi"}]}
    requests = [asyncio.ensure_future(foreman.fetch("/api/chat", method="POST", body=body)) for _ in range(20)]
    await until(lambda: foreman.foreman.activity.in_flight == 20)
    stub.tags_hold.set()
    responses = await asyncio.gather(*requests)
    assert await running is True
    assert {r.code for r in responses} == {404}
    assert stub.tags_polls == polls + 1


async def test_a_client_looping_on_a_typo_does_not_hammer_the_target(foreman, stub) -> None:
    """A miss re-polls only when the last poll ended over a second ago."""
    import math
    import time

    await foreman.ready()
    polls = stub.tags_polls
    body = {"model": "lama3.2", "messages": [{"role": "user", "content": "hi"}]}
    started = time.monotonic()
    for _ in range(50):
        assert (await foreman.fetch("/api/chat", method="POST", body=body)).code == 404
    elapsed = time.monotonic() - started
    # One poll per second at most (the poll foreman.ready() made counts as the first).
    assert stub.tags_polls - polls <= math.floor(elapsed)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_miss_repoll_floor_on_a_simulated_clock(io_loop, stub) -> None:
    from foreman.inventory import MISS_REPOLL_FLOOR, Inventory
    from foreman.target import TargetClient

    clock = Clock()
    target = TargetClient(stub.url, None, stub.url)
    inventory = Inventory(target, poll_interval=3600, clock=clock)
    try:
        assert await inventory.refresh() is True
        polls = stub.tags_polls
        # Twenty simultaneous misses just after a poll: answered from it.
        assert not any(await asyncio.gather(*(inventory.find("ghost") for _ in range(20))))
        assert stub.tags_polls == polls
        # Fifty sequential misses within the floor: still no poll.
        for _ in range(50):
            clock.now += MISS_REPOLL_FLOOR / 100
            assert await inventory.find("ghost") is False
        assert stub.tags_polls == polls
        # Past the floor, one miss re-polls, and a model the target gained is found.
        clock.now += MISS_REPOLL_FLOOR + 0.01
        stub.models.append("ghost:latest")
        results = await asyncio.gather(*(inventory.find("ghost") for _ in range(20)))
        assert all(results) and stub.tags_polls == polls + 1
    finally:
        target.close()


async def test_periodic_poll_and_on_demand_poll_never_overlap(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_POLL_INTERVAL="50ms")
    await front.ready()
    stub.tags_hold = asyncio.Event()
    polls = stub.tags_polls
    await stub.wait_for(lambda: stub.tags_polls == polls + 1)  # a periodic poll is now hanging
    miss = asyncio.ensure_future(
        front.fetch("/api/chat", method="POST", body={"model": "nope", "messages": []})
    )
    await until(lambda: front.foreman.activity.in_flight == 1)
    # Several periods pass; the hanging poll is neither joined by a second one nor restarted.
    await asyncio.sleep(0.3)
    assert stub.tags_polls == polls + 1
    stub.tags_hold.set()
    assert (await miss).code == 404


async def test_a_poll_the_target_never_answers_gives_up_after_the_poll_timeout(
    start_foreman, stub, monkeypatch
) -> None:
    # A target gone dark must show in /healthz within seconds, not after the
    # 30 s that other metadata requests get (scaled down here from 5 s).
    from foreman import inventory as inventory_module

    assert inventory_module.POLL_TIMEOUT <= 5
    monkeypatch.setattr(inventory_module, "POLL_TIMEOUT", 0.5)
    front = start_foreman()
    await front.ready()
    stub.tags_hold = asyncio.Event()  # connected, and then silence
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(front.inventory.refresh(), 5) is False
    assert asyncio.get_running_loop().time() - started < 3
    assert front.inventory.degraded
    assert "did not answer in time" in front.inventory.last_error
    stub.tags_hold.set()
