"""A deterministic stand-in for an Ollama server.

Tests run `StubOllama` in-process (same IOLoop) and shape its behaviour per
test through plain attributes; people run it with ``foreman stub`` to try
foreman without a GPU. It speaks Ollama's native API (``/``,
``/api/version``, ``/api/tags``, ``/api/ps``, ``/api/chat``,
``/api/generate``, ``/api/embed``, ``/api/embeddings``, ``/api/show``, and
model management: ``/api/pull``, ``/api/push``, ``/api/create``,
``/api/copy``, ``DELETE /api/delete``, ``/api/blobs/<digest>``) and its
OpenAI-compatible ``/v1`` routes, with Ollama's JSON shapes, status codes
and quirks (404 text for unknown routes, 403 for foreign ``Host`` headers on
loopback, ``stream`` defaulting to true on native routes and to false on
``/v1``). Replies, digests, vectors and timestamps are fixed functions of the
request, so two identical requests get byte-identical answers.

The management routes live in `foreman.stub_models` and the ``/v1`` routes
in `foreman.stub_openai`, private helpers of this module that build on its
handlers; import everything from here.
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
import math
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
EMBEDDING_SIZE = 8  # floats per vector from the embed routes

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


def display_name(name: str) -> str:
    """How Ollama lists a model it pulled or created: tagged, default host/namespace dropped."""
    name = name.strip()
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    for prefix in ("registry.ollama.ai/", "library/"):
        if name.lower().startswith(prefix):
            name = name[len(prefix) :]
    return name


def namespace_of(name: str) -> str:
    """A model name's namespace (``library`` unless given), as /v1 reports in owned_by."""
    parts = name.split("/")
    return parts[-2] if len(parts) > 1 else "library"


def embedding_for(text: str, dimensions: object = None) -> list[float]:
    """The stub's embedding of `text`: EMBEDDING_SIZE floats, unit length (to 1e-7).

    A fixed function of the text alone, so every embed route (and every
    model) agrees. `dimensions` (an int below EMBEDDING_SIZE) truncates
    before normalising, as Ollama does.
    """
    digest = hashlib.sha256(text.encode()).digest()
    raw = [int.from_bytes(digest[2 * i : 2 * i + 2], "big") - 32768 for i in range(EMBEDDING_SIZE)]
    wanted = dimensions if isinstance(dimensions, int) and not isinstance(dimensions, bool) else 0
    if 0 < wanted < EMBEDDING_SIZE:
        raw = raw[:wanted]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 8) for v in raw]


def _is_embedding_model(name: str) -> bool:
    return "embed" in name.lower()


def show_document(name: str) -> dict[str, Any]:
    """What POST /api/show answers for inventory model `name`."""
    details = _details(name)
    family = details["family"]
    layer = _digest(f"{name}#0")
    template = "{{ .Prompt }}"
    parameters = 'stop                           "<|eot_id|>"'
    modelfile = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {name}\n\n"
        f"FROM /stub/models/blobs/sha256-{layer}\n"
        f'TEMPLATE """{template}"""\n'
        'PARAMETER stop "<|eot_id|>"\n'
    )
    embedding = _is_embedding_model(name)
    return {
        "modelfile": modelfile,
        "parameters": parameters,
        "template": template,
        "details": details,
        "model_info": {
            "general.architecture": family,
            "general.file_type": 15,
            "general.parameter_count": _size(name) * 2,
            "general.quantization_version": 2,
            f"{family}.context_length": 8192,
            f"{family}.embedding_length": EMBEDDING_SIZE if embedding else 3072,
        },
        "capabilities": ["embedding"] if embedding else ["completion"],
        "modified_at": _timestamp(STUB_EPOCH),
    }


# --- handlers -----------------------------------------------------------------


@tornado.web.stream_request_body
class _StubHandler(tornado.web.RequestHandler):
    """Shared gate: record, Host check, bearer check, method check.

    Bodies are streamed in, so Tornado never parses one as a form the way
    Ollama (Go) never does: `curl -d` labels JSON a form, and a prompt with
    many '&' would otherwise be refused.
    """

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
        # Filled in by data_received; the recorded request shares the object.
        self.request.body = bytearray()  # type: ignore[assignment]
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

    def data_received(self, chunk: bytes) -> None:
        self.request.body.extend(chunk)  # type: ignore[attr-defined]

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

    def send_empty(self, status: int) -> None:
        """A bodiless answer, as Gin sends when a handler writes nothing."""
        self.set_status(status)
        self.clear_header("Content-Type")
        self.finish()

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


