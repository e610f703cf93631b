"""The stand-in's /api/generate, /api/embed and /api/embeddings."""

import asyncio
import json


from foreman.stub import EMBEDDING_SIZE, embedding_for
from tests.stub.support import CHAT_STATS, Lines, as_json, error_of, post, unit_length


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
