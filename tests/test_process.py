"""foreman as a real process: --help, bad config, signals, logs, demo and stub.

Every process is started with asyncio's subprocess support and read with
async reads, because the stand-in Ollama (the `stub` fixture) runs on this
test's loop and must keep serving while the test waits on the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from foreman.config import SETTINGS
from tests.helpers import BIN, StreamReader, free_port, ndjson, subprocess_env

# Generous: a loaded CI machine can be slow to start an interpreter.
DEADLINE = 25.0

CONSOLE_SCRIPT = [str(BIN / "foreman")]
PYTHON_M = [sys.executable, "-m", "foreman"]
ENTRY_POINTS = pytest.mark.parametrize(
    "entry", [CONSOLE_SCRIPT, PYTHON_M], ids=["console-script", "python-m"]
)

MODEL = "llama3.2"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]}
# The stub answers "You said: hello there" one word a chunk, then a done line.
CHAT_LINES = 5

LISTENING = re.compile(r"foreman listening on http://127\.0\.0\.1:(\d+)")


def child_env(**overrides: str) -> dict[str, str]:
    env = subprocess_env()
    env.update(overrides)
    return env


# --- running a child ------------------------------------------------------------

# Every child started here, so a test that dies mid-way cannot leave one behind.
_children: list[asyncio.subprocess.Process] = []


@pytest.fixture(autouse=True)
def _reap_children() -> Iterator[None]:
    yield
    while _children:
        process = _children.pop()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)


async def run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run a command to completion: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _children.append(process)
    try:
        out, err = await asyncio.wait_for(process.communicate(), DEADLINE)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


class Child:
    """A running process whose stdout and stderr are read line by line as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = asyncio.Event()
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            asyncio.ensure_future(self._drain(process.stdout, self.stdout)),
            asyncio.ensure_future(self._drain(process.stderr, self.stderr)),
        ]
        self.port: int | None = None

    async def _drain(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        try:
            while line := await stream.readline():
                into.append(line.decode(errors="replace").rstrip("\r\n"))
                self._changed.set()
        finally:
            self._changed.set()

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "\n".join(self.stderr)

    def _eof(self) -> bool:
        return all(reader.done() for reader in self._readers)

    async def wait_line(self, predicate: Callable[[str], bool], timeout: float = DEADLINE) -> str:
        """The first stderr line satisfying `predicate`, waiting for it if need be."""

        async def wait() -> str:
            seen = 0
            while True:
                for line in self.stderr[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.stderr)
                if self._eof():
                    raise AssertionError(
                        f"stderr ended (exit {self.process.returncode}) without the line; "
                        f"stderr:\n{self.log}"
                    )
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"no such line within {timeout}s; stderr:\n{self.log}") from None

    async def wait_listening(self) -> int:
        line = await self.wait_line(lambda text: LISTENING.search(text) is not None)
        match = LISTENING.search(line)
        assert match is not None
        self.port = int(match.group(1))
        assert self.port != 0
        return self.port

    def send(self, sig: int) -> None:
        self.process.send_signal(sig)

    async def wait_exit(self, timeout: float = DEADLINE) -> int:
        """The exit code, once the process has exited and both pipes are read."""
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
            await asyncio.wait_for(asyncio.gather(*self._readers), timeout)
        except TimeoutError:
            raise AssertionError(
                f"still running after {timeout}s; stderr:\n{self.log}"
            ) from None
        return code

    @property
    def running(self) -> bool:
        return self.process.returncode is None


@contextlib.asynccontextmanager
async def started(
    argv: list[str], env: dict[str, str], *, listening: bool = True
) -> AsyncIterator[Child]:
    """Start `argv`; with `listening`, wait for foreman's "listening on" line first.

    On the way out the process is killed if it is still running, and reaped.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _children.append(process)
    child = Child(process)
    try:
        if listening:
            await child.wait_listening()
        yield child
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), DEADLINE)
        for reader in child._readers:
            reader.cancel()


def foreman_env(stub_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "FOREMAN_OLLAMA_URL": stub_url,
        "FOREMAN_LISTEN": "127.0.0.1:0",
        "FOREMAN_POLL_INTERVAL": "1h",
        "FOREMAN_SHUTDOWN_GRACE": "30s",
    }
    env.update(overrides)
    return child_env(**env)


@pytest.fixture
def http(io_loop) -> Iterator[SimpleAsyncHTTPClient]:
    client = SimpleAsyncHTTPClient(force_instance=True)
    yield client
    client.close()


async def fetch(http: SimpleAsyncHTTPClient, url: str, **kwargs):
    if isinstance(kwargs.get("body"), dict):
        kwargs["body"] = json.dumps(kwargs["body"])
    kwargs.setdefault("request_timeout", DEADLINE)
    return await http.fetch(HTTPRequest(url, **kwargs), raise_error=False)


async def connection_refused(port: int) -> bool:
    """Whether a new TCP connection to the port is refused."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