class _RunHandler(_StubHandler):
    """A POST that keeps its connection busy while it "works".

    Tracks how it ends (finished, disconnected by the client, broken by the
    stub), wakes up at once when the client goes, and writes NDJSON or SSE
    streams line by line under the stub's chunk_delay/pace/break_after.
    Handlers that run the model (``runs_model``) count in ``chats_*`` and
    ``active_chats``; the others (pull, push, create) in ``progress_*``.
    ``started_counter``, if set, is bumped on entry too.
    """

    methods = ("POST",)
    runs_model: ClassVar[bool] = True
    started_counter: ClassVar[str | None] = None

    def initialize(self, stub: StubOllama) -> None:
        super().initialize(stub)
        self._gone = asyncio.Event()  # the client closed the connection
        self._active = False  # entered and not yet left
        self._ending = False  # the last write is under way: a close is no loss
        self._outcome: str | None = None  # "finished", "disconnected", "broken"

    async def post(self, *args: str) -> None:
        self._active = True
        if self.runs_model:
            self.stub._chat_entered()
        if self.started_counter is not None:
            self.stub._bump(self.started_counter)
        try:
            await self.run()
        finally:
            if self._gone.is_set():
                self._conclude("disconnected")
            self._leave()

    async def run(self) -> None:
        raise NotImplementedError

    def on_connection_close(self) -> None:
        # Tornado calls this as soon as the socket closes, even while we are
        # parked on hold/pace/sleep; _unless_gone wakes those waits. Counting
        # here (not when post() unwinds) lets tests see it at once.
        self._gone.set()
        if self._active and not self._ending:
            self._conclude("disconnected")

    def _conclude(self, outcome: str) -> None:
        """Count this request once: {chats,progress}_{finished,disconnected,broken}."""
        if self._outcome is None:
            self._outcome = outcome
            self.stub._bump(f"{'chats' if self.runs_model else 'progress'}_{outcome}")
        self._leave()

    def _leave(self) -> None:
        if self._active:
            self._active = False
            if self.runs_model:
                self.stub._chat_left()

    def fail(self, status: int, message: str) -> None:
        """Answer an error in this route's shape (Ollama's; /v1 routes override)."""
        self.send_json_error(status, message)

    def not_found(self, requested: str) -> str:
        """The 404 message for a model the stub does not have."""
        return f"model '{requested}' not found"

    # --- waiting and writing ---

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

    async def _stream(
        self,
        content_type: str,
        count: int,
        line: Callable[[int], bytes],
        closing: Callable[[], list[bytes]],
    ) -> None:
        """Write lines 0..count-1, then the closing writes as line `count`.

        Before every line but the first: chunk_delay, then pace(index); a
        break_after of n cuts the stream where line n was due. The closing
        writes (the ``done`` line; SSE's last chunk and ``[DONE]``) are
        flushed one by one without pauses between them; ``closing`` is
        called only when they are due, so it may change state (a pull adds
        its model then).
        """
        self.set_header("Content-Type", content_type)
        for index in range(count + 1):
            # Pause first, so a break lands when the next chunk was due.
            if not await self._before_chunk(index):
                return
            if self.stub.break_after is not None and index >= self.stub.break_after:
                await self._break()
                return
            if index < count and not await self._send(line(index)):
                return
        *parts, last = closing()
        for part in parts:
            if not await self._send(part):
                return
        await self._send_last(last)

    async def _whole(self, content_type: str, count: int, body: Callable[[], bytes]) -> None:
        """One answer, after the pauses a stream of `count` lines and a close takes."""
        for index in range(1, count + 1):
            if not await self._before_chunk(index):
                return
        data = body()
        self.set_header("Content-Type", content_type)
        await self._send_last(data)

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

    # --- request checks shared by the routes ---

    def _parse(self, *name_fields: str) -> tuple[dict[str, Any], str] | None:
        """The body and its model name, or None after answering 400 as Ollama does.

        The name is the first non-empty string among `name_fields` (default
        ``model``; show/pull/push/delete also take the legacy ``name``).
        """
        body = _parse_object(self.request.body, self.fail)
        if body is None:
            return None
        model = _first_name(body, name_fields or ("model",))
        if model is None:
            self.fail(400, "model is required")
            return None
        if body.get("stream") is not None and not isinstance(body["stream"], bool):
            self.fail(400, "stream must be a boolean")
            return None
        return body, model

    async def _admit(self, requested: str) -> str | None:
        """Resolve, wait out `hold`, apply `chat_status`, mark loaded; None once answered."""
        stub = self.stub
        name = stub.resolve(requested)
        if name is None:
            self.fail(404, self.not_found(requested))
            return None
        if stub.hold is not None and not await self._unless_gone(stub.hold.wait()):
            return None  # the model is "loading"; headers are not sent until it is
        if stub.chat_status is not None:
            self.fail(stub.chat_status, "stub error")
            return None
        stub._mark_loaded(name)
        return name


