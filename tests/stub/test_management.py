"""The stand-in's /api/show and model management: pull, push, create, copy, delete, blobs."""

import asyncio
import hashlib
import json

from tornado.httpclient import HTTPResponse

from foreman.stub import DEFAULT_MODELS
from tests.stub.support import Lines, as_json, error_of, post


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
