"""Connections to the target are kept alive and reused, and never reused when they must not be."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

from tests.helpers import StreamReader, ndjson, raw_post, serve_raw, until


def chat(content: str = "hi", **extra) -> dict:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": content}]}
    body.update(extra)
    return body


async def test_sequential_requests_share_one_target_connection(foreman, stub) -> None:
    await foreman.ready()
    before = stub.connections
    for i in range(10):
        streamed = await foreman.fetch("/api/chat", method="POST", body=chat(f"s{i}"))
        assert ndjson(streamed.body)[-1]["done"] is True
        whole = await foreman.fetch("/api/chat", method="POST", body=chat(f"w{i}", stream=False))
        assert json.loads(whole.body)["done"] is True
        assert (await foreman.fetch("/api/ps")).code == 200
    assert stub.connections - before <= 1
    assert foreman.foreman.target.pool.reused >= 29


async def test_connection_closed_by_a_leaving_client_is_not_reused(foreman, stub) -> None:
    await foreman.ready()
    gate = asyncio.Event()

    async def pace(i: int) -> None:
        await gate.wait()

    stub.pace = pace
    stream = await raw_post(foreman.url, "/api/chat", chat())
    await asyncio.wait_for(stream.read_until(b'"done":false'), 10)
    stream.close()
    await stub.wait_for(lambda: stub.chats_disconnected == 1)
    stub.pace = None
    before = stub.connections
    response = await foreman.fetch("/api/chat", method="POST", body=chat(stream=False))
    assert response.code == 200
    assert stub.connections == before + 1  # a fresh connection, not the closed one


async def test_idle_connection_closed_by_the_target_is_not_reused(foreman, stub, caplog) -> None:
    await foreman.ready()
    assert (await foreman.fetch("/api/chat", method="POST", body=chat(stream=False))).code == 200
    port = int(stub.url.rsplit(":", 1)[1])
    await stub.stop()  # closes every connection, the idle pooled one too
    stub.listen(port)
    with caplog.at_level(logging.INFO, logger="foreman.relay"):
        response = await foreman.fetch("/api/chat", method="POST", body=chat(stream=False))
    assert response.code == 200
    # One try was enough: no request was sent down the dead connection.
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert stub.chats_started == 2


async def test_answer_without_keep_alive_closes_the_connection(start_foreman) -> None:
    tags = b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest"}]}'
    connections = 0

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        body = tags if b"/api/tags" in head else b'{"done":true}'
        # HTTP/1.0 and no length: the body ends when the connection does.
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)
        await writer.drain()

    server, url = await serve_raw(answer)
    front = start_foreman(url)
    await front.ready()
    for _ in range(3):
        response = await front.fetch("/api/chat", method="POST", body=chat(stream=False))
        assert response.code == 200 and response.body == b'{"done":true}'
    assert connections == 4  # the poll and three chats, each on its own connection
    server.close()


async def test_many_streams_at_once_use_many_connections_then_reuse_them(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="20")
    await front.ready()
    stub.hold = asyncio.Event()
    http = front.client(max_clients=20)
    pending = [http.fetch(front.url + "/api/chat", method="POST", body=json.dumps(chat(str(i))), request_timeout=60)
               for i in range(20)]
    await stub.wait_for(lambda: stub.active_chats == 20)
    stub.hold.set()
    await asyncio.gather(*pending)
    after_burst = stub.connections
    readers = [StreamReader() for _ in range(20)]
    await asyncio.gather(*(http.fetch(r.request(front.url + "/api/chat", chat("again"))) for r in readers))
    assert all(r.lines[-1]["done"] for r in readers)
    assert stub.connections == after_burst  # all twenty came from the pool
    await until(lambda: front.foreman.activity.in_flight == 0)


async def test_connections_numbered_past_1024_are_still_reused(io_loop, stub) -> None:
    """select() cannot watch descriptors >= 1024; a busy foreman's connections are there."""
    import os
    import resource

    from foreman.target import TargetClient

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200 + 64
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard open-file limit ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1200)]
    target = TargetClient(stub.url, None, stub.url)
    try:
        for _ in range(3):
            await target.fetch("/api/tags")
        pool = target.pool
        assert (pool.dialled, pool.reused) == (1, 2)
    finally:
        target.close()
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_bytes_after_a_head_answer_never_reach_the_next_request(start_foreman) -> None:
    """A body sent after a HEAD answer is left in Tornado's buffer: that connection is closed."""
    tags = b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest"}]}'
    smuggled = b'{"models":[{"name":"someone-elses-answer"}]}'
    ours = b'{"models":[]}'
    release = asyncio.Event()
    heads: list[bytes] = []

    def json_answer(body: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body), body,
        )

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> None:
        heads.append(head)
        if head.startswith(b"HEAD /"):
            # The HEAD answer and, after it, a whole second answer nobody asked
            # for, in one write: Tornado reads both and keeps the second.
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n\r\n"
                + json_answer(smuggled)
            )
            await writer.drain()
            await release.wait()  # and keep the connection open, idle
        elif head.startswith(b"GET /api/tags"):
            writer.write(json_answer(tags))
        else:
            writer.write(json_answer(ours))
        await writer.drain()

    server, url = await serve_raw(answer)
    try:
        front = start_foreman(url)
        await front.ready()
        head = await front.fetch("/", method="HEAD")
        assert head.code == 200 and head.body == b""
        pool = front.foreman.target.pool
        reused = pool.reused
        response = await front.fetch("/api/ps")
        assert response.code == 200 and response.body == ours
        assert pool.reused == reused  # the HEAD's connection was closed, not reused
        assert [h.split(b" ", 2)[:2] for h in heads[1:]] == [[b"HEAD", b"/"], [b"GET", b"/api/ps"]]
    finally:
        release.set()
        server.close()


async def test_connection_still_sending_a_request_is_not_reused(start_foreman) -> None:
    """A target that answers before reading the whole body: that request never ended cleanly."""
    tags = b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest"}]}'
    release = asyncio.Event()
    shown: list[bytes] = []

    def json_answer(status: bytes, body: bytes) -> bytes:
        return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            status, len(body), body,
        )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /api/tags"):
                writer.write(json_answer(b"200 OK", tags))
            elif len(shown) == 0:
                shown.append(head)
                # Answer at once, read none of the body, keep the connection:
                # foreman is still writing it when the answer is complete.
                writer.write(json_answer(b"400 Bad Request", b'{"error":"too big"}'))
                await writer.drain()
                await release.wait()
            else:
                shown.append(head)
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                writer.write(json_answer(b"200 OK", b'{"modelfile":""}'))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        # A request sent down the busy connection would wait for the target's
        # silence to end it: sooner than the test's deadline.
        front = start_foreman(url, FOREMAN_TARGET_IDLE_TIMEOUT="5s")
        await front.ready()
        big = {"model": "llama3.2", "pad": "x" * (24 << 20)}  # more than the sockets' buffers hold
        first = await front.fetch("/api/show", method="POST", body=big)
        assert first.code == 400
        pool = front.foreman.target.pool
        reused = pool.reused
        second = await front.fetch("/api/show", method="POST", body={"model": "llama3.2"})
        assert second.code == 200 and second.body == b'{"modelfile":""}'
        assert pool.reused == reused
        assert len(shown) == 2
    finally:
        release.set()
        server.close()
