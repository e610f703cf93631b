"""GET /foreman/status and the page's routes, against a scripted workload on the stand-in.

Two named clients, a queue, a stream running, a target away: the document
must say exactly what happened, cost the targets nothing, and never show a
token.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time

import pytest

from foreman.handlers import routes
from foreman.ledger import Ledger
from foreman.stub.server import ROUTES
from tests.helpers import Gate, StreamReader, bearer, free_port, raw_post, serve_raw, tokens_file, until

ALICE, BOB, ADMIN = "tok-alice-5f1e", "tok-bob-77c2", "tok-admin-0a9d"
LONG_PROMPT = " ".join(f"word{i}" for i in range(40))


TOKENS = f"{ALICE} name=alice weight=2\n{BOB} name=bob\n"


def chat(stream: bool = True) -> dict:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": LONG_PROMPT}], "stream": stream}


async def status(front, token: str = ALICE) -> dict:
    response = await front.fetch("/foreman/status", headers=bearer(token))
    assert response.code == 200, response.body
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    return json.loads(response.body)


def by_name(entries: list[dict]) -> dict[str, dict]:
    return {entry["name"]: entry for entry in entries}


def parsed_time(text: str) -> datetime.datetime:
    assert text.endswith("Z")
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_the_document_says_what_happened_in_a_scripted_workload(start_foreman, stub, tmp_path) -> None:
    away = f"http://127.0.0.1:{free_port()}"  # a target that is away
    front = start_foreman(
        f"{stub.url},{away}",
        FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS),
        FOREMAN_ADMIN_TOKENS=ADMIN,
        FOREMAN_CONCURRENCY="1",
        FOREMAN_MODEL_AFFINITY="30s",
    )
    await front.ready()
    here, there = stub.url.removeprefix("http://"), away.removeprefix("http://")
    gate = stub.pace = Gate(open_lines=3)
    http = front.client(max_clients=10)

    # alice's stream starts and sends three lines; bob's two requests queue behind it.
    alice = StreamReader()
    alice_done = http.fetch(alice.request(front.url + "/api/chat", chat(), headers=bearer(ALICE)), raise_error=False)
    await alice.wait_lines(3)
    bob_done = [
        http.fetch(
            front.url + "/api/chat", method="POST", body=json.dumps(chat(stream=False)),
            headers=bearer(BOB), raise_error=False, request_timeout=60,
        )
        for _ in range(2)
    ]
    await until(lambda: front.foreman.queue.waiting == 2)
    # The load alice's request caused makes foreman ask /api/ps again: sizes arrive with it.
    await until(lambda: any(m.size for m in front.foreman.targets.first.inventory.resident.described()))

    asked_before = len(stub.requests)
    document = await status(front)
    assert len(stub.requests) == asked_before, "reading the status asked the target"

    assert document["foreman"]["version"]
    assert document["queue"] == {"waiting": 2, "in_flight": 1, "concurrency": 2, "max_queue": 128, "paused": False}

    targets = by_name(document["targets"])
    assert list(targets) == [here, there]
    up, gone = targets[here], targets[there]
    assert up["reachable"] is True and up["last_error"] is None
    assert up["url"] == stub.url and up["models"] == len(stub.models)
    assert parsed_time(up["last_poll"])
    assert up["in_flight"] == 1 and up["concurrency"] == 1
    [resident] = up["resident"]
    assert resident["name"] == "llama3.2:latest"
    assert resident["size"] > 0 and resident["size_vram"] > 0 and resident["expires_at"]
    assert up["wake"] is None
    assert gone["reachable"] is False and gone["last_error"]
    assert gone["models"] == 0 and gone["last_poll"] is None and gone["in_flight"] == 0

    clients = by_name(document["clients"])
    assert list(clients) == ["alice", "bob"]
    assert clients["alice"] == {
        "name": "alice", "weight": 2.0, "waiting": 0, "in_flight": 1, "service_seconds": 0.0, "requests": 0,
    }
    assert clients["bob"] == {
        "name": "bob", "weight": 1.0, "waiting": 2, "in_flight": 0, "service_seconds": 0.0, "requests": 0,
    }

    [running] = document["in_flight"]
    assert running["client"] == "alice" and running["model"] == "llama3.2"
    assert running["target"] == here and running["route"] == "/api/chat" and running["method"] == "POST"
    assert running["tokens"] == 3
    assert running["bytes"] == len(alice.raw)
    assert running["elapsed"] > 0 and running["queue_wait"] is not None
    assert parsed_time(running["started"]) <= parsed_time(document["foreman"]["now"])

    assert document["recent"] == []
    history = document["history"]
    assert len(history) == 60
    starts = [parsed_time(point["time"]) for point in history]
    assert all(b - a == datetime.timedelta(minutes=1) for a, b in zip(starts, starts[1:]))
    # The last two minutes: a minute may have begun since the queue formed.
    assert max(p["queue_depth"] for p in history[-2:]) == 2
    assert sum(p["requests"] for p in history) == 0

    text = json.dumps(document)
    for token in (ALICE, BOB, ADMIN):
        assert token not in text

    # Everything runs to its end.
    gate.released.set()
    answers = await asyncio.gather(alice_done, *bob_done)
    assert [a.code for a in answers] == [200, 200, 200]
    await until(lambda: len(front.foreman.ledger.recent()) == 3)
    document = await status(front, BOB)
    assert document["in_flight"] == [] and document["queue"]["waiting"] == 0

    recent = document["recent"]
    assert [r["client"] for r in recent] == ["bob", "bob", "alice"], "newest first"
    final = alice.lines[-1]
    oldest = recent[-1]
    assert oldest["status"] == 200 and oldest["model"] == "llama3.2" and oldest["target"] == here
    assert oldest["tokens"] == final["eval_count"]
    assert oldest["tokens_per_second"] == pytest.approx(final["eval_count"] / (final["eval_duration"] / 1e9), abs=0.01)
    assert oldest["duration"] > 0
    assert all(r["queue_wait"] > 0 for r in recent[:2]), "bob's requests waited for alice's"
    assert all(r["route"] == "/api/chat" and r["method"] == "POST" for r in recent)
    times = [parsed_time(r["time"]) for r in recent]
    assert times == sorted(times, reverse=True)

    clients = by_name(document["clients"])
    assert (clients["alice"]["requests"], clients["bob"]["requests"]) == (1, 2)
    assert clients["alice"]["service_seconds"] > 0 and clients["bob"]["service_seconds"] > 0
    assert clients["alice"]["in_flight"] == clients["bob"]["waiting"] == 0

    history = document["history"]
    assert sum(p["requests"] for p in history) == 3
    assert sum(p["model_loads"] for p in history) == 1
    assert sum(p["tokens_per_second"] for p in history[-2:]) > 0


async def test_a_client_that_leaves_mid_stream_is_listed_as_gone(start_foreman, stub, caplog) -> None:
    caplog.set_level(logging.INFO, "foreman.access")
    front = start_foreman(FOREMAN_METRICS_PUBLIC="1")
    await front.ready()
    gate = stub.pace = Gate(open_lines=2)
    connection = await raw_post(front.url, "/api/chat", chat())
    await connection.read_until(b"said", max_bytes=1 << 16)  # the answer's second line
    connection.close()  # the client hangs up mid-stream
    await until(lambda: stub.chats_disconnected == 1)
    await until(lambda: len(front.foreman.ledger.recent()) == 1)
    gate.released.set()
    [gone] = (await status(front))["recent"]
    assert gone["status"] == 499 and gone["client"] == "127.0.0.1" and gone["model"] == "llama3.2"
    # The log and the metrics say the same; a client hanging up is no warning.
    [line] = [r for r in caplog.records if r.name == "foreman.access" and "/api/chat" in r.getMessage()]
    assert " 499 " in line.getMessage() and line.levelno == logging.INFO
    metrics = (await front.fetch("/metrics")).body.decode()
    assert 'foreman_requests_total{route="/api/chat",status="499"} 1.0' in metrics


async def test_the_document_is_behind_the_api_tokens_like_metrics(start_foreman, stub, tmp_path) -> None:
    front = start_foreman(FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS))
    await front.ready()
    refused = await front.fetch("/foreman/status")
    assert refused.code == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(refused.body) == {"error": "missing or invalid bearer token"}
    assert (await front.fetch("/foreman/status", headers=bearer("tok-wrong"))).code == 401
    assert (await front.fetch("/foreman/status", headers=bearer(BOB))).code == 200

    public = start_foreman(FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS), FOREMAN_METRICS_PUBLIC="1")
    await public.ready()
    answer = await public.fetch("/foreman/status")
    assert answer.code == 200
    # Named clients are listed while idle; their tokens never are.
    assert [c["name"] for c in json.loads(answer.body)["clients"]] == ["alice", "bob"]
    assert ALICE not in answer.body.decode() and BOB not in answer.body.decode()


async def test_a_target_url_password_never_shows(start_foreman, stub) -> None:
    url = stub.url.replace("http://", "http://user:s3cret-pw@")
    front = start_foreman(url)
    await front.ready()
    body = (await front.fetch("/foreman/status")).body.decode()
    assert "s3cret-pw" not in body
    assert json.loads(body)["targets"][0]["url"] == stub.url


async def test_the_page_and_its_files_need_no_token_and_run_only_their_own_code(start_foreman, stub, tmp_path) -> None:
    front = start_foreman(FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS))
    for path, kind in (("/foreman/", "text/html"), ("/foreman/status.js", "text/javascript"),
                       ("/foreman/status.css", "text/css")):
        answer = await front.fetch(path)
        assert answer.code == 200, path
        assert answer.headers["Content-Type"].startswith(kind)
        policy = answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert b"http://" not in answer.body and b"https://" not in answer.body, f"{path} loads something from elsewhere"
    head = await front.fetch("/foreman/", method="HEAD")
    assert head.code == 200 and head.body == b""
    assert int(head.headers["Content-Length"]) == len((await front.fetch("/foreman/")).body)
    moved = await front.fetch("/foreman", follow_redirects=False)
    assert moved.code == 301 and moved.headers["Location"] == "/foreman/"
    missing = await front.fetch("/foreman/nothing-here")
    assert missing.code == 404 and json.loads(missing.body) == {"error": "no route for GET /foreman/nothing-here"}
    posted = await front.fetch("/foreman/status", method="POST", body="{}", headers=bearer(ALICE))
    assert posted.code == 405 and "error" in json.loads(posted.body)
    assert not [r for r in stub.requests if r.path.startswith("/foreman")]


async def test_a_preflight_for_foremans_own_routes_never_reaches_a_target(start_foreman, stub) -> None:
    front = start_foreman()
    await front.ready()
    asked = len(stub.requests)
    answer = await front.fetch(
        "/foreman/status", method="OPTIONS",
        headers={"Origin": "http://example.invalid", "Access-Control-Request-Method": "GET"},
    )
    assert answer.code == 405
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert len(stub.requests) == asked


def test_foremans_own_routes_never_take_a_path_ollama_serves() -> None:
    # The stand-in serves Ollama's routes, native and /v1.
    ollama_paths = [route.path for route in ROUTES]
    assert ollama_paths and not [p for p in ollama_paths if p.lstrip("^").startswith("/foreman")]
    own = [pattern for pattern, handler in routes if getattr(handler, "answers_preflights", False)]
    assert own and all(p.startswith("/foreman") for p in own)
    for pattern, _ in routes:
        if pattern.startswith("/foreman"):
            assert pattern in ("/foreman", "/foreman/status", "/foreman/([^/]*)")
        else:
            assert pattern in ("/healthz", "/metrics", "/") or pattern.startswith(("/api/", "/v1/")), pattern


async def test_a_queue_that_stands_through_a_minute_shows_in_that_minute(start_foreman, stub, monkeypatch) -> None:
    monkeypatch.setattr("foreman.server.DEPTH_SAMPLE_INTERVAL", 0.02)
    front = start_foreman(FOREMAN_CONCURRENCY="1")
    await front.ready()
    stub.hold = asyncio.Event()
    http = front.client()
    answers = [
        http.fetch(front.url + "/api/chat", method="POST", body=json.dumps(chat(stream=False)), raise_error=False)
        for _ in range(3)
    ]
    await until(lambda: front.foreman.queue.waiting == 2)
    # An hour on, in a minute no request joined the queue in, it still stands.
    later = Ledger(clock=lambda: time.time() + 3600)
    front.foreman.services.ledger = later
    await until(lambda: later.history()[-1][1].queue_depth == 2)
    stub.hold.set()
    assert [a.code for a in await asyncio.gather(*answers)] == [200, 200, 200]


async def test_a_request_that_leaves_the_queue_is_listed_with_its_wait(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="1")
    await front.ready()
    stub.hold = asyncio.Event()
    http = front.client()
    running = http.fetch(front.url + "/api/chat", method="POST", body=json.dumps(chat(stream=False)), raise_error=False)
    await until(lambda: stub.chats_started == 1)
    waiting = await raw_post(front.url, "/api/chat", chat())
    await until(lambda: front.foreman.queue.waiting == 1)
    waiting.close()
    await until(lambda: len(front.foreman.ledger.recent()) == 1)
    [left] = (await status(front))["recent"]
    assert left["status"] == 499 and left["queue_wait"] > 0 and left["target"] is None
    stub.hold.set()
    assert (await running).code == 200


async def test_a_target_never_polled_yet_says_so(start_foreman, stub) -> None:
    stub.tags_hold = asyncio.Event()
    front = start_foreman()
    await until(lambda: stub.tags_polls == 1 or any(r.path == "/api/tags" for r in stub.requests))
    [target] = (await status(front))["targets"]
    assert target["reachable"] is False and target["last_error"] == "not polled yet"
    # Model affinity is off here (tests/conftest.py): /api/ps is not asked, so nobody knows.
    assert target["resident"] is None
    stub.tags_hold.set()
    await front.ready()
    [target] = (await status(front))["targets"]
    assert target["reachable"] is True and target["last_error"] is None


async def test_a_target_reporting_an_absurd_token_count_breaks_nothing(start_foreman) -> None:
    final = b'{"model":"m","done":true,"eval_count":' + b"9" * 400 + b',"eval_duration":' + b"9" * 400 + b"}\n"

    async def target(head: bytes, writer: asyncio.StreamWriter) -> None:
        if b"/api/tags" in head:
            body = b'{"models":[{"name":"m:latest","model":"m:latest"}]}'
            kind = b"application/json"
        else:
            body = b'{"model":"m","message":{"content":"hi"},"done":false}\n' + final
            kind = b"application/x-ndjson"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()

    server, url = await serve_raw(target)
    try:
        front = start_foreman(url)
        await front.ready()
        answer = await front.fetch("/api/chat", method="POST", body={"model": "m", "messages": []})
        assert answer.code == 200 and answer.body.endswith(final)
        await until(lambda: len(front.foreman.ledger.recent()) == 1)
        [entry] = (await status(front))["recent"]
        assert entry["status"] == 200 and entry["tokens"] is None
        assert (await front.fetch("/metrics")).code == 200
    finally:
        server.close()
