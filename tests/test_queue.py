"""The queue, through foreman's HTTP front, against the stand-in Ollama."""

from __future__ import annotations

import asyncio
import json
import logging

from tornado.httpclient import HTTPRequest

from tests.helpers import StreamReader, ndjson, raw_post, serve_raw, until

MODEL = "llama3.2"


def chat_body(content: str = "hi", **extra) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return body


async def health(front) -> dict:
    return json.loads((await front.fetch("/healthz")).body)


async def test_concurrency_is_never_exceeded_and_is_reached(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="3")
    await front.ready()
    stub.chunk_delay = 0.01
    http = front.client(max_clients=40)
    responses = await asyncio.gather(
        *(
            http.fetch(front.url + "/api/chat", method="POST",
                       body=json.dumps(chat_body(f"n{i}", options={"num_predict": 10})), request_timeout=120)
            for i in range(30)
        )
    )
    assert all(ndjson(r.body)[-1]["done"] is True for r in responses)
    assert stub.max_active_chats == 3
    assert (await health(front))["queue"] == {"waiting": 0, "in_flight": 0, "concurrency": 3, "max_queue": 128}


async def test_waiting_requests_show_in_healthz_and_carry_their_wait(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="1")
    await front.ready()
    stub.hold = asyncio.Event()
    first = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat_body(stream=False)))
    await stub.wait_for(lambda: stub.chats_started == 1)
    second = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat_body(stream=False)))
    await until(lambda: front.foreman.queue.waiting == 1)
    assert (await health(front))["queue"] == {"waiting": 1, "in_flight": 1, "concurrency": 1, "max_queue": 128}
    assert stub.chats_started == 1  # the second is held by foreman, not by the target
    await asyncio.sleep(0.2)  # a measurable wait for the second request
    stub.hold.set()
    one, two = await asyncio.gather(first, second)
    assert one.code == two.code == 200
    assert float(one.headers["X-Foreman-Queue-Wait"]) < 0.2
    assert float(two.headers["X-Foreman-Queue-Wait"]) >= 0.2


async def test_full_queue_is_refused_at_once_with_retry_after(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="1", FOREMAN_MAX_QUEUE="2")
    await front.ready()
    stub.hold = asyncio.Event()
    held = [asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat_body(stream=False)))
            for _ in range(3)]
    await until(lambda: front.foreman.queue.waiting == 2 and front.foreman.queue.in_flight == 1)
    refused = await front.fetch("/api/chat", method="POST", body=chat_body(), request_timeout=5)
    assert refused.code == 503
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["Content-Type"].startswith("application/json")
    assert "queue is full" in json.loads(refused.body)["error"]
    stub.hold.set()
    assert [r.code for r in await asyncio.gather(*held)] == [200, 200, 200]
    assert stub.chats_started == 3


async def test_one_client_cannot_fill_the_queue(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="1", FOREMAN_TOKENS="alice,bob")
    await front.ready()
    queue = front.foreman.queue
    # The defaults: FOREMAN_MAX_QUEUE 128, FOREMAN_MAX_QUEUE_PER_CLIENT 32.
    stub.hold = asyncio.Event()
    http = front.client(max_clients=150)

    def chat(token: str, path: str = "/api/chat", body: dict | None = None) -> asyncio.Future:
        request = HTTPRequest(
            front.url + path, method="POST", body=json.dumps(body or chat_body(stream=False)),
            headers={"Authorization": f"Bearer {token}"}, request_timeout=60,
        )
        return asyncio.ensure_future(http.fetch(request, raise_error=False))

    alice = [chat("alice") for _ in range(140)]
    # One at the target, 32 waiting: the other 107 are refused at once.
    await until(lambda: sum(f.done() for f in alice) + queue.waiting + queue.in_flight == 140)
    assert (queue.in_flight, queue.waiting, sum(f.done() for f in alice)) == (1, 32, 107)
    admitted = [f for f in alice if not f.done()]
    refused = [f.result() for f in alice if f.done()]
    assert {r.code for r in refused} == {429}
    for r in refused:
        assert int(r.headers["Retry-After"]) >= 1
        assert "too many requests from this client" in json.loads(r.body)["error"]
    # The same under /v1, in OpenAI's shape.
    v1 = await chat("alice", "/v1/chat/completions", {"model": MODEL, "messages": []})
    assert v1.code == 429 and int(v1.headers["Retry-After"]) >= 1
    assert json.loads(v1.body)["error"]["type"] == "api_error"

    # Another client is still admitted while the queue has room.
    bob = chat("bob")
    await until(lambda: queue.waiting == 33)
    stub.hold.set()
    served = await asyncio.gather(bob, *admitted)
    assert [r.code for r in served] == [200] * 34
    assert stub.chats_started == 34


