"""Every Ollama route through foreman: same bytes as the target, queue where it belongs."""

from __future__ import annotations

import asyncio
import hashlib
import json

import ollama
import openai
import pytest

from tests.helpers import StreamReader, ndjson

MODEL = "llama3.2"
ADMIN = {"Authorization": "Bearer root-token"}


async def direct(front, stub, path: str, **kwargs):
    """The stand-in's own answer to the same request."""
    kwargs.setdefault("raise_error", False)
    if isinstance(kwargs.get("body"), dict):
        kwargs["body"] = json.dumps(kwargs["body"])
    return await front.client().fetch(stub.url + path, **kwargs)


async def same_answer(front, stub, path: str, **kwargs):
    """Fetch through foreman and directly; assert status and bytes agree."""
    via = await front.fetch(path, **kwargs)
    mine = await direct(front, stub, path, **kwargs)
    assert via.code == mine.code, (path, via.body, mine.body)
    assert via.body == mine.body, path
    assert via.headers.get("Content-Type") == mine.headers.get("Content-Type")
    return via


# --- native routes ------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/generate", {"model": MODEL, "prompt": "why is the sky blue"}),
        ("/api/generate", {"model": MODEL, "prompt": "why", "stream": False}),
        ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}),
        ("/api/embed", {"model": MODEL, "input": ["one", "two"]}),
        ("/api/embeddings", {"model": MODEL, "prompt": "one"}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}),
        ("/v1/completions", {"model": MODEL, "prompt": "once upon"}),
        ("/v1/completions", {"model": MODEL, "prompt": "once upon", "stream": True}),
        ("/v1/embeddings", {"model": MODEL, "input": "hello"}),
    ],
)
async def test_generation_routes_relay_the_targets_bytes_through_the_queue(foreman, stub, path, body) -> None:
    await foreman.ready()
    response = await same_answer(foreman, stub, path, method="POST", body=body)
    assert response.code == 200
    assert "X-Foreman-Queue-Wait" in response.headers  # it went through the queue


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", "/api/version", None),
        ("HEAD", "/api/version", None),
        ("GET", "/", None),
        ("HEAD", "/", None),
        ("POST", "/api/show", {"model": MODEL}),
        ("POST", "/api/show", {"name": MODEL}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/llama3.2:latest", None),
        ("GET", "/v1/models/hf.co/example/tiny-gguf:Q4_K_M", None),
        ("GET", "/v1/models/nothing-here", None),
    ],
)
async def test_metadata_routes_relay_without_queueing(foreman, stub, method, path, body) -> None:
    await foreman.ready()
    response = await same_answer(foreman, stub, path, method=method, body=body)
    assert "X-Foreman-Queue-Wait" not in response.headers


async def test_metadata_is_not_stuck_behind_generations(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_CONCURRENCY="1")
    await front.ready()
    stub.hold = asyncio.Event()
    busy = [asyncio.ensure_future(front.fetch("/api/generate", method="POST", body={"model": MODEL, "prompt": "x"}))
            for _ in range(3)]
    await stub.wait_for(lambda: stub.chats_started == 1)
    for method, path, body in (("POST", "/api/show", {"model": MODEL}), ("GET", "/api/version", None),
                               ("GET", "/v1/models", None), ("GET", "/", None)):
        assert (await front.fetch(path, method=method, body=body, request_timeout=5)).code == 200, path
    stub.hold.set()
    assert [r.code for r in await asyncio.gather(*busy)] == [200, 200, 200]


@pytest.mark.parametrize("path", ["/api/generate", "/api/embed", "/api/embeddings", "/api/show"])
async def test_unknown_model_is_404_on_every_model_route(foreman, stub, path) -> None:
    await foreman.ready()
    body = {"model": "ghost", "prompt": "x", "input": "x"}
    response = await foreman.fetch(path, method="POST", body=body)
    assert response.code == 404
    assert response.body == b'{"error":"model \'ghost\' not found"}'
    assert not [r for r in stub.requests if r.path == path]


