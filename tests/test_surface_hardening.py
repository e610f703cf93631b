"""What reaches the target, the log and the client (issue 11, items 7, 9 and 10).

- A client's path reaches the target only when it holds what its route
  expects there (a plain model name, a blob digest): never `..` and friends,
  which a path-normalising proxy in front of the target would resolve
  outside FOREMAN_OLLAMA_URL's prefix, with foreman's bearer.
- Client-controlled strings in logs and errors are bounded and escaped: no
  60 MB log lines, no forged log lines.
- CORS preflights reach the target without a token and without queueing;
  a loopback-only foreman refuses a Host that is not local (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys

import pytest

from foreman import logs
from tests.helpers import last_request, serve_raw

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
TAGS = b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest"}]}'
UPSTREAM_TOKEN = "upstream-secret"
ADMIN = "admin-tok"
DIGEST = "sha256:" + "ab" * 32
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def exchange(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request over a bare socket, written exactly as given; the answer's status, headers, body.

    A bare socket, because an HTTP client library may tidy a path (resolve
    `..`, re-encode) before sending it.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode("latin-1") + b"Connection: close\r\n\r\n" + body)
    await writer.drain()
    try:
        data = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, rest


class RecordingTarget:
    """A raw target that notes every request line and answers each with a small JSON document."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []

    async def answer(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        self.heads.append(head)
        body = TAGS if b"/api/tags" in head.split(b"\r\n", 1)[0] else b'{"id":"llama3.2:latest"}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()

    def lines(self, marker: bytes) -> list[bytes]:
        """The request lines that mention `marker` (the poll of /api/tags left out)."""
        return [h.split(b"\r\n", 1)[0] for h in self.heads if marker in h.split(b"\r\n", 1)[0]]


@pytest.fixture
def prefixed(io_loop, start_foreman):
    """A foreman whose target URL has a path prefix, in front of a recording raw target."""
    target = RecordingTarget()
    server, url = io_loop.run_sync(lambda: serve_raw(target.answer))
    front = start_foreman(
        url + "/ollama",
        FOREMAN_OLLAMA_TOKEN=UPSTREAM_TOKEN,
        FOREMAN_TOKENS="tok",
        FOREMAN_ADMIN_TOKENS=ADMIN,
    )
    io_loop.run_sync(front.ready)
    yield front, target
    server.close()


# --- 7: only plain names and digests go on the wire ---------------------------------

BAD_MODEL_PATHS = [
    "/v1/models/../../../admin/secrets",
    "/v1/models/%2e%2e/%2e%2e/%2e%2e/admin/secrets",
    "/v1/models/%2E%2E%2F%2E%2E%2Fadmin%2Fsecrets",
    "/v1/models/..%2f..%2f..%2fadmin",
    "/v1/models/..\\..\\admin",
    "/v1/models/%5c..%5c..%5cadmin",
    "/v1/models/./llama3.2",
    "/v1/models/llama3.2/..",
    "/v1/models/a//b",
    "/v1/models/llama3.2%00",
    "/v1/models/llama3.2%0d%0aX-Injected:%20yes",
    "/v1/models/http:%2f%2fevil%2fns%2fm",
    "/v1/models/%20llama3.2",
    "/v1/models/%ff%fe",
]


@pytest.mark.parametrize("path", BAD_MODEL_PATHS)
async def test_a_model_path_that_is_not_a_plain_name_is_refused_and_never_forwarded(prefixed, path) -> None:
    front, target = prefixed
    status, headers, body = await exchange(
        port_of(front.url), f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer tok\r\n"
    )
    assert status == 400, body
    error = json.loads(body)["error"]  # OpenAI's shape under /v1
    assert error["type"] == "invalid_request_error", error
    assert target.lines(b"/v1/") == [], "the path reached the target"
    assert target.lines(b"admin") == []


@pytest.mark.parametrize(
    "path", ["/v1/models/llama3.2:latest", "/v1/models/hf.co/org/model:Q4_K_M", "/v1/models/llama3.2%3Alatest"]
)
async def test_a_plain_model_name_still_goes_through_as_the_client_wrote_it(prefixed, path) -> None:
    front, target = prefixed
    status, _, body = await exchange(
        port_of(front.url), f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer tok\r\n"
    )
    assert status == 200, body
    assert target.lines(b"/v1/") == [f"GET /ollama{path} HTTP/1.1".encode()]


BAD_DIGESTS = [
    "..",
    "%2e%2e",
    "sha256:..%2f..%2fadmin",
    "..%5c..%5cadmin",
    "sha256:" + "0" * 63,
    "sha256:" + "0" * 65,
    "sha256:" + "g" * 64,
    "sha512:" + "0" * 64,
    DIGEST + "%2f..",
    DIGEST + "%00",
]


@pytest.mark.parametrize("method", ["HEAD", "POST"])
@pytest.mark.parametrize("digest", BAD_DIGESTS)
async def test_a_blob_path_that_is_not_a_digest_is_refused_and_never_forwarded(prefixed, digest, method) -> None:
    front, target = prefixed
    body = b"blob" if method == "POST" else b""
    status, _, answer = await exchange(
        port_of(front.url),
        f"{method} /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN}\r\n"
        f"Content-Length: {len(body)}\r\n",
        body,
    )
    assert status == 400
    if method == "POST":
        assert json.loads(answer) == {"error": "invalid digest format"}  # Ollama's words
    assert target.lines(b"/api/blobs") == []


@pytest.mark.parametrize("digest", [DIGEST, "sha256-" + "AB" * 32])
async def test_a_digest_as_ollama_takes_it_goes_through(prefixed, digest) -> None:
    front, target = prefixed
    status, _, _ = await exchange(
        port_of(front.url),
        f"HEAD /api/blobs/{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN}\r\n",
    )
    assert status == 200
    assert target.lines(b"/api/blobs") == [f"HEAD /ollama/api/blobs/{digest} HTTP/1.1".encode()]


async def test_a_preflight_checks_the_path_as_its_route_does(prefixed) -> None:
    front, target = prefixed
    status, _, _ = await exchange(
        port_of(front.url),
        "OPTIONS /v1/models/..%2f..%2fadmin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Origin: http://localhost:3000\r\nAccess-Control-Request-Method: GET\r\n",
    )
    assert status == 400
    assert target.lines(b"OPTIONS") == []


# --- 9: bounded, escaped client strings in logs and errors ---------------------------


async def test_a_huge_model_name_gives_a_small_error_and_a_small_log_record(foreman, stub, caplog) -> None:
    await foreman.ready()
    huge = "m" * (8 << 20)
    with caplog.at_level(logging.INFO, logger="foreman.access"):
        response = await foreman.fetch("/api/chat", method="POST", body={**CHAT, "model": huge})
        await asyncio.sleep(0)
    assert response.code == 404
    assert len(response.body) < 1000, len(response.body)
    message = json.loads(response.body)["error"]
    assert message.startswith("model 'mmm") and f"({len(huge)} characters)" in message
    records = [r for r in caplog.records if r.name == "foreman.access" and r.path == "/api/chat"]
    assert records
    record = records[-1]
    assert len(record.getMessage()) < 1000
    assert len(record.model) < 1000  # the JSON log's field: bounded too
    assert len(logs.JsonFormatter().format(record)) < 3000
    assert not [r for r in stub.requests if r.path == "/api/chat"]


FORGED = "x\n2026-01-01 12:00:00,000 INFO    foreman.access: GET /admin 200 0.1ms\x1b[2K\r"


async def test_a_model_name_cannot_forge_a_text_log_line(foreman, stub, monkeypatch) -> None:
    await foreman.ready()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    output = io.StringIO()
    monkeypatch.setattr(sys, "stderr", output)
    logs.configure("text", "info")
    try:
        response = await foreman.fetch("/api/chat", method="POST", body={**CHAT, "model": FORGED})
        error = json.loads(response.body)["error"]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert response.code == 404
    # The client gets its name back escaped, not a newline and an escape sequence.
    assert "\n" not in error and "\x1b" not in error and "\\n2026" in error
    text = output.getvalue()
    assert "\x1b" not in text and "\r" not in text
    lines = [line for line in text.splitlines() if "foreman.access" in line]
    assert len(lines) == 1, text
    assert lines[0].startswith(tuple("0123456789")) and "POST /api/chat 404" in lines[0]


async def test_the_json_log_stays_one_line_and_bounded(foreman, stub, monkeypatch) -> None:
    await foreman.ready()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    output = io.StringIO()
    monkeypatch.setattr(sys, "stderr", output)
    logs.configure("json", "info")
    try:
        await foreman.fetch("/api/chat", method="POST", body={**CHAT, "model": FORGED + "y" * 5000})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    entries = [json.loads(line) for line in output.getvalue().splitlines()]
    access = [e for e in entries if e["logger"] == "foreman.access"]
    assert len(access) == 1
    assert access[0]["model"].startswith(FORGED)  # the real characters, which JSON escapes
    assert len(access[0]["model"]) < 300


def test_shown_bounds_and_escapes_but_leaves_ordinary_text_alone() -> None:
    from foreman.shown import bounded, shown

    assert shown("hf.co/org/model:Q4_K_M") == "hf.co/org/model:Q4_K_M"
    assert shown("ünïcode") == "ünïcode"
    assert shown("a\nb\x1b[2K\r\x85\u2028") == "a\\nb\\x1b[2K\\r\\x85\\u2028"
    assert shown("m" * 1000) == "m" * 200 + "… (1000 characters)"
    # Escapes count against the limit: newlines cannot blow it up.
    assert shown("\n" * 150) == "\\n" * 100 + "… (150 characters)"
    assert bounded("a\nb") == "a\nb" and bounded("y" * 201) == "y" * 200 + "… (201 characters)"


def test_a_text_log_line_is_one_line_whatever_its_message_holds() -> None:
    record = logging.makeLogRecord(
        {"name": "tornado.application", "levelno": logging.ERROR, "levelname": "ERROR",
         "msg": "Uncaught exception GET %s", "args": ("/x\nforged line",)}
    )
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    text = logs.TextFormatter().format(record)
    first, *traceback = text.splitlines()
    assert first.endswith("Uncaught exception GET /x\\nforged line")
    assert traceback[0] == "Traceback (most recent call last):"  # a traceback keeps its lines


async def test_a_long_path_and_method_are_bounded_in_404_405_and_the_log(foreman, caplog) -> None:
    await foreman.ready()
    port = port_of(foreman.url)
    long_path = "/" + "p" * 20_000
    with caplog.at_level(logging.INFO, logger="foreman.access"):
        status, _, body = await exchange(port, f"GET {long_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert status == 404 and len(body) < 1000, (status, len(body))
        status, _, body = await exchange(port, f"PUT /api/tags/{'q' * 20_000} HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert status == 404 and len(body) < 1000
        status, _, body = await exchange(port, f"DELETE /api/chat?{'q' * 20_000} HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert status == 405 and len(body) < 1000
        await asyncio.sleep(0)
    access = [r for r in caplog.records if r.name == "foreman.access"]
    assert len(access) >= 3
    assert all(len(r.getMessage()) < 1000 and len(r.path) < 1000 for r in access)


async def test_control_characters_in_a_path_are_escaped_in_the_404_and_the_log(foreman, caplog) -> None:
    await foreman.ready()
    # Tornado refuses C0 controls in a request line but takes bytes from
    # 0x80 as Latin-1: 0x9b is a terminal's CSI, 0x85 a line break to Python.
    with caplog.at_level(logging.INFO, logger="foreman.access"):
        status, _, body = await exchange(
            port_of(foreman.url), "GET /nothing\x9b31mred\x85forged HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        )
        await asyncio.sleep(0)
    assert status == 404
    message = json.loads(body)["error"]
    assert message == "no route for GET /nothing\\x9b31mred\\x85forged"
    line = [r for r in caplog.records if r.name == "foreman.access"][-1].getMessage()
    assert len(line.splitlines()) == 1 and "\\x85forged" in line


# --- 10: browsers -----------------------------------------------------------------


async def test_a_preflight_reaches_the_target_without_a_token_and_without_queueing(start_foreman, stub) -> None:
    stub.token = UPSTREAM_TOKEN
    front = start_foreman(FOREMAN_TOKENS="tok", FOREMAN_OLLAMA_TOKEN=UPSTREAM_TOKEN, FOREMAN_CONCURRENCY="1")
    await front.ready()
    # The only slot is taken: a queued request would wait.
    stub.hold = asyncio.Event()
    busy = asyncio.ensure_future(
        front.fetch("/api/chat", method="POST", body={**CHAT, "stream": False}, headers={"Authorization": "Bearer tok"})
    )
    await stub.wait_for(lambda: stub.chats_started == 1)
    try:
        origin = "http://localhost:5173"
        for path in ("/api/chat", "/api/tags", "/v1/chat/completions", "/v1/models/llama3.2"):
            answer = await front.fetch(path, method="OPTIONS", headers={"Origin": origin, **PREFLIGHT})
            assert answer.code == 204, (path, answer.code, answer.body)
            assert answer.headers["Access-Control-Allow-Origin"] == origin
            assert "Authorization" in answer.headers["Access-Control-Allow-Headers"]
            assert answer.headers["Access-Control-Allow-Methods"]
            assert "X-Foreman-Queue-Wait" not in answer.headers
            seen = stub.requests[-1]
            assert (seen.method, seen.path) == ("OPTIONS", path)
            assert seen.headers["Origin"] == origin
        # An origin the target does not allow gets the target's answer too.
        refused = await front.fetch("/api/chat", method="OPTIONS", headers={"Origin": "https://evil.example", **PREFLIGHT})
        assert refused.code == 403
        assert "Access-Control-Allow-Origin" not in refused.headers
    finally:
        stub.hold.set()
        assert (await busy).code == 200


async def test_options_that_is_not_a_preflight_still_needs_a_token(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_TOKENS="tok")
    await front.ready()
    before = len(stub.requests)
    # An Origin alone is no preflight (no Access-Control-Request-Method).
    answer = await front.fetch("/api/chat", method="OPTIONS", headers={"Origin": "http://localhost:1"})
    assert answer.code == 401
    assert len(stub.requests) == before


async def test_ordinary_answers_carry_the_targets_cors_headers(foreman, stub) -> None:
    await foreman.ready()
    origin = "http://127.0.0.1:8000"
    for path, body in (("/api/chat", {**CHAT, "stream": False}), ("/api/show", {"model": "llama3.2"})):
        answer = await foreman.fetch(path, method="POST", body=body, headers={"Origin": origin})
        assert answer.code == 200, answer.body
        assert answer.headers["Access-Control-Allow-Origin"] == origin
        assert answer.headers["Vary"] == "Origin"


async def test_a_browser_asking_for_the_inventory_gets_the_targets_cors_answer(foreman, stub) -> None:
    await foreman.ready()
    polls = stub.tags_polls
    origin = "http://localhost:3000"
    for path in ("/api/tags", "/api/ps"):
        answer = await foreman.fetch(path, headers={"Origin": origin})
        assert answer.code == 200, (path, answer.body)
        assert answer.headers["Access-Control-Allow-Origin"] == origin
        assert "models" in json.loads(answer.body)
        refused = await foreman.fetch(path, headers={"Origin": "https://evil.example"})
        assert refused.code == 403 and "Access-Control-Allow-Origin" not in refused.headers
    assert stub.tags_polls == polls + 1  # asked of the target (the refused one never got that far)
    # Without Origin, /api/tags is still the inventory foreman holds.
    plain = await foreman.fetch("/api/tags")
    assert plain.code == 200 and "Access-Control-Allow-Origin" not in plain.headers
    assert stub.tags_polls == polls + 1


FOREIGN_HOSTS = ["evil.example", "evil.example:8080", "127.0.0.1.nip.io", "localhost.evil.example", "8.8.8.8:80"]


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
async def test_a_loopback_foreman_refuses_a_foreign_host(foreman, stub, host) -> None:
    await foreman.ready()
    port = port_of(foreman.url)
    before = len(stub.requests)
    for head, body in (
        ("GET /api/tags HTTP/1.1\r\n", b""),
        ("GET /healthz HTTP/1.1\r\n", b""),
        ("GET /v1/models/llama3.2 HTTP/1.1\r\n", b""),
        ("OPTIONS /api/chat HTTP/1.1\r\nOrigin: http://localhost:1\r\nAccess-Control-Request-Method: POST\r\n", b""),
        (f"POST /api/chat HTTP/1.1\r\nContent-Length: {len(json.dumps(CHAT))}\r\n", json.dumps(CHAT).encode()),
    ):
        status, headers, answer = await exchange(port, head + f"Host: {host}\r\n", body)
        assert status == 403, (head, status, answer)
        assert headers.get("connection") == "close"
        error = json.loads(answer)["error"]
        assert "loopback" in (error["message"] if isinstance(error, dict) else error)
    assert len(stub.requests) == before, "a request with a foreign Host reached the target"


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "LocalHost", "app.localhost:{port}", ""]
)
async def test_a_loopback_foreman_takes_local_hosts(foreman, host) -> None:
    await foreman.ready()
    port = port_of(foreman.url)
    header = f"Host: {host.format(port=port)}\r\n" if host else ""
    status, _, body = await exchange(port, "GET /api/tags HTTP/1.0\r\n" + header)
    assert status == 200, body


async def test_a_foreman_on_all_interfaces_takes_any_host(start_foreman, stub) -> None:
    # Bound to every interface, but with a token, and only ever reached on loopback.
    front = start_foreman(FOREMAN_LISTEN=":0", FOREMAN_TOKENS="tok")
    await front.ready()
    port = port_of(front.url)
    status, _, body = await exchange(
        port, "GET /api/tags HTTP/1.1\r\nHost: foreman.example.lan:8080\r\nAuthorization: Bearer tok\r\n"
    )
    assert status == 200, body
    show = json.dumps({"model": "llama3.2"})
    status, _, body = await exchange(
        port,
        f"POST /api/show HTTP/1.1\r\nHost: foreman.example.lan\r\nAuthorization: Bearer tok\r\n"
        f"Content-Length: {len(show)}\r\n",
        show.encode(),
    )
    assert status == 200, body
    # The target gets its own Host, never the client's.
    assert re.fullmatch(r"127\.0\.0\.1:\d+", last_request(stub, "/api/show").headers["Host"])
