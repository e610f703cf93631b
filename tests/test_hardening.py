"""Hostile input, stalled clients and misbehaving targets: clear answers, bounded waits."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct

import pytest

from tests.helpers import StreamReader, raw_post, serve_raw, until

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
TAGS = b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest"}]}'


async def raw_exchange(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, then read until the server closes (or the timeout)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the server sent before closing the connection (fails if it does not close in time)."""
    return await asyncio.wait_for(reader.read(), timeout)


# --- limits ---------------------------------------------------------------------


async def test_body_over_the_limit_is_413_and_never_forwarded(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_MAX_BODY="1KB")
    await front.ready()
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    response = await front.fetch("/api/chat", method="POST", body=big)
    assert response.code == 413
    assert "FOREMAN_MAX_BODY" in json.loads(response.body)["error"]
    # The unread body makes the connection useless: say so, so the client does not reuse it.
    assert response.headers.get("Connection") == "close"
    assert not [r for r in stub.requests if r.path == "/api/chat"]
    assert (await front.fetch("/api/chat", method="POST", body=CHAT)).code == 200


async def test_chunked_body_growing_past_the_limit_is_cut_off(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_MAX_BODY="1KB")
    await front.ready()
    chunk = b"x" * 600
    data = (b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 3 + b"0\r\n\r\n")
    answer = await raw_exchange(front.url, data)
    assert not answer.startswith(b"HTTP/1.1 200")
    assert not [r for r in stub.requests if r.path == "/api/chat"]


