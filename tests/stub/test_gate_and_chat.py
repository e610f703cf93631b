"""The stand-in's gate (Host, token, methods), /api/chat, and the knobs and counters tests use."""

import asyncio
import hashlib
import json

import ollama
import pytest
from tornado.httpclient import HTTPClientError

from foreman.stub import DEFAULT_MODELS, STUB_VERSION, RecordedRequest, StubOllama
from tests.stub.support import CHAT_STATS, Lines, chat_body, open_chat_socket, post_chat


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


def test_recorded_request_is_still_exported():
    assert RecordedRequest.__dataclass_fields__.keys() == {"method", "path", "headers", "body"}