async def until_refused(port: int, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not await connection_refused(port):
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"port {port} still accepts connections after {timeout}s") from None


# --- --help ------------------------------------------------------------------------


def option_paragraphs(help_text: str) -> dict[str, str]:
    """Each option's help paragraph, whitespace-normalised, keyed by its flags."""
    paragraphs: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in help_text.splitlines():
        match = re.match(r"^  (-[\w-]+|--[\w-]+)", line)
        if match:
            current = paragraphs.setdefault(match.group(1), [])
            current.append(line)
        elif current is not None and line.startswith("    "):
            current.append(line)
        else:
            current = None
    return {flag: " ".join(" ".join(lines).split()) for flag, lines in paragraphs.items()}


@pytest.mark.parametrize(
    "argv",
    [
        CONSOLE_SCRIPT + ["--help"],
        PYTHON_M + ["--help"],
        CONSOLE_SCRIPT + ["serve", "--help"],
        PYTHON_M + ["serve", "--help"],
    ],
    ids=["foreman", "python-m", "foreman-serve", "python-m-serve"],
)
async def test_help_lists_every_variable_with_its_default(argv) -> None:
    code, out, err = await run(argv, child_env())
    assert code == 0, err
    assert "Traceback" not in out + err
    paragraphs = option_paragraphs(out)
    for setting in SETTINGS:
        assert setting.flag in paragraphs, f"{setting.flag} missing from --help:\n{out}"
        text = paragraphs[setting.flag]
        assert setting.env in text, f"{setting.env} not in the help for {setting.flag}: {text}"
        if setting.default is None:
            assert "unset" in text, f"{setting.flag}: no 'unset' default shown: {text}"
        else:
            shown = rf"default:?\s+{re.escape(setting.default)}(?![\w.:/])"
            assert re.search(shown, text), f"{setting.flag}: default not shown: {text}"


# --- bad configuration ------------------------------------------------------------------

BAD_CONFIG = [
    ({"FOREMAN_POLL_INTERVAL": "soon"}, [], "FOREMAN_POLL_INTERVAL", "soon"),
    ({"FOREMAN_LISTEN": ":99999"}, [], "FOREMAN_LISTEN", ":99999"),
    ({"FOREMAN_OLLAMA_URL": "ftp://x"}, [], "FOREMAN_OLLAMA_URL", "ftp://x"),
    ({"FOREMAN_LOG_LEVEL": "loud"}, [], "FOREMAN_LOG_LEVEL", "loud"),
    ({"FOREMAN_LOG_FORMAT": "xml"}, [], "FOREMAN_LOG_FORMAT", "xml"),
    ({"FOREMAN_SHUTDOWN_GRACE": "-1s"}, [], "FOREMAN_SHUTDOWN_GRACE", "-1s"),
    ({"FOREMAN_TOKENS_FILE": "/nonexistent"}, [], "FOREMAN_TOKENS_FILE", "/nonexistent"),
    ({}, ["--poll-interval", "soon"], "FOREMAN_POLL_INTERVAL", "soon"),
    # The flag wins over a good variable, and it is the flag that is reported.
    ({"FOREMAN_LISTEN": "127.0.0.1:0"}, ["--listen", "nowhere"], "FOREMAN_LISTEN", "nowhere"),
]


@ENTRY_POINTS
@pytest.mark.parametrize(
    "env, args, variable, value",
    BAD_CONFIG,
    ids=[f"{case[2]}={case[3]}{'-flag' if case[1] else ''}" for case in BAD_CONFIG],
)
async def test_bad_config_exits_2_with_one_line(entry, env, args, variable, value) -> None:
    # A target that is never contacted: foreman must stop before starting.
    code, out, err = await run(entry + args, child_env(**env))
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert variable in lines[0]
    assert value in lines[0]
    if args:
        assert args[0] in lines[0], "a bad flag should be named as the flag"
    assert out == ""


