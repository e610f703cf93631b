"""A deterministic stand-in for an Ollama server.

Tests run `StubOllama` in-process (same IOLoop) and shape its behaviour per
test through plain attributes; people run it with ``foreman stub`` to try
foreman without a GPU. It speaks the subset of Ollama's native API foreman
relies on (``/``, ``/api/version``, ``/api/tags``, ``/api/ps``, ``/api/chat``)
with Ollama's JSON shapes, status codes and quirks (404 text for unknown
routes, 403 for foreign ``Host`` headers on loopback, ``stream`` defaulting to
true). Replies, digests and timestamps are fixed functions of the request, so
two identical requests get byte-identical answers.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import inspect
import ipaddress
import json
import logging
import re
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import tornado.httputil
import tornado.iostream
import tornado.netutil
import tornado.web
from tornado.httpserver import HTTPServer

from foreman.config import parse_listen

log = logging.getLogger("foreman.stub")

DEFAULT_MODELS: tuple[str, ...] = (
    "llama3.2:latest",
    "qwen2.5:0.5b",
    "hf.co/example/tiny-gguf:Q4_K_M",
)
STUB_VERSION = "0.0.0-stub"

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"

# Every timestamp the stub reports is derived from this instant, so responses
# are reproducible byte for byte (tests compare direct and relayed bodies).
STUB_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
_TOKEN_INTERVAL = timedelta(milliseconds=20)

# Fixed "timings" in nanoseconds (Ollama reports durations in ns).
_LOAD_NS = 5_000_000
_PROMPT_TOKEN_NS = 1_000_000
_EVAL_TOKEN_NS = 20_000_000

_FALLBACK_REPLY = "This is the stub Ollama talking."


@dataclass
class RecordedRequest:
    """One request as the stub received it."""

    method: str
    path: str  # path + query as received
    headers: tornado.httputil.HTTPHeaders
    body: bytes


# --- model names and metadata -------------------------------------------------


def normalize_model_name(name: str) -> str:
    """Canonical form for comparing model names, as Ollama resolves them.

    No tag means ``:latest``; Ollama's default registry host and ``library/``
    namespace are implied; comparison is case-insensitive.
    """
    name = name.strip().lower()
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:  # a ":" before the last "/" is a registry port
        name += ":latest"
    for prefix in ("registry.ollama.ai/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _details(name: str) -> dict[str, Any]:
    base, _, tag = name.rsplit("/", 1)[-1].partition(":")
    family = re.sub(r"[^a-z].*", "", base.lower()) or "llama"  # "qwen2.5" -> "qwen"
    size = re.search(r"(\d+(?:\.\d+)?)b\b", tag.lower())
    quant = re.search(r"\b(q\d\w*|f16|f32|bf16)\b", tag.lower())
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": f"{size.group(1)}B" if size else "3.2B",
        "quantization_level": quant.group(1).upper() if quant else "Q4_K_M",
    }


def _size(name: str) -> int:
    # 1-5 GB, stable per name.
    return 1_000_000_000 + int(_digest(name)[:8], 16) % 4_000_000_000


def _timestamp(at: datetime) -> str:
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _tag_entry(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": _timestamp(STUB_EPOCH),
        "size": _size(name),
        "digest": _digest(name),
        "details": _details(name),
    }


def _ps_entry(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "size": _size(name),
        "digest": _digest(name),
        "details": _details(name),
        "expires_at": _timestamp(STUB_EPOCH + timedelta(minutes=5)),
        "size_vram": _size(name),
    }


def _dumps(obj: object) -> bytes:
    # Compact, UTF-8, like Go's encoding/json.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _is_local_host(host_header: str) -> bool:
    """Whether Ollama (listening on loopback) would accept this Host header."""
    host = host_header.strip().lower()
    if host.startswith("["):  # "[::1]:11434"
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:  # "127.0.0.1:11434"; bare IPv6 has more colons
        host = host.split(":", 1)[0]
    if host in ("", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- handlers -----------------------------------------------------------------


class _StubHandler(tornado.web.RequestHandler):
    """Shared gate: record, Host check, bearer check, method check."""

    methods: ClassVar[tuple[str, ...]] = ()
    open_methods: ClassVar[tuple[str, ...]] = ()  # methods that need no token

    def initialize(self, stub: StubOllama) -> None:
        self.stub = stub

    def set_default_headers(self) -> None:
        self.clear_header("Server")  # Ollama (Go net/http) sends none

    def compute_etag(self) -> str | None:
        return None  # nor an Etag

    def prepare(self) -> None:
        stub = self.stub
        stub._record(self.request)
        if stub.check_host and not _is_local_host(self.request.headers.get("Host", "")):
            # Ollama's allowed-hosts middleware aborts with a bare 403.
            self.set_status(403)
            self.clear_header("Content-Type")
            self.finish()
        elif (
            stub.token is not None
            and self.request.method not in self.open_methods
            and not self._authorized(stub.token)
        ):
            self.send_json_error(401, "unauthorized")
        elif self.request.method not in self.methods:
            # Gin answers a method it has no route for with its plain 404.
            self.send_not_found()

    def _authorized(self, token: str) -> bool:
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        )

    def send_json(self, obj: object, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(_dumps(obj))

    def send_json_error(self, status: int, message: str) -> None:
        self.send_json({"error": message}, status)

    def send_not_found(self) -> None:
        self.set_status(404)
        self.set_header("Content-Type", "text/plain")
        self.finish(b"404 page not found")


class _RootHandler(_StubHandler):
    methods = ("GET", "HEAD")
    open_methods = ("GET", "HEAD")

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(b"Ollama is running")

    head = get


class _VersionHandler(_StubHandler):
    methods = ("GET", "HEAD")

    def get(self) -> None:
        self.send_json({"version": STUB_VERSION})

    head = get


class _TagsHandler(_StubHandler):
    methods = ("GET", "HEAD")

    async def get(self) -> None:
        if self.request.method == "GET":
            self.stub._bump("tags_polls")
        if self.stub.tags_hold is not None:
            await self.stub.tags_hold.wait()
        if self.stub.tags_status is not None:
            self.send_json_error(self.stub.tags_status, "stub error")
            return
        self.send_json({"models": [_tag_entry(name) for name in self.stub.models]})

    head = get


class _PsHandler(_StubHandler):
    methods = ("GET",)

    def get(self) -> None:
        self.send_json({"models": [_ps_entry(name) for name in self.stub._loaded]})


class _NotFoundHandler(_StubHandler):
    """Any other route: methods is empty, so prepare() answers Gin's 404."""