def _parse_object(raw: bytes, fail: Callable[[int, str], None]) -> dict[str, Any] | None:
    """`raw` as a JSON object, or None after fail(400, why)."""
    if not raw.strip():
        fail(400, "missing request body")
        return None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        fail(400, f"invalid JSON: {e}")
        return None
    if not isinstance(body, dict):
        fail(400, "request body must be a JSON object")
        return None
    return body


def _first_name(body: dict[str, Any], fields: Iterable[str]) -> str | None:
    """The first non-empty string among body[field] for `fields`."""
    for field in fields:
        value = body.get(field)
        if isinstance(value, str) and value:
            return value
    return None


class _ChatHandler(_RunHandler):
    """POST /api/chat: validate like Ollama, then produce a scripted reply."""

    async def run(self) -> None:
        parsed = self._parse()
        if parsed is None:
            return
        body, requested = parsed
        messages = body.get("messages")
        if messages is not None and not (
            isinstance(messages, list) and all(isinstance(m, dict) for m in messages)
        ):
            self.fail(400, "messages must be a list of objects")
            return
        if await self._admit(requested) is None:
            return
        if not messages:
            # Ollama treats an empty chat as "load the model" and answers at once.
            self.set_header("Content-Type", JSON_TYPE)
            await self._send_last(_dumps(_load_response(requested)))
            return
        reply = _Reply.for_chat(messages, body.get("options"))
        prompt_tokens = _count_tokens(str(m.get("content") or "") for m in messages)
        final = _final_response(requested, prompt_tokens, reply.count)
        if body.get("stream") is False:
            final["message"]["content"] = reply.text()
            await self._whole(JSON_TYPE, reply.count, lambda: _dumps(final))
            return

        def line(index: int) -> bytes:
            chunk = {
                "model": requested,
                "created_at": _created_at(index),
                "message": {"role": "assistant", "content": reply.piece(index)},
                "done": False,
            }
            return _dumps(chunk) + b"\n"

        await self._stream(NDJSON_TYPE, reply.count, line, lambda: [_dumps(final) + b"\n"])


class _GenerateHandler(_RunHandler):
    """POST /api/generate: chat's machinery for a prompt; no prompt loads the model."""

    started_counter = "generates_started"

    async def run(self) -> None:
        parsed = self._parse()
        if parsed is None:
            return
        body, requested = parsed
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            self.fail(400, "prompt must be a string")
            return
        name = await self._admit(requested)
        if name is None:
            return
        if not prompt:
            self.set_header("Content-Type", JSON_TYPE)
            await self._send_last(_dumps(self._load(requested, name, body.get("keep_alive"))))
            return
        reply = _Reply.for_prompt(prompt, body.get("options"))
        stats = _final_response(requested, _count_tokens([prompt]), reply.count)
        final: dict[str, Any] = {
            "model": requested,
            "created_at": stats["created_at"],
            "response": "",
            "done": True,
            "done_reason": "stop",
        }
        if body.get("raw") is not True:  # raw mode returns no context (documented)
            final["context"] = _context(prompt, reply)
        final.update((k, stats[k]) for k in _STATS)
        if body.get("stream") is False:
            final["response"] = reply.text()
            await self._whole(JSON_TYPE, reply.count, lambda: _dumps(final))
            return

        def line(index: int) -> bytes:
            chunk = {
                "model": requested,
                "created_at": _created_at(index),
                "response": reply.piece(index),
                "done": False,
            }
            return _dumps(chunk) + b"\n"

        await self._stream(NDJSON_TYPE, reply.count, line, lambda: [_dumps(final) + b"\n"])

    def _load(self, requested: str, name: str, keep_alive: object) -> dict[str, Any]:
        """Ollama's answer to a prompt-less generate: load, or unload with keep_alive 0."""
        reason = "load"
        if keep_alive in (0, "0", "0s", "0m"):
            reason = "unload"
            self.stub._unload(name)
        return {
            "model": requested,
            "created_at": _timestamp(STUB_EPOCH),
            "response": "",
            "done": True,
            "done_reason": reason,
        }