@pytest.mark.parametrize(
    "clients, admins, variable",
    [
        # A bad field in one file.
        ("ok-token name=ok\nthe-hidden-secret weight=lots\n", None, "FOREMAN_TOKENS_FILE"),
        ("ok-token\nthe-hidden-secret name=a/b\n", None, "FOREMAN_TOKENS_FILE"),
        # Each file fine, but they disagree: one name for two tokens.
        ("other-token\nok-token name=alice\n", "root\nthe-hidden-secret name=alice\n", "FOREMAN_ADMIN_TOKENS_FILE"),
    ],
    ids=["bad-weight", "bad-name", "name-in-both-files"],
)
async def test_a_bad_tokens_file_field_exits_2_with_one_line(io_loop, tmp_path, clients, admins, variable) -> None:
    env = {"FOREMAN_TOKENS_FILE": str(tmp_path / "tokens")}
    (tmp_path / "tokens").write_text(clients)
    if admins is not None:
        env["FOREMAN_ADMIN_TOKENS_FILE"] = str(tmp_path / "admins")
        (tmp_path / "admins").write_text(admins)
    code, out, err = await run(PYTHON_M, child_env(**env))
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert f"{variable}={env[variable]!r} line 2 " in lines[0]
    assert "the-hidden-secret" not in err and out == ""


async def test_port_in_use_is_one_clear_line(io_loop) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run(
            CONSOLE_SCRIPT + ["--listen", f"127.0.0.1:{port}"],
            child_env(FOREMAN_OLLAMA_URL=f"http://127.0.0.1:{free_port()}"),
        )
    assert code != 0
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "in use" in lines[0].lower()
    assert f"127.0.0.1:{port}" in lines[0], "the line should say which address is taken"


# --- signals -------------------------------------------------------------------------------


def paced(stub) -> asyncio.Event:
    """Make the stub send its first chunk and then wait for the returned event."""
    release = asyncio.Event()

    async def pace(index: int) -> None:
        await release.wait()

    stub.pace = pace
    return release


def stream_chat(http: SimpleAsyncHTTPClient, url: str) -> tuple[StreamReader, asyncio.Future]:
    """Start a streaming chat; its lines arrive in the reader as they come."""
    reader = StreamReader()
    response = asyncio.ensure_future(
        http.fetch(reader.request(url + "/api/chat", CHAT), raise_error=False)
    )
    # A test that fails early never awaits it; keep that failure quiet.
    response.add_done_callback(lambda f: f.cancelled() or f.exception())
    return reader, response


@pytest.mark.timeout(seconds=60)
@pytest.mark.parametrize(
    "sig, entry",
    [(signal.SIGTERM, CONSOLE_SCRIPT), (signal.SIGINT, PYTHON_M)],
    ids=["SIGTERM", "SIGINT"],
)
async def test_signal_stops_accepting_and_lets_the_stream_finish(stub, http, sig, entry) -> None:
    release = paced(stub)
    async with started(entry, foreman_env(stub.url)) as child:
        reader, response = stream_chat(http, child.url)
        await reader.wait_lines(1, timeout=DEADLINE)
        assert reader.status == 200

        child.send(sig)
        await child.wait_line(lambda line: "shutting down" in line)
        # The listener is closed: a new connection is refused...
        await until_refused(child.port)
        # ...while the stream in flight is still being served.
        assert child.running, child.log
        assert not response.done()
        assert len(reader.lines) == 1

        release.set()
        result = await asyncio.wait_for(response, DEADLINE)
        assert result.code == 200
        assert len(reader.lines) == CHAT_LINES
        assert [line["done"] for line in reader.lines] == [False] * (CHAT_LINES - 1) + [True]
        assert await child.wait_exit() == 0
        assert "Traceback" not in child.log


