"""Running as a service: readiness, SIGHUP token rotation, drain of stragglers, logs, /metrics."""

from __future__ import annotations

import asyncio
import json
import signal
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import StreamReader, ndjson
from tests.test_process import PYTHON_M, fetch, foreman_env, http, started  # noqa: F401  (http is a fixture)

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello there"}]}


def metric_values(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus exposition, parsed by prometheus-client's own parser."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


# --- /metrics ---------------------------------------------------------------------


async def test_metrics_parse_and_count_what_happened(foreman, stub) -> None:
    await foreman.ready()
    for _ in range(2):
        assert (await foreman.fetch("/api/chat", method="POST", body=CHAT)).code == 200
    assert (await foreman.fetch("/api/chat", method="POST", body={**CHAT, "model": "ghost"})).code == 404
    response = await foreman.fetch("/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    values = metric_values(response.body.decode())
    assert values[("foreman_requests_total", (("route", "/api/chat"), ("status", "200")))] == 2
    assert values[("foreman_requests_total", (("route", "/api/chat"), ("status", "404")))] == 1
    assert values[("foreman_queue_wait_seconds_count", ())] == 2
    assert values[("foreman_time_to_first_byte_seconds_count", (("route", "/api/chat"),))] == 3
    assert values[("foreman_queue_waiting", ())] == 0
    assert values[("foreman_queue_in_flight", ())] == 0
    assert values[("foreman_target_up", ())] == 1
    assert values[("foreman_inventory_models", ())] == len(stub.models)
    assert values[("foreman_last_successful_poll_timestamp_seconds", ())] > 1.7e9
    # The stand-in's final chunk reports eval_count; both chats are counted.
    final = ndjson((await foreman.client().fetch(stub.url + "/api/chat", method="POST", body=json.dumps(CHAT))).body)[-1]
    assert values[("foreman_generated_tokens_total", ())] == 2 * final["eval_count"]


async def test_metrics_show_the_target_down_and_the_queue(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="1", FOREMAN_POLL_INTERVAL="100ms")
    await front.ready()
    stub.hold = asyncio.Event()
    held = [asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=CHAT)) for _ in range(3)]
    await stub.wait_for(lambda: stub.chats_started == 1)
    while front.foreman.queue.waiting < 2:
        await asyncio.sleep(0.01)
    values = metric_values((await front.fetch("/metrics")).body.decode())
    assert values[("foreman_queue_waiting", ())] == 2 and values[("foreman_queue_in_flight", ())] == 1
    stub.hold.set()
    await asyncio.gather(*held)
    await stub.stop()
    while not front.inventory.degraded:
        await asyncio.sleep(0.02)
    values = metric_values((await front.fetch("/metrics")).body.decode())
    assert values[("foreman_target_up", ())] == 0


async def test_metrics_need_a_token_unless_public(start_foreman, stub) -> None:
    closed = start_foreman(FOREMAN_TOKENS="secret-token")
    await closed.ready()
    assert (await closed.fetch("/metrics")).code == 401
    allowed = await closed.fetch("/metrics", headers={"Authorization": "Bearer secret-token"})
    assert allowed.code == 200 and b"secret-token" not in allowed.body
    public = start_foreman(FOREMAN_TOKENS="secret-token", FOREMAN_METRICS_PUBLIC="1")
    await public.ready()
    assert (await public.fetch("/metrics")).code == 200
    assert (await public.fetch("/api/tags")).code == 401  # only /metrics opens up


# --- sd_notify ----------------------------------------------------------------------


@pytest.mark.timeout(seconds=60)
async def test_ready_is_notified_after_listening_and_the_first_poll(http, stub, tmp_path) -> None:  # noqa: F811
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.setblocking(False)
    loop = asyncio.get_running_loop()
    stub.tags_hold = asyncio.Event()  # the first poll hangs until released
    try:
        async with started(PYTHON_M, foreman_env(stub.url, NOTIFY_SOCKET=path)) as child:
            await stub.wait_for(lambda: stub.tags_polls == 1)
            with pytest.raises(BlockingIOError):
                receiver.recv(1024)  # listening, but the first poll has not finished
            stub.tags_hold.set()
            message = (await asyncio.wait_for(loop.sock_recv(receiver, 1024), 20)).decode()
            assert "READY=1" in message.splitlines()
            assert (await fetch(http, child.url + "/healthz")).code == 200
            child.send(signal.SIGTERM)
            stopping = (await asyncio.wait_for(loop.sock_recv(receiver, 1024), 20)).decode()
            assert "STOPPING=1" in stopping.splitlines()
            assert await child.wait_exit() == 0
    finally:
        receiver.close()


# --- SIGHUP --------------------------------------------------------------------------