async def test_retry_after_grows_with_recent_service_times(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="1", FOREMAN_MAX_QUEUE="1")
    await front.ready()
    stub.chunk_delay = 0.5  # each request takes ~2 s at the target
    done = await front.fetch("/api/chat", method="POST", body=chat_body(options={"num_predict": 3}))
    assert done.code == 200
    stub.hold = asyncio.Event()
    held = [asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat_body(stream=False)))
            for _ in range(2)]
    await until(lambda: front.foreman.queue.waiting == 1)
    refused = await front.fetch("/api/chat", method="POST", body=chat_body())
    assert refused.code == 503
    # One request waiting plus the one refused, each ~1.5 s or more: at least 3 s.
    assert int(refused.headers["Retry-After"]) >= 3
    stub.hold.set()
    stub.chunk_delay = 0
    await asyncio.gather(*held)


async def test_departed_waiter_never_reaches_the_target(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="1")
    await front.ready()
    stub.hold = asyncio.Event()
    first = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat_body("first", stream=False)))
    await stub.wait_for(lambda: stub.chats_started == 1)
    waiter = await raw_post(front.url, "/api/chat", chat_body("departed"))
    await until(lambda: front.foreman.queue.waiting == 1)
    waiter.close()
    await until(lambda: front.foreman.queue.waiting == 0)
    stub.hold.set()
    assert (await first).code == 200
    third = await front.fetch("/api/chat", method="POST", body=chat_body("third", stream=False))
    assert third.code == 200
    bodies = [json.loads(r.body)["messages"][0]["content"] for r in stub.requests if r.path == "/api/chat"]
    assert bodies == ["first", "third"]
    await until(lambda: front.foreman.activity.in_flight == 0)


async def test_target_restarted_while_request_waits_succeeds(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_QUEUE_TIMEOUT="1m")
    await front.ready()
    port = int(stub.url.rsplit(":", 1)[1])
    await stub.stop()
    pending = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat_body(stream=False)))
    await until(lambda: front.foreman.queue.paused)
    assert (await health(front))["queue"]["waiting"] == 1
    stub.listen(port)  # the Mac is back on the network
    response = await asyncio.wait_for(pending, 30)
    assert response.code == 200, response.body
    assert json.loads(response.body)["done"] is True
    assert stub.chats_started == 1
    assert not front.foreman.queue.paused


async def test_poll_recovery_resumes_dispatch_at_once(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_QUEUE_TIMEOUT="1m")
    await front.ready()
    port = int(stub.url.rsplit(":", 1)[1])
    await stub.stop()
    pending = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat_body(stream=False)))
    queue = front.foreman.queue
    await until(lambda: queue.paused)
    # Let probes back off to several seconds, so that only the poller can explain a fast recovery.
    await until(lambda: queue._backoff >= 4, timeout=30)
    stub.listen(port)
    assert await front.inventory.refresh()
    assert not queue.paused
    response = await asyncio.wait_for(pending, 3)
    assert response.code == 200