@pytest.mark.timeout(seconds=60)
async def test_grace_period_ends_a_stream_that_never_ends(stub, http) -> None:
    paced(stub)  # never released
    env = foreman_env(stub.url, FOREMAN_SHUTDOWN_GRACE="1s")
    async with started(CONSOLE_SCRIPT, env) as child:
        reader, response = stream_chat(http, child.url)
        await reader.wait_lines(1, timeout=DEADLINE)
        child.send(signal.SIGTERM)
        assert await child.wait_exit(20) == 0
        assert "Traceback" not in child.log
        # The stream was cut, not completed.
        with contextlib.suppress(HTTPClientError, OSError):
            await asyncio.wait_for(response, DEADLINE)
        assert not any(line.get("done") for line in reader.lines)
    # The target was told, too: foreman closed its request to the stub.
    await stub.wait_for(lambda: stub.active_chats == 0, timeout=DEADLINE)


# --- logs ---------------------------------------------------------------------------------


async def exercise_and_stop(child: Child, http: SimpleAsyncHTTPClient) -> None:
    """A chat and a tags request through `child`, then SIGTERM and wait for exit 0."""
    chat = await fetch(http, child.url + "/api/chat", method="POST", body=CHAT)
    assert chat.code == 200, chat.body
    assert ndjson(chat.body)[-1]["done"] is True
    tags = await fetch(http, child.url + "/api/tags")
    assert tags.code == 200
    child.send(signal.SIGTERM)
    assert await child.wait_exit() == 0


@pytest.mark.timeout(seconds=60)
async def test_json_logs_are_one_object_a_line(stub, http) -> None:
    env = foreman_env(stub.url, FOREMAN_LOG_FORMAT="json")
    async with started(CONSOLE_SCRIPT, env) as child:
        await exercise_and_stop(child, http)
    assert child.stderr
    entries = []
    for line in child.stderr:
        entry = json.loads(line)  # fails on any line that is not JSON
        assert isinstance(entry, dict), line
        for key in ("time", "level", "logger", "message"):
            assert isinstance(entry.get(key), str), f"{key} missing in {line}"
        entries.append(entry)
    chats = [e for e in entries if e.get("path") == "/api/chat"]
    assert len(chats) == 1, child.log
    chat = chats[0]
    assert chat["method"] == "POST"
    assert chat["status"] == 200
    assert isinstance(chat["duration_ms"], (int, float)) and chat["duration_ms"] >= 0
    assert chat["model"] == MODEL
    assert any(e.get("path") == "/api/tags" and e.get("status") == 200 for e in entries)


@pytest.mark.timeout(seconds=60)
async def test_text_logs_have_a_request_line(stub, http) -> None:
    async with started(PYTHON_M, foreman_env(stub.url)) as child:
        await exercise_and_stop(child, http)
    chat_lines = [line for line in child.stderr if "/api/chat" in line]
    assert len(chat_lines) == 1, child.log
    line = chat_lines[0]
    assert re.search(r"\bPOST /api/chat 200\b", line), line
    assert f"model={MODEL}" in line
    assert re.search(r"\d+(\.\d+)?\s*ms", line), "no duration in the request line"
    with pytest.raises(json.JSONDecodeError):
        json.loads(child.stderr[0])


@pytest.mark.timeout(seconds=60)
@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_tokens_never_reach_the_log(stub, http, log_format) -> None:
    stub.token = "target-tok"
    env = foreman_env(
        stub.url,
        FOREMAN_TOKENS="secret-tok",
        FOREMAN_OLLAMA_TOKEN="target-tok",
        FOREMAN_LOG_FORMAT=log_format,
        FOREMAN_LOG_LEVEL="debug",
    )
    async with started(CONSOLE_SCRIPT, env) as child:
        good = {"Authorization": "Bearer secret-tok"}
        chat = await fetch(http, child.url + "/api/chat", method="POST", body=CHAT, headers=good)
        assert chat.code == 200, chat.body  # the target accepted foreman's token
        assert ndjson(chat.body)[-1]["done"] is True
        unknown = {**CHAT, "model": "nope"}
        missing = await fetch(
            http, child.url + "/api/chat", method="POST", body=unknown, headers=good
        )
        assert missing.code == 404
        tags = await fetch(http, child.url + "/api/tags", headers=good)
        assert tags.code == 200
        wrong = ({}, {"Authorization": "Bearer target-tok"}, {"Authorization": "secret-tok"})
        for headers in wrong:
            refused = await fetch(
                http, child.url + "/api/chat", method="POST", body=CHAT, headers=headers
            )
            assert refused.code == 401
        health = await fetch(http, child.url + "/healthz")
        assert health.code == 200
        child.send(signal.SIGTERM)
        assert await child.wait_exit() == 0
    assert "/api/chat" in child.log  # the requests were logged...
    assert "secret-tok" not in child.log  # ...without the client token
    assert "target-tok" not in child.log  # ...or the target's


