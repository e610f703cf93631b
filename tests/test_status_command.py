"""`foreman status`: the text it lays out, and the command against a real foreman.

`render` is checked against a hand-written document that uses every field;
the command runs as the installed `foreman` script in a subprocess (with
asyncio's subprocess support, so this test's loop keeps serving the foreman
and the stand-in meanwhile) against a scripted workload and against
servers that fail in each way it must explain in one line.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foreman.status import terminal
from foreman.status.terminal import ago, duration, render, size
from tests.helpers import BIN, Gate, StreamReader, free_port, serve_raw, subprocess_env, tokens_file, until

ALICE, BOB = "tok-a", "tok-b"
EVIL = "mallory\x1b[2J\x1b[H\r\x9broot\n\u202e"
NOW = "2026-12-01T18:00:00.000Z"

DOCUMENT = {
    "foreman": {"version": "0.1.0", "now": NOW, "started": "2026-12-01T16:55:30.000Z"},
    "queue": {"waiting": 3, "in_flight": 1, "concurrency": 2, "max_queue": 256, "paused": False},
    "targets": [
        {
            "name": "default", "url": "http://127.0.0.1:11434", "reachable": True,
            "last_poll": "2026-12-01T17:59:58.000Z", "last_error": None, "models": 12,
            "resident": [
                {"name": "llama3.2:latest", "size": 2019393189, "size_vram": 2019393189,
                 "expires_at": "2026-12-01T18:05:00Z"},
                {"name": "qwen2.5:0.5b", "size": 1_000_000_000, "size_vram": 250_000_000, "expires_at": None},
                {"name": "nomic-embed-text:latest", "size": None, "size_vram": None, "expires_at": None},
            ],
            "in_flight": 1, "concurrency": 1, "wake": None,
        },
        {
            "name": "studio", "url": "http://192.168.1.20:11434", "reachable": False,
            "last_poll": "2026-12-01T17:59:48.000Z", "last_error": "cannot connect: Connection refused",
            "models": 3, "resident": [], "in_flight": 0, "concurrency": 2,
            "wake": {"mac": "a4:83:e7:12:34:56", "address": "192.168.1.255:9", "waking": True, "packets_sent": 3},
        },
    ],
    "clients": [
        {"name": "alice", "weight": 2.0, "waiting": 0, "in_flight": 1, "service_seconds": 184.2, "requests": 4},
        {"name": "bob", "weight": 1.0, "waiting": 2, "in_flight": 0, "service_seconds": 0.0, "requests": 0},
        {"name": EVIL, "weight": 0.5, "waiting": 1, "in_flight": 0, "service_seconds": 7.25, "requests": 1},
    ],
    "in_flight": [
        {"client": "alice", "model": "llama3.2:latest", "target": "default", "route": "/api/chat",
         "method": "POST", "started": "2026-12-01T17:59:47.700Z", "elapsed": 12.3, "queue_wait": 0.1,
         "bytes": 12345, "tokens": 56},
    ],
    "recent": [
        {"time": "2026-12-01T17:59:48.000Z", "client": "bob", "model": "llama3.2:latest", "target": "default",
         "route": "/api/chat", "method": "POST", "status": 200, "queue_wait": 1.2, "duration": 3.4,
         "tokens": 100, "tokens_per_second": 30.1},
        {"time": "2026-12-01T17:56:56.000Z", "client": "alice", "model": "nope:1b", "target": None,
         "route": "/api/generate", "method": "POST", "status": 404, "queue_wait": None, "duration": 0.002,
         "tokens": None, "tokens_per_second": None},
        {"time": "2026-12-01T16:58:00.000Z", "client": EVIL, "model": None, "target": "default",
         "route": "/api/delete", "method": "DELETE", "status": 200, "queue_wait": 0.0, "duration": 185.0,
         "tokens": None, "tokens_per_second": None},
    ],
    "history": [
        {"time": "2026-12-01T17:59:00.000Z", "queue_depth": 3, "requests": 10, "tokens_per_second": 12.5,
         "model_loads": 1},
    ],
}


def section(text: str, title: str) -> list[str]:
    """The lines of a section, its title and blank line excluded."""
    block = text.split(f"\n{title}\n", 1)[1]
    return block.split("\n\n", 1)[0].splitlines()


def cells(line: str) -> list[str]:
    return re.split(r" {2,}", line.strip())


def rows(text: str, title: str) -> dict[str, list[str]]:
    """A section's lines, headers included, by their first cell (continuation lines left out)."""
    return {cells(line)[0]: cells(line) for line in section(text, title) if not line.startswith(" ")}


