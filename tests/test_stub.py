"""The stand-in Ollama: shapes, knobs and counters, over real sockets."""

import asyncio
import base64
import hashlib
import json
import logging
import math
import struct

import ollama
import openai
import pytest
from tornado.httpclient import HTTPClientError, HTTPResponse
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from tornado.tcpclient import TCPClient

from foreman.stub import (
    DEFAULT_MODELS,
    EMBEDDING_SIZE,
    STUB_VERSION,
    RecordedRequest,
    StubOllama,
    embedding_for,
)

CHAT_STATS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


@pytest.fixture(autouse=True)
def no_errors_logged(caplog):
    """A client vanishing or a cut stream must not log tracebacks."""
    yield
    errors = [
        r
        for r in caplog.records
        # tornado.access logs 5xx answers (chat_status) at ERROR on purpose.
        if r.levelno >= logging.ERROR and r.name != "tornado.access"
    ]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
def stub(io_loop):
    s = StubOllama()
    s.listen()
    yield s
    io_loop.run_sync(s.stop)


@pytest.fixture
def http(io_loop):
    client = SimpleAsyncHTTPClient(force_instance=True)
    yield client
    client.close()


def parse_event(event: bytes):
    """One SSE event from the stub: `data: <json>` or `data: [DONE]`."""
    assert event.startswith(b"data: "), event
    payload = event[len(b"data: ") :]
    return "[DONE]" if payload == b"[DONE]" else json.loads(payload)


class Lines:
    """Collects an NDJSON body (or, with sse=True, SSE events) as it streams in.

    wait() for a count of lines/events.
    """

    def __init__(self, sse: bool = False) -> None:
        self.lines: list = []
        self._separator = b"\n\n" if sse else b"\n"
        self._parse = parse_event if sse else json.loads
        self._buffer = b""
        self._changed = asyncio.Event()

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *complete, self._buffer = self._buffer.split(self._separator)
        self.lines.extend(self._parse(line) for line in complete)
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.lines) < count:
                await self._changed.wait()


def chat_body(content="hello there", model="llama3.2:latest", **extra) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    ).encode()


async def post_chat(http, stub, body: bytes, **kwargs) -> HTTPResponse:
    return await http.fetch(
        f"{stub.url}/api/chat", method="POST", body=body, raise_error=False, **kwargs
    )