@pytest.mark.timeout(seconds=60)
@pytest.mark.parametrize(
    "listen, tokens, warned",
    [
        ("0.0.0.0:0", None, True),
        (":0", None, True),
        ("0.0.0.0:0", "some-tok", False),
        ("127.0.0.1:0", None, False),
    ],
    ids=["all-ipv4", "all-interfaces", "all-with-tokens", "loopback"],
)
async def test_warning_when_listening_beyond_loopback_without_tokens(
    stub, listen, tokens, warned
) -> None:
    env = foreman_env(stub.url, FOREMAN_LISTEN=listen)
    if tokens:
        env["FOREMAN_TOKENS"] = tokens
    async with started(CONSOLE_SCRIPT, env, listening=False) as child:
        await child.wait_line(lambda line: "foreman listening on" in line)
        child.send(signal.SIGTERM)
        assert await child.wait_exit() == 0
    warnings = [line for line in child.stderr if "WARNING" in line and "FOREMAN_TOKENS" in line]
    assert bool(warnings) == warned, child.log


# --- demo and stub --------------------------------------------------------------------------


@pytest.mark.timeout(seconds=60)
async def test_demo_prints_a_curl_line_that_works(io_loop) -> None:
    port = free_port()
    argv = CONSOLE_SCRIPT + ["demo", "--listen", f"127.0.0.1:{port}"]
    async with started(argv, child_env()) as child:
        assert child.port == port
        banner = child.stdout + child.stderr
        curl_lines = [line.strip() for line in banner if line.strip().startswith("curl ")]
        chat_lines = [line for line in curl_lines if "/api/chat" in line]
        assert len(chat_lines) == 1, child.log
        assert f"127.0.0.1:{port}/api/chat" in chat_lines[0]

        env = {k: v for k, v in child_env().items() if "proxy" not in k.lower()}
        code, out, err = await run(["sh", "-c", chat_lines[0]], env)
        assert code == 0, err
        lines = ndjson(out.encode())
        assert len(lines) >= 2
        assert all(line["done"] is False for line in lines[:-1])
        assert lines[-1]["done"] is True
        assert "".join(line["message"]["content"] for line in lines).strip() == "You said: hello"

        child.send(signal.SIGTERM)
        assert await child.wait_exit() == 0
        assert "Traceback" not in child.log


