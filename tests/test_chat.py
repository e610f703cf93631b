"""POST /api/chat through foreman: validation, streaming relay, disconnects, faults."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.helpers import StreamReader, last_request, ndjson, raw_post, until

MODEL = "llama3.2"


def chat_body(**extra) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]}
    body.update(extra)
    return body


async def test_streams_by_default_with_targets_status_and_type(foreman, stub) -> None:
    await foreman.ready()
    body = chat_body()
    assert "stream" not in body
    response = await foreman.fetch("/api/chat", method="POST", body=body)
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    lines = ndjson(response.body)
    assert len(lines) > 2
    assert all(line["done"] is False for line in lines[:-1])
    assert lines[-1]["done"] is True
    # The target saw the client's bytes unchanged.
    assert last_request(stub, "/api/chat").body == json.dumps(body).encode()


async def test_same_bytes_as_the_target_apart_from_timestamps(foreman, stub) -> None:
    await foreman.ready()
    body = chat_body(options={"num_predict": 7})
    via_foreman = ndjson((await foreman.fetch("/api/chat", method="POST", body=body)).body)
    direct = ndjson((await foreman.client().fetch(stub.url + "/api/chat", method="POST", body=json.dumps(body))).body)
    strip = lambda lines: [{k: v for k, v in line.items() if "duration" not in k and k != "created_at"} for line in lines]
    assert strip(via_foreman) == strip(direct)
    assert len(via_foreman) == 8


async def test_non_streaming(foreman, stub) -> None:
    await foreman.ready()
    response = await foreman.fetch("/api/chat", method="POST", body=chat_body(stream=False))
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    answer = json.loads(response.body)
    assert answer["done"] is True
    assert answer["message"]["role"] == "assistant" and answer["message"]["content"]


async def test_each_chunk_reaches_client_before_the_next_exists(foreman, stub) -> None:
    await foreman.ready()
    release = [asyncio.Event() for _ in range(4)]
    reader = StreamReader()

    async def pace(i: int) -> None:
        # The stand-in produces chunk i only once the client holds chunk i-1.
        await release[i - 1].wait()

    stub.pace = pace
    fetch = foreman.client().fetch(reader.request(foreman.url + "/api/chat", chat_body(options={"num_predict": 4})))
    for i in range(4):
        await reader.wait_lines(i + 1, timeout=10)
        assert len(reader.lines) == i + 1, "a chunk arrived before the stand-in produced it"
        release[i].set()
    response = await fetch
    assert response.code == 200
    assert reader.lines[-1]["done"] is True


@pytest.mark.timeout(seconds=90)
async def test_long_stream_is_not_cut_by_any_timeout(foreman, stub) -> None:
    """Tornado's default request_timeout is 20 s; a generation may last far longer."""
    await foreman.ready()
    stub.chunk_delay = 1.0
    reader = StreamReader()
    response = await foreman.client().fetch(
        reader.request(foreman.url + "/api/chat", chat_body(options={"num_predict": 24})),
        raise_error=False,
    )
    assert response.code == 200, response.error
    assert len(reader.lines) == 25
    assert reader.lines[-1]["done"] is True


async def test_fifty_concurrent_streams_arrive_intact(start_foreman, stub) -> None:
    foreman = start_foreman(FOREMAN_CONCURRENCY="50")
    await foreman.ready()
    stub.chunk_delay = 0.01
    http = foreman.client(max_clients=50)

    async def one(i: int) -> list[dict]:
        body = chat_body(messages=[{"role": "user", "content": f"client {i} says hi"}], options={"num_predict": 40})
        response = await http.fetch(foreman.url + "/api/chat", method="POST", body=json.dumps(body), request_timeout=120)
        return ndjson(response.body)

    results = await asyncio.gather(*(one(i) for i in range(50)))
    direct = ndjson(
        (await foreman.client().fetch(stub.url + "/api/chat", method="POST", body=json.dumps(chat_body(
            messages=[{"role": "user", "content": "client 0 says hi"}], options={"num_predict": 40})))).body
    )
    for lines in results:
        assert len(lines) == 41
        assert lines[-1]["done"] is True
    assert [l["message"]["content"] for l in results[0]] == [l["message"]["content"] for l in direct]
    assert stub.max_active_chats > 1


