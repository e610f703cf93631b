"""Memory and the event loop: what a departed client leaves, what a never-reading one holds,
what a big body costs other clients, and the ceiling on bodies and held answers."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

from foreman.handlers.base import BaseHandler
from foreman.handlers.model_route import ModelRouteHandler
from tests.helpers import serve_raw, until

MODEL = "llama3.2"


def chat_body(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False, **extra}


async def connect(url: str, receive_buffer: int | None = None) -> IOStream:
    parts = urlsplit(url)
    if receive_buffer is None:
        return await TCPClient().connect(parts.hostname, parts.port)
    # A small receive buffer, set before connecting so the window stays small:
    # a client that never reads then holds the answer in foreman, not in the kernel.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    stream = IOStream(sock)
    await stream.connect((parts.hostname, parts.port))
    return stream


def head(method: str, path: str, url: str, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {urlsplit(url).netloc}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_answer(stream: IOStream, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a whole (Content-Length) answer."""
    raw_head = await asyncio.wait_for(stream.read_until(b"\r\n\r\n"), timeout)
    status_line, *lines = raw_head.decode().split("\r\n")
    headers = {}
    for line in lines:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(stream.read_bytes(int(headers.get("content-length", 0))), timeout)
    return int(status_line.split()[1]), headers, body


async def read_to_end(stream: IOStream, timeout: float = 30.0) -> bytes:
    """Everything until the server closes (fails if it does not close in time)."""
    try:
        return await asyncio.wait_for(stream.read_until_close(), timeout)
    except StreamClosedError:  # closed with a reset: whatever had arrived is dropped
        return b""