class _EmbedHandler(_RunHandler):
    """POST /api/embed: ``input`` (a string or a list of strings) to unit vectors."""

    started_counter = "embeds_started"

    def not_found(self, requested: str) -> str:
        return _pull_hint(requested)  # embed fails in Ollama's scheduler, not its lookup

    async def run(self) -> None:
        parsed = self._parse()
        if parsed is None:
            return
        body, requested = parsed
        texts = _embed_inputs(body.get("input"))
        if texts is None:
            self.fail(400, "invalid input type")
            return
        if await self._admit(requested) is None:
            return
        answer: dict[str, Any] = {"model": requested, "embeddings": []}
        if texts:  # an empty input only loads the model
            answer["embeddings"] = [embedding_for(t, body.get("dimensions")) for t in texts]
            tokens = _count_tokens(texts)
            answer["total_duration"] = _LOAD_NS + tokens * _PROMPT_TOKEN_NS
            answer["load_duration"] = _LOAD_NS
            answer["prompt_eval_count"] = tokens
        self.set_header("Content-Type", JSON_TYPE)
        await self._send_last(_dumps(answer))


class _EmbeddingsHandler(_EmbedHandler):
    """POST /api/embeddings (legacy): one ``prompt`` to ``{"embedding": [...]}``."""

    async def run(self) -> None:
        parsed = self._parse()
        if parsed is None:
            return
        body, requested = parsed
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            self.fail(400, "prompt must be a string")
            return
        if await self._admit(requested) is None:
            return
        vector = embedding_for(prompt) if prompt else []  # no prompt only loads the model
        self.set_header("Content-Type", JSON_TYPE)
        await self._send_last(_dumps({"embedding": vector}))


def _embed_inputs(value: object) -> list[str] | None:
    """Ollama's /api/embed ``input``: absent, a string or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _pull_hint(requested: str) -> str:
    """Ollama's scheduler wording (Go's %q quoting) for a model it does not have."""
    return f"model {json.dumps(requested, ensure_ascii=False)} not found, try pulling it first"


class _ShowHandler(_StubHandler):
    """POST /api/show: the model's metadata document (no hold: nothing runs)."""

    methods = ("POST",)

    def post(self) -> None:
        body = _parse_object(self.request.body, self.send_json_error)
        if body is None:
            return
        requested = _first_name(body, ("model", "name"))
        if requested is None:
            self.send_json_error(400, "model is required")
            return
        name = self.stub.resolve(requested)
        if name is None:
            self.send_json_error(404, f"model '{requested}' not found")
            return
        self.send_json(show_document(name))


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
        if last_user is None:
            return cls.from_text(_FALLBACK_REPLY, options)
        return cls.from_text(f"You said: {last_user.get('content') or ''}", options)

    @classmethod
    def for_prompt(cls, prompt: str, options: object) -> _Reply:
        return cls.from_text(f"You said: {prompt}", options)

    @classmethod
    def from_text(cls, text: str, options: object) -> _Reply:
        words = text.split()
        count = len(words)
        limit = options.get("num_predict") if isinstance(options, dict) else None
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            count = limit  # Ollama's token cap; the words are cycled to fill it
        return cls(words, count)

    def piece(self, index: int) -> str:
        return self.words[index % len(self.words)] + " "

    def text(self) -> str:
        return "".join(map(self.piece, range(self.count)))


_STATS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def _count_tokens(texts: Iterable[str]) -> int:
    """The stub's "tokenizer": one token per word, at least one in all."""
    return max(1, sum(len(text.split()) for text in texts))


def _created_at(index: int) -> str:
    """``created_at`` of streamed line `index`: 20 ms per token after the epoch."""
    return _timestamp(STUB_EPOCH + index * _TOKEN_INTERVAL)