async def test_client_that_stalls_in_its_head_or_body_is_closed(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CLIENT_TIMEOUT="1s")
    await front.ready()
    host, port = front.url.removeprefix("http://").split(":")
    half_head = await asyncio.open_connection(host, int(port))
    half_head[1].write(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Le")
    no_body = await asyncio.open_connection(host, int(port))
    no_body[1].write(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"mo")
    silent = await asyncio.open_connection(host, int(port))
    for reader, writer in (half_head, no_body, silent):
        await closed_by_server(reader, 10)  # within ~1 s, not Tornado's hour
        writer.close()
    assert not [r for r in stub.requests if r.path == "/api/chat"]
    await until(lambda: front.foreman.activity.in_flight == 0)


@pytest.mark.timeout(seconds=60)
async def test_client_that_stops_reading_is_dropped_and_the_target_request_closed(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CLIENT_TIMEOUT="1s")
    await front.ready()
    stub.chunk_delay = 0
    host, port = front.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    body = json.dumps({**CHAT, "options": {"num_predict": 200_000}}).encode()
    sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    # The client never reads: buffers fill, flushes stall, and foreman lets go.
    await stub.wait_for(lambda: stub.chats_disconnected == 1, timeout=30)
    assert stub.chats_finished == 0
    await until(lambda: front.foreman.activity.in_flight == 0, timeout=10)
    # ...and the client's connection is closed, not left half-served.
    loop = asyncio.get_running_loop()

    async def read_to_end() -> None:
        while await loop.sock_recv(sock, 65536):
            pass

    await asyncio.wait_for(read_to_end(), 10)
    sock.close()
    assert (await front.fetch("/api/chat", method="POST", body=CHAT)).code == 200


# --- request shapes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: 20\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: 20\r\nContent-Length: 21\r\n",
        b"Content-Length: -20\r\n",
        b"Content-Length: 2O\r\n",
        b"Transfer-Encoding: gzip, chunked, identity\r\n",
    ],
)
async def test_ambiguous_framing_is_refused_and_never_forwarded(foreman, stub, head) -> None:
    await foreman.ready()
    body = json.dumps(CHAT).encode()[:20]
    answer = await raw_exchange(foreman.url, b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\n" + head + b"\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 400") or answer == b""
    assert not [r for r in stub.requests if r.path == "/api/chat"]
    assert (await foreman.fetch("/api/chat", method="POST", body=CHAT)).code == 200


@pytest.mark.parametrize(
    "path",
    ["/api/../api/chat", "/api//chat", "//api/chat", "/api/%2e%2e/api/chat", "/api/chat/", "/api/Chat",
     "/v1/../api/chat", "/api/chat%00", "/healthz/../api/chat"],
)
async def test_paths_are_not_normalised_into_another_route(foreman, stub, path) -> None:
    await foreman.ready()
    response = await foreman.fetch(path, method="POST", body=CHAT)
    assert response.code == 404
    assert "error" in json.loads(response.body)
    assert not [r for r in stub.requests if r.path != "/api/tags"]


async def test_method_a_route_does_not_take_is_405_json(foreman, stub) -> None:
    await foreman.ready()
    for method, path in (("PUT", "/api/chat"), ("DELETE", "/api/tags"), ("POST", "/api/ps"), ("PATCH", "/healthz")):
        response = await foreman.fetch(path, method=method, body=b"{}" if method != "DELETE" else None,
                                       allow_nonstandard_methods=True)
        assert response.code == 405, (method, path)
        assert "error" in json.loads(response.body)


async def test_oversized_header_is_refused(foreman, stub) -> None:
    await foreman.ready()
    answer = await raw_exchange(foreman.url, b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert not answer.startswith(b"HTTP/1.1 200")
    assert (await foreman.fetch("/api/tags")).code == 200


# --- auth --------------------------------------------------------------------------


async def test_refused_tokens_are_answered_alike_and_logged_once_per_minute(start_foreman, stub, caplog) -> None:
    front = start_foreman(FOREMAN_TOKENS="the-real-token")
    await front.ready()
    answers = set()
    with caplog.at_level(logging.DEBUG):
        for header in (None, "Bearer nope", "Bearer the-real-toke", "Bearer the-real-tokenX", "Basic xyz", "bearer"):
            response = await front.fetch("/api/tags", headers={"Authorization": header} if header else {})
            answers.add((response.code, response.body, response.headers.get("WWW-Authenticate")))
    assert answers == {(401, b'{"error":"missing or invalid bearer token"}', "Bearer")}
    warnings = [r for r in caplog.records if r.name == "foreman.auth" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "the-real" not in caplog.text and "nope" not in caplog.text


async def test_only_spaces_and_tabs_around_a_token_are_ignored(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_TOKENS="the-real-token")
    await front.ready()

    async def status(authorization: bytes) -> int:
        answer = await raw_exchange(
            front.url,
            b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Authorization: " + authorization + b"\r\n\r\n",
        )
        return int(answer.split(b" ", 2)[1])

    # HTTP's own whitespace around the value and between its parts is fine...
    for good in (b"Bearer the-real-token", b"Bearer the-real-token \t", b"bearer \t the-real-token"):
        assert await status(good) == 200, good
    # ...but a token followed (or preceded) by any other whitespace is another token.
    # (Tornado reads header bytes as Latin-1: 0xA0 is a non-breaking space.)
    for extra in (b"\xa0", b"\x85", b"\xc2\xa0"):
        assert await status(b"Bearer the-real-token" + extra) == 401, extra
        assert await status(b"Bearer " + extra + b"the-real-token") == 401, extra
    # Control characters Python also counts as whitespace: Tornado refuses some
    # header values with them itself (400); none may get through.
    for extra in (b"\x0b", b"\x0c", b"\x1c", b"\x1f"):
        assert await status(b"Bearer the-real-token" + extra) in (400, 401), extra


# --- faults at the target -------------------------------------------------------------


async def test_healthz_names_a_failed_polls_status_but_not_what_the_target_said(start_foreman, caplog) -> None:
    private = b"open /Users/alice/.ollama/models/manifests/registry: permission denied"

    async def failing_tags(head: bytes, writer: asyncio.StreamWriter) -> None:
        body = b'{"error":"' + private + b'"}'
        writer.write(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()

    server, url = await serve_raw(failing_tags)
    try:
        front = start_foreman(url)
        with caplog.at_level(logging.INFO):
            await front.ready()
            health = await front.fetch("/healthz")  # no token needed
        assert health.code == 503
        assert json.loads(health.body)["last_error"] == "the target answered 500"
        assert b"/Users/alice" not in health.body
        # The detail is in the log, for whoever runs foreman.
        polls = [r.getMessage() for r in caplog.records if r.name == "foreman.inventory"]
        assert any("500" in m and "/Users/alice" in m for m in polls), polls
    finally:
        server.close()


async def test_target_silent_before_answering_is_504_after_the_idle_timeout(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_TARGET_IDLE_TIMEOUT="1s")
    await front.ready()
    stub.hold = asyncio.Event()  # a model that never finishes loading
    response = await front.fetch("/api/chat", method="POST", body=CHAT)
    assert response.code == 504
    assert "FOREMAN_TARGET_IDLE_TIMEOUT" in json.loads(response.body)["error"]
    await stub.wait_for(lambda: stub.chats_disconnected == 1)
    stub.hold.set()
    assert (await front.fetch("/api/chat", method="POST", body=CHAT)).code == 200


async def test_target_silent_mid_stream_ends_it_with_an_error_line(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_TARGET_IDLE_TIMEOUT="1s")
    await front.ready()
    gate = asyncio.Event()

    async def pace(i: int) -> None:
        await gate.wait()

    stub.pace = pace
    reader = StreamReader()
    response = await front.client().fetch(reader.request(front.url + "/api/chat", CHAT), raise_error=False)
    assert response.code == 200
    assert reader.lines[0]["done"] is False
    assert "sent nothing for 1s" in reader.lines[-1]["error"]
    await stub.wait_for(lambda: stub.chats_disconnected == 1)


async def test_a_slow_but_steady_stream_is_not_cut_by_the_idle_timeout(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_TARGET_IDLE_TIMEOUT="1s")
    await front.ready()
    stub.chunk_delay = 0.4  # 12 chunks over ~5 s, never 1 s apart
    reader = StreamReader()
    response = await front.client().fetch(
        reader.request(front.url + "/api/chat", {**CHAT, "options": {"num_predict": 12}}), raise_error=False
    )
    assert response.code == 200
    assert reader.lines[-1]["done"] is True and len(reader.lines) == 13


async def test_target_answering_with_a_web_page_is_502(start_foreman) -> None:
    async def portal(head: bytes, writer: asyncio.StreamWriter) -> None:
        if b"/api/tags" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(TAGS), TAGS))
        else:
            page = b"<html><body>Please log in</body></html>"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(page), page))
        await writer.drain()

    server, url = await serve_raw(portal)
    front = start_foreman(url)
    await front.ready()
    response = await front.fetch("/api/chat", method="POST", body=CHAT)
    assert response.code == 502
    assert "web page" in json.loads(response.body)["error"]
    server.close()