def local_clock(moment: str) -> str:
    return datetime.fromisoformat(moment).astimezone().strftime("%H:%M:%S")


# --- the text ---------------------------------------------------------------------


def test_render_lays_out_every_field_of_the_document() -> None:
    text = render(DOCUMENT, width=0, url="http://127.0.0.1:8080")
    lines = text.splitlines()
    assert lines[0] == "foreman 0.1.0 at http://127.0.0.1:8080, up 1h04m: 1 of 2 targets up, 3 waiting, 1 running"

    targets = section(text, "TARGETS")
    assert cells(targets[0]) == ["NAME", "STATE", "URL", "RUNNING", "MODELS", "IN MEMORY"]
    assert cells(targets[1]) == [
        "default", "up", "http://127.0.0.1:11434", "1/1", "12",
        f"llama3.2:latest 2.0 GB until {local_clock('2026-12-01T18:05:00Z')}",
    ]
    # Each further model in memory on a line of its own, under its target.
    assert [line.strip() for line in targets[2:4]] == ["qwen2.5:0.5b 1.0 GB (25% GPU)", "nomic-embed-text:latest"]
    assert cells(targets[4]) == [
        "studio", "away", "http://192.168.1.20:11434", "0/2", "3", "cannot connect: Connection refused",
    ]
    assert [line.strip() for line in targets[5:]] == ["last poll 12 s ago", "waking: 3 wake packets sent"]

    clients = rows(text, "CLIENTS")
    assert clients["NAME"] == ["NAME", "WEIGHT", "WAITING", "RUNNING", "REQUESTS (1H)", "TARGET TIME (1H)"]
    assert clients["alice"] == ["alice", "2", "0", "1", "4", "3m04s"]
    assert clients["bob"] == ["bob", "1", "2", "0", "0", "0 s"]

    running = rows(text, "RUNNING")
    assert running["CLIENT"] == ["CLIENT", "MODEL", "TARGET", "ROUTE", "FOR", "WAITED", "BYTES", "TOKENS"]
    assert running["alice"] == ["alice", "llama3.2:latest", "default", "/api/chat", "12 s", "0.1 s", "12.3 kB", "56"]

    recent = section(text, "RECENT (newest first)")
    assert cells(recent[0]) == [
        "ENDED", "CLIENT", "MODEL", "TARGET", "ROUTE", "STATUS", "WAITED", "TOOK", "TOKENS", "TOK/S",
    ]
    assert cells(recent[1]) == [
        "12 s ago", "bob", "llama3.2:latest", "default", "/api/chat", "200", "1.2 s", "3.4 s", "100", "30.1",
    ]
    # What the document leaves null shows as "-"; a method other than POST is named.
    assert cells(recent[2]) == ["3m04s ago", "alice", "nope:1b", "-", "/api/generate", "404", "-", "2 ms", "-", "-"]
    assert cells(recent[3])[0] == "1h02m ago"
    assert cells(recent[3])[2:] == ["-", "default", "DELETE /api/delete", "200", "0 s", "3m05s", "-", "-"]