async def test_client_disconnect_mid_stream_closes_target_request(foreman, stub) -> None:
    await foreman.ready()
    gate = asyncio.Event()

    async def pace(i: int) -> None:
        await gate.wait()  # after the first chunk the stand-in waits forever

    stub.pace = pace
    stream = await raw_post(foreman.url, "/api/chat", chat_body())
    head = await asyncio.wait_for(stream.read_until(b'"done":false'), 10)
    assert b"200 OK" in head
    stream.close()  # the client goes away mid-stream
    await stub.wait_for(lambda: stub.chats_disconnected == 1, timeout=10)
    assert stub.chats_finished == 0
    await until(lambda: foreman.foreman.activity.in_flight == 0)


async def test_client_disconnect_while_target_silent_closes_target_request(foreman, stub) -> None:
    """A model still loading sends nothing; leaving must still close the target request."""
    await foreman.ready()
    stub.hold = asyncio.Event()  # never set: the target never answers
    stream = await raw_post(foreman.url, "/api/chat", chat_body())
    await stub.wait_for(lambda: stub.chats_started == 1, timeout=10)
    stream.close()
    await stub.wait_for(lambda: stub.chats_disconnected == 1, timeout=10)
    assert stub.chats_finished == 0
    await until(lambda: foreman.foreman.activity.in_flight == 0)


async def test_unknown_model_is_404_and_never_forwarded(foreman, stub) -> None:
    await foreman.ready()
    response = await foreman.fetch("/api/chat", method="POST", body=chat_body(model="no-such-model"))
    assert response.code == 404
    # Byte for byte what Ollama answers (Go's compact encoding).
    assert response.body == b'{"error":"model \'no-such-model\' not found"}'
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert not [r for r in stub.requests if r.path == "/api/chat"]


async def test_model_names_resolve_like_ollama(foreman, stub) -> None:
    await foreman.ready()
    for name in ("llama3.2", "LLAMA3.2:latest", "library/llama3.2", "registry.ollama.ai/library/llama3.2:latest"):
        response = await foreman.fetch("/api/chat", method="POST", body=chat_body(model=name, stream=False))
        assert response.code == 200, (name, response.body)


async def test_model_pulled_after_start_is_found_by_repoll(foreman, stub) -> None:
    from foreman.inventory import MISS_REPOLL_FLOOR

    await foreman.ready()
    polls = stub.tags_polls
    stub.models.append("fresh-model:latest")
    # A miss right after a poll is answered from it; past the floor, it re-polls.
    inventory = foreman.foreman.inventory
    await until(lambda: inventory.since_last_poll > MISS_REPOLL_FLOOR)
    response = await foreman.fetch("/api/chat", method="POST", body=chat_body(model="fresh-model", stream=False))
    assert response.code == 200, response.body
    assert stub.tags_polls == polls + 1


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"model"', "JSON object"),
        (b'{"messages": []}', "model is required"),
        (b'{"model": 42}', "model is required"),
        (b'{"model": ""}', "model is required"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[" * 100000, "not valid JSON"),
    ],
)
async def test_bad_bodies_are_400_and_never_forwarded(foreman, stub, raw, message) -> None:
    await foreman.ready()
    response = await foreman.fetch("/api/chat", method="POST", body=raw, allow_nonstandard_methods=True)
    assert response.code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert message in json.loads(response.body)["error"]
    assert not [r for r in stub.requests if r.path == "/api/chat"]
    # ...and foreman keeps serving.
    ok = await foreman.fetch("/api/chat", method="POST", body=chat_body(stream=False))
    assert ok.code == 200


