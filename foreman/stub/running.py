"""The machinery of routes that keep a connection busy while they "work".

`RunHandler` is the base of every POST that runs the model (chat, generate,
embed, the /v1 generation routes) or reports progress (pull, push, create):
it parses the body, resolves the model, waits out the stub's ``hold``, takes
the model in the stub's memory (waiting for its load if need be), writes
NDJSON or SSE line by line under chunk_delay/pace/break_after, and counts how
each request ended. `Reply` is the scripted answer those routes give.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

import tornado.iostream

from foreman.stub.base import STUB_EPOCH, StubHandler, first_name, parse_object
from foreman.stub.catalog import timestamp
from foreman.stub.state import StubState

_TOKEN_INTERVAL = timedelta(milliseconds=20)
_LOAD_NS = 5_000_000  # load_duration when a run did not wait for its model
_FALLBACK_REPLY = "This is the stub Ollama talking."


class RunHandler(StubHandler):
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

    def initialize(self, stub: StubState) -> None:
        super().initialize(stub)
        self._gone = asyncio.Event()  # the client closed the connection
        self._active = False  # entered and not yet left
        self._ending = False  # the last write is under way: a close is no loss
        self._outcome: str | None = None  # "finished", "disconnected", "broken"
        self._model_held: str | None = None  # the model this run holds in the stub's memory
        self.load_ns = _LOAD_NS  # load_duration to report: what admit() waited, or the fixed 5 ms

    async def post(self, *args: str) -> None:
        self._active = True
        if self.runs_model:
            self.stub.chat_entered()
        if self.started_counter is not None:
            self.stub.bump(self.started_counter)
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
            self.stub.bump(f"{'chats' if self.runs_model else 'progress'}_{outcome}")
        self._leave()

    def _leave(self) -> None:
        held, self._model_held = self._model_held, None
        if held is not None:
            self.stub.release_model(held)
        if self._active:
            self._active = False
            if self.runs_model:
                self.stub.chat_left()

    def fail(self, status: int, message: str) -> None:
        """Answer an error in this route's shape (Ollama's; /v1 routes override)."""
        self.send_json_error(status, message)

    def not_found(self, requested: str) -> str:
        """The 404 message for a model the stub does not have."""
        return f"model '{requested}' not found"

    # --- request checks shared by the routes ---

    def parse_body(self, *name_fields: str) -> tuple[dict[str, Any], str] | None:
        """The body and its model name, or None after answering 400 as Ollama does.

        The name is the first non-empty string among `name_fields` (default
        ``model``; show/pull/push/delete also take the legacy ``name``).
        """
        body = parse_object(self.request.body, self.fail)
        if body is None:
            return None
        model = first_name(body, name_fields or ("model",))
        if model is None:
            self.fail(400, "model is required")
            return None
        if body.get("stream") is not None and not isinstance(body["stream"], bool):
            self.fail(400, "stream must be a boolean")
            return None
        return body, model

    def parse_prompt(self) -> tuple[dict[str, Any], str, str | None] | None:
        """`parse_body` and the body's optional ``prompt``; None after answering 400."""
        parsed = self.parse_body()
        if parsed is None:
            return None
        body, requested = parsed
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            self.fail(400, "prompt must be a string")
            return None
        return body, requested, prompt

    async def admit(self, requested: str, *, load: bool = True) -> str | None:
        """Resolve, wait out `hold`, apply `chat_status`, take the model; None once answered.

        Taking the model (unless `load` is false) makes it resident and holds
        it until the run ends (see `ModelMemory`); the wait for it, at least
        the fixed 5 ms, becomes `load_ns`.
        """
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
        if not load:
            return name
        if stub.take_model_now(name):  # resident, or loaded in no time: no yield
            self._model_held = name
        elif not await self._unless_gone(self._wait_for_model(name)):
            return None
        return name

    async def _wait_for_model(self, name: str) -> None:
        waited = await self.stub.acquire_model(name)
        self._model_held = name  # at once: _leave() must release it whatever happens next
        if waited is not None:
            self.load_ns = max(_LOAD_NS, round(waited * 1e9))

    # --- writing ---

    async def send_stream(
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
        await self.send_last(last)

    async def send_whole(self, content_type: str, count: int, body: Callable[[], bytes]) -> None:
        """One answer, after the pauses a stream of `count` lines and a close takes."""
        for index in range(1, count + 1):
            if not await self._before_chunk(index):
                return
        data = body()
        self.set_header("Content-Type", content_type)
        await self.send_last(data)

    async def send_last(self, data: bytes) -> None:
        """Write `data` and finish, counting the request as finished unless the client went."""
        self._ending = True
        done = await self._send(data, final=True)
        self._conclude("finished" if done else "disconnected")

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
class Reply:
    """The scripted reply: `count` content chunks, one word and a space each.

    Chunks are made on demand, since num_predict may ask for a great many.
    """

    words: list[str]
    count: int

    @classmethod
    def for_chat(cls, messages: list[dict[str, Any]], options: object) -> Reply:
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        if last_user is None:
            return cls.from_text(_FALLBACK_REPLY, options)
        return cls.from_text(f"You said: {last_user.get('content') or ''}", options)

    @classmethod
    def for_prompt(cls, prompt: str, options: object) -> Reply:
        return cls.from_text(f"You said: {prompt}", options)

    @classmethod
    def from_text(cls, text: str, options: object) -> Reply:
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


def count_tokens(texts: Iterable[str]) -> int:
    """The stub's "tokenizer": one token per word, at least one in all."""
    return max(1, sum(len(text.split()) for text in texts))


def created_at(index: int) -> str:
    """``created_at`` of streamed line `index`: 20 ms per token after the epoch."""
    return timestamp(STUB_EPOCH + index * _TOKEN_INTERVAL)


def embed_inputs(value: object) -> list[str] | None:
    """Ollama's embed ``input``: absent, a string or a list of strings; None if neither."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def pull_hint(requested: str) -> str:
    """Ollama's scheduler wording (Go's %q quoting) for a model it does not have."""
    return f"model {json.dumps(requested, ensure_ascii=False)} not found, try pulling it first"
