"""The stand-in's OpenAI-compatible /v1 routes, with the official openai client too."""

import asyncio
import base64
import json
import math
import struct

import openai
import pytest

from foreman.stub import DEFAULT_MODELS, EMBEDDING_SIZE, embedding_for
from tests.stub.support import (
    Lines,
    as_json,
    chunked_payloads,
    open_chat_socket,
    openai_error_of,
    parse_event,
    post,
)


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