class _ChatHandler(_StubHandler):
    """POST /api/chat: validate like Ollama, then produce a scripted reply."""

    methods = ("POST",)

    def initialize(self, stub: StubOllama) -> None:
        super().initialize(stub)
        self._gone = asyncio.Event()  # the client closed the connection
        self._active = False  # counted in stub.active_chats
        self._ending = False  # the last write is under way: a close is no loss
        self._outcome: str | None = None  # "finished", "disconnected", "broken"

    async def post(self) -> None:
        self._active = True
        self.stub._chat_entered()
        try:
            await self._chat()
        finally:
            if self._gone.is_set():
                self._conclude("disconnected")
            self._leave()

    def on_connection_close(self) -> None:
        # Tornado calls this as soon as the socket closes, even while we are
        # parked on hold/pace/sleep; _unless_gone wakes those waits. Counting
        # here (not when post() unwinds) lets tests see it at once.
        self._gone.set()
        if self._active and not self._ending:
            self._conclude("disconnected")

    def _conclude(self, outcome: str) -> None:
        """Count this chat once: chats_finished/_disconnected/_broken."""
        if self._outcome is None:
            self._outcome = outcome
            self.stub._bump(f"chats_{outcome}")
        self._leave()

    def _leave(self) -> None:
        if self._active:
            self._active = False
            self.stub._chat_left()

    async def _unless_gone(self, awaitable: Awaitable[Any]) -> bool:
        """Await `awaitable` unless the client goes first; True if it completed."""
        if self._gone.is_set():
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never awaited on purpose; no warning
            return False
        work = asyncio.ensure_future(awaitable)
        gone = asyncio.ensure_future(self._gone.wait())
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, gone):
                task.cancel()
        if work.done() and not work.cancelled():
            work.result()  # surface errors raised by a test's pace()
            return not self._gone.is_set()
        return False

    async def _send(self, data: bytes, *, final: bool = False) -> bool:
        """Write and flush (or finish); False if the client has gone."""
        try:
            self.write(data)
            await (self.finish() if final else self.flush())
        except tornado.iostream.StreamClosedError:
            self._gone.set()
            return False
        return True

    async def _send_last(self, data: bytes) -> None:
        self._ending = True
        done = await self._send(data, final=True)
        self._conclude("finished" if done else "disconnected")

    async def _before_chunk(self, index: int) -> bool:
        """Pause between chunks as the test asked; False if the client left."""
        if index == 0:
            return True
        # Even with no delay, yield to the loop once per chunk: a flush into a
        # roomy socket buffer completes without yielding, and the stub shares
        # its IOLoop with the code under test.
        if not await self._unless_gone(asyncio.sleep(max(self.stub.chunk_delay, 0))):
            return False
        if self.stub.pace is not None:
            if not await self._unless_gone(self.stub.pace(index)):
                return False
        return True

    def _parse(self) -> dict[str, Any] | None:
        """The request as a dict, or None after answering 400 as Ollama does."""
        if not self.request.body.strip():
            self.send_json_error(400, "missing request body")
            return None
        try:
            body = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError) as e:
            self.send_json_error(400, f"invalid JSON: {e}")
            return None
        if not isinstance(body, dict):
            self.send_json_error(400, "request body must be a JSON object")
            return None
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self.send_json_error(400, "model is required")
            return None
        if body.get("stream") is not None and not isinstance(body["stream"], bool):
            self.send_json_error(400, "stream must be a boolean")
            return None
        messages = body.get("messages")
        if messages is not None and not (
            isinstance(messages, list) and all(isinstance(m, dict) for m in messages)
        ):
            self.send_json_error(400, "messages must be a list of objects")
            return None
        return body

    async def _chat(self) -> None:
        stub = self.stub
        body = self._parse()
        if body is None:
            return
        requested: str = body["model"]
        name = stub.resolve(requested)
        if name is None:
            self.send_json_error(404, f"model '{requested}' not found")
            return
        if stub.hold is not None and not await self._unless_gone(stub.hold.wait()):
            return  # the model is "loading"; headers are not sent until it is
        if stub.chat_status is not None:
            self.send_json_error(stub.chat_status, "stub error")
            return
        stub._mark_loaded(name)
        messages: list[dict[str, Any]] = body.get("messages") or []
        if not messages:
            # Ollama treats an empty chat as "load the model" and answers at once.
            self.set_header("Content-Type", JSON_TYPE)
            await self._send_last(_dumps(_load_response(requested)))
            return
        reply = _Reply.for_chat(messages, body.get("options"))
        final = _final_response(requested, messages, reply.count)
        if body.get("stream") is False:
            await self._reply_whole(final, reply)
        else:
            await self._reply_stream(requested, final, reply)

    async def _reply_whole(self, final: dict[str, Any], reply: _Reply) -> None:
        # Generation takes the same paced time; only the last object is sent.
        for index in range(1, reply.count + 1):
            if not await self._before_chunk(index):
                return
        final["message"]["content"] = "".join(map(reply.piece, range(reply.count)))
        self.set_header("Content-Type", JSON_TYPE)
        await self._send_last(_dumps(final))

    async def _reply_stream(
        self, requested: str, final: dict[str, Any], reply: _Reply
    ) -> None:
        self.set_header("Content-Type", NDJSON_TYPE)
        for index in range(reply.count):
            # Pause first, so a break lands when the next chunk was due.
            if not await self._before_chunk(index):
                return
            if self.stub.break_after is not None and index >= self.stub.break_after:
                await self._break()
                return
            chunk = {
                "model": requested,
                "created_at": _timestamp(STUB_EPOCH + index * _TOKEN_INTERVAL),
                "message": {"role": "assistant", "content": reply.piece(index)},
                "done": False,
            }
            if not await self._send(_dumps(chunk) + b"\n"):
                return
        if not await self._before_chunk(reply.count):
            return
        if self.stub.break_after is not None and reply.count >= self.stub.break_after:
            await self._break()
            return
        await self._send_last(_dumps(final) + b"\n")

    async def _break(self) -> None:
        """End the response mid-stream: no done line, no chunked terminator."""
        self._ending = True  # the stub cuts it; the client did not go away
        if not await self._send(b""):  # headers at least, so the client sees a 200
            self._conclude("disconnected")
            return
        # detach() takes the socket away from Tornado's HTTP layer (so it
        # will not write the final "0\r\n\r\n"); closing it truncates the body.
        self.detach().close()
        self._conclude("broken")