def curl_answer(out: str) -> tuple[dict[str, str], str]:
    """Headers (lower-cased names) and body of `curl -i` output."""
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    headers = {}
    for line in head.splitlines()[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, body


@pytest.mark.timeout(seconds=60)
async def test_demo_with_two_targets_routes_each_model_to_a_target_that_has_it(http) -> None:
    # Needs several targets in FOREMAN_OLLAMA_URL (issue 11 of 12's core).
    port = free_port()
    argv = CONSOLE_SCRIPT + ["demo", "--targets", "2", "--listen", f"127.0.0.1:{port}"]
    async with started(argv, child_env()) as child:
        banner = [line.strip() for line in child.stdout + child.stderr]
        targets = {}
        for line in banner:
            if line.startswith("target "):
                name, _, models = line.removeprefix("target ").partition(": ")
                targets[name] = models.split(", ")
        assert len(targets) == 2, child.log
        first, second = targets
        assert "llama3.2:latest" in targets[first] and "llama3.2:latest" in targets[second]
        only_first = set(targets[first]) - set(targets[second])
        only_second = set(targets[second]) - set(targets[first])
        assert only_first and only_second, targets

        # Both inventories polled: /healthz names both targets, all reachable.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while True:
            health = json.loads((await fetch(http, child.url + "/healthz")).body)
            polled = [t for t in health.get("targets", []) if t.get("last_poll")]
            if health.get("status") == "ok" and len(polled) == 2:
                break
            assert loop.time() < deadline, health
            await asyncio.sleep(0.05)
        assert {t["name"] for t in health["targets"]} == set(targets)

        curl_lines = [line for line in banner if line.startswith("curl ")]
        tags_lines = [line for line in curl_lines if line.endswith("/api/tags")]
        assert len(tags_lines) == 1, child.log
        env = {k: v for k, v in child_env().items() if "proxy" not in k.lower()}
        code, out, err = await run(["sh", "-c", tags_lines[0]], env)
        assert code == 0, err
        listed = [model["name"] for model in json.loads(out)["models"]]
        assert sorted(listed) == sorted(set(targets[first]) | set(targets[second]))

        chat_lines = [line for line in curl_lines if "/api/chat" in line]
        assert len(chat_lines) == 3, child.log
        for line in chat_lines:
            code, out, err = await run(["sh", "-c", line], env)
            assert code == 0, err
            headers, body = curl_answer(out)
            lines = ndjson(body.encode())
            assert lines[-1]["done"] is True, out
            served_by = headers["x-foreman-target"]
            model = json.loads(line.partition(" -d ")[2].strip("'"))["model"]
            if model in only_first:
                assert served_by == first, (model, served_by)
            elif model in only_second:
                assert served_by == second, (model, served_by)
            else:
                assert served_by in targets, (model, served_by)

        child.send(signal.SIGTERM)
        assert await child.wait_exit() == 0
        assert "Traceback" not in child.log


@pytest.mark.timeout(seconds=60)
async def test_stub_command_serves_tags_until_sigterm(http) -> None:
    port = free_port()
    argv = PYTHON_M + ["stub", "--listen", f"127.0.0.1:{port}"]
    async with started(argv, child_env(), listening=False) as child:
        await child.wait_line(lambda line: f"listening on http://127.0.0.1:{port}" in line)
        tags = await fetch(http, f"http://127.0.0.1:{port}/api/tags")
        assert tags.code == 200
        names = [model["name"] for model in json.loads(tags.body)["models"]]
        assert "llama3.2:latest" in names
        child.send(signal.SIGTERM)
        assert await child.wait_exit() == 0
        assert "Traceback" not in child.log


# --- the queue at shutdown ------------------------------------------------------------------


async def queue_state(http: SimpleAsyncHTTPClient, url: str) -> dict:
    health = await fetch(http, url + "/healthz")
    return json.loads(health.body)["queue"]


@pytest.mark.timeout(seconds=60)
async def test_sigterm_answers_waiting_requests_at_once_and_finishes_the_one_in_flight(
    stub, http
) -> None:
    release = paced(stub)
    env = foreman_env(stub.url, FOREMAN_CONCURRENCY="1")
    async with started(CONSOLE_SCRIPT, env) as child:
        reader, response = stream_chat(http, child.url)
        await reader.wait_lines(1, timeout=DEADLINE)
        assert reader.status == 200

        waiting = [
            asyncio.ensure_future(
                fetch(http, child.url + "/api/chat", method="POST", body=CHAT)
            )
            for _ in range(2)
        ]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while (state := await queue_state(http, child.url))["waiting"] < 2:
            assert loop.time() < deadline, f"queue never filled: {state}; stderr:\n{child.log}"
            await asyncio.sleep(0.05)
        assert state["waiting"] == 2 and state["in_flight"] == 1, state
        assert stub.chats_started == 1

        child.send(signal.SIGTERM)
        signalled = loop.time()
        try:
            refused = await asyncio.wait_for(asyncio.gather(*waiting), 5)
        except TimeoutError:
            raise AssertionError(
                f"waiting requests unanswered 5s after SIGTERM; stderr:\n{child.log}"
            ) from None
        answered_in = loop.time() - signalled
        # Answered while the stream in flight is still held open by the stub.
        assert not response.done()
        assert len(reader.lines) == 1
        for result in refused:
            assert result.code == 503, (result.code, result.body)
            assert result.headers["Content-Type"].startswith("application/json")
            error = json.loads(result.body)
            assert set(error) == {"error"}, error
            assert "shutting down" in error["error"]
            assert int(result.headers["Retry-After"]) >= 1
            assert "X-Foreman-Queue-Wait" in result.headers
        assert answered_in < 2, f"waiting requests answered {answered_in:.2f}s after SIGTERM"
        assert stub.chats_started == 1, "a waiting request reached the target"

        release.set()
        result = await asyncio.wait_for(response, DEADLINE)
        assert result.code == 200
        assert len(reader.lines) == CHAT_LINES
        assert [line["done"] for line in reader.lines] == [False] * (CHAT_LINES - 1) + [True]
        assert await child.wait_exit() == 0
        assert "Traceback" not in child.log