async def test_show_validates_the_legacy_name_field(foreman, stub) -> None:
    await foreman.ready()
    response = await foreman.fetch("/api/show", method="POST", body={"name": "ghost"})
    assert response.code == 404 and b"ghost" in response.body
    assert (await foreman.fetch("/api/show", method="POST", body={})).code == 400


async def test_root_answers_while_the_target_is_down(foreman, stub) -> None:
    await foreman.ready()
    await stub.stop()
    for method in ("GET", "HEAD"):
        response = await foreman.fetch("/", method=method)
        assert response.code == 200
        assert response.headers["X-Foreman-Target"] == "unreachable"
        assert response.body == (b"Ollama is running" if method == "GET" else b"")


async def test_root_is_relayed_as_asked_head_as_head_and_bytes_untouched(start_foreman) -> None:
    """`HEAD /` reaches the target as HEAD, and `/`'s body is not inflated on the way."""
    import gzip

    from tests.helpers import serve_raw

    compressed = gzip.compress(b"Ollama is running")
    heads: list[bytes] = []

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> None:
        heads.append(head)
        if head.startswith(b"GET /api/tags"):
            body = b'{"models":[]}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        else:
            body = compressed
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Encoding: gzip\r\n"
            )
        writer.write(b"Content-Length: %d\r\n\r\n" % len(body))
        if not head.startswith(b"HEAD"):
            writer.write(body)
        await writer.drain()

    server, url = await serve_raw(answer)
    front = start_foreman(url)
    await front.ready()
    headers = {"Accept-Encoding": "gzip"}
    got = await front.fetch("/", headers=headers, decompress_response=False)
    assert got.code == 200 and got.body == compressed
    assert got.headers["Content-Encoding"] == "gzip"
    head = await front.fetch("/", method="HEAD", headers=headers, decompress_response=False)
    assert head.code == 200 and head.body == b""
    asked = [h.split(b" ", 2)[:2] for h in heads if not h.startswith(b"GET /api/tags")]
    assert asked == [[b"GET", b"/"], [b"HEAD", b"/"]]
    server.close()


async def test_generate_streams_chunk_by_chunk(foreman, stub) -> None:
    await foreman.ready()
    release = asyncio.Event()

    async def pace(i: int) -> None:
        await release.wait()

    stub.pace = pace
    reader = StreamReader()
    fetch = foreman.client().fetch(reader.request(foreman.url + "/api/generate", {"model": MODEL, "prompt": "a b c"}))
    await reader.wait_lines(1)
    assert len(reader.lines) == 1 and reader.lines[0]["done"] is False
    release.set()
    assert (await fetch).code == 200
    assert reader.lines[-1]["done"] is True


# --- /v1 ----------------------------------------------------------------------