@dataclass(frozen=True)
class _Reply:
    """The scripted reply: `count` content chunks, one word and a space each.

    Chunks are made on demand, since num_predict may ask for a great many.
    """

    words: list[str]
    count: int

    @classmethod
    def for_chat(cls, messages: list[dict[str, Any]], options: object) -> _Reply:
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        text = _FALLBACK_REPLY
        if last_user is not None:
            text = f"You said: {last_user.get('content') or ''}"
        words = text.split()
        count = len(words)
        limit = options.get("num_predict") if isinstance(options, dict) else None
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            count = limit  # Ollama's token cap; the words are cycled to fill it
        return cls(words, count)

    def piece(self, index: int) -> str:
        return self.words[index % len(self.words)] + " "


def _final_response(
    requested: str, messages: list[dict[str, Any]], count: int
) -> dict[str, Any]:
    prompt_tokens = max(1, sum(len(str(m.get("content") or "").split()) for m in messages))
    prompt_ns = prompt_tokens * _PROMPT_TOKEN_NS
    eval_ns = count * _EVAL_TOKEN_NS
    return {
        "model": requested,
        "created_at": _timestamp(STUB_EPOCH + count * _TOKEN_INTERVAL),
        "message": {"role": "assistant", "content": ""},
        "done_reason": "stop",
        "done": True,
        "total_duration": _LOAD_NS + prompt_ns + eval_ns,
        "load_duration": _LOAD_NS,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": count,
        "eval_duration": eval_ns,
    }