async def open_chat_socket(stub, body: bytes, path: str = "/api/chat", close: bool = False):
    """A raw connection that has sent a POST (a chat by default).

    The test closes it, or with close=True the stub does after answering.
    """
    stream = await TCPClient().connect("127.0.0.1", stub.port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{stub.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    await stream.write(head.encode() + body)
    return stream


async def test_root_version_and_unknown_routes(stub, http):
    root = await http.fetch(stub.url + "/")
    assert root.body == b"Ollama is running"
    assert root.headers["Content-Type"].startswith("text/plain")
    head = await http.fetch(stub.url + "/", method="HEAD")
    assert head.code == 200 and head.body == b""

    version = await http.fetch(stub.url + "/api/version")
    assert json.loads(version.body) == {"version": STUB_VERSION}

    for method, path in (("GET", "/api/nope"), ("GET", "/api/chat"), ("DELETE", "/api/tags")):
        missing = await http.fetch(stub.url + path, method=method, raise_error=False)
        assert missing.code == 404
        assert missing.body == b"404 page not found"
        assert missing.headers["Content-Type"] == "text/plain"
    assert [(r.method, r.path) for r in stub.requests][-3:] == [
        ("GET", "/api/nope"),
        ("GET", "/api/chat"),
        ("DELETE", "/api/tags"),
    ]


async def test_tags_shape(stub, http):
    stub.models.append("extra:7b-q8_0")
    response = await http.fetch(stub.url + "/api/tags?x=1")
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    models = json.loads(response.body)["models"]
    assert [m["name"] for m in models] == [*DEFAULT_MODELS, "extra:7b-q8_0"]
    for entry in models:
        assert set(entry) == {"name", "model", "modified_at", "size", "digest", "details"}
        assert entry["model"] == entry["name"]
        assert entry["digest"] == hashlib.sha256(entry["name"].encode()).hexdigest()
        assert isinstance(entry["size"], int) and entry["size"] > 0
        assert set(entry["details"]) == {
            "parent_model",
            "format",
            "family",
            "families",
            "parameter_size",
            "quantization_level",
        }
        assert entry["details"]["format"] == "gguf"
    assert models[-1]["details"]["parameter_size"] == "7B"
    assert models[-1]["details"]["quantization_level"] == "Q8_0"
    assert stub.tags_polls == 1
    assert stub.requests[-1].path == "/api/tags?x=1"

    # Byte-for-byte reproducible.
    again = await http.fetch(stub.url + "/api/tags?x=1")
    assert again.body == response.body

    stub.tags_status = 503
    failing = await http.fetch(stub.url + "/api/tags", raise_error=False)
    assert failing.code == 503
    assert json.loads(failing.body) == {"error": "stub error"}
    assert stub.tags_polls == 3


async def test_chat_streams_line_by_line(stub, http):
    lines = Lines()
    response = await post_chat(http, stub, chat_body(), streaming_callback=lines.feed)
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"

    *chunks, final = lines.lines
    assert len(chunks) == 4  # one per word of "You said: hello there"
    for chunk in chunks:
        assert set(chunk) == {"model", "created_at", "message", "done"}
        assert chunk["model"] == "llama3.2:latest"
        assert chunk["done"] is False
        assert chunk["message"]["role"] == "assistant"
    assert "".join(c["message"]["content"] for c in chunks) == "You said: hello there "

    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert all(isinstance(final[k], int) for k in CHAT_STATS)
    assert final["eval_count"] == len(chunks)
    assert final["prompt_eval_count"] == 2
    assert final["total_duration"] >= final["eval_duration"] + final["load_duration"]

    assert (stub.chats_started, stub.chats_finished, stub.chats_disconnected) == (1, 1, 0)
    assert (stub.active_chats, stub.max_active_chats) == (0, 1)

    ps = json.loads((await http.fetch(stub.url + "/api/ps")).body)["models"]
    assert [m["name"] for m in ps] == ["llama3.2:latest"]
    assert {"name", "model", "size", "digest", "details", "expires_at", "size_vram"} <= set(
        ps[0]
    )


async def test_chat_non_streaming(stub, http):
    response = await post_chat(http, stub, chat_body("hi", model="llama3.2", stream=False))
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    reply = json.loads(response.body)
    assert reply["model"] == "llama3.2"  # echoed as requested, like Ollama
    assert reply["message"] == {"role": "assistant", "content": "You said: hi "}
    assert reply["done"] is True and reply["done_reason"] == "stop"
    assert all(k in reply for k in CHAT_STATS)
    assert stub.chats_finished == 1


async def test_num_predict_sets_chunk_count(stub, http):
    lines = Lines()
    body = chat_body("one two", options={"num_predict": 7})
    await post_chat(http, stub, body, streaming_callback=lines.feed)
    *chunks, final = lines.lines
    assert [c["message"]["content"] for c in chunks] == [
        "You ", "said: ", "one ", "two ", "You ", "said: ", "one ",
    ]
    assert final["eval_count"] == 7


async def test_chat_validation(stub, http):
    cases = [
        (b"{not json", 400, None),
        (b"", 400, "missing request body"),
        (b"[]", 400, None),
        (json.dumps({"messages": []}).encode(), 400, "model is required"),
        (chat_body(model="nope"), 404, "model 'nope' not found"),
        (chat_body(model="qwen2.5"), 404, "model 'qwen2.5' not found"),  # means :latest
    ]
    for body, status, message in cases:
        response = await post_chat(http, stub, body)
        assert response.code == status, body
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        error = json.loads(response.body)["error"]
        assert message is None or error == message
    assert [r.body for r in stub.requests] == [body for body, _, _ in cases]
    assert stub.chats_finished == 0

    stub.chat_status = 500
    failing = await post_chat(http, stub, chat_body())
    assert failing.code == 500
    assert json.loads(failing.body) == {"error": "stub error"}


async def test_empty_messages_loads_the_model(stub, http):
    body = json.dumps({"model": "qwen2.5:0.5b", "messages": []}).encode()
    reply = json.loads((await post_chat(http, stub, body)).body)
    assert reply["done"] is True and reply["done_reason"] == "load"


async def test_token_required_except_root(http):
    stub = StubOllama(token="s3cret")
    stub.listen()
    try:
        assert (await http.fetch(stub.url + "/")).code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            denied = await http.fetch(stub.url + "/api/tags", headers=headers, raise_error=False)
            assert denied.code == 401
            assert json.loads(denied.body) == {"error": "unauthorized"}
        assert stub.tags_polls == 0
        ok = await http.fetch(
            stub.url + "/api/tags", headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.code == 200
        assert stub.requests[-1].headers["Authorization"] == "Bearer s3cret"
    finally:
        await stub.stop()


async def test_host_check(stub, http):
    for host in ("localhost:1", "127.0.0.1", "[::1]:11434", "LOCALHOST"):
        ok = await http.fetch(stub.url + "/api/version", headers={"Host": host})
        assert ok.code == 200, host
    for host in ("evil.example", "192.168.1.5:11434", "foreman.local:8080"):
        denied = await http.fetch(
            stub.url + "/api/version", headers={"Host": host}, raise_error=False
        )
        assert denied.code == 403, host
        assert denied.body == b""
    stub.check_host = False
    ok = await http.fetch(stub.url + "/api/version", headers={"Host": "evil.example"})
    assert ok.code == 200


async def test_hold_delays_headers(stub, http):
    stub.hold = asyncio.Event()
    header_lines: list[str] = []
    fetch = asyncio.ensure_future(
        post_chat(http, stub, chat_body(), header_callback=header_lines.append)
    )
    await stub.wait_for(lambda: stub.chats_started == 1)
    # A full round trip on another connection: the held chat had every chance
    # to send its status line and has not.
    await http.fetch(stub.url + "/api/version")
    assert header_lines == []
    assert not fetch.done() and stub.active_chats == 1

    stub.hold.set()
    response = await fetch
    assert response.code == 200
    assert header_lines[0].startswith("HTTP/1.1 200")
    assert stub.chats_finished == 1


async def test_pace_gates_each_chunk(stub, http):
    gates = {i: asyncio.Event() for i in range(1, 10)}
    paced = {i: asyncio.Event() for i in range(1, 10)}

    async def pace(i: int) -> None:
        paced[i].set()
        await gates[i].wait()

    async def parked_at(i: int) -> None:
        await asyncio.wait_for(paced[i].wait(), 10)
        # A full round trip on another connection: had chunk i slipped
        # through, it would have arrived by now.
        await http.fetch(stub.url + "/api/version")

    stub.pace = pace
    lines = Lines()
    fetch = asyncio.ensure_future(
        post_chat(http, stub, chat_body("a b"), streaming_callback=lines.feed)
    )
    await lines.wait(1)  # chunk 0 arrives without any gate open
    await parked_at(1)
    assert len(lines.lines) == 1

    gates[1].set()
    await lines.wait(2)
    await parked_at(2)
    assert len(lines.lines) == 2

    for gate in gates.values():
        gate.set()
    response = await fetch
    assert response.code == 200
    assert len(lines.lines) == 5 and lines.lines[-1]["done"] is True
    # 4 words; index 4 gates the done line; nothing else was paced.
    assert [i for i, event in paced.items() if event.is_set()] == [1, 2, 3, 4]


@pytest.mark.parametrize("after", [0, 2])
async def test_break_after_truncates(stub, http, after):
    stub.break_after = after
    lines = Lines()
    # Let each chunk reach the client before the next is due: Tornado's client
    # coalesces chunks that arrive together and drops them if the stream then
    # fails, which would hide what was sent.
    stub.pace = lines.wait
    header_lines: list[str] = []
    with pytest.raises(HTTPClientError) as caught:
        await http.fetch(
            f"{stub.url}/api/chat",
            method="POST",
            body=chat_body("one two three"),
            streaming_callback=lines.feed,
            header_callback=header_lines.append,
        )
    assert caught.value.code == 599  # connection closed, not a clean end
    assert header_lines[0].startswith("HTTP/1.1 200")
    assert len(lines.lines) == after
    assert all(line["done"] is False for line in lines.lines)
    assert (stub.chats_finished, stub.chats_disconnected, stub.chats_broken) == (0, 0, 1)
    assert stub.active_chats == 0


async def test_break_after_leaves_no_chunked_terminator(stub):
    stub.break_after = 1
    stream = await open_chat_socket(stub, chat_body())
    raw = await stream.read_until_close()
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding: chunked" in raw
    assert raw.count(b'"done":false') == 1
    assert not raw.endswith(b"0\r\n\r\n")


@pytest.mark.parametrize("parked_on", ["hold", "pace", "chunk_delay", "nothing"])
async def test_client_disconnect_is_counted(stub, parked_on):
    body = chat_body()
    if parked_on == "hold":
        stub.hold = asyncio.Event()  # never set
    elif parked_on == "pace":
        stub.pace = lambda i: asyncio.Event().wait()  # never released
    elif parked_on == "chunk_delay":
        stub.chunk_delay = 3600
    else:  # chunks flow flat out; the stub learns of the close from a write
        body = chat_body(options={"num_predict": 10**7})

    stream = await open_chat_socket(stub, body)
    if parked_on == "hold":
        await stub.wait_for(lambda: stub.chats_started == 1)
    else:
        await stream.read_until(b"}\n")  # chunk 0 arrived, the handler is parked
    stream.close()

    await stub.wait_for(lambda: stub.chats_disconnected == 1)
    assert (stub.chats_finished, stub.active_chats, stub.max_active_chats) == (0, 0, 1)


async def test_stop_drops_connections_and_listen_restarts(stub, http):
    port = stub.port
    stub.hold = asyncio.Event()
    held = asyncio.ensure_future(post_chat(http, stub, chat_body()))
    await stub.wait_for(lambda: stub.active_chats == 1)

    await stub.stop()
    with pytest.raises(HTTPClientError) as caught:
        await held  # the target "died" under the client
    assert caught.value.code == 599
    await stub.wait_for(lambda: stub.chats_disconnected == 1)
    with pytest.raises(ConnectionRefusedError):
        await http.fetch(stub.url + "/")

    assert stub.listen(port) == port
    stub.hold = None
    again = await http.fetch(stub.url + "/api/version")
    assert again.code == 200
    assert (await post_chat(http, stub, chat_body())).code == 200


async def test_wait_for_times_out_with_state(stub):
    with pytest.raises(TimeoutError, match="chats_started"):
        await stub.wait_for(lambda: stub.chats_started == 5, timeout=0.01)


async def test_official_ollama_client(stub):
    client = ollama.Client(host=stub.url)

    def stream_chat() -> list:
        return list(
            client.chat(
                model="llama3.2",
                messages=[{"role": "user", "content": "ping pong"}],
                stream=True,
            )
        )

    # The client is synchronous; run it on a thread so this loop keeps serving.
    parts = await asyncio.to_thread(stream_chat)
    assert "".join(p.message.content for p in parts) == "You said: ping pong "
    assert parts[-1].done is True and parts[-1].eval_count == 4
    assert all(p.done is False for p in parts[:-1])

    listed = await asyncio.to_thread(client.list)
    assert [m.model for m in listed.models] == list(DEFAULT_MODELS)

    with pytest.raises(ollama.ResponseError) as caught:
        await asyncio.to_thread(
            client.chat, model="missing", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 404
    assert stub.chats_finished == 1


# --- the wider surface: generate, embed, show, management, /v1 ----------------


def as_json(**fields) -> bytes:
    return json.dumps(fields).encode()


async def post(http, stub, path: str, body: bytes, **kwargs) -> HTTPResponse:
    return await http.fetch(
        stub.url + path, method="POST", body=body, raise_error=False, **kwargs
    )


def error_of(response: HTTPResponse) -> str:
    return json.loads(response.body)["error"]


def openai_error_of(response: HTTPResponse) -> dict:
    error = json.loads(response.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] is None and error["code"] is None
    return error


def chunked_payloads(raw: bytes) -> list[bytes]:
    """The chunks of a chunked HTTP/1.1 response read whole from a socket."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    payloads = []
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        payloads.append(rest[:size])
        rest = rest[size + 2 :]
    return payloads


def unit_length(vector) -> bool:
    return math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, abs_tol=1e-6)


GENERATE_FINAL_KEYS = [
    "model",
    "created_at",
    "response",
    "done",
    "done_reason",
    "context",
    *CHAT_STATS,
]


async def test_generate_streams_line_by_line(stub, http):
    lines = Lines()
    body = as_json(model="llama3.2", prompt="why is the sky blue")
    response = await post(http, stub, "/api/generate", body, streaming_callback=lines.feed)
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"

    *chunks, final = lines.lines
    assert len(chunks) == 7  # one per word of "You said: why is the sky blue"
    for chunk in chunks:
        assert list(chunk) == ["model", "created_at", "response", "done"]
        assert chunk["model"] == "llama3.2" and chunk["done"] is False
    assert "".join(c["response"] for c in chunks) == "You said: why is the sky blue "

    assert list(final) == GENERATE_FINAL_KEYS  # Ollama's field order
    assert final["response"] == "" and final["done"] is True
    assert final["done_reason"] == "stop"
    assert 0 < len(final["context"]) <= 32
    assert all(isinstance(t, int) for t in final["context"])
    assert final["eval_count"] == 7 and final["prompt_eval_count"] == 5

    assert (stub.chats_started, stub.generates_started, stub.chats_finished) == (1, 1, 1)
    assert (stub.active_chats, stub.embeds_started, stub.openai_started) == (0, 0, 0)
    ps = json.loads((await http.fetch(stub.url + "/api/ps")).body)["models"]
    assert [m["name"] for m in ps] == ["llama3.2:latest"]


async def test_generate_non_streaming_raw_and_num_predict(stub, http):
    body = as_json(model="qwen2.5:0.5b", prompt="hi", stream=False)
    response = await post(http, stub, "/api/generate", body)
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    reply = json.loads(response.body)
    assert list(reply) == GENERATE_FINAL_KEYS
    assert reply["response"] == "You said: hi "
    again = await post(http, stub, "/api/generate", body)
    assert again.body == response.body  # byte for byte reproducible

    raw = json.loads(
        (
            await post(
                http,
                stub,
                "/api/generate",
                as_json(model="qwen2.5:0.5b", prompt="a", raw=True, stream=False),
            )
        ).body
    )
    assert "context" not in raw  # documented: raw mode returns no context

    lines = Lines()
    capped = as_json(model="qwen2.5:0.5b", prompt="x", options={"num_predict": 5})
    await post(http, stub, "/api/generate", capped, streaming_callback=lines.feed)
    assert [c["response"] for c in lines.lines[:-1]] == ["You ", "said: ", "x ", "You ", "said: "]
    assert lines.lines[-1]["eval_count"] == 5


async def test_generate_without_prompt_loads_and_unloads(stub, http):
    loaded = await post(http, stub, "/api/generate", as_json(model="llama3.2"))
    assert loaded.headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(loaded.body) == {
        "model": "llama3.2",
        "created_at": "2024-01-01T00:00:00.000000Z",
        "response": "",
        "done": True,
        "done_reason": "load",
    }
    ps = json.loads((await http.fetch(stub.url + "/api/ps")).body)["models"]
    assert [m["name"] for m in ps] == ["llama3.2:latest"]

    unload = as_json(model="llama3.2", prompt="", keep_alive=0)
    reply = json.loads((await post(http, stub, "/api/generate", unload)).body)
    assert reply["done_reason"] == "unload"
    ps = json.loads((await http.fetch(stub.url + "/api/ps")).body)["models"]
    assert ps == []
    assert stub.generates_started == stub.chats_finished == 2


async def test_generate_validation_and_chat_status(stub, http):
    cases = [
        (b"{oops", 400, None),
        (b"", 400, "missing request body"),
        (as_json(prompt="x"), 400, "model is required"),
        (as_json(model="llama3.2", prompt=5), 400, "prompt must be a string"),
        (as_json(model="llama3.2", prompt="x", stream="yes"), 400, "stream must be a boolean"),
        (as_json(model="nope", prompt="x"), 404, "model 'nope' not found"),
    ]
    for body, status, message in cases:
        response = await post(http, stub, "/api/generate", body)
        assert response.code == status, body
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert message is None or error_of(response) == message
    assert stub.generates_started == stub.chats_started == len(cases)
    assert stub.chats_finished == 0

    stub.chat_status = 503
    failing = await post(http, stub, "/api/generate", as_json(model="llama3.2", prompt="x"))
    assert failing.code == 503 and error_of(failing) == "stub error"


async def test_embed_vectors(stub, http):
    one = await post(http, stub, "/api/embed", as_json(model="llama3.2", input="hello"))
    assert one.headers["Content-Type"] == "application/json; charset=utf-8"
    reply = json.loads(one.body)
    assert list(reply) == [
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    ]
    assert reply["model"] == "llama3.2"
    assert reply["embeddings"] == [embedding_for("hello")]
    assert len(reply["embeddings"][0]) == EMBEDDING_SIZE
    assert unit_length(reply["embeddings"][0])

    many = json.loads(
        (
            await post(
                http,
                stub,
                "/api/embed",
                as_json(model="llama3.2", input=["hello", "two words"]),
            )
        ).body
    )
    assert many["embeddings"][0] == reply["embeddings"][0]  # a function of the text alone
    assert many["embeddings"][1] != many["embeddings"][0]
    assert many["prompt_eval_count"] == 3

    short = json.loads(
        (
            await post(
                http, stub, "/api/embed", as_json(model="llama3.2", input="hello", dimensions=3)
            )
        ).body
    )
    assert len(short["embeddings"][0]) == 3 and unit_length(short["embeddings"][0])

    empty = await post(http, stub, "/api/embed", as_json(model="llama3.2", input=[]))
    assert json.loads(empty.body) == {"model": "llama3.2", "embeddings": []}

    legacy = await post(http, stub, "/api/embeddings", as_json(model="llama3.2", prompt="hello"))
    assert json.loads(legacy.body) == {"embedding": embedding_for("hello")}
    no_prompt = await post(http, stub, "/api/embeddings", as_json(model="llama3.2"))
    assert json.loads(no_prompt.body) == {"embedding": []}

    assert stub.embeds_started == stub.chats_finished == 6
    assert stub.generates_started == 0


async def test_embed_errors_hold_and_status(stub, http):
    bad = await post(http, stub, "/api/embed", as_json(model="llama3.2", input=[1, 2]))
    assert bad.code == 400 and error_of(bad) == "invalid input type"
    for path, body in (
        ("/api/embed", as_json(model="nope", input="x")),
        ("/api/embeddings", as_json(model="nope", prompt="x")),
    ):
        missing = await post(http, stub, path, body)
        assert missing.code == 404
        assert error_of(missing) == 'model "nope" not found, try pulling it first'
    no_model = await post(http, stub, "/api/embeddings", as_json(prompt="x"))
    assert no_model.code == 400 and error_of(no_model) == "model is required"

    stub.hold = asyncio.Event()
    held = asyncio.ensure_future(
        post(http, stub, "/api/embed", as_json(model="llama3.2", input="x"))
    )
    await stub.wait_for(lambda: stub.active_chats == 1)
    await http.fetch(stub.url + "/api/version")  # a round trip: the embed had every chance
    assert not held.done()
    stub.hold.set()
    assert (await held).code == 200
    assert stub.active_chats == 0 and stub.chats_finished == 1

    stub.chat_status = 500
    failing = await post(http, stub, "/api/embed", as_json(model="llama3.2", input="x"))
    assert failing.code == 500 and error_of(failing) == "stub error"


async def test_show(stub, http):
    stub.models.append("nomic-embed-text:latest")
    response = await post(http, stub, "/api/show", as_json(model="llama3.2"))
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    shown = json.loads(response.body)
    assert list(shown) == [
        "modelfile",
        "parameters",
        "template",
        "details",
        "model_info",
        "capabilities",
        "modified_at",
    ]
    assert shown["capabilities"] == ["completion"]
    assert shown["modified_at"] == "2024-01-01T00:00:00.000000Z"
    assert "FROM " in shown["modelfile"]
    assert shown["model_info"]["general.architecture"] == "llama"
    assert shown["model_info"]["llama.context_length"] == 8192
    tags = json.loads((await http.fetch(stub.url + "/api/tags")).body)["models"]
    assert shown["details"] == tags[0]["details"]

    legacy = await post(http, stub, "/api/show", as_json(name="llama3.2:latest"))
    assert legacy.body == response.body
    embedder = json.loads(
        (await post(http, stub, "/api/show", as_json(model="nomic-embed-text"))).body
    )
    assert embedder["capabilities"] == ["embedding"]

    missing = await post(http, stub, "/api/show", as_json(model="nope"))
    assert missing.code == 404 and error_of(missing) == "model 'nope' not found"
    nameless = await post(http, stub, "/api/show", b"{}")
    assert nameless.code == 400 and error_of(nameless) == "model is required"
    assert stub.chats_started == 0  # metadata runs nothing


PULL_STATUSES = [
    "pulling manifest",
    *["pulling"] * 6,  # two lines for each of three layers
    "verifying sha256 digest",
    "writing manifest",
    "success",
]


async def test_pull_streams_progress_then_adds_the_model(stub, http):
    seen_at_pace: dict[int, bool] = {}

    async def pace(index: int) -> None:
        seen_at_pace[index] = stub.resolve("tinyllama") is not None

    stub.pace = pace
    lines = Lines()
    response = await post(
        http, stub, "/api/pull", as_json(model="tinyllama"), streaming_callback=lines.feed
    )
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    statuses = [line.get("status") for line in lines.lines]
    assert [s if "digest" not in line else "pulling" for s, line in zip(statuses, lines.lines)] == (
        PULL_STATUSES
    )
    for line in lines.lines[1:7]:
        assert set(line) == {"status", "digest", "total", "completed"}
        assert line["digest"].startswith("sha256:") and len(line["digest"]) == 71
        assert line["status"] == f"pulling {line['digest'][7:19]}"
        assert 0 < line["completed"] <= line["total"]
    assert lines.lines[2]["completed"] == lines.lines[2]["total"]
    # Added when the success line was due, not before.
    assert seen_at_pace == {i: False for i in range(1, 10)}
    assert stub.models[-1] == "tinyllama:latest"
    assert (stub.pulls_started, stub.progress_finished, stub.chats_started) == (1, 1, 0)

    # Not streaming: the same work, one object; pulling again adds no duplicate.
    whole = await post(http, stub, "/api/pull", as_json(name="tinyllama:latest", stream=False))
    assert whole.headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(whole.body) == {"status": "success"}
    assert stub.models.count("tinyllama:latest") == 1
    assert len(seen_at_pace) == 9  # non-streaming pulls pace through the same indexes

    nameless = await post(http, stub, "/api/pull", b"{}")
    assert nameless.code == 400 and error_of(nameless) == "model is required"


async def test_pull_pace_gates_each_line(stub, http):
    gates = {i: asyncio.Event() for i in range(1, 10)}
    paced = {i: asyncio.Event() for i in range(1, 10)}

    async def pace(i: int) -> None:
        paced[i].set()
        await gates[i].wait()

    stub.pace = pace
    lines = Lines()
    fetch = asyncio.ensure_future(
        post(http, stub, "/api/pull", as_json(model="phi3"), streaming_callback=lines.feed)
    )
    await lines.wait(1)
    await asyncio.wait_for(paced[1].wait(), 10)
    await http.fetch(stub.url + "/api/version")  # a round trip: line 1 would be here by now
    assert len(lines.lines) == 1 and stub.resolve("phi3") is None
    gates[1].set()
    await lines.wait(2)
    for gate in gates.values():
        gate.set()
    assert (await fetch).code == 200
    assert lines.lines[-1] == {"status": "success"}
    assert stub.resolve("phi3") == "phi3:latest"


async def test_progress_error(stub, http):
    stub.progress_error = "pull model manifest: file does not exist"
    lines = Lines()
    response = await post(
        http, stub, "/api/pull", as_json(model="ghost"), streaming_callback=lines.feed
    )
    assert response.code == 200  # the error arrives mid-stream, as from Ollama
    assert lines.lines == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    whole = await post(http, stub, "/api/pull", as_json(model="ghost", stream=False))
    assert whole.code == 500
    assert error_of(whole) == "pull model manifest: file does not exist"
    pushed = await post(http, stub, "/api/push", as_json(model="llama3.2", stream=False))
    assert pushed.code == 500
    assert stub.resolve("ghost") is None
    assert (stub.pulls_started, stub.pushes_started, stub.progress_finished) == (2, 1, 3)


async def test_push(stub, http):
    lines = Lines()
    response = await post(
        http, stub, "/api/push", as_json(model="llama3.2"), streaming_callback=lines.feed
    )
    assert response.code == 200
    statuses = [line["status"] for line in lines.lines]
    assert statuses[0] == "retrieving manifest"
    assert all(s.startswith("pushing ") for s in statuses[1:7])
    assert statuses[7:] == ["pushing manifest", "success"]
    missing = await post(http, stub, "/api/push", as_json(name="nope"))
    assert missing.code == 404 and error_of(missing) == "model 'nope' not found"
    assert stub.models == list(DEFAULT_MODELS)
    assert (stub.pushes_started, stub.progress_finished) == (2, 1)


async def test_create_and_blobs(stub, http):
    content = b"GGUF not really"
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    blob_url = f"{stub.url}/api/blobs/{digest}"

    absent = await http.fetch(blob_url, method="HEAD", raise_error=False)
    assert absent.code == 404
    wrong = await http.fetch(blob_url, method="POST", body=b"other", raise_error=False)
    assert wrong.code == 400 and error_of(wrong).startswith("digest mismatch")
    stored = await http.fetch(blob_url, method="POST", body=content, raise_error=False)
    assert stored.code == 201 and stored.body == b""
    assert stub.blobs == {digest: content}
    assert (await http.fetch(blob_url, method="HEAD")).code == 200
    dash = f"{stub.url}/api/blobs/sha256-{digest[7:].upper()}"
    assert (await http.fetch(dash, method="HEAD")).code == 200
    again = await http.fetch(blob_url, method="POST", body=content, raise_error=False)
    assert again.code == 200
    bad = await http.fetch(f"{stub.url}/api/blobs/md5:abc", method="HEAD", raise_error=False)
    assert bad.code == 400
    get = await http.fetch(blob_url, raise_error=False)
    assert get.code == 404 and get.body == b"404 page not found"

    lines = Lines()
    body = as_json(model="mine", files={"model.gguf": digest}, system="Be brief.")
    response = await post(http, stub, "/api/create", body, streaming_callback=lines.feed)
    assert response.code == 200
    statuses = [line["status"] for line in lines.lines]
    assert statuses[0] == "gathering model components"
    assert f"using existing layer {digest}" in statuses
    assert any(s.startswith("creating new layer sha256:") for s in statuses)
    assert statuses[-2:] == ["writing manifest", "success"]
    assert stub.models[-1] == "mine:latest"

    derived = await post(
        http, stub, "/api/create", as_json(model="kid:v1", **{"from": "llama3.2"}, stream=False)
    )
    assert json.loads(derived.body) == {"status": "success"}
    assert stub.models[-1] == "kid:v1"

    for body, status, message in (
        (as_json(model="x", **{"from": "nope"}), 404, "model 'nope' not found"),
        (as_json(model="x"), 400, "neither 'from' or 'files' was specified"),
        (as_json(model="x", files={"a": "sha256:" + "0" * 64}), 400, None),
        (as_json(**{"from": "llama3.2"}), 400, "model is required"),
    ):
        failed = await post(http, stub, "/api/create", body)
        assert failed.code == status, body
        assert message is None or error_of(failed) == message
    assert stub.resolve("x") is None
    assert (stub.creates_started, stub.progress_finished) == (6, 2)


async def test_copy_and_delete(stub, http):
    copied = await post(
        http, stub, "/api/copy", as_json(source="llama3.2", destination="backup")
    )
    assert copied.code == 200 and copied.body == b""
    assert "Content-Type" not in copied.headers
    tags = json.loads((await http.fetch(stub.url + "/api/tags")).body)["models"]
    assert tags[-1]["name"] == "backup:latest"

    missing = await post(http, stub, "/api/copy", as_json(source="nope", destination="b2"))
    assert missing.code == 404 and error_of(missing) == 'model "nope" not found'
    invalid = await post(http, stub, "/api/copy", as_json(source="llama3.2"))
    assert invalid.code == 400 and error_of(invalid) == 'destination "" is invalid'

    await post(http, stub, "/api/generate", as_json(model="backup"))  # load it

    async def delete(body: bytes) -> HTTPResponse:
        return await http.fetch(
            stub.url + "/api/delete",
            method="DELETE",
            body=body,
            allow_nonstandard_methods=True,
            raise_error=False,
        )

    deleted = await delete(as_json(model="backup"))
    assert deleted.code == 200 and deleted.body == b""
    assert stub.resolve("backup") is None
    ps = json.loads((await http.fetch(stub.url + "/api/ps")).body)["models"]
    assert ps == []  # a deleted model is no longer loaded
    gone = await delete(as_json(name="backup"))
    assert gone.code == 404 and error_of(gone) == "model 'backup' not found"
    assert (await delete(as_json(name="qwen2.5:0.5b"))).code == 200  # legacy field
    assert stub.models == ["llama3.2:latest", "hf.co/example/tiny-gguf:Q4_K_M"]
    wrong_method = await post(http, stub, "/api/delete", as_json(model="llama3.2"))
    assert wrong_method.code == 404 and stub.resolve("llama3.2") == "llama3.2:latest"
    assert [r.method for r in stub.requests if r.path == "/api/delete"] == [
        "DELETE", "DELETE", "DELETE", "POST",
    ]


async def test_v1_models(stub, http):
    listed = await http.fetch(stub.url + "/v1/models")
    assert listed.headers["Content-Type"] == "application/json"
    assert listed.body.endswith(b"}\n")  # Ollama's OpenAI layer writes with json.Encoder
    assert json.loads(listed.body) == {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 1704067200, "owned_by": owner}
            for name, owner in zip(DEFAULT_MODELS, ("library", "library", "example"))
        ],
    }
    for path in (
        "/v1/models/hf.co/example/tiny-gguf:Q4_K_M",
        "/v1/models/hf.co%2Fexample%2Ftiny-gguf%3AQ4_K_M",
    ):
        one = json.loads((await http.fetch(stub.url + path)).body)
        assert one == {
            "id": "hf.co/example/tiny-gguf:Q4_K_M",
            "object": "model",
            "created": 1704067200,
            "owned_by": "example",
        }
    missing = await http.fetch(stub.url + "/v1/models/nope", raise_error=False)
    assert missing.code == 404
    assert openai_error_of(missing) == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }


async def test_v1_chat_non_streaming(stub, http):
    body = as_json(model="llama3.2", messages=[{"role": "user", "content": "hi there"}])
    response = await post(http, stub, "/v1/chat/completions", body)
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/json"
    completion = json.loads(response.body)
    assert list(completion) == [
        "id", "object", "created", "model", "system_fingerprint", "choices", "usage",
    ]
    assert completion["id"].startswith("chatcmpl-")
    assert 0 <= int(completion["id"].removeprefix("chatcmpl-")) < 1000
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "llama3.2"
    assert completion["system_fingerprint"] == "fp_ollama"
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "You said: hi there "},
            "finish_reason": "stop",
        }
    ]
    assert completion["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert (await post(http, stub, "/v1/chat/completions", body)).body == response.body

    capped = as_json(
        model="llama3.2", messages=[{"role": "user", "content": "a"}], max_tokens=2
    )
    reply = json.loads((await post(http, stub, "/v1/chat/completions", capped)).body)
    assert reply["choices"][0]["message"]["content"] == "You said: "
    assert (stub.openai_started, stub.chats_started, stub.chats_finished) == (3, 3, 3)


async def test_v1_chat_streams_sse_event_by_event(stub, http):
    body = as_json(
        model="llama3.2",
        messages=[{"role": "user", "content": [{"type": "text", "text": "one two"}]}],
        stream=True,
        stream_options={"include_usage": True},
    )
    events = Lines(sse=True)
    response = await post(
        http, stub, "/v1/chat/completions", body, streaming_callback=events.feed
    )
    assert response.code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    *chunks, final, usage, done = events.lines
    assert done == "[DONE]"
    assert len(chunks) == 4
    ids = {c["id"] for c in events.lines[:-1]}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["choices"][0]["finish_reason"] is None
        assert chunk["choices"][0]["delta"]["role"] == "assistant"
        assert "usage" not in chunk
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "You said: one two "
    assert final["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}
    ]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}

    # Each event is its own HTTP chunk (flushed on its own), nothing after [DONE].
    stream = await open_chat_socket(stub, body, "/v1/chat/completions", close=True)
    payloads = chunked_payloads(await stream.read_until_close())
    assert [parse_event(p.removesuffix(b"\n\n")) for p in payloads] == events.lines
    assert all(p.endswith(b"\n\n") and p.count(b"\n\n") == 1 for p in payloads)


async def test_v1_stream_hold_and_pace(stub, http):
    stub.hold = asyncio.Event()
    gates = {i: asyncio.Event() for i in range(1, 10)}
    paced = {i: asyncio.Event() for i in range(1, 10)}

    async def pace(i: int) -> None:
        paced[i].set()
        await gates[i].wait()

    stub.pace = pace
    header_lines: list[str] = []
    events = Lines(sse=True)
    body = as_json(model="llama3.2", messages=[{"role": "user", "content": "a b"}], stream=True)
    fetch = asyncio.ensure_future(
        post(
            http,
            stub,
            "/v1/chat/completions",
            body,
            streaming_callback=events.feed,
            header_callback=header_lines.append,
        )
    )
    await stub.wait_for(lambda: stub.active_chats == 1)
    await http.fetch(stub.url + "/api/version")
    assert header_lines == []  # held: not even a status line
    stub.hold.set()
    await events.wait(1)
    await asyncio.wait_for(paced[1].wait(), 10)
    await http.fetch(stub.url + "/api/version")
    assert len(events.lines) == 1
    gates[1].set()
    await events.wait(2)
    for gate in gates.values():
        gate.set()
    assert (await fetch).code == 200
    assert events.lines[-1] == "[DONE]" and len(events.lines) == 6
    # 4 words; index 4 gates the closing events; nothing else was paced.
    assert [i for i, event in paced.items() if event.is_set()] == [1, 2, 3, 4]


async def test_v1_completions(stub, http):
    body = as_json(model="llama3.2", prompt="say it")
    whole = json.loads((await post(http, stub, "/v1/completions", body)).body)
    assert whole["id"].startswith("cmpl-")
    assert whole["object"] == "text_completion"
    assert whole["choices"] == [{"text": "You said: say it ", "index": 0, "finish_reason": "stop"}]
    assert whole["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}

    events = Lines(sse=True)
    streamed = as_json(
        model="llama3.2", prompt="go", stream=True, stream_options={"include_usage": True}
    )
    response = await post(http, stub, "/v1/completions", streamed, streaming_callback=events.feed)
    assert response.headers["Content-Type"] == "text/event-stream"
    *chunks, final, usage, done = events.lines
    assert done == "[DONE]"
    assert [c["choices"][0]["text"] for c in chunks] == ["You ", "said: ", "go "]
    assert list(chunks[0]) == [
        "id", "object", "created", "choices", "model", "system_fingerprint", "usage",
    ]
    assert chunks[0]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert final["choices"] == [{"text": "", "index": 0, "finish_reason": "stop"}]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3

    load = json.loads((await post(http, stub, "/v1/completions", as_json(model="llama3.2"))).body)
    assert load["choices"] == [{"text": "", "index": 0, "finish_reason": "load"}]


async def test_v1_embeddings(stub, http):
    body = as_json(model="llama3.2", input=["hello", "world"])
    response = await post(http, stub, "/v1/embeddings", body)
    assert response.headers["Content-Type"] == "application/json"
    listed = json.loads(response.body)
    assert listed == {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": embedding_for("hello"), "index": 0},
            {"object": "embedding", "embedding": embedding_for("world"), "index": 1},
        ],
        "model": "llama3.2",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    packed = json.loads(
        (
            await post(
                http,
                stub,
                "/v1/embeddings",
                as_json(model="llama3.2", input="hello", encoding_format="base64"),
            )
        ).body
    )
    raw = base64.b64decode(packed["data"][0]["embedding"])
    floats = struct.unpack(f"<{EMBEDDING_SIZE}f", raw)
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(floats, embedding_for("hello")))
    assert stub.openai_started == 2 and stub.embeds_started == 0


async def test_v1_errors_have_openai_shape(stub, http):
    def chat(**fields) -> bytes:
        fields.setdefault("messages", [{"role": "user", "content": "x"}])
        return as_json(**fields)

    cases = [
        ("/v1/chat/completions", b"{nope", 400, None),
        ("/v1/chat/completions", chat(), 400, "model is required"),
        ("/v1/chat/completions", chat(model="llama3.2", messages=[]), 400,
         "[] is too short - 'messages'"),
        ("/v1/chat/completions", chat(model="nope"), 404,
         'model "nope" not found, try pulling it first'),
        ("/v1/completions", as_json(model="nope", prompt="x"), 404,
         'model "nope" not found, try pulling it first'),
        ("/v1/completions", as_json(model="llama3.2", prompt=["x"]), 400,
         "prompt must be a string"),
        ("/v1/embeddings", as_json(model="llama3.2"), 400, "invalid input"),
        ("/v1/embeddings", as_json(model="llama3.2", input="x", encoding_format="hex"), 400,
         "Invalid value for 'encoding_format' = hex. Supported values: ['float', 'base64']."),
        ("/v1/embeddings", as_json(model="nope", input="x"), 404,
         'model "nope" not found, try pulling it first'),
    ]
    for path, body, status, message in cases:
        response = await post(http, stub, path, body)
        assert response.code == status, (path, body)
        error = openai_error_of(response)
        assert error["type"] == ("invalid_request_error" if status == 400 else "not_found_error")
        assert message is None or error["message"] == message
        if status == 400:  # answered by Ollama's middleware, through Gin
            assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        else:
            assert response.headers["Content-Type"] == "application/json"

    stub.chat_status = 500
    failing = await post(http, stub, "/v1/chat/completions", chat(model="llama3.2"))
    assert failing.code == 500
    assert openai_error_of(failing)["type"] == "api_error"
    assert stub.chats_finished == 0


@pytest.mark.parametrize(
    "path, body, after",
    [
        ("/api/generate", as_json(model="llama3.2", prompt="one two three"), 2),
        ("/v1/chat/completions", chat_body("one two three", stream=True), 0),
        ("/v1/chat/completions", chat_body("one two three", stream=True), 5),
        ("/v1/completions", as_json(model="llama3.2", prompt="x", stream=True), 1),
        ("/api/pull", as_json(model="phi3"), 3),
    ],
)
async def test_break_after_cuts_every_stream(stub, http, path, body, after):
    stub.break_after = after
    lines = Lines(sse=path.startswith("/v1"))
    stub.pace = lines.wait  # each line reaches the client before the next is due
    header_lines: list[str] = []
    with pytest.raises(HTTPClientError) as caught:
        await http.fetch(
            stub.url + path,
            method="POST",
            body=body,
            streaming_callback=lines.feed,
            header_callback=header_lines.append,
        )
    assert caught.value.code == 599
    assert header_lines[0].startswith("HTTP/1.1 200")
    assert len(lines.lines) == after
    assert "[DONE]" not in lines.lines and {"status": "success"} not in lines.lines
    if path == "/api/pull":
        assert (stub.progress_broken, stub.progress_finished) == (1, 0)
        assert stub.resolve("phi3") is None
    else:
        assert (stub.chats_broken, stub.chats_finished, stub.active_chats) == (1, 0, 0)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/generate", as_json(model="llama3.2", prompt="x", options={"num_predict": 10**6})),
        ("/v1/chat/completions", chat_body(stream=True, max_tokens=10**6)),
        ("/v1/completions", as_json(model="llama3.2", prompt="x", max_tokens=10**6)),
        ("/api/embed", as_json(model="llama3.2", input="x")),
        ("/api/pull", as_json(model="phi3")),
    ],
)
async def test_client_disconnect_is_counted_on_every_route(stub, path, body):
    progress = path == "/api/pull"
    if path == "/api/embed":
        stub.hold = asyncio.Event()  # never set
    else:
        stub.pace = lambda i: asyncio.Event().wait()  # parked before line 1
    stream = await open_chat_socket(stub, body, path)
    await stub.wait_for(lambda: (stub.pulls_started if progress else stub.active_chats) == 1)
    stream.close()
    if progress:
        await stub.wait_for(lambda: stub.progress_disconnected == 1)
        assert stub.resolve("phi3") is None
    else:
        await stub.wait_for(lambda: stub.chats_disconnected == 1)
        assert (stub.chats_finished, stub.active_chats) == (0, 0)


async def test_unknown_methods_on_new_routes(stub, http):
    for method, path in (
        ("GET", "/api/generate"),
        ("GET", "/api/show"),
        ("GET", "/api/pull"),
        ("POST", "/v1/models"),
        ("GET", "/v1/chat/completions"),
        ("GET", "/v1"),
        ("GET", "/v1/models/"),
    ):
        missing = await http.fetch(
            stub.url + path,
            method=method,
            body=b"{}" if method == "POST" else None,
            allow_nonstandard_methods=True,
            raise_error=False,
        )
        assert missing.code == 404, (method, path)
        assert missing.body == b"404 page not found"


async def test_token_and_host_guard_every_route(http):
    stub = StubOllama(token="s3cret")
    stub.listen()
    routes = [
        ("POST", "/api/generate", as_json(model="llama3.2", prompt="x")),
        ("POST", "/api/embed", as_json(model="llama3.2", input="x")),
        ("POST", "/api/embeddings", as_json(model="llama3.2", prompt="x")),
        ("POST", "/api/show", as_json(model="llama3.2")),
        ("POST", "/api/pull", as_json(model="phi3", stream=False)),
        ("POST", "/api/push", as_json(model="llama3.2", stream=False)),
        ("POST", "/api/create", as_json(model="kid", stream=False, **{"from": "llama3.2"})),
        ("POST", "/api/copy", as_json(source="llama3.2", destination="c")),
        ("DELETE", "/api/delete", as_json(model="c")),
        ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/llama3.2", None),
        ("POST", "/v1/chat/completions", chat_body()),
        ("POST", "/v1/completions", as_json(model="llama3.2", prompt="x")),
        ("POST", "/v1/embeddings", as_json(model="llama3.2", input="x")),
    ]

    async def call(method, path, body, headers):
        return await http.fetch(
            stub.url + path,
            method=method,
            body=body,
            headers=headers,
            allow_nonstandard_methods=True,
            raise_error=False,
        )

    try:
        for method, path, body in routes:
            denied = await call(method, path, body, {})
            assert denied.code == 401, path
            if method != "HEAD":
                assert json.loads(denied.body) == {"error": "unauthorized"}
            foreign = await call(
                method, path, body, {"Host": "evil.example", "Authorization": "Bearer s3cret"}
            )
            assert foreign.code == 403 and foreign.body == b"", path
        assert stub.snapshot()["chats_started"] == 0
        assert stub.pulls_started == stub.creates_started == 0
        assert stub.models == list(DEFAULT_MODELS)

        good = {"Authorization": "Bearer s3cret"}
        codes = [(await call(m, p, b, good)).code for m, p, b in routes]
        assert codes == [200] * 9 + [404] + [200] * 5  # the blob is simply absent
        assert stub.models == [*DEFAULT_MODELS, "phi3:latest", "kid:latest"]  # "c" came and went
        assert (await http.fetch(stub.url + "/")).code == 200  # / stays open

        client = openai.OpenAI(base_url=stub.url + "/v1", api_key="s3cret", max_retries=0)
        listed = await asyncio.to_thread(client.models.list)
        assert len(listed.data) == 5
        stranger = openai.OpenAI(base_url=stub.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await asyncio.to_thread(stranger.models.list)
    finally:
        await stub.stop()


async def test_official_ollama_client_whole_surface(stub, tmp_path):
    client = ollama.Client(host=stub.url)

    def generate_stream() -> list:
        return list(client.generate(model="llama3.2", prompt="ping pong", stream=True))

    parts = await asyncio.to_thread(generate_stream)
    assert "".join(p.response for p in parts) == "You said: ping pong "
    assert parts[-1].done is True and parts[-1].done_reason == "stop" and parts[-1].context

    whole = await asyncio.to_thread(client.generate, model="llama3.2", prompt="hey")
    assert whole.response == "You said: hey " and whole.eval_count == 3
    loaded = await asyncio.to_thread(client.generate, model="qwen2.5:0.5b")
    assert loaded.done_reason == "load"

    embedded = await asyncio.to_thread(client.embed, model="llama3.2", input=["a", "b"])
    assert [list(e) for e in embedded.embeddings] == [embedding_for("a"), embedding_for("b")]
    legacy = await asyncio.to_thread(client.embeddings, model="llama3.2", prompt="a")
    assert list(legacy.embedding) == embedding_for("a")

    shown = await asyncio.to_thread(client.show, "llama3.2")
    assert shown.capabilities == ["completion"] and shown.details.family == "llama"
    assert shown.modelinfo["general.architecture"] == "llama"
    with pytest.raises(ollama.ResponseError) as caught:
        await asyncio.to_thread(client.show, "missing")
    assert caught.value.status_code == 404

    # ollama-python has no version() call; use its own transport.
    version = await asyncio.to_thread(client._request_raw, "GET", "/api/version")
    assert version.json() == {"version": STUB_VERSION}

    def pull_stream() -> list:
        return list(client.pull("phi3", stream=True))

    progress = await asyncio.to_thread(pull_stream)
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert any(p.completed == p.total and p.digest for p in progress)
    assert (await asyncio.to_thread(client.pull, "tinyllama")).status == "success"
    assert (await asyncio.to_thread(client.copy, "phi3", "phi3-copy")).status == "success"
    assert (await asyncio.to_thread(client.delete, "phi3")).status == "success"
    with pytest.raises(ollama.ResponseError) as caught:
        await asyncio.to_thread(client.delete, "phi3")
    assert caught.value.status_code == 404
    pushed = await asyncio.to_thread(client.push, "phi3-copy")
    assert pushed.status == "success"

    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF stand-in")
    digest = await asyncio.to_thread(client.create_blob, weights)
    assert stub.blobs[digest] == b"GGUF stand-in"
    created = await asyncio.to_thread(client.create, "mine", files={"model.gguf": digest})
    assert created.status == "success"
    derived = await asyncio.to_thread(client.create, "kid", from_="llama3.2", system="Be brief.")
    assert derived.status == "success"

    listed = await asyncio.to_thread(client.list)
    assert [m.model for m in listed.models] == [
        *DEFAULT_MODELS,
        "tinyllama:latest",
        "phi3-copy:latest",
        "mine:latest",
        "kid:latest",
    ]
    running = await asyncio.to_thread(client.ps)
    assert [m.model for m in running.models] == ["llama3.2:latest", "qwen2.5:0.5b"]
    assert (stub.generates_started, stub.embeds_started, stub.chats_finished) == (3, 2, 5)
    assert stub.pulls_started == 2 and stub.progress_finished == 5


async def test_official_openai_client(stub):
    client = openai.OpenAI(base_url=stub.url + "/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "ping pong"}]

    completion = await asyncio.to_thread(
        client.chat.completions.create, model="llama3.2", messages=messages
    )
    assert completion.choices[0].message.content == "You said: ping pong "
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == 6

    def stream_chat() -> list:
        return list(
            client.chat.completions.create(
                model="llama3.2",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        )

    chunks = await asyncio.to_thread(stream_chat)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: ping pong "
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 4

    models = await asyncio.to_thread(client.models.list)
    assert [m.id for m in models.data] == list(DEFAULT_MODELS)
    one = await asyncio.to_thread(client.models.retrieve, "hf.co/example/tiny-gguf:Q4_K_M")
    assert one.id == "hf.co/example/tiny-gguf:Q4_K_M" and one.owned_by == "example"
    with pytest.raises(openai.NotFoundError):
        await asyncio.to_thread(client.models.retrieve, "missing")

    # The client asks for base64 by default and decodes it.
    embedded = await asyncio.to_thread(
        client.embeddings.create, model="llama3.2", input=["hello", "world"]
    )
    for item, text in zip(embedded.data, ("hello", "world")):
        assert all(
            math.isclose(a, b, abs_tol=1e-6) for a, b in zip(item.embedding, embedding_for(text))
        )
    floats = await asyncio.to_thread(
        client.embeddings.create, model="llama3.2", input="hello", encoding_format="float"
    )
    assert floats.data[0].embedding == embedding_for("hello")

    legacy = await asyncio.to_thread(client.completions.create, model="llama3.2", prompt="go")
    assert legacy.choices[0].text == "You said: go "

    with pytest.raises(openai.NotFoundError) as caught:
        await asyncio.to_thread(
            client.chat.completions.create, model="missing", messages=messages
        )
    assert caught.value.message.endswith('model "missing" not found, try pulling it first')
    with pytest.raises(openai.BadRequestError):
        await asyncio.to_thread(client.chat.completions.create, model="llama3.2", messages=[])
    assert stub.openai_started == 7 and stub.chats_finished == 5
    assert all(r.headers["Authorization"] == "Bearer x" for r in stub.requests)


def test_recorded_request_is_still_exported():
    assert RecordedRequest.__dataclass_fields__.keys() == {"method", "path", "headers", "body"}