async def test_target_resetting_the_connection_is_waited_out_then_503(start_foreman) -> None:
    async def reset(head: bytes, writer: asyncio.StreamWriter) -> None:
        if b"/api/tags" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(TAGS), TAGS))
            await writer.drain()
            return
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST

    server, url = await serve_raw(reset)
    front = start_foreman(url, FOREMAN_QUEUE_TIMEOUT="1s")
    await front.ready()
    response = await front.fetch("/api/chat", method="POST", body=CHAT)
    assert response.code == 503
    assert "gave up after waiting 1s" in json.loads(response.body)["error"]
    ps = await front.fetch("/api/ps")
    assert ps.code == 503 and "Retry-After" in ps.headers
    server.close()


async def test_target_answering_with_something_not_http_is_502_and_the_next_request_works(start_foreman) -> None:
    garbage = True

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> None:
        if b"/api/tags" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(TAGS), TAGS))
        elif garbage:
            writer.write(b"SSH-2.0-OpenSSH_9.2p1\r\nProtocol mismatch.\r\n\r\n")
        else:
            done = b'{"done":true}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(done), done))
        await writer.drain()

    server, url = await serve_raw(answer)
    front = start_foreman(url)
    await front.ready()
    response = await front.fetch("/api/chat", method="POST", body={**CHAT, "stream": False})
    assert response.code == 502
    assert "malformed HTTP response" in json.loads(response.body)["error"]
    garbage = False
    again = await front.fetch("/api/chat", method="POST", body={**CHAT, "stream": False})
    assert again.code == 200 and again.body == b'{"done":true}'
    server.close()


async def test_a_request_refused_during_the_drain_says_the_connection_closes(start_foreman, stub) -> None:
    """A kept-alive client asking while foreman drains is told not to reuse the connection."""
    front = start_foreman()
    await front.ready()
    stub.hold = asyncio.Event()
    host, port = front.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    running = asyncio.ensure_future(front.fetch("/api/chat", method="POST", body=CHAT))
    await stub.wait_for(lambda: stub.chats_started == 1)
    draining = asyncio.ensure_future(front.foreman.drain(grace=10))
    await until(lambda: front.foreman.activity.draining)
    writer.write(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 503")
    assert b"\r\nConnection: close\r\n" in head
    writer.close()
    stub.hold.set()
    assert (await running).code == 200
    await draining