def _load_response(requested: str) -> dict[str, Any]:
    return {
        "model": requested,
        "created_at": _timestamp(STUB_EPOCH),
        "message": {"role": "assistant", "content": ""},
        "done_reason": "load",
        "done": True,
    }


# --- the server ---------------------------------------------------------------


class _TrackingHTTPServer(HTTPServer):
    """HTTPServer that remembers its sockets so stop() can cut them all at once."""

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        self.on_accept: Callable[[], None] = kwargs.pop("on_accept")
        super().initialize(*args, **kwargs)
        self.streams: set[tornado.iostream.IOStream] = set()

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple[Any, ...]) -> None:
        self.streams = {s for s in self.streams if not s.closed()}
        self.streams.add(stream)
        self.on_accept()
        super().handle_stream(stream, address)


class StubOllama:
    """A scriptable, deterministic Ollama for tests and demos.

    Knobs (plain attributes, change them at any time): ``models``, ``token``,
    ``chunk_delay``, ``check_host``, ``hold``, ``pace``, ``break_after``,
    ``chat_status``, ``tags_status``, ``tags_hold``. Observations: ``requests`` and the
    counters below; `wait_for` blocks until a predicate over them holds.

    Chat timing: chunk 0 is written at once; before every later line
    (including the final ``done`` line, index ``len(content chunks)``) the stub
    sleeps ``chunk_delay`` and then awaits ``pace(index)``. Non-streaming
    chats go through the same pauses and then send one object.
    ``chats_started`` counts every POST /api/chat that got past the Host and
    token checks, including ones then rejected (400/404/``chat_status``).
    """

    def __init__(
        self,
        models: Iterable[str] = DEFAULT_MODELS,
        *,
        token: str | None = None,
        chunk_delay: float = 0.0,
    ) -> None:
        self.models: list[str] = list(models)
        self.token = token
        self.chunk_delay = chunk_delay
        self.check_host = True
        self.hold: asyncio.Event | None = None
        self.pace: Callable[[int], Awaitable[None]] | None = None
        self.break_after: int | None = None
        self.chat_status: int | None = None
        self.tags_status: int | None = None
        self.tags_hold: asyncio.Event | None = None  # /api/tags waits for it before answering

        self.requests: list[RecordedRequest] = []
        self.chats_started = 0
        self.chats_finished = 0
        self.chats_disconnected = 0
        self.chats_broken = 0  # streams cut by break_after
        self.tags_polls = 0
        self.connections = 0  # TCP connections accepted
        self.active_chats = 0
        self.max_active_chats = 0

        self._loaded: list[str] = []  # what /api/ps reports, in load order
        self._changed = asyncio.Event()  # replaced after every state change
        self._server: _TrackingHTTPServer | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None

    # --- lifecycle ---

    def make_app(self) -> tornado.web.Application:
        kwargs = {"stub": self}
        return tornado.web.Application(
            [
                (r"/", _RootHandler, kwargs),
                (r"/api/version", _VersionHandler, kwargs),
                (r"/api/tags", _TagsHandler, kwargs),
                (r"/api/ps", _PsHandler, kwargs),
                (r"/api/chat", _ChatHandler, kwargs),
            ],
            default_handler_class=_NotFoundHandler,
            default_handler_args=kwargs,
        )

    def listen(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Start serving on the current IOLoop; returns the bound port."""
        if self._server is not None:
            raise RuntimeError("stub is already listening; stop() it first")
        # bind_sockets sets SO_REUSEADDR, so a restart on the same port works
        # even while the previous connections sit in TIME_WAIT.
        sockets = tornado.netutil.bind_sockets(port, address=host or None)
        server = _TrackingHTTPServer(self.make_app(), on_accept=lambda: self._bump("connections"))
        server.add_sockets(sockets)
        self._server = server
        self._host = host
        self._port = sockets[0].getsockname()[1]
        return self._port

    async def stop(self) -> None:
        """Stop listening and drop every open connection, like a dying target."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        for stream in list(server.streams):
            stream.close()
        await server.close_all_connections()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("stub has not listened yet")
        return self._port

    @property
    def url(self) -> str:
        host = self._host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Resolve once predicate() is true; it is re-checked on every change."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            changed = self._changed
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                if predicate():
                    return
                raise TimeoutError(
                    f"stub: condition not met within {timeout}s; state: {self.snapshot()}"
                ) from None

    def snapshot(self) -> dict[str, int]:
        """The counters, for assertion messages."""
        return {
            "requests": len(self.requests),
            "chats_started": self.chats_started,
            "chats_finished": self.chats_finished,
            "chats_disconnected": self.chats_disconnected,
            "chats_broken": self.chats_broken,
            "tags_polls": self.tags_polls,
            "active_chats": self.active_chats,
            "max_active_chats": self.max_active_chats,
            "connections": self.connections,
        }

    def resolve(self, requested: str) -> str | None:
        """The inventory name `requested` refers to, or None."""
        wanted = normalize_model_name(requested)
        return next((m for m in self.models if normalize_model_name(m) == wanted), None)

    # --- bookkeeping used by the handlers ---

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _bump(self, counter: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        self._notify()

    def _record(self, request: tornado.httputil.HTTPServerRequest) -> None:
        self.requests.append(
            RecordedRequest(
                method=request.method or "",
                path=request.uri or "",
                headers=tornado.httputil.HTTPHeaders(request.headers),
                body=request.body,
            )
        )
        self._notify()

    def _chat_entered(self) -> None:
        self.chats_started += 1
        self.active_chats += 1
        self.max_active_chats = max(self.max_active_chats, self.active_chats)
        self._notify()

    def _chat_left(self) -> None:
        self.active_chats -= 1
        self._notify()

    def _mark_loaded(self, name: str) -> None:
        if name not in self._loaded:
            self._loaded.append(name)


# --- running it from the command line ------------------------------------------


def _parse_listen(value: str) -> tuple[str, int]:
    try:
        return parse_listen(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--listen {value!r}: expected host:port, e.g. 127.0.0.1:11434 or :11434"
        ) from None


def _parse_models(value: str) -> list[str]:
    return [m.strip() for m in value.split(",") if m.strip()]


def add_stub_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for ``foreman stub``."""
    parser.add_argument(
        "--listen",
        type=_parse_listen,
        default=("127.0.0.1", 11434),
        metavar="HOST:PORT",
        help="where to listen (default: 127.0.0.1:11434, Ollama's own address)",
    )
    parser.add_argument(
        "--models",
        type=_parse_models,
        default=list(DEFAULT_MODELS),
        metavar="A,B,...",
        help=f"comma-separated model inventory (default: {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' on every route but / (default: none)",
    )
    parser.add_argument(
        "--chunk-delay",
        type=float,
        default=0.05,
        metavar="SECONDS",
        help="pause between streamed chunks (default: 0.05)",
    )


def stub_from_args(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    """The `run_stub` coroutine for parsed `add_stub_arguments` flags."""
    host, port = args.listen
    return run_stub(host, port, args.models, args.token, args.chunk_delay)


async def run_stub(
    listen_host: str,
    listen_port: int,
    models: list[str],
    token: str | None,
    chunk_delay: float,
) -> None:
    """Serve a stub Ollama until cancelled."""
    stub = StubOllama(models, token=token, chunk_delay=chunk_delay)
    # Ollama only polices Host when it listens on loopback.
    stub.check_host = listen_host != "" and _is_local_host(listen_host)
    port = stub.listen(listen_port, listen_host)
    shown = listen_host or "0.0.0.0"
    if ":" in shown:
        shown = f"[{shown}]"
    log.info("stub Ollama listening on http://%s:%d", shown, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await stub.stop()
    log.info("stub Ollama stopped")