async def test_newcomers_go_at_the_next_free_slot_in_the_order_they_came(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="1", FOREMAN_TOKENS="alice,bob,carol")
    await front.ready()
    stub.hold = asyncio.Event()
    http = front.client(max_clients=20)
    order: list[str] = []

    def send(token: str, label: str) -> asyncio.Future:
        return asyncio.ensure_future(http.fetch(
            front.url + "/api/chat", method="POST", body=json.dumps(chat_body(label, stream=False)),
            headers={"Authorization": f"Bearer {token}"}, request_timeout=60,
        ))

    # alice's first request occupies the target; then alice queues 4 more, bob 2, carol 1.
    requests = [send("alice", "a0")]
    await stub.wait_for(lambda: stub.chats_started == 1)
    for label in ("a1", "a2", "a3", "a4"):
        requests.append(send("alice", label))
        await until(lambda n=len(requests) - 1: front.foreman.queue.waiting == n)
    for token, label in (("bob", "b1"), ("bob", "b2"), ("carol", "c1")):
        requests.append(send(token, label))
        await until(lambda n=len(requests) - 1: front.foreman.queue.waiting == n)
    stub.hold.set()
    await asyncio.gather(*requests)
    order = [json.loads(r.body)["messages"][0]["content"] for r in stub.requests if r.path == "/api/chat"]
    # bob and carol had had no turn: each goes at the next free slot, in the
    # order they came, ahead of alice's backlog; the rest share by service.
    assert order[:3] == ["a0", "b1", "c1"]
    assert sorted(order) == ["a0", "a1", "a2", "a3", "a4", "b1", "b2", "c1"]


async def test_metadata_is_answered_while_generations_queue(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="1")
    await front.ready()
    stub.hold = asyncio.Event()
    held = [asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat_body(stream=False)))
            for _ in range(5)]
    await until(lambda: front.foreman.queue.waiting == 4)
    for path in ("/healthz", "/api/tags", "/api/ps"):
        response = await front.fetch(path, request_timeout=5)
        assert response.code == 200, path
        assert "X-Foreman-Queue-Wait" not in response.headers
    stub.hold.set()
    await asyncio.gather(*held)


async def test_unknown_models_and_bad_bodies_never_queue(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="1", FOREMAN_MAX_QUEUE="0")
    await front.ready()
    stub.hold = asyncio.Event()
    busy = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat_body(stream=False)))
    await stub.wait_for(lambda: stub.chats_started == 1)
    # The queue is full (no room to wait), yet these are answered on their merits.
    assert (await front.fetch("/api/chat", method="POST", body=chat_body(model="nope"))).code == 404
    assert (await front.fetch("/api/chat", method="POST", body=b"{")).code == 400
    assert (await front.fetch("/api/chat", method="POST", body=chat_body())).code == 503
    stub.hold.set()
    assert (await busy).code == 200


async def test_stand_in_killed_mid_stream_ends_stream_with_error_line(start_foreman, stub) -> None:
    front = start_foreman()
    await front.ready()
    gate = asyncio.Event()

    async def pace(i: int) -> None:
        await gate.wait()

    stub.pace = pace
    reader = StreamReader()
    fetch = front.client().fetch(reader.request(front.url + "/api/chat", chat_body()), raise_error=False)
    await reader.wait_lines(1)
    await stub.stop()  # the target dies mid-stream
    response = await asyncio.wait_for(fetch, 10)
    assert response.code == 200
    assert reader.lines[0]["done"] is False
    assert set(reader.lines[-1]) == {"error"}
    assert not any(line.get("done") for line in reader.lines)
    # The slot is free again and the request was not retried.
    assert front.foreman.queue.in_flight == 0
    assert stub.chats_started == 1


async def test_target_killed_before_answering_is_retried_after_restart(start_foreman, stub) -> None:
    """Ollama sends a non-streaming answer's headers only with the answer: a
    target that dies while generating has sent nothing, so the request waits."""
    front = start_foreman(FOREMAN_QUEUE_TIMEOUT="1m")
    await front.ready()
    port = int(stub.url.rsplit(":", 1)[1])
    gate = asyncio.Event()

    async def pace(i: int) -> None:
        await gate.wait()

    stub.pace = pace
    pending = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat_body(stream=False)))
    await stub.wait_for(lambda: stub.chats_started == 1)
    await stub.stop()
    await until(lambda: front.foreman.queue.paused)
    stub.pace = None
    stub.listen(port)
    response = await asyncio.wait_for(pending, 30)
    assert response.code == 200
    assert json.loads(response.body)["done"] is True
    assert stub.chats_started == 2


