"""What holds on every route of the stand-in: breaks, disconnects, 404s, token and Host guards."""

import asyncio
import json

import ollama
import openai
import pytest
from tornado.httpclient import HTTPClientError

from foreman.stub import DEFAULT_MODELS, STUB_VERSION, StubOllama, embedding_for
from tests.stub.support import Lines, as_json, chat_body, open_chat_socket


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