@pytest.mark.timeout(seconds=60)
async def test_sighup_rotates_tokens_without_dropping_connections(http, stub, tmp_path) -> None:  # noqa: F811
    tokens = tmp_path / "tokens"
    tokens.write_text("old-token\n")
    admins = tmp_path / "admins"
    admins.write_text("old-admin\n")
    env = foreman_env(stub.url, FOREMAN_TOKENS_FILE=str(tokens), FOREMAN_ADMIN_TOKENS_FILE=str(admins))
    async with started(PYTHON_M, env) as child:
        bearer = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
        while (await fetch(http, child.url + "/healthz")).code != 200:  # the first poll
            await asyncio.sleep(0.05)
        assert (await fetch(http, child.url + "/api/tags", headers=bearer("old-token"))).code == 200

        # A stream in flight across the reload keeps going.
        gate = asyncio.Event()

        async def pace(i: int) -> None:
            await gate.wait()

        stub.pace = pace
        reader = StreamReader()
        streaming = http.fetch(reader.request(child.url + "/api/chat", CHAT, headers=bearer("old-token")))
        await reader.wait_lines(1, timeout=20)

        tokens.write_text("# rotated\nnew-token\n")
        admins.write_text("new-admin\n")
        child.send(signal.SIGHUP)
        await child.wait_line(lambda line: "reload:" in line)
        assert (await fetch(http, child.url + "/api/tags", headers=bearer("old-token"))).code == 401
        assert (await fetch(http, child.url + "/api/tags", headers=bearer("new-token"))).code == 200
        # A bad file keeps the tokens in force, and says why.
        tokens.unlink()
        child.send(signal.SIGHUP)
        await child.wait_line(lambda line: "keeping the current tokens" in line)
        assert (await fetch(http, child.url + "/api/tags", headers=bearer("new-token"))).code == 200
        # So does a bad field: neither the new token nor the new name takes effect.
        tokens.write_text("new-token name=newbie\nnewer-token name=new weight=lots\n")
        child.send(signal.SIGHUP)
        await child.wait_line(lambda line: "keeping the current tokens" in line and "line 2" in line)
        assert (await fetch(http, child.url + "/api/tags", headers=bearer("newer-token"))).code == 401
        assert (await fetch(http, child.url + "/api/tags", headers=bearer("new-token"))).code == 200
        # A good file with fields names its clients from then on.
        tokens.write_text("new-token name=newbie weight=2\n")
        child.send(signal.SIGHUP)
        await child.wait_line(lambda line: "reload:" in line and "1 of them named or weighted" in line)
        assert (await fetch(http, child.url + "/api/tags", headers=bearer("new-token"))).code == 200
        await child.wait_line(lambda line: "GET /api/tags 200" in line and "client=newbie" in line)

        gate.set()
        response = await streaming
        assert response.code == 200 and reader.lines[-1]["done"] is True
        # The admin file was rotated too.
        stub.pace = None
        pull = await fetch(http, child.url + "/api/pull", method="POST", body={"model": "x", "stream": False},
                           headers=bearer("new-admin"))
        assert pull.code == 200, pull.body
        assert (await fetch(http, child.url + "/api/pull", method="POST", body={"model": "x"},
                            headers=bearer("old-admin"))).code == 401
        assert not [t for t in ("old-token", "new-token", "newer-token") if t in child.log]
        child.send(signal.SIGTERM)
        assert await child.wait_exit() == 0


# --- drain ---------------------------------------------------------------------------


@pytest.mark.timeout(seconds=60)
async def test_drain_ends_a_straggler_with_an_error_line_and_exits_0(http, stub) -> None:  # noqa: F811
    gate = asyncio.Event()

    async def pace(i: int) -> None:
        await gate.wait()  # this stream never ends on its own

    stub.pace = pace
    env = foreman_env(stub.url, FOREMAN_SHUTDOWN_GRACE="1s", FOREMAN_LOG_FORMAT="json")
    async with started(PYTHON_M, env) as child:
        while (await fetch(http, child.url + "/healthz")).code != 200:  # the first poll
            await asyncio.sleep(0.05)
        reader = StreamReader()
        streaming = http.fetch(reader.request(child.url + "/api/chat", CHAT), raise_error=False)
        await reader.wait_lines(1, timeout=20)
        child.send(signal.SIGTERM)
        response = await asyncio.wait_for(streaming, 20)
        assert response.code == 200
        assert reader.lines[0]["done"] is False
        assert set(reader.lines[-1]) == {"error"} and "shutting down" in reader.lines[-1]["error"]
        assert await child.wait_exit() == 0
        await stub.wait_for(lambda: stub.chats_disconnected == 1)
        # Every log line is one JSON object; the request line says what happened.
        records = [json.loads(line) for line in child.stderr if line.strip()]
        chat = next(r for r in records if r.get("path") == "/api/chat")
        assert chat["status"] == 200 and chat["model"] == "llama3.2"
        assert chat["bytes"] > 0 and chat["ttfb_ms"] is not None and chat["queue_wait"] is not None


async def test_request_log_carries_the_final_chunks_stats(foreman, stub, caplog) -> None:
    await foreman.ready()
    import logging

    with caplog.at_level(logging.INFO, logger="foreman.access"):
        response = await foreman.fetch("/api/chat", method="POST", body=CHAT)
    final = ndjson(response.body)[-1]
    record = next(r for r in caplog.records if getattr(r, "path", None) == "/api/chat")
    assert record.eval_count == final["eval_count"]
    assert record.eval_duration == final["eval_duration"]
    assert record.bytes == len(response.body)
    assert 0 <= record.ttfb_ms <= record.duration_ms


async def test_times_in_the_request_log_survive_a_wall_clock_jump(foreman, stub, caplog, monkeypatch) -> None:
    """Durations and time to first byte are read off one monotonic clock.

    A Mac that wakes up or syncs its clock moves the wall clock; a request's
    timings must not move with it.
    """
    import logging
    import time

    await foreman.ready()
    real_time = time.time
    stub.hold = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="foreman.access"):
        answer = asyncio.ensure_future(foreman.fetch("/api/chat", method="POST", body=CHAT))
        await stub.wait_for(lambda: stub.chats_started == 1)
        # Between the request's arrival and its first byte, the clock leaps.
        monkeypatch.setattr(time, "time", lambda: real_time() + 3600.0)
        stub.hold.set()
        response = await answer
    assert response.code == 200
    record = next(r for r in caplog.records if getattr(r, "path", None) == "/api/chat")
    assert 0 <= record.ttfb_ms <= record.duration_ms < 60_000
