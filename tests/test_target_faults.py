"""What a broken target can send, through a real foreman: bombs, odd statuses, banners."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import tracemalloc
import zlib

from tests.helpers import serve_raw

TAGS = b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest"}]}'
PS = b'{"models":[{"name":"llama3.2:latest","size_vram":1}]}'
MiB = 1 << 20


def answer(status: str, body: bytes = b"", *headers: str, length: bool = True) -> bytes:
    """An HTTP/1.1 answer as bytes: status line, headers, body."""
    lines = [f"HTTP/1.1 {status}", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_answer(body: bytes, *headers: str) -> bytes:
    return answer("200 OK", body, "Content-Type: application/json; charset=utf-8", *headers)


def gzip_bomb(inflated: int) -> bytes:
    """`inflated` bytes of zeros, gzipped, made a MiB at a time (the test holds no big buffer)."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    parts = [squeeze.compress(zeros) for _ in range(inflated // MiB)]
    parts.append(squeeze.flush())
    return b"".join(parts)


async def target(routes: dict[bytes, bytes]):
    """A raw target answering each `METHOD /path` in `routes` with its bytes (tags by default)."""
    asked: list[bytes] = []

    async def behaviour(head: bytes, writer: asyncio.StreamWriter) -> None:
        asked.append(head)
        request = b" ".join(head.split(b" ", 2)[:2])
        writer.write(routes.get(request, json_answer(TAGS)))
        await writer.drain()

    server, url = await serve_raw(behaviour)
    return server, url, asked


def error_of(response) -> str:
    return json.loads(response.body)["error"]


# -- item 4: a compressed metadata answer is inflated only up to a limit --


async def test_gzip_bomb_on_ps_is_a_502_without_inflating_it(start_foreman) -> None:
    bomb = gzip_bomb(64 * MiB)
    assert len(bomb) < MiB
    server, url, _ = await target(
        {b"GET /api/ps": json_answer(bomb, "Content-Encoding: gzip")}
    )
    front = start_foreman(url)
    await front.ready()
    gc.collect()
    tracemalloc.start()
    try:
        response = await front.fetch("/api/ps")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.code == 502
    assert "larger than 8 MiB" in error_of(response)
    # foreman inflated at most its limit, never the 64 MiB the target packed.
    assert peak < 16 * MiB
    server.close()


async def test_plain_ps_answer_over_the_limit_is_a_502(start_foreman) -> None:
    big = b'{"models":[],"pad":"' + b"x" * (9 * MiB) + b'"}'
    server, url, _ = await target({b"GET /api/ps": json_answer(big)})
    front = start_foreman(url)
    await front.ready()
    response = await front.fetch("/api/ps")
    assert response.code == 502
    assert "larger than 8 MiB" in error_of(response)
    server.close()


async def test_poll_of_a_gzip_bomb_is_a_failed_poll_saying_why(start_foreman) -> None:
    server, url, _ = await target(
        {b"GET /api/tags": json_answer(gzip_bomb(64 * MiB), "Content-Encoding: gzip")}
    )
    front = start_foreman(url)
    await front.ready()
    inventory = front.inventory
    assert inventory.degraded and inventory.tags_body is None
    assert "larger than 8 MiB" in (inventory.last_error or "")
    response = await front.fetch("/api/tags")
    assert response.code == 503 and "larger than 8 MiB" in error_of(response)
    server.close()


async def test_compressed_metadata_is_still_read(start_foreman) -> None:
    server, url, asked = await target(
        {
            b"GET /api/tags": json_answer(gzip.compress(TAGS), "Content-Encoding: gzip"),
            b"GET /api/ps": json_answer(zlib.compress(PS), "Content-Encoding: deflate"),
        }
    )
    front = start_foreman(url)
    await front.ready()
    assert not front.inventory.degraded and front.inventory.has("llama3.2")
    response = await front.fetch("/api/ps", decompress_response=False)
    assert response.code == 200 and response.body == PS
    assert "Content-Encoding" not in response.headers
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    # foreman says what it can read, rather than leaving it to Tornado.
    assert all(b"\r\nAccept-Encoding: gzip, deflate\r\n" in head for head in asked)
    server.close()