def _final_response(requested: str, prompt_tokens: int, count: int) -> dict[str, Any]:
    prompt_ns = prompt_tokens * _PROMPT_TOKEN_NS
    eval_ns = count * _EVAL_TOKEN_NS
    return {
        "model": requested,
        "created_at": _created_at(count),
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


def _context(prompt: str, reply: _Reply) -> list[int]:
    """A short, deterministic stand-in for generate's token ``context``."""
    words = [*prompt.split(), *(reply.piece(i) for i in range(min(reply.count, 16)))]
    return [int(_digest(word)[:8], 16) % 32_000 for word in words[:32]] or [1]


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
    ``chat_status``, ``tags_status``, ``tags_hold``, ``progress_error``,
    ``blobs``. Observations: ``requests`` (every request, any route) and the
    counters below; `wait_for` blocks until a predicate over them holds.

    "Runs" are the requests that run the model: POST /api/chat,
    /api/generate, /api/embed, /api/embeddings, /v1/chat/completions,
    /v1/completions and /v1/embeddings. For all of them the stub resolves
    the model (404 if absent), then waits for ``hold``, then answers
    ``chat_status`` if set, then marks the model loaded (``/api/ps``).
    ``chats_started`` counts every run that got past the Host and token
    checks, including ones then rejected (400/404/``chat_status``);
    ``chats_finished``/``_disconnected``/``_broken`` count how runs ended, and
    ``active_chats``/``max_active_chats`` how many were in progress at once.
    Which kind of run it was: ``generates_started`` (/api/generate),
    ``embeds_started`` (/api/embed and /api/embeddings), ``openai_started``
    (the /v1 POST routes); a POST /api/chat is counted in none of these.

    Timing of generating runs (chat, generate, /v1 chat and completions):
    chunk 0 is written at once; before every later line (including the
    final ``done`` line or SSE's closing events, index ``len(content
    chunks)``) the stub sleeps ``chunk_delay`` and then awaits
    ``pace(index)``; ``break_after`` = n cuts the stream where line n was
    due. Non-streaming runs go through the same pauses, then send one object.
    Embeddings answer as soon as ``hold`` allows.

    Model management: ``/api/pull``, ``/api/push`` and ``/api/create`` stream
    NDJSON progress lines under the same chunk_delay/pace/break_after rules
    (no ``hold``, no ``chat_status``); with ``progress_error`` set, an
    ``{"error": progress_error}`` line follows the first one (a 500 when not
    streaming) and nothing changes. They count in ``pulls_started``,
    ``pushes_started``, ``creates_started`` and, for how they ended, in
    ``progress_finished``/``_disconnected``/``_broken``. A pull or create
    adds its model to ``models`` (tagged ``:latest`` if untagged) just
    before its ``success``; ``/api/copy`` adds the destination; ``DELETE
    /api/delete`` removes the model. ``blobs`` maps ``sha256:<hex>`` to
    the bytes POSTed to /api/blobs.
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
        self.progress_error: str | None = None  # pull/push/create fail with this error
        self.blobs: dict[str, bytes] = {}  # "sha256:<hex>" -> content

        self.requests: list[RecordedRequest] = []
        self.chats_started = 0
        self.chats_finished = 0
        self.chats_disconnected = 0
        self.chats_broken = 0  # streams cut by break_after
        self.tags_polls = 0
        self.connections = 0  # TCP connections accepted
        self.active_chats = 0
        self.max_active_chats = 0
        self.generates_started = 0
        self.embeds_started = 0
        self.openai_started = 0
        self.pulls_started = 0
        self.pushes_started = 0
        self.creates_started = 0
        self.progress_finished = 0
        self.progress_disconnected = 0
        self.progress_broken = 0

        self._loaded: list[str] = []  # what /api/ps reports, in load order
        self._changed = asyncio.Event()  # replaced after every state change
        self._server: _TrackingHTTPServer | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None

    # --- lifecycle ---

    def make_app(self) -> tornado.web.Application:
        # Imported here: those modules build on this one's handlers.
        from foreman import stub_models, stub_openai

        kwargs = {"stub": self}
        return tornado.web.Application(
            [
                (r"/", _RootHandler, kwargs),
                (r"/api/version", _VersionHandler, kwargs),
                (r"/api/tags", _TagsHandler, kwargs),
                (r"/api/ps", _PsHandler, kwargs),
                (r"/api/chat", _ChatHandler, kwargs),
                (r"/api/generate", _GenerateHandler, kwargs),
                (r"/api/embed", _EmbedHandler, kwargs),
                (r"/api/embeddings", _EmbeddingsHandler, kwargs),
                (r"/api/show", _ShowHandler, kwargs),
                *stub_models.routes(kwargs),
                *stub_openai.routes(kwargs),
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
            "generates_started": self.generates_started,
            "embeds_started": self.embeds_started,
            "openai_started": self.openai_started,
            "pulls_started": self.pulls_started,
            "pushes_started": self.pushes_started,
            "creates_started": self.creates_started,
            "progress_finished": self.progress_finished,
            "progress_disconnected": self.progress_disconnected,
            "progress_broken": self.progress_broken,
            "models": len(self.models),
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

    def _unload(self, name: str) -> None:
        if name in self._loaded:
            self._loaded.remove(name)

    def _add_model(self, name: str) -> None:
        """Put `name` in the inventory unless it already resolves there."""
        if self.resolve(name) is None:
            self.models.append(name)
        self._notify()

    def _remove_model(self, name: str) -> None:
        if name in self.models:
            self.models.remove(name)
        self._unload(name)
        self._notify()


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