@pytest.fixture
def collector_off() -> Iterator[None]:
    """No automatic collection during the test: what survives is what reference counting kept."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def alive_handlers() -> list[BaseHandler]:
    return [o for o in gc.get_objects() if isinstance(o, BaseHandler)]


def bytes_alive_with(marker: bytes) -> int:
    """How many bytes objects held by live containers contain `marker` (no collection is run)."""
    found = set()
    for holder in gc.get_objects():
        for held in gc.get_referents(holder):
            if type(held) in (bytes, bytearray) and len(held) > 1000 and marker in held:
                found.add(id(held))
    return len(found)


# -- 1. a client that leaves leaves nothing behind ---------------------------------------------

TAGS = json.dumps({"models": [{"name": f"{MODEL}:latest", "model": f"{MODEL}:latest"}]}).encode()


def answer(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


async def slow_stream_target():
    """A target that streams a chat slowly until its client goes, and keeps nothing of a request."""

    async def behaviour(head_bytes: bytes, writer: asyncio.StreamWriter) -> None:
        if head_bytes.startswith(b"GET /api/tags"):
            answer(writer, TAGS)
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
        line = json.dumps({"model": MODEL, "message": {"role": "assistant", "content": "x"}, "done": False}).encode() + b"\n"
        try:
            for _ in range(3000):
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                await writer.drain()
                await asyncio.sleep(0.02)
        except ConnectionError:
            pass

    return await serve_raw(behaviour)


LEFT_AT = ["mid-upload", "mid-answer", "while queued"]


@pytest.mark.timeout(seconds=120)
@pytest.mark.parametrize("left_at", LEFT_AT)
async def test_a_departed_client_leaves_no_handler_and_no_body(start_foreman, collector_off, left_at) -> None:
    server, url = await slow_stream_target()
    try:
        front = start_foreman(url, FOREMAN_CONCURRENCY="1" if left_at == "while queued" else "10")
        await front.ready()
        marker = f"departed-{left_at}-".encode()
        holder = None
        if left_at == "while queued":
            # One stream holds the only slot, so the requests after it wait.
            holder = await connect(front.url)
            held = json.dumps(chat_body(stream=True)).encode()
            await holder.write(head("POST", "/api/chat", front.url, Content_Length=str(len(held))) + held)
            await holder.read_until(b"\r\n\r\n")
        clients = []
        for i in range(5):
            # Bodies of megabytes, so that one kept alive would show.
            content = ((marker + str(i).encode()) * 200_000).decode()
            body = json.dumps(chat_body(stream=True, messages=[{"role": "user", "content": content}])).encode()
            stream = await connect(front.url)
            if left_at == "mid-upload":
                # Part of a body that would be 8 MB.
                await stream.write(head("POST", "/api/chat", front.url, Content_Length="8000000") + body[:2_000_000])
            else:
                await stream.write(head("POST", "/api/chat", front.url, Content_Length=str(len(body))) + body)
                if left_at == "mid-answer":
                    await stream.read_until(b"\r\n\r\n")
                    await stream.read_bytes(1, partial=True)  # the answer has begun
            clients.append(stream)
        del content, body
        activity = front.foreman.activity
        await until(lambda: activity.in_flight == len(clients) + (holder is not None), timeout=30)
        if left_at == "while queued":
            await until(lambda: front.foreman.queue.snapshot()["waiting"] == len(clients), timeout=30)
        for stream in [*clients, *([holder] if holder else [])]:
            stream.close()
        await until(lambda: activity.in_flight == 0, timeout=30)
        # No collection runs: what goes, goes by reference counting, once the
        # connections (and the target requests) have wound down.
        await until(lambda: not alive_handlers(), timeout=15)
        await until(lambda: bytes_alive_with(marker) == 0, timeout=15)
        assert front.foreman.memory.used == 0
    finally:
        server.close()


# -- 2. whole answers have the client deadline too ---------------------------------------------


async def big_json_target(document_size: int, target_gone: asyncio.Event):
    """A target whose /api/tags is tiny and whose every other answer is a big JSON document."""
    tags = json.dumps({"models": [{"name": f"{MODEL}:latest", "model": f"{MODEL}:latest"}]}).encode()
    document = b'{"padding":"' + b"x" * (document_size - 14) + b'"}'

    async def behaviour(head_bytes: bytes, writer: asyncio.StreamWriter) -> None:
        body = tags if head_bytes.startswith(b"GET /api/tags") else document
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        try:
            for start in range(0, len(body), 1 << 20):
                writer.write(body[start : start + (1 << 20)])
                await writer.drain()
        except ConnectionError:
            target_gone.set()

    return await serve_raw(behaviour)


@pytest.mark.timeout(seconds=120)
@pytest.mark.parametrize("ceiling", ["held whole", "passed on (over the memory ceiling)"])
async def test_a_client_that_never_reads_a_whole_answer_is_dropped(start_foreman, caplog, ceiling) -> None:
    caplog.set_level(logging.WARNING, logger="foreman")
    size = 24 << 20
    target_gone = asyncio.Event()
    server, url = await big_json_target(size, target_gone)
    try:
        env = {"FOREMAN_CLIENT_TIMEOUT": "1s"}
        if ceiling != "held whole":
            env["FOREMAN_MAX_BODY_MEMORY"] = "2MiB"
        front = start_foreman(url, **env)
        await front.ready()
        stalled = await connect(front.url, receive_buffer=64 << 10)
        await stalled.write(head("GET", "/api/version", front.url))

        def dropped() -> bool:
            return any("took nothing" in r.getMessage() for r in caplog.records)

        # Others are served meanwhile.
        health = await front.fetch("/healthz")
        assert health.code == 200
        await until(dropped, timeout=30)
        # What had reached the client's kernel buffers, then the end: never the whole document.
        received = await read_to_end(stalled)
        assert len(received) < size
        if ceiling != "held whole":
            # The answer was coming from the target at the client's pace: that request is closed too.
            await asyncio.wait_for(target_gone.wait(), 30)
        await until(lambda: front.foreman.memory.used == 0, timeout=10)
        assert (await front.fetch("/healthz")).code == 200
    finally:
        server.close()


@pytest.mark.timeout(seconds=120)
async def test_a_slow_reader_of_a_whole_answer_is_served_to_the_end(start_foreman) -> None:
    # The deadline is for taking nothing, not for taking everything: a client
    # that keeps reading gets a document that takes it far longer than
    # FOREMAN_CLIENT_TIMEOUT, framed as if it came at once.
    size = 32 << 20
    server, url = await big_json_target(size, asyncio.Event())
    try:
        front = start_foreman(url, FOREMAN_CLIENT_TIMEOUT="2s")
        await front.ready()
        reader = await connect(front.url, receive_buffer=64 << 10)
        await reader.write(head("GET", "/api/version", front.url))
        raw_head = await reader.read_until(b"\r\n\r\n")
        assert b"Content-Length: %d\r\n" % size in raw_head
        received = 0
        while received < size:
            received += len(await reader.read_bytes(min(256 << 10, size - received)))
            await asyncio.sleep(0.05)  # about 5 MB/s: six seconds for the document
        assert received == size
        await until(lambda: front.foreman.memory.used == 0, timeout=10)
    finally:
        server.close()


@pytest.mark.timeout(seconds=120)
async def test_foremans_own_answers_have_the_deadline_too(start_foreman, stub, caplog) -> None:
    # A client that sends request after request on one connection and reads
    # none of the answers: foreman's own answers (the inventory, here) pile up
    # until the last one cannot be written; that one has the deadline too.
    caplog.set_level(logging.WARNING, logger="foreman")
    front = start_foreman(FOREMAN_CLIENT_TIMEOUT="1s")
    await front.ready()
    count = 20_000
    stalled = await connect(front.url, receive_buffer=64 << 10)
    stalled.write(head("GET", "/api/tags", front.url) * count)
    await until(lambda: any("took nothing" in r.getMessage() for r in caplog.records), timeout=60)
    received = await read_to_end(stalled)
    assert received.count(b"HTTP/1.1 200") < count
    assert (await front.fetch("/healthz")).code == 200


# -- 3. a big body stalls no one; bodies have a ceiling --------------------------------------


def many_small_objects(megabytes: int, model: str = "not-a-model") -> bytes:
    message = {"role": "user", "content": "a small message"}
    count = megabytes * 1_000_000 // len(json.dumps(message))
    # The model last, as the OpenAI client writes it: the whole body must be walked.
    return json.dumps({"messages": [message] * count, "model": model}).encode()


@pytest.mark.timeout(seconds=120)
async def test_healthz_is_answered_while_a_big_body_is_checked(foreman, stub, monkeypatch) -> None:
    await foreman.ready()
    checking = asyncio.Event()
    check = ModelRouteHandler.post

    async def noting_the_check(self):
        checking.set()
        await check(self)

    monkeypatch.setattr(ModelRouteHandler, "post", noting_the_check)
    body = many_small_objects(32)
    finished: list[str] = []

    async def big() -> None:
        response = await foreman.fetch("/api/chat", method="POST", body=body)
        assert response.code == 404  # checked to the end: the model is not there
        finished.append("big")

    big_request = asyncio.ensure_future(big())
    await asyncio.wait_for(checking.wait(), 60)
    health = await foreman.fetch("/healthz")
    finished.append("healthz")
    await big_request
    assert health.code == 200
    assert finished == ["healthz", "big"]


BIG_BAD_BODIES = [
    (b" " * (2 << 20), "empty"),
    (b"[" + b"1," * (1 << 20) + b"1]", "JSON object"),
    (b'{"messages": [' + b'{"a": 1},' * (200_000) + b'{"a": 1}]', "not valid JSON"),
    (b'{"messages": [' + b'{"a": 1},' * (200_000) + b'{"a": 1}]}', "model is required"),
    (b'{"model": 42, "messages": [' + b'{"a": 1},' * (200_000) + b'{"a": 1}]}', "model is required"),
    (b'{"model": "", "messages": "' + b"x" * (2 << 20) + b'"}', "model is required"),
    (b'{"model": "llama3.2", "messages": ["' + b"x" * (2 << 20) + b"]}", "not valid JSON"),
]


@pytest.mark.parametrize("raw, message", BIG_BAD_BODIES, ids=[m + str(i) for i, (_, m) in enumerate(BIG_BAD_BODIES)])
async def test_big_bad_bodies_get_the_same_400s(foreman, stub, raw, message) -> None:
    await foreman.ready()
    response = await foreman.fetch("/api/chat", method="POST", body=raw)
    assert response.code == 400
    assert message in json.loads(response.body)["error"]
    assert not [r for r in stub.requests if r.path == "/api/chat"]


async def test_a_big_good_body_is_relayed_unchanged(foreman, stub) -> None:
    await foreman.ready()
    body = many_small_objects(3, model=MODEL)
    response = await foreman.fetch("/api/chat", method="POST", body=body)
    assert response.code == 200, response.body
    assert stub.requests[-1].body == body
    assert foreman.foreman.memory.used == 0


@pytest.mark.timeout(seconds=120)
async def test_bodies_beyond_the_memory_ceiling_get_503(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_MAX_BODY_MEMORY="4MiB")
    await front.ready()
    declared = str(3 << 19)  # 1.5 MiB each: two fit, the third does not
    held = []
    for _ in range(2):
        stream = await connect(front.url)
        await stream.write(head("POST", "/api/chat", front.url, Content_Length=declared) + b'{"model": "')
        held.append(stream)
    extra = await connect(front.url)
    await extra.write(head("POST", "/api/chat", front.url, Content_Length=declared) + b'{"model": "')
    status, headers, body = await read_answer(extra)
    assert status == 503
    assert headers["retry-after"] == "1"
    assert "FOREMAN_MAX_BODY_MEMORY" in json.loads(body)["error"]
    assert await read_to_end(extra) == b""  # and the connection is closed: its body is not read
    memory = front.foreman.memory
    assert memory.used == 2 * int(declared)
    # A chunked body is counted as it comes, and refused when it would go past.
    chunked = await connect(front.url)
    room = memory.limit - memory.used
    await chunked.write(head("POST", "/api/chat", front.url, Transfer_Encoding="chunked"))
    await chunked.write(b"%x\r\n%s\r\n" % (room - 1000, b"x" * (room - 1000)))
    await until(lambda: memory.used == memory.limit - 1000)
    await chunked.write(b"%x\r\n%s\r\n" % (1001, b"x" * 1001))
    status, _, body = await read_answer(chunked)
    assert status == 503 and "FOREMAN_MAX_BODY_MEMORY" in json.loads(body)["error"]
    await until(lambda: memory.used == 2 * int(declared))
    # Everyone else is still served, small bodies included.
    assert (await front.fetch("/healthz")).code == 200
    assert (await front.fetch("/api/chat", method="POST", body=chat_body())).code == 200
    # OpenAI's shape on /v1.
    openai = await connect(front.url)
    await openai.write(head("POST", "/v1/chat/completions", front.url, Content_Length=declared) + b"{")
    status, _, body = await read_answer(openai)
    assert status == 503 and json.loads(body)["error"]["type"] == "api_error"
    # A body that could never fit is 413, not "retry".
    huge = await connect(front.url)
    await huge.write(head("POST", "/api/chat", front.url, Content_Length=str(5 << 20)))
    status, _, body = await read_answer(huge)
    assert status == 413 and "FOREMAN_MAX_BODY_MEMORY" in json.loads(body)["error"]
    # The held bodies' clients leave: their memory is back at once.
    for stream in held:
        stream.close()
    await until(lambda: front.foreman.memory.used == 0, timeout=10)
    again = await front.fetch("/api/chat", method="POST", body=json.dumps(chat_body()).encode() + b" " * (3 << 20))
    assert again.code == 200


def test_a_released_reservation_takes_nothing_more() -> None:
    """A relay that outlives its client (a blob upload's) must not hold memory again."""
    from foreman.budget import MemoryBudget, Reservation

    budget = MemoryBudget(100)
    reservation = Reservation(budget)
    assert reservation.grow_to(40) and budget.used == 40
    reservation.release()
    assert budget.used == 0
    assert not reservation.grow_by(10) and budget.used == 0