async def test_compressed_answer_foreman_cannot_read_is_a_502(start_foreman) -> None:
    server, url, _ = await target(
        {
            b"GET /api/ps": json_answer(b"\x1b\x00\x00", "Content-Encoding: br"),
            b"GET /api/tags": json_answer(gzip.compress(TAGS)[:-12], "Content-Encoding: gzip"),
        }
    )
    front = start_foreman(url)
    await front.ready()
    assert "compressed answer" in (front.inventory.last_error or "")
    response = await front.fetch("/api/ps")
    assert response.code == 502 and "br" in error_of(response)
    server.close()


# -- item 11: odd answers get the answer README promises --


async def test_304_on_ps_and_root_is_relayed_not_a_500(start_foreman) -> None:
    not_modified = answer("304 Not Modified", b"", 'ETag: "1"', length=False)
    server, url, _ = await target({b"GET /api/ps": not_modified, b"GET /": not_modified})
    front = start_foreman(url)
    await front.ready()
    for path in ("/api/ps", "/"):
        response = await front.fetch(path)
        assert response.code == 304, path
        assert response.body == b""
    server.close()


async def test_204_on_ps_is_relayed_not_a_500(start_foreman) -> None:
    server, url, _ = await target({b"GET /api/ps": answer("204 No Content", length=False)})
    front = start_foreman(url)
    await front.ready()
    response = await front.fetch("/api/ps")
    assert response.code == 204 and response.body == b""
    server.close()


async def test_status_that_http_does_not_have_is_a_502(start_foreman) -> None:
    for status in ("042 Odd", "000 Zero", "600 Beyond"):
        odd = answer(status, b'{"version":"0.0.0"}', "Content-Type: application/json")
        server, url, _ = await target({b"GET /api/version": odd, b"GET /api/ps": odd})
        front = start_foreman(url)
        await front.ready()
        for path in ("/api/version", "/api/ps"):
            response = await front.fetch(path)
            assert response.code == 502, (status, path, response.code, response.body)
            assert f"status {int(status.split()[0])}" in error_of(response)
        server.close()


async def test_redirect_on_metadata_routes_keeps_its_location(start_foreman) -> None:
    moved = answer(
        "302 Found", b"", "Location: http://127.0.0.1:9/elsewhere", "Content-Type: text/plain"
    )
    server, url, asked = await target({b"GET /api/ps": moved, b"GET /": moved})
    front = start_foreman(url)
    await front.ready()
    for path in ("/api/ps", "/"):
        response = await front.fetch(path, follow_redirects=False)
        assert response.code == 302, path
        assert response.headers.get("Location") == "http://127.0.0.1:9/elsewhere", path
    # foreman did not follow the redirect either.
    assert [h.split(b" ", 2)[1] for h in asked] == [b"/api/tags", b"/api/ps", b"/"]
    server.close()


async def test_banner_then_close_is_a_502_at_once_not_retried(start_foreman) -> None:
    chats: list[bytes] = []

    async def behaviour(head: bytes, writer: asyncio.StreamWriter) -> None:
        if head.startswith(b"GET /api/tags"):
            writer.write(json_answer(TAGS))
        else:
            chats.append(head)
            writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")  # no blank line: never a complete head
        await writer.drain()

    server, url = await serve_raw(behaviour)
    front = start_foreman(url, FOREMAN_QUEUE_TIMEOUT="20s")
    await front.ready()
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    response = await front.fetch("/api/chat", method="POST", body=body)
    assert response.code == 502, response.body
    assert "not an HTTP answer" in error_of(response)
    assert len(chats) == 1  # sent once, never re-sent
    # A metadata request, and the poll, say the same.
    response = await front.fetch("/api/ps")
    assert response.code == 502 and "not an HTTP answer" in error_of(response)
    assert len(chats) == 2
    server.close()