async def test_sse_events_are_relayed_as_produced(foreman, stub) -> None:
    await foreman.ready()
    release = asyncio.Event()

    async def pace(i: int) -> None:
        await release.wait()

    stub.pace = pace
    events: list[bytes] = []
    first = asyncio.Event()

    def on_chunk(chunk: bytes) -> None:
        events.append(chunk)
        first.set()

    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    fetch = foreman.client().fetch(
        foreman.url + "/v1/chat/completions", method="POST", body=json.dumps(body), streaming_callback=on_chunk
    )
    await asyncio.wait_for(first.wait(), 10)
    text = b"".join(events)
    assert text.startswith(b"data: {") and text.count(b"data: ") == 1  # one event, the rest not yet produced
    release.set()
    response = await fetch
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert b"".join(events).rstrip().endswith(b"data: [DONE]")


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"messages": []}', 400, "model is required"),
        (b'{"model": "ghost", "messages": []}', 404, "model 'ghost' not found"),
    ],
)
async def test_v1_errors_have_openai_shape(foreman, stub, body, status, message) -> None:
    await foreman.ready()
    response = await foreman.fetch("/v1/chat/completions", method="POST", body=body)
    assert response.code == status
    error = json.loads(response.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"]


async def test_v1_auth_error_has_openai_shape(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_TOKENS="tok")
    await front.ready()
    response = await front.fetch("/v1/models")
    assert response.code == 401
    assert json.loads(response.body)["error"]["type"] == "authentication_error"


async def test_sse_stream_broken_by_target_ends_with_an_error_event(foreman, stub) -> None:
    await foreman.ready()
    stub.break_after = 2
    stub.chunk_delay = 0.2  # keep the last event apart from the hang-up (Tornado drops bytes read with it)
    body = {"model": MODEL, "prompt": "a b c d e f", "stream": True}
    response = await foreman.fetch("/v1/completions", method="POST", body=body)
    assert response.code == 200
    events = [e for e in response.body.split(b"\n\n") if e.strip()]
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert set(last) == {"error"} and "broke off" in last["error"]["message"]
    assert b"[DONE]" not in response.body


async def test_openai_client_through_foreman(foreman, stub) -> None:
    await foreman.ready()

    def use_client() -> tuple:
        client = openai.OpenAI(base_url=foreman.url + "/v1", api_key="unused", max_retries=0)
        models = [m.id for m in client.models.list()]
        chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}])
        pieces = [
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}], stream=True
            )
            if c.choices
        ]
        embedding = client.embeddings.create(model=MODEL, input="hello").data[0].embedding
        return models, chat.choices[0].message.content, "".join(pieces), embedding

    models, answer, streamed, embedding = await asyncio.to_thread(use_client)
    assert "llama3.2:latest" in models
    assert answer == streamed and answer.startswith("You said: hello")
    assert len(embedding) == 8


# --- the official ollama client -------------------------------------------------


async def test_ollama_client_through_foreman(foreman, stub) -> None:
    await foreman.ready()

    def use_client() -> dict:
        client = ollama.Client(host=foreman.url)
        return {
            "generate": client.generate(model=MODEL, prompt="why").response,
            "stream": "".join(p.response for p in client.generate(model=MODEL, prompt="why", stream=True)),
            "embed": client.embed(model=MODEL, input=["a", "b"]).embeddings,
            "show": client.show(MODEL).capabilities,
            "list": [m.model for m in client.list().models],
            "ps": client.ps().models,
            "version": client._request_raw("GET", "/api/version").json(),
        }

    got = await asyncio.to_thread(use_client)
    assert got["generate"] == got["stream"] and got["generate"].startswith("You said: why")
    assert len(got["embed"]) == 2 and len(got["embed"][0]) == 8
    assert got["show"] == ["completion"]
    assert got["list"] == stub.models
    assert [m.model for m in got["ps"]] == ["llama3.2:latest"]
    assert got["version"] == {"version": "0.0.0-stub"}


# --- model management -------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/api/pull", {"model": "newcomer"}),
        ("POST", "/api/push", {"model": MODEL}),
        ("POST", "/api/create", {"model": "mine", "from": MODEL}),
        ("POST", "/api/copy", {"source": MODEL, "destination": "copy"}),
        ("DELETE", "/api/delete", {"model": MODEL}),
        ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
        ("POST", "/api/blobs/sha256:" + "0" * 64, b"data"),
    ],
)
async def test_management_is_refused_without_an_admin_token(start_foreman, stub, method, path, body) -> None:
    front = start_foreman(FOREMAN_TOKENS="user-token", FOREMAN_ADMIN_TOKENS="root-token")
    await front.ready()
    response = await front.fetch(path, method=method, body=body, headers={"Authorization": "Bearer user-token"},
                                 allow_nonstandard_methods=True)
    assert response.code == 403
    if method != "HEAD":
        assert "admin token" in json.loads(response.body)["error"]
    assert not [r for r in stub.requests if r.path == path]


async def test_management_is_refused_when_no_admin_tokens_are_configured(foreman, stub) -> None:
    await foreman.ready()
    response = await foreman.fetch("/api/pull", method="POST", body={"model": "x"}, headers=ADMIN)
    assert response.code == 403


async def test_admin_tokens_are_good_for_ordinary_routes_too(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_TOKENS="user-token", FOREMAN_ADMIN_TOKENS="root-token")
    await front.ready()
    assert (await front.fetch("/api/tags", headers=ADMIN)).code == 200