async def test_target_breaking_off_a_non_streaming_answer_is_502(start_foreman, stub) -> None:
    tags = (await start_foreman().client().fetch(stub.url + "/api/tags")).body

    async def half_answer(request_line: bytes, writer: asyncio.StreamWriter) -> None:
        if b"/api/tags" in request_line:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(tags), tags))
        else:
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n'
                         b'Content-Length: 500\r\n\r\n{"model":"llama3.2","message":{"role":"assis')
        await writer.drain()

    server, url = await serve_raw(half_answer)
    front = start_foreman(url)
    await front.ready()
    response = await front.fetch("/api/chat", method="POST", body=chat_body(stream=False))
    assert response.code == 502
    assert "broke off" in json.loads(response.body)["error"]
    assert front.foreman.queue.in_flight == 0 and not front.foreman.queue.paused
    server.close()


async def test_log_line_has_queue_wait_and_client_hash_not_token(start_foreman, stub, caplog) -> None:
    front = start_foreman(FOREMAN_TOKENS="very-secret-token")
    await front.ready()
    with caplog.at_level(logging.INFO, logger="foreman.access"):
        response = await front.fetch("/api/chat", method="POST", body=chat_body(stream=False),
                                     headers={"Authorization": "Bearer very-secret-token"})
    assert response.code == 200
    record = next(r for r in caplog.records if r.name == "foreman.access" and r.path == "/api/chat")
    assert record.client.startswith("token:") and "very-secret-token" not in record.client
    assert record.queue_wait is not None
    line = record.getMessage()
    assert "client=token:" in line and " wait=" in line
    assert "very-secret-token" not in caplog.text


async def test_queue_resumes_when_the_target_starts_answering_not_when_it_finishes(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="2", FOREMAN_QUEUE_TIMEOUT="1m")
    await front.ready()
    port = int(stub.url.rsplit(":", 1)[1])
    await stub.stop()
    gate = asyncio.Event()

    async def pace(i: int) -> None:
        await gate.wait()

    stub.pace = pace
    probe = StreamReader()
    probing = front.client().fetch(probe.request(front.url + "/api/chat", chat_body("probe")), raise_error=False)
    await until(lambda: front.foreman.queue.paused)
    stub.listen(port)
    await probe.wait_lines(1, timeout=30)  # the probe's stream has begun and now stalls
    assert not front.foreman.queue.paused
    second = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=chat_body("second", stream=False)))
    # The second request reaches the target while the probe's answer is still streaming.
    await stub.wait_for(lambda: stub.chats_started == 2, timeout=10)
    gate.set()
    assert (await probing).code == 200
    assert (await second).code == 200


async def test_target_resetting_connections_is_waited_out_until_it_answers(start_foreman, stub) -> None:
    """A request whose connection is reset before any byte of an answer keeps its
    place and is answered once the target answers again, not failed."""
    import socket
    import struct

    tags = (await start_foreman().client().fetch(stub.url + "/api/tags")).body
    answer = json.dumps({"model": MODEL, "message": {"role": "assistant", "content": "hello"}, "done": True}).encode()
    chats: list[str] = []

    async def reset_twice(head: bytes, writer: asyncio.StreamWriter) -> None:
        if b"/api/tags" in head:
            body = tags
        else:
            chats.append("reset" if len(chats) < 2 else "answered")
            if chats[-1] == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
                return
            body = answer
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()

    server, url = await serve_raw(reset_twice)
    front = start_foreman(url, FOREMAN_QUEUE_TIMEOUT="1m")
    await front.ready()
    response = await front.fetch("/api/chat", method="POST", body=chat_body(stream=False))
    assert response.code == 200, response.body
    assert json.loads(response.body)["message"]["content"] == "hello"
    assert chats == ["reset", "reset", "answered"]
    assert not front.foreman.queue.paused
    server.close()