async def test_target_error_answer_is_passed_through(foreman, stub) -> None:
    await foreman.ready()
    stub.chat_status = 500
    response = await foreman.fetch("/api/chat", method="POST", body=chat_body())
    direct = await foreman.client().fetch(stub.url + "/api/chat", method="POST", body=json.dumps(chat_body()), raise_error=False)
    assert response.code == 500 == direct.code
    assert response.body == direct.body


async def test_target_down_past_queue_timeout_is_503_naming_target_and_error(start_foreman, stub) -> None:
    foreman = start_foreman(FOREMAN_QUEUE_TIMEOUT="1s")
    await foreman.ready()
    await stub.stop()
    response = await foreman.fetch("/api/chat", method="POST", body=chat_body())
    assert response.code == 503
    assert int(response.headers["Retry-After"]) > 0
    error = json.loads(response.body)["error"]
    assert "gave up after waiting 1s" in error
    assert stub.url in error and "Connection refused" in error
    assert float(response.headers["X-Foreman-Queue-Wait"]) >= 1.0


async def test_stream_broken_by_target_ends_with_one_error_line(foreman, stub) -> None:
    await foreman.ready()
    reader = StreamReader()

    async def pace(i: int) -> None:
        # Break only after the client holds every chunk sent so far.
        await reader.wait_lines(i)

    stub.pace = pace
    stub.break_after = 3
    response = await foreman.client().fetch(
        reader.request(foreman.url + "/api/chat", chat_body(options={"num_predict": 10})), raise_error=False
    )
    assert response.code == 200
    assert len(reader.lines) == 4
    assert all(line["done"] is False for line in reader.lines[:3])
    assert set(reader.lines[-1]) == {"error"} and "broke off" in reader.lines[-1]["error"]
    assert reader.raw.endswith(b"\n")


async def test_outbound_bearer_sent_and_client_token_not(start_foreman, stub) -> None:
    stub.token = "target-secret"
    front = start_foreman(FOREMAN_OLLAMA_TOKEN="target-secret", FOREMAN_TOKENS="client-token")
    await front.ready()
    assert not front.inventory.degraded
    response = await front.fetch(
        "/api/chat",
        method="POST",
        body=chat_body(stream=False),
        headers={"Authorization": "Bearer client-token"},
    )
    assert response.code == 200, response.body
    for request in stub.requests:
        assert request.headers.get("Authorization") == "Bearer target-secret"
        assert "client-token" not in str(list(request.headers.get_all()))


async def test_client_authorization_never_reaches_target_without_outbound_token(foreman, stub) -> None:
    await foreman.ready()
    response = await foreman.fetch(
        "/api/chat", method="POST", body=chat_body(stream=False), headers={"Authorization": "Bearer mine"}
    )
    assert response.code == 200
    assert "Authorization" not in last_request(stub, "/api/chat").headers


async def test_foreign_host_and_hop_by_hop_headers_not_forwarded(foreman, stub) -> None:
    await foreman.ready()
    assert stub.check_host
    response = await foreman.fetch(
        "/api/chat",
        method="POST",
        body=chat_body(stream=False),
        headers={
            # A name foreman (on loopback) takes but the stand-in would refuse.
            "Host": "foreman.localhost:8080",
            "X-Custom": "kept",
            "Connection": "keep-alive, X-Private",
            "X-Private": "dropped",
            "Keep-Alive": "timeout=5",
        },
    )
    assert response.code == 200, response.body
    seen = last_request(stub, "/api/chat").headers
    assert seen["Host"] == stub.url.removeprefix("http://")
    assert seen["X-Custom"] == "kept"
    assert "X-Private" not in seen and "Keep-Alive" not in seen


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dG9rOnRvaw==", "Bearer", "bearer  "])
async def test_auth_required_when_tokens_set(start_foreman, stub, header) -> None:
    front = start_foreman(FOREMAN_TOKENS="tok-a, tok-b")
    await front.ready()
    headers = {"Authorization": header} if header else {}
    for path, method, body in (("/api/tags", "GET", None), ("/api/ps", "GET", None), ("/api/chat", "POST", chat_body())):
        response = await front.fetch(path, method=method, body=body, headers=headers)
        assert response.code == 401, path
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert json.loads(response.body) == {"error": "missing or invalid bearer token"}
    assert not [r for r in stub.requests if r.path == "/api/chat"]