@pytest.fixture
def admin_front(start_foreman):
    return start_foreman(FOREMAN_ADMIN_TOKENS="root-token")


async def test_pull_streams_progress_and_the_model_is_usable_at_once(admin_front, stub) -> None:
    await admin_front.ready()
    reader = StreamReader()
    response = await admin_front.client().fetch(
        reader.request(admin_front.url + "/api/pull", {"model": "newcomer"}, headers=ADMIN)
    )
    assert response.code == 200
    assert reader.lines[0] == {"status": "pulling manifest"}
    assert reader.lines[-1] == {"status": "success"}
    await stub.wait_for(lambda: admin_front.inventory.has("newcomer"))
    polls = stub.tags_polls
    chat = await admin_front.fetch("/api/generate", method="POST", body={"model": "newcomer", "prompt": "hi", "stream": False})
    assert chat.code == 200
    assert stub.tags_polls == polls  # known without a re-poll on a miss


async def test_copy_create_push_and_delete_change_the_inventory(admin_front, stub) -> None:
    await admin_front.ready()
    copied = await admin_front.fetch("/api/copy", method="POST", body={"source": MODEL, "destination": "twin"}, headers=ADMIN)
    assert copied.code == 200
    await stub.wait_for(lambda: admin_front.inventory.has("twin"))
    created = await admin_front.fetch("/api/create", method="POST", body={"model": "mine", "from": MODEL, "stream": False},
                                      headers=ADMIN)
    assert created.code == 200 and json.loads(created.body) == {"status": "success"}
    pushed = await admin_front.fetch("/api/push", method="POST", body={"model": "mine"}, headers=ADMIN)
    assert pushed.code == 200 and ndjson(pushed.body)[-1] == {"status": "success"}
    deleted = await admin_front.fetch("/api/delete", method="DELETE", body=json.dumps({"model": "twin"}),
                                      headers=ADMIN, allow_nonstandard_methods=True)
    assert deleted.code == 200
    await stub.wait_for(lambda: not admin_front.inventory.has("twin"))
    gone = await admin_front.fetch("/api/chat", method="POST", body={"model": "twin", "messages": []})
    assert gone.code == 404


async def test_wrong_method_on_a_management_route_is_405(admin_front, stub) -> None:
    await admin_front.ready()
    response = await admin_front.fetch("/api/delete", method="POST", body={"model": MODEL}, headers=ADMIN)
    assert response.code == 405
    assert "error" in json.loads(response.body)


@pytest.mark.timeout(seconds=120)
async def test_blob_upload_is_streamed_through(admin_front, stub) -> None:
    await admin_front.ready()
    blob = bytes(range(256)) * (12 * 4096)  # 12 MiB, more than one read
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    missing = await admin_front.fetch(f"/api/blobs/{digest}", method="HEAD", headers=ADMIN)
    assert missing.code == 404
    binary = {**ADMIN, "Content-Type": "application/octet-stream"}
    uploaded = await admin_front.fetch(f"/api/blobs/{digest}", method="POST", body=blob, headers=binary)
    assert uploaded.code == 201, uploaded.body
    assert stub.blobs[digest] == blob
    present = await admin_front.fetch(f"/api/blobs/{digest}", method="HEAD", headers=ADMIN)
    assert present.code == 200
    wrong = await admin_front.fetch(f"/api/blobs/sha256:{'1' * 64}", method="POST", body=b"not it", headers=binary)
    assert wrong.code == 400


async def test_ollama_client_manages_models_with_an_admin_token(admin_front, stub) -> None:
    await admin_front.ready()

    def use_client() -> list:
        client = ollama.Client(host=admin_front.url, headers=ADMIN)
        statuses = [p.status for p in client.pull("fresh", stream=True)]
        client.copy("fresh", "fresh-copy")
        client.delete("fresh-copy")
        return statuses

    statuses = await asyncio.to_thread(use_client)
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    await stub.wait_for(lambda: admin_front.inventory.has("fresh") and not admin_front.inventory.has("fresh-copy"))