def test_columns_line_up_under_their_headers() -> None:
    text = render(DOCUMENT, width=0)
    for title in ("TARGETS", "CLIENTS", "RUNNING", "RECENT (newest first)"):
        header, *body = section(text, title)
        starts = [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", header)]
        for line in body:
            if line.startswith(" "):
                continue
            assert [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", line)] == starts, (title, line)


def test_control_characters_from_the_document_are_written_as_escapes() -> None:
    text = render(DOCUMENT, width=0)
    # Nothing that moves the cursor or reorders text reaches the terminal...
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", text)
    # ...and the name still reads, escaped.
    shown = r"mallory\x1b[2J\x1b[H\r\x9broot\n\u202e"
    assert rows(text, "CLIENTS")[shown] == [shown, "0.5", "1", "0", "1", "7.2 s"]
    assert cells(section(text, "RECENT (newest first)")[3])[1] == shown


def test_empty_sections_say_so_in_one_line() -> None:
    quiet = {**DOCUMENT, "targets": [], "clients": [], "in_flight": [], "recent": [],
             "queue": {**DOCUMENT["queue"], "waiting": 0, "in_flight": 0}}
    text = render(quiet, url="http://127.0.0.1:8080")
    assert text.split("\n\n") == [
        "foreman 0.1.0 at http://127.0.0.1:8080, up 1h04m: 0 of 0 targets up, 0 waiting, 0 running",
        "no targets",
        "no clients in the last hour",
        "nothing running",
        "no recent requests",
    ]


def test_recent_shows_as_many_as_asked_and_none_for_zero() -> None:
    assert len(section(render(DOCUMENT, recent=2), "RECENT (newest first)")) == 3  # header and two
    text = render(DOCUMENT, recent=0)
    assert "RECENT" not in text and "no recent requests" not in text
    assert text.endswith("12.3 kB  56")


def test_a_narrow_screen_narrows_the_names_then_cuts_the_lines() -> None:
    text = render(DOCUMENT, width=60, url="http://127.0.0.1:8080")
    lines = text.splitlines()
    assert all(len(line) <= 60 for line in lines), [line for line in lines if len(line) > 60]
    # The header splits rather than losing its counts.
    assert lines[:2] == ["foreman 0.1.0 at http://127.0.0.1:8080, up 1h04m", "1 of 2 targets up, 3 waiting, 1 running"]
    assert any(line.endswith("…") for line in lines)
    # A wide screen cuts nothing.
    assert "…" not in render({**DOCUMENT, "clients": DOCUMENT["clients"][:2]}, width=200)


def test_a_model_kept_loaded_for_good_says_so() -> None:
    kept = json.loads(json.dumps(DOCUMENT))
    kept["targets"][0]["resident"][0]["expires_at"] = "2318-06-04T14:38:31.123456789-07:00"
    assert "llama3.2:latest 2.0 GB kept loaded" in render(kept, width=0)


def test_units_read_like_a_person_would_write_them() -> None:
    assert [duration(s) for s in (None, 0, 0.0154, 0.4, 9.94, 12.9, 184.2, 3600 * 2 + 300, 86400 * 3 + 3600 * 4)] == [
        "-", "0 s", "15 ms", "0.4 s", "9.9 s", "12 s", "3m04s", "2h05m", "3d04h",
    ]
    assert [ago(s) for s in (0.2, 12.7, 184)] == ["just now", "12 s ago", "3m04s ago"]
    assert [size(n) for n in (None, 0, 999, 1234, 2019393189, 999_960_000, 3.2e12)] == [
        "-", "0 B", "999 B", "1.2 kB", "2.0 GB", "1.0 GB", "3.2 TB",
    ]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.just(10**400) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_fields = st.sampled_from([
    "name", "url", "reachable", "last_poll", "last_error", "models", "resident", "size", "size_vram",
    "expires_at", "in_flight", "concurrency", "wake", "waking", "packets_sent", "weight", "waiting",
    "service_seconds", "requests", "client", "model", "target", "route", "method", "elapsed",
    "queue_wait", "bytes", "tokens", "time", "status", "duration", "tokens_per_second", "now", "started",
])
_records = st.lists(st.dictionaries(_fields, _json | st.sampled_from([NOW, "2026-12-01T17:00:00Z"])), max_size=3)


@given(
    st.fixed_dictionaries({
        "foreman": st.dictionaries(_fields, _json | st.just(NOW)),
        "queue": st.dictionaries(st.sampled_from(["waiting", "in_flight", "paused"]), _json),
        "targets": _records, "clients": _records, "in_flight": _records, "recent": _records,
    }),
    st.integers(min_value=0, max_value=200),
)
def test_render_shows_any_document_without_failing(document, width) -> None:
    # A foreman of another version may send fields of other types: "-", never a traceback.
    text = render(document, width=width, url="http://127.0.0.1:8080")
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", text)
    if width:
        assert all(len(line) <= width for line in text.splitlines())


def test_the_command_needs_nothing_of_the_server() -> None:
    # It runs against a foreman elsewhere or of another version: the standard
    # library, and of foreman only its version and the escaping of text.
    tree = ast.parse(Path(terminal.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names} == {
        "foreman", "foreman.shown",
    }


def test_base_urls_and_where_the_document_is() -> None:
    assert terminal.base_url("127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert terminal.status_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/foreman/status"
    assert terminal.status_url("https://mac.lan/ollama") == "https://mac.lan/ollama/foreman/status"
    for bad in ("ftp://mac.lan", "http://mac.lan:99999", "http://", "http://mac.lan/?token=x", "http://[::1"):
        with pytest.raises(ValueError):
            terminal.base_url(bad)
    for with_password in ("http://me:hunter2@mac.lan", "http://me:hunter2@[::1:8080"):
        with pytest.raises(ValueError) as refused:
            terminal.base_url(with_password)
        assert "hunter2" not in str(refused.value)


def test_a_name_that_does_not_resolve_is_said_so() -> None:
    # Resolving a real name would leave the machine: the reason is built by hand.
    reason = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    why = terminal._why(reason, "http://mac.invalid:8080/foreman/status", 5.0)
    assert why == "cannot resolve the name 'mac.invalid' (Name or service not known)"


# --- the command against a real foreman ----------------------------------------------

DEADLINE = 30.0


async def status_command(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `foreman status ARGS` to its end: (exit code, stdout, stderr)."""
    async with spawned(*args, env=env) as process:
        out, err = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def spawned(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    """`foreman status ARGS` running with piped output; killed if the test leaves early."""
    process = await asyncio.create_subprocess_exec(
        str(BIN / "foreman"), "status", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**subprocess_env(), **(env or {})},
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()


TOKENS = f"{ALICE} name=alice weight=2\n{BOB} name=bob\n"


def chat(stream: bool) -> dict:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": "one two three four five six"}],
            "stream": stream}


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


async def test_status_shows_who_runs_who_waits_and_what_finished(start_foreman, stub, tmp_path) -> None:
    away = f"http://127.0.0.1:{free_port()}"
    front = start_foreman(
        f"{stub.url},{away}", FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS), FOREMAN_CONCURRENCY="1",
        FOREMAN_MODEL_AFFINITY="30s",
    )
    await front.ready()
    here = stub.url.removeprefix("http://")
    # alice's stream sends three lines and is held there, running; bob's two chats wait behind it.
    gate = stub.pace = Gate(open_lines=3)
    http = front.client(max_clients=10)
    alice = StreamReader()
    alice_done = http.fetch(
        alice.request(front.url + "/api/chat", chat(stream=True), headers={"Authorization": f"Bearer {ALICE}"}),
        raise_error=False,
    )
    await alice.wait_lines(3)
    bob_done = [
        http.fetch(front.url + "/api/chat", method="POST", body=json.dumps(chat(stream=False)),
                   headers={"Authorization": f"Bearer {BOB}"}, raise_error=False, request_timeout=60)
        for _ in range(2)
    ]
    await until(lambda: front.foreman.queue.waiting == 2)

    code, text, err = await status_command("--url", front.url, "--token", ALICE)
    assert (code, err) == (0, "")
    header = text.splitlines()[0]
    assert header.startswith(f"foreman 0.1.0 at {front.url}, up ")
    assert header.endswith(": 1 of 2 targets up, 2 waiting, 1 running")
    targets = rows(text, "TARGETS")
    assert targets[here][1:5] == ["up", stub.url, "1/1", str(len(stub.models))]
    assert targets[here][5].startswith("llama3.2:latest")
    assert targets[away.removeprefix("http://")][1:3] == ["away", away]
    clients = rows(text, "CLIENTS")
    assert clients["alice"][1:4] == ["2", "0", "1"]
    assert clients["bob"][1:4] == ["1", "2", "0"]
    running = rows(text, "RUNNING")["alice"]
    assert running[1:4] == ["llama3.2", here, "/api/chat"]
    assert running[6:] == [f"{len(alice.raw)} B", "3"]
    assert "no recent requests" in text

    code, raw, err = await status_command("--url", front.url + "/", "--token", ALICE, "--json")
    assert (code, err) == (0, "")
    document = json.loads(raw)
    assert document["queue"]["waiting"] == 2 and document["queue"]["in_flight"] == 1
    assert [(c["name"], c["waiting"], c["in_flight"]) for c in document["clients"]] == [
        ("alice", 0, 1), ("bob", 2, 0),
    ]
    [stream] = document["in_flight"]
    assert (stream["client"], stream["target"], stream["tokens"]) == ("alice", here, 3)
    assert raw.startswith('{\n  "foreman": {'), "pretty, in the order received"

    gate.released.set()
    answers = await asyncio.gather(alice_done, *bob_done)
    assert [a.code for a in answers] == [200, 200, 200]
    await until(lambda: len(front.foreman.ledger.recent()) == 3)
    # The token from the environment, this time.
    code, text, err = await status_command("--url", front.url, env={"FOREMAN_STATUS_TOKEN": BOB})
    assert (code, err) == (0, "")
    assert "nothing running" in text
    recent = section(text, "RECENT (newest first)")[1:]
    assert [cells(line)[1] for line in recent] == ["bob", "bob", "alice"]
    for line in recent:
        assert cells(line)[2:6] == ["llama3.2", here, "/api/chat", "200"]
    assert ALICE not in text and BOB not in text and ALICE not in raw and BOB not in raw


async def test_the_address_and_token_may_come_from_the_environment_and_flags_win(start_foreman, stub, tmp_path) -> None:
    front = start_foreman(FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS))
    await front.ready()
    env = {"FOREMAN_STATUS_URL": front.url + "/", "FOREMAN_STATUS_TOKEN": "tok-wrong"}
    code, text, err = await status_command("--token", ALICE, env=env)
    assert (code, err) == (0, "")
    assert text.startswith(f"foreman 0.1.0 at {front.url}/,")
    code, _, err = await status_command("--url", f"http://127.0.0.1:{free_port()}", "--token", ALICE, env=env)
    assert code == 1 and "connection refused" in err


async def test_a_foreman_that_cannot_be_reached_is_one_line_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await status_command("--url", url, "--token", "tok-never-shown")
    assert (code, out) == (1, "")
    assert one_line(err) == (
        f"foreman status: cannot reach foreman at {url}/foreman/status: "
        "connection refused (is foreman running and listening there?)"
    )
    assert "tok-never-shown" not in err


async def test_a_foreman_with_tokens_asks_for_one_and_refuses_a_wrong_one(start_foreman, stub, tmp_path) -> None:
    front = start_foreman(FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS))
    await front.ready()
    code, out, err = await status_command("--url", front.url)
    assert (code, out) == (1, "")
    assert one_line(err) == (
        f"foreman status: foreman at {front.url}/foreman/status needs a token: "
        "give --token or set FOREMAN_STATUS_TOKEN"
    )
    code, out, err = await status_command("--url", front.url, "--token", "tok-wrong-secret")
    assert (code, out) == (1, "")
    assert one_line(err) == (
        f"foreman status: foreman at {front.url}/foreman/status refused the token "
        "(401: missing or invalid bearer token)"
    )
    assert "tok-wrong-secret" not in err


async def test_a_server_that_is_not_a_foreman_is_said_so(stub) -> None:
    # The stand-in is an Ollama: it has no /foreman/status.
    code, out, err = await status_command("--url", stub.url)
    assert (code, out) == (1, "")
    line = one_line(err)
    assert line.startswith(f"foreman status: {stub.url}/foreman/status answered 404 Not Found")
    assert line.endswith("is it a foreman, and one recent enough to have /foreman/status?")


@contextlib.asynccontextmanager
async def answering(status_line: str, body: bytes, content_type: str = "application/json") -> AsyncIterator[str]:
    """A loopback server giving every request the same answer; yields its URL."""

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 {status_line}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        await writer.drain()

    server, url = await serve_raw(answer)
    try:
        yield url
    finally:
        server.close()


@pytest.mark.parametrize(
    ("status_line", "body", "said"),
    [
        ("500 Internal Server Error", b'{"error":"the ledger\\u001b[2J is gone"}',
         "answered 500 Internal Server Error: the ledger\\x1b[2J is gone"),
        ("200 OK", b"<html>a router's login page</html>", "answered, but not with JSON: is it a foreman?"),
        ("200 OK", b'{"models": []}', "answered JSON, but not foreman's status document"),
        ("302 Found", b"", "answered 302 Found (a redirect to '"),
    ],
    ids=["500", "not-json", "other-json", "redirect"],
)
async def test_other_answers_are_one_line_saying_what_came(io_loop, status_line, body, said) -> None:
    async with answering(status_line, body) as url:
        code, out, err = await status_command("--url", url, "--token", "tok-never-shown")
    assert (code, out) == (1, "")
    line = one_line(err)
    assert line.startswith(f"foreman status: {url}/foreman/status ")
    assert said in line
    assert "tok-never-shown" not in line


async def test_a_foreman_that_never_answers_times_out_in_five_seconds(io_loop) -> None:
    never = asyncio.Event()

    async def hang(head: bytes, writer: asyncio.StreamWriter) -> None:
        await never.wait()

    server, url = await serve_raw(hang)
    try:
        code, out, err = await status_command("--url", url)
    finally:
        never.set()
        server.close()
    assert (code, out) == (1, "")
    assert one_line(err) == f"foreman status: cannot reach foreman at {url}/foreman/status: no answer within 5 s"


@pytest.mark.parametrize(
    "args",
    [["--bogus"], ["--interval", "0"], ["--interval", "soon"], ["--recent", "-1"], ["--url", "ftp://x"],
     ["--tokne=tok-typo-secret"], ["--token", "tok with space"], ["stray-tok-secret"]],
    ids=["unknown", "interval-0", "interval-word", "recent-negative", "scheme", "typo", "token-space", "positional"],
)
async def test_a_bad_flag_is_one_line_and_exit_2(io_loop, args) -> None:
    code, out, err = await status_command(*args)
    assert (code, out) == (2, "")
    assert one_line(err).startswith("foreman status: ")
    assert "secret" not in err and "tok with space" not in err


async def test_watch_redraws_until_ctrl_c(start_foreman, stub, tmp_path) -> None:
    front = start_foreman(FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS))
    await front.ready()
    async with spawned("--url", front.url, "--token", ALICE, "--watch", "--interval", "0.2") as process:
        assert process.stdout is not None and process.stderr is not None
        headers = 0
        seen: list[str] = []
        while headers < 2:
            line = (await asyncio.wait_for(process.stdout.readline(), DEADLINE)).decode()
            assert line, f"the watch ended: {seen}"
            seen.append(line)
            headers += line.startswith(f"foreman 0.1.0 at {front.url}")
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert process.returncode == 0
    assert err == b""
    # Not a terminal: one refresh after the other, a blank line between, no escapes.
    text = "".join(seen)
    assert "\x1b" not in text
    assert f"\n\nforeman 0.1.0 at {front.url}" in text


async def test_watch_into_a_reader_that_stops_ends_quietly(start_foreman, stub) -> None:
    front = start_foreman()
    await front.ready()
    script = (
        "set -o pipefail; "
        f"'{BIN / 'foreman'}' status --url {front.url} --watch --interval 0.1 | head -n 1"
    )
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", script, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=subprocess_env(),
    )
    out, err = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert (process.returncode, err) == (0, b"")
    assert out.decode().startswith(f"foreman 0.1.0 at {front.url}")


async def test_watch_on_a_terminal_clears_the_screen_before_each_refresh(start_foreman, stub, tmp_path) -> None:
    front = start_foreman(FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS))
    await front.ready()
    leader, follower = os.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            str(BIN / "foreman"), "status", "--url", front.url, "--watch", "--interval", "0.2",
            stdin=asyncio.subprocess.DEVNULL, stdout=follower, stderr=asyncio.subprocess.PIPE,
            env={**subprocess_env(), "FOREMAN_STATUS_TOKEN": ALICE, "COLUMNS": "80"},
        )
        os.close(follower)
        follower = -1
        shown = b""
        loop = asyncio.get_running_loop()
        try:
            while shown.count(b"\x1b[H\x1b[2J") < 2:
                chunk = await asyncio.wait_for(loop.run_in_executor(None, os.read, leader, 65536), DEADLINE)
                assert chunk, shown
                shown += chunk
            process.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(process.wait(), DEADLINE) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    first = shown.split(b"\x1b[H\x1b[2J")[1].decode()
    assert first.startswith(f"foreman 0.1.0 at {front.url}")
    # A terminal's lines are cut to its width.
    assert all(len(line) <= 80 for line in first.replace("\r\n", "\n").splitlines())


async def test_watch_stops_with_one_line_when_a_refresh_fails(io_loop) -> None:
    answers = [json.dumps(DOCUMENT).encode(), b'{"error":"shutting down"}']

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> None:
        body = answers.pop(0) if len(answers) > 1 else answers[0]
        status_line = "200 OK" if body.startswith(b'{"foreman"') else "503 Service Unavailable"
        writer.write(
            f"HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        await writer.drain()

    server, url = await serve_raw(answer)
    try:
        code, out, err = await status_command("--url", url, "--watch", "--interval", "0.1")
    finally:
        server.close()
    assert code == 1
    assert out.startswith(f"foreman 0.1.0 at {url}")
    assert one_line(err) == f"foreman status: {url}/foreman/status answered 503 Service Unavailable: shutting down"