async def test_any_configured_token_is_accepted(start_foreman, stub, tmp_path) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# team tokens\nfrom-file\n\n")
    front = start_foreman(FOREMAN_TOKENS="tok-a", FOREMAN_TOKENS_FILE=str(tokens_file))
    await front.ready()
    for token in ("tok-a", "from-file"):
        response = await front.fetch(
            "/api/chat", method="POST", body=chat_body(stream=False), headers={"Authorization": f"bearer {token}"}
        )
        assert response.code == 200, token


async def test_ps_is_live_from_target(foreman, stub) -> None:
    await foreman.ready()
    await foreman.fetch("/api/chat", method="POST", body=chat_body(stream=False))
    response = await foreman.fetch("/api/ps")
    assert response.code == 200
    direct = await foreman.client().fetch(stub.url + "/api/ps")
    assert json.loads(response.body) == json.loads(direct.body)
    assert [m["name"] for m in json.loads(response.body)["models"]] == ["llama3.2:latest"]
    await stub.stop()
    down = await foreman.fetch("/api/ps")
    assert down.code == 503 and "Retry-After" in down.headers
    assert "error" in json.loads(down.body)


async def test_unknown_routes_and_methods_get_json_errors(foreman, stub) -> None:
    await foreman.ready()
    missing = await foreman.fetch("/api/nothing-here")
    assert missing.code == 404
    assert "error" in json.loads(missing.body)
    wrong_method = await foreman.fetch("/api/chat")
    assert wrong_method.code == 405
    assert "error" in json.loads(wrong_method.body)


async def test_request_to_foreman_with_dead_target_at_start(start_foreman, stub) -> None:
    await stub.stop()
    front = start_foreman()
    await front.ready()
    response = await front.fetch("/api/chat", method="POST", body=chat_body())
    assert response.code == 503
    assert "no model inventory yet" in json.loads(response.body)["error"]


@pytest.mark.timeout(seconds=120)
async def test_two_hundred_streams_reach_the_target_at_once(start_foreman, stub) -> None:
    """Tornado's client pool defaults to 10 connections and queues the rest with a
    20 s timer; foreman's must let hundreds of clients reach the target together."""
    foreman = start_foreman(FOREMAN_CONCURRENCY="200")
    await foreman.ready()
    stub.hold = asyncio.Event()
    http = foreman.client(max_clients=200)
    fetches = [
        http.fetch(foreman.url + "/api/chat", method="POST", body=json.dumps(chat_body(options={"num_predict": 5})),
                   request_timeout=120, raise_error=False)
        for _ in range(200)
    ]
    await stub.wait_for(lambda: stub.chats_started == 200, timeout=60)
    assert stub.active_chats == 200
    stub.hold.set()
    responses = await asyncio.gather(*fetches)
    assert [r.code for r in responses] == [200] * 200
    assert all(ndjson(r.body)[-1]["done"] is True for r in responses)


async def test_json_body_sent_as_a_form_is_not_parsed_as_one(foreman, stub) -> None:
    """curl -d labels JSON a form; a prompt with many '&' must still go through."""
    await foreman.ready()
    body = chat_body(messages=[{"role": "user", "content": "a&b=" * 3000}], stream=False)
    response = await foreman.fetch(
        "/api/chat", method="POST", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.code == 200, response.body
