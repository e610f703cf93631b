"""What the stand-in Ollama holds: its knobs, its inventory and its counters.

`StubState` is the part of `StubOllama` the route handlers read and update;
the server module adds the listening socket around it. See `StubOllama` for
what each knob and counter means.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import tornado.httputil

from foreman.stub.cors import DEFAULT_ORIGINS
from foreman.stub.memory import ModelMemory
from foreman.stub.naming import same_model

DEFAULT_MODELS: tuple[str, ...] = (
    "llama3.2:latest",
    "qwen2.5:0.5b",
    "hf.co/example/tiny-gguf:Q4_K_M",
)


@dataclass
class RecordedRequest:
    """One request as the stub received it."""

    method: str
    path: str  # path + query as received
    headers: tornado.httputil.HTTPHeaders
    body: bytes


class StubState(ModelMemory):
    """Knobs (plain attributes, change them at any time), inventory and counters.

    Model memory (what is resident, loads, evictions) comes from `ModelMemory`.
    """

    def __init__(
        self,
        models: Iterable[str] = DEFAULT_MODELS,
        *,
        token: str | None = None,
        chunk_delay: float = 0.0,
        max_loaded: int | None = None,
        load_time: float = 0.0,
    ) -> None:
        super().__init__(max_loaded=max_loaded, load_time=load_time)
        self.models: list[str] = list(models)
        self.token = token
        self.chunk_delay = chunk_delay
        self.check_host = True
        # OLLAMA_ORIGINS plus Ollama's defaults; "*" lets every origin in.
        self.origins: tuple[str, ...] = DEFAULT_ORIGINS
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

        self._changed = asyncio.Event()  # replaced after every state change

    # --- for tests: waiting on and reading the counters ---

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
            "loaded": len(self.loaded),
            "loads_total": self.loads_total,
            "evictions": self.evictions,
            "runs_awaiting_model": self.runs_awaiting_model,
        }

    def resolve(self, requested: str) -> str | None:
        """The inventory name `requested` refers to, or None (by Ollama's rules, see `naming`)."""
        return next((m for m in self.models if same_model(requested, m)), None)

    # --- bookkeeping, called by the route handlers ---

    def notify(self) -> None:
        """Wake every `wait_for`: something changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    def bump(self, counter: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        self.notify()

    def record(self, request: tornado.httputil.HTTPServerRequest) -> None:
        self.requests.append(
            RecordedRequest(
                method=request.method or "",
                path=request.uri or "",
                headers=tornado.httputil.HTTPHeaders(request.headers),
                body=request.body,
            )
        )
        self.notify()

    def chat_entered(self) -> None:
        self.chats_started += 1
        self.active_chats += 1
        self.max_active_chats = max(self.max_active_chats, self.active_chats)
        self.notify()

    def chat_left(self) -> None:
        self.active_chats -= 1
        self.notify()

    def add_model(self, name: str) -> None:
        """Put `name` in the inventory unless it is there (verbatim or by Ollama's rules)."""
        if name not in self.models and self.resolve(name) is None:
            self.models.append(name)
        self.notify()

    def remove_model(self, name: str) -> None:
        if name in self.models:
            self.models.remove(name)
        self.unload(name)
        self.notify()
