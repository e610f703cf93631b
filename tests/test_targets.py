"""Several targets: routing by inventory, per-target slots, a target away, unions, management, /healthz."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest

from tornado.simple_httpclient import HTTPTimeoutError

from foreman.stub import StubOllama
from tests.helpers import until

ALPHA_ONLY = "alpha-only:latest"
BETA_ONLY = "beta-only:latest"
SHARED = "shared:latest"


def chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False, **extra}


@pytest.fixture
def stand_ins(io_loop) -> Iterator[list[StubOllama]]:
    """Three stand-ins: alpha and beta share one model and hold one each; gamma holds a third."""
    servers = [
        StubOllama([ALPHA_ONLY, SHARED]),
        StubOllama([BETA_ONLY, SHARED]),
        StubOllama(["gamma-only:latest"]),
    ]
    for server in servers:
        server.listen()
    yield servers
    for server in servers:
        io_loop.run_sync(server.stop)


def names(stand_ins) -> list[str]:
    return [s.url.removeprefix("http://") for s in stand_ins]


async def start(start_foreman, stand_ins, count: int = 2, **env: str):
    front = start_foreman(",".join(s.url for s in stand_ins[:count]), **env)
    await front.ready()
    return front


async def test_requests_go_to_a_target_that_has_their_model(start_foreman, stand_ins, monkeypatch) -> None:
    monkeypatch.setattr("foreman.inventory.MISS_REPOLL_FLOOR", 0.0)
    alpha, beta, gamma = stand_ins
    front = await start(start_foreman, stand_ins, 3)
    a_name, b_name, g_name = names(stand_ins)
    for model, where, name in ((ALPHA_ONLY, alpha, a_name), (BETA_ONLY, beta, b_name), ("gamma-only", gamma, g_name)):
        response = await front.fetch("/api/chat", method="POST", body=chat(model))
        assert response.code == 200, response.body
        assert response.headers["X-Foreman-Target"] == name
        assert where.chats_started == 1
    assert (alpha.chats_started, beta.chats_started, gamma.chats_started) == (1, 1, 1)
    missing = await front.fetch("/api/chat", method="POST", body=chat("nowhere"))
    assert missing.code == 404
    # One re-poll of every target before the 404.
    assert all(s.requests and [r.path for r in s.requests].count("/api/tags") == 2 for s in stand_ins)


async def test_each_target_has_its_own_slots_and_the_shared_model_spreads(start_foreman, stand_ins) -> None:
    alpha, beta, _ = stand_ins
    front = await start(start_foreman, stand_ins, FOREMAN_CONCURRENCY="2")
    for s in (alpha, beta):
        s.hold = asyncio.Event()
    http = front.client(max_clients=20)
    shared = [
        http.fetch(front.url + "/api/chat", method="POST", body=json.dumps(chat(SHARED)), raise_error=False,
                   request_timeout=60)
        for _ in range(8)
    ]
    await until(lambda: alpha.chats_started == 2 and beta.chats_started == 2)
    assert front.foreman.queue.waiting == 4
    # A model only alpha has waits behind alpha's slots, but beta's model is not held up by it.
    alpha_only = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat(ALPHA_ONLY)))
    await until(lambda: front.foreman.queue.waiting == 5)
    health = json.loads((await front.fetch("/healthz")).body)
    assert [(t["in_flight"], t["concurrency"]) for t in health["targets"]] == [(2, 2), (2, 2)]
    for s in (alpha, beta):
        s.hold.set()
    answers = await asyncio.gather(*shared, alpha_only)
    assert all(a.code == 200 for a in answers)
    assert alpha.max_active_chats == 2 and beta.max_active_chats == 2
    assert alpha.chats_started + beta.chats_started == 9
    assert alpha.chats_started >= 3 and beta.chats_started >= 2


async def test_a_model_waiting_for_a_busy_target_does_not_block_others(start_foreman, stand_ins) -> None:
    alpha, beta, _ = stand_ins
    front = await start(start_foreman, stand_ins, FOREMAN_TOKENS="token-one,token-two")
    one = {"Authorization": "Bearer token-one"}
    two = {"Authorization": "Bearer token-two"}
    alpha.hold = asyncio.Event()
    first = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat(ALPHA_ONLY), headers=one))
    await until(lambda: alpha.chats_started == 1)
    second = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat(ALPHA_ONLY), headers=one))
    await until(lambda: front.foreman.queue.waiting == 1)
    # The least served client's request must wait for alpha; another client's
    # request for beta's model goes now, whatever the fair order says.
    answer = await front.fetch("/api/chat", method="POST", body=chat(BETA_ONLY), headers=two, request_timeout=10)
    assert answer.code == 200
    alpha.hold.set()
    assert [r.code for r in await asyncio.gather(first, second)] == [200, 200]


async def test_a_target_taken_down_others_serve_and_its_model_waits_for_it(start_foreman, stand_ins) -> None:
    alpha, beta, _ = stand_ins
    front = await start(start_foreman, stand_ins, FOREMAN_QUEUE_TIMEOUT="60s")
    a_name, b_name, _ = names(stand_ins)
    port = alpha.port
    await alpha.stop()
    # Shared models go to beta; alpha's own waits.
    waiting = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat(ALPHA_ONLY)))
    shared = await front.fetch("/api/chat", method="POST", body=chat(SHARED))
    assert shared.code == 200 and shared.headers["X-Foreman-Target"] == b_name
    await until(lambda: front.foreman.queue.waiting == 1 and not front.foreman.targets.first.reachable)
    for _ in range(3):
        again = await front.fetch("/api/chat", method="POST", body=chat(SHARED))
        assert again.headers["X-Foreman-Target"] == b_name
    health = await front.fetch("/healthz")
    assert health.code == 200
    document = json.loads(health.body)
    assert document["status"] == "partial"
    assert [t["degraded"] for t in document["targets"]] == [True, False]
    tags = json.loads((await front.fetch("/api/tags")).body)
    assert ALPHA_ONLY in [m["name"] for m in tags["models"]]  # the last known while it is away
    assert not waiting.done()
    alpha.listen(port)
    answer = await asyncio.wait_for(waiting, 30)
    assert answer.code == 200 and answer.headers["X-Foreman-Target"] == a_name
    document = json.loads((await front.fetch("/healthz")).body)
    assert document["status"] == "ok"


async def test_a_model_only_on_an_away_target_times_out_saying_so(start_foreman, stand_ins) -> None:
    alpha, _, _ = stand_ins
    front = await start(start_foreman, stand_ins, FOREMAN_QUEUE_TIMEOUT="1s")
    await alpha.stop()
    answer = await front.fetch("/api/chat", method="POST", body=chat(ALPHA_ONLY))
    assert answer.code == 503
    message = json.loads(answer.body)["error"]
    assert "unreachable" in message and names(stand_ins)[0] in message
    assert alpha.chats_started == 0


async def test_healthz_degraded_when_no_target_answers(start_foreman, stand_ins) -> None:
    front = await start(start_foreman, stand_ins)
    document = json.loads((await front.fetch("/healthz")).body)
    assert document["status"] == "ok"
    target = document["targets"][0]
    assert set(target) == {"name", "url", "degraded", "last_poll", "last_error", "models", "in_flight", "concurrency"}
    assert target["models"] == 2 and target["url"] == stand_ins[0].url
    for s in stand_ins[:2]:
        await s.stop()
    for machine in front.foreman.targets.machines:
        await machine.inventory.refresh()
    health = await front.fetch("/healthz")
    assert health.code == 503
    assert json.loads(health.body)["status"] == "degraded"


async def test_tags_and_v1_models_are_the_union_once_per_model(start_foreman, stand_ins) -> None:
    stand_ins[1].models.append("Shared")  # the same model by Ollama's name rules
    front = await start(start_foreman, stand_ins)
    tags = json.loads((await front.fetch("/api/tags")).body)
    assert [m["name"] for m in tags["models"]] == [ALPHA_ONLY, SHARED, BETA_ONLY]
    again = await front.fetch("/api/tags")
    assert json.loads(again.body) == tags
    v1 = json.loads((await front.fetch("/v1/models")).body)
    assert [m["id"] for m in v1["data"]] == [ALPHA_ONLY, SHARED, BETA_ONLY]


async def test_ps_is_the_union_of_resident_models(start_foreman, stand_ins) -> None:
    front = await start(start_foreman, stand_ins)
    for model in (ALPHA_ONLY, BETA_ONLY):
        assert (await front.fetch("/api/chat", method="POST", body=chat(model))).code == 200
    ps = json.loads((await front.fetch("/api/ps")).body)
    assert sorted(m["name"] for m in ps["models"]) == [ALPHA_ONLY, BETA_ONLY]


async def test_show_goes_to_a_target_that_has_the_model(start_foreman, stand_ins) -> None:
    front = await start(start_foreman, stand_ins)
    shown = await front.fetch("/api/show", method="POST", body={"model": BETA_ONLY})
    assert shown.code == 200 and shown.headers["X-Foreman-Target"] == names(stand_ins)[1]
    version = await front.fetch("/api/version")
    assert version.code == 200 and version.headers["X-Foreman-Target"] in names(stand_ins)[:2]


async def test_management_goes_to_the_target_the_header_names(start_foreman, stand_ins) -> None:
    alpha, beta, _ = stand_ins
    front = await start(start_foreman, stand_ins, FOREMAN_ADMIN_TOKENS="admin-token")
    auth = {"Authorization": "Bearer admin-token"}
    refused = await front.fetch("/api/pull", method="POST", body={"model": "new-one", "stream": False}, headers=auth)
    assert refused.code == 400
    error = json.loads(refused.body)["error"]
    assert all(name in error for name in names(stand_ins)[:2])
    unknown = await front.fetch(
        "/api/pull", method="POST", body={"model": "new-one", "stream": False},
        headers={**auth, "X-Foreman-Target": "elsewhere"},
    )
    assert unknown.code == 400
    pulled = await front.fetch(
        "/api/pull", method="POST", body={"model": "new-one", "stream": False},
        headers={**auth, "X-Foreman-Target": names(stand_ins)[1]},
    )
    assert pulled.code == 200 and pulled.headers["X-Foreman-Target"] == names(stand_ins)[1]
    assert beta.pulls_started == 1 and alpha.pulls_started == 0
    # That target was re-polled: the new model is routed there at once.
    await until(lambda: front.foreman.targets.machines[1].has("new-one"))
    answer = await front.fetch("/api/chat", method="POST", body=chat("new-one"))
    assert answer.code == 200 and answer.headers["X-Foreman-Target"] == names(stand_ins)[1]


async def test_a_client_that_hangs_up_closes_its_target_connection(start_foreman, stand_ins) -> None:
    alpha, beta, _ = stand_ins
    front = await start(start_foreman, stand_ins)
    beta.hold = asyncio.Event()
    request = asyncio.ensure_future(
        front.fetch("/api/chat", method="POST", body=chat(BETA_ONLY, stream=True), request_timeout=1)
    )
    await until(lambda: beta.chats_started == 1)
    with pytest.raises(HTTPTimeoutError):
        await request  # the client gives up after 1 s
    await beta.wait_for(lambda: beta.chats_disconnected == 1)
    assert front.foreman.targets.machines[1].in_flight == 0
    assert alpha.chats_started == 0


async def test_one_target_sends_its_own_tags_bytes(start_foreman, stand_ins) -> None:
    front = await start(start_foreman, stand_ins, 1)
    tags = await front.fetch("/api/tags")
    direct = await front.client().fetch(stand_ins[0].url + "/api/tags")
    assert tags.body == direct.body
    health = json.loads((await front.fetch("/healthz")).body)
    assert "targets" not in health and health["status"] == "ok"


async def test_metrics_and_the_log_line_name_the_target(start_foreman, stand_ins, caplog) -> None:
    caplog.set_level(logging.INFO, logger="foreman.access")
    front = await start(start_foreman, stand_ins, FOREMAN_METRICS_PUBLIC="1")
    b_name = names(stand_ins)[1]
    assert (await front.fetch("/api/chat", method="POST", body=chat(BETA_ONLY))).code == 200
    scrape = (await front.fetch("/metrics")).body.decode()
    assert f'foreman_target_requests_total{{target="{b_name}"}} 1.0' in scrape
    assert f'foreman_target_reachable{{target="{b_name}"}} 1.0' in scrape
    assert f'foreman_target_in_flight{{target="{b_name}"}} 0.0' in scrape
    assert any(f"target={b_name}" in r.getMessage() for r in caplog.records if r.name == "foreman.access")


async def test_a_waited_for_target_with_a_wake_mac_is_woken_and_the_others_are_not(
    start_foreman, stand_ins, tmp_path, io_loop
) -> None:
    from tests.test_wake import PacketCatcher

    alpha, beta, _ = stand_ins
    catcher = PacketCatcher(io_loop)
    try:
        path = tmp_path / "targets.toml"
        path.write_text(
            f'[[target]]\nname = "alpha"\nurl = "{alpha.url}"\nwake_mac = "a4:83:e7:12:34:56"\n'
            f'wake_address = "{catcher.address}"\n'
            f'[[target]]\nname = "beta"\nurl = "{beta.url}"\n'
        )
        front = start_foreman(
            "", FOREMAN_OLLAMA_URL="", FOREMAN_TARGETS_FILE=str(path), FOREMAN_QUEUE_TIMEOUT="60s"
        )
        await front.ready()
        port = alpha.port
        await alpha.stop()
        waiting = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat(ALPHA_ONLY)))
        await until(lambda: len(catcher.packets) >= 1)
        assert catcher.packets[0][1] == b"\xff" * 6 + bytes.fromhex("a483e7123456") * 16
        other = await front.fetch("/api/chat", method="POST", body=chat(BETA_ONLY))
        assert other.code == 200 and other.headers["X-Foreman-Target"] == "beta"
        alpha.listen(port)
        answer = await asyncio.wait_for(waiting, 30)
        assert answer.code == 200 and answer.headers["X-Foreman-Target"] == "alpha"
        assert not front.foreman.targets.first.waker.waking
    finally:
        catcher.close()


async def test_a_target_holding_the_model_in_memory_is_preferred(start_foreman, stand_ins) -> None:
    alpha, beta, _ = stand_ins
    front = await start(start_foreman, stand_ins, FOREMAN_MODEL_AFFINITY="30s")
    # beta loads the shared model (a client of its own); foreman learns it from /api/ps.
    loaded = await front.client().fetch(beta.url + "/api/chat", method="POST", body=json.dumps(chat(SHARED)))
    assert loaded.code == 200
    await front.foreman.targets.machines[1].inventory.refresh_resident()
    answer = await front.fetch("/api/chat", method="POST", body=chat(SHARED))
    assert answer.headers["X-Foreman-Target"] == names(stand_ins)[1]
    assert front.foreman.targets.machines[1].model_loads == 0
