"""The stand-in Ollama as a server: `StubOllama`, its routes, and ``foreman stub``.

Tests run `StubOllama` in-process (same IOLoop) and shape its behaviour per
test through plain attributes; people run it with ``foreman stub`` to try
foreman without a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import tornado.iostream
import tornado.netutil
import tornado.web
from tornado.httpserver import HTTPServer

from foreman.config import parse_listen
from foreman.stub.base import NotFoundHandler, Route, is_local_host
from foreman.stub.generation import ROUTES as GENERATION_ROUTES
from foreman.stub.info import ROUTES as INFO_ROUTES
from foreman.stub.management import ROUTES as MANAGEMENT_ROUTES
from foreman.stub.state import DEFAULT_MODELS, StubState
from foreman.stub.v1 import ROUTES as V1_ROUTES

log = logging.getLogger("foreman.stub")

#: Every route the stand-in serves, in the order Tornado tries them.
ROUTES: tuple[Route, ...] = (
    *INFO_ROUTES,
    *GENERATION_ROUTES,
    *MANAGEMENT_ROUTES,
    *V1_ROUTES,
)


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


class StubOllama(StubState):
    """A scriptable, deterministic Ollama for tests and demos.

    It speaks Ollama's native API and its OpenAI-compatible ``/v1`` routes
    (`ROUTES`), with Ollama's JSON shapes, status codes and quirks (404 text
    for unknown routes, 403 for foreign ``Host`` headers on loopback, its CORS
    answers (`foreman.stub.cors`: preflights, 403 for an origin not allowed),
    ``stream`` defaulting to true on native routes and to false on ``/v1``).
    Replies, digests, vectors and timestamps are fixed functions of the
    request, so two identical requests get byte-identical answers (unless a
    load time makes ``load_duration`` report a wait).

    Knobs (plain attributes, change them at any time): ``models``, ``token``,
    ``chunk_delay``, ``check_host``, ``hold``, ``pace``, ``break_after``,
    ``chat_status``, ``tags_status``, ``tags_hold``, ``progress_error``,
    ``blobs``, ``max_loaded``, ``load_time``, ``load_hold``, ``origins`` (the origins allowed: Ollama's defaults, plus
    what ``OLLAMA_ORIGINS`` would add; ``("*",)`` for all). Observations:
    ``requests`` (every request, any route) and the counters below;
    `wait_for` blocks until a predicate over them holds.

    "Runs" are the requests that run the model: POST /api/chat,
    /api/generate, /api/embed, /api/embeddings, /v1/chat/completions,
    /v1/completions and /v1/embeddings. For all of them the stub resolves
    the model (404 if absent), then waits for ``hold``, then answers
    ``chat_status`` if set, then takes the model in memory (below) and holds
    it until the run ends.
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

    Model memory (`foreman.stub.memory`): ``loaded`` lists the resident
    models in load order, as ``/api/ps`` does. With ``max_loaded`` = N (None:
    no limit, the default) at most N are resident; a run for another model
    waits for its load, and loads go one at a time, in arrival order: a load
    first evicts the least recently used idle model (one no run holds) and,
    if every resident model is busy, waits until one is idle. A load takes
    ``load_time`` seconds (default 0), then waits for ``load_hold`` if set.
    While a load is queued or under way, runs for resident models queue
    behind it. The time a run waited for its
    model is its ``load_duration`` (chat, generate, embed), at least the fixed
    5 ms reported when it did not wait. A client leaving while queued loads
    nothing; one leaving during its load lets the load finish, as Ollama
    does. A prompt-less generate with ``keep_alive`` 0 unloads without a load
    (a busy model goes when its last run ends), as does deleting the model.
    Readings: ``loads`` (per model), ``loads_total``, ``load_log`` (in
    order), ``evictions``, ``eviction_log``, ``busy`` (runs per model),
    ``loading`` (the model loading now), ``runs_awaiting_model`` and
    `eviction_candidates` (idle resident models, next evicted first).
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
        super().__init__(
            models,
            token=token,
            chunk_delay=chunk_delay,
            max_loaded=max_loaded,
            load_time=load_time,
        )
        self._server: _TrackingHTTPServer | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None

    def make_app(self) -> tornado.web.Application:
        kwargs = {"stub": self}
        return tornado.web.Application(
            [route.rule(kwargs) for route in ROUTES],
            default_handler_class=NotFoundHandler,
            default_handler_args=kwargs,
        )

    def listen(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Start serving on the current IOLoop; returns the bound port."""
        if self._server is not None:
            raise RuntimeError("stub is already listening; stop() it first")
        # bind_sockets sets SO_REUSEADDR, so a restart on the same port works
        # even while the previous connections sit in TIME_WAIT.
        sockets = tornado.netutil.bind_sockets(port, address=host or None)
        server = _TrackingHTTPServer(self.make_app(), on_accept=lambda: self.bump("connections"))
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
        self.cancel_loads()
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


# --- running it from the command line ------------------------------------------

DESCRIPTION = """\
Run the stand-in Ollama: a deterministic imitation of Ollama's HTTP API with
no model behind it, for trying foreman or a client without a real Ollama.
Chat and generate answer "You said: <your last message>" word by word,
embeddings are derived from the input text, /api/pull, /api/create and
/api/copy add a model to its list and /api/delete removes one. Identical
requests get byte-identical answers (but for load_duration, with --load-time)."""


def routes_help() -> str:
    """The routes the stand-in serves, one per line, for ``foreman stub --help``."""
    lines = ["routes served (Ollama's native API, then its OpenAI-compatible /v1):"]
    lines += [f"  {', '.join(route.methods):<11} {route.path}" for route in ROUTES]
    lines += [
        "",
        "Any other route or method answers Ollama's plain 404. With --token, every",
        "route but / needs 'Authorization: Bearer TOKEN'. Listening on loopback, it",
        "refuses a Host header that is not local with 403, as Ollama does. It answers",
        "CORS preflights as Ollama does with OLLAMA_ORIGINS unset (localhost origins).",
    ]
    return "\n".join(lines)


def _parse_listen(value: str) -> tuple[str, int]:
    try:
        return parse_listen(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected host:port, e.g. 127.0.0.1:11434 or :11434, not {value!r}"
        ) from None


def _parse_models(value: str) -> list[str]:
    return [m.strip() for m in value.split(",") if m.strip()]


def _parse_max_loaded(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number, 1 or more, not {value!r}")
    return count


def _parse_load_time(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 86_400:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(
            f"expected seconds from 0 to 86400 (e.g. 2 or 0.5), not {value!r}"
        )
    return seconds


def add_stub_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for ``foreman stub``."""
    parser.add_argument(
        "--listen",
        type=_parse_listen,
        default=("127.0.0.1", 11434),
        metavar="HOST:PORT",
        help="where to listen; ':PORT' means every interface, and then any Host "
        "header is accepted (default: 127.0.0.1:11434, Ollama's own address)",
    )
    parser.add_argument(
        "--models",
        type=_parse_models,
        default=list(DEFAULT_MODELS),
        metavar="A,B,...",
        help="the models it has, comma-separated, as /api/tags lists them; "
        f"other names get 404 (default: {', '.join(DEFAULT_MODELS)})",
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
        help="pause before each streamed chunk after the first: a word of a reply, "
        "a line of pull progress; 0 streams at once (default: 0.05)",
    )
    parser.add_argument(
        "--max-loaded",
        type=_parse_max_loaded,
        default=None,
        metavar="N",
        help="hold at most N models in memory, as a Mac does: a request for another "
        "one waits for a load (one at a time), which evicts the least recently used "
        "idle model; /api/ps lists what is held (default: no limit)",
    )
    parser.add_argument(
        "--load-time",
        type=_parse_load_time,
        default=0.0,
        metavar="SECONDS",
        help="how long loading a model takes; a request's wait for its model is "
        "its load_duration (default: 0)",
    )


def stub_from_args(args: argparse.Namespace) -> Coroutine[Any, Any, None]:
    """The `run_stub` coroutine for parsed `add_stub_arguments` flags."""
    host, port = args.listen
    return run_stub(
        host,
        port,
        args.models,
        args.token,
        args.chunk_delay,
        max_loaded=args.max_loaded,
        load_time=args.load_time,
    )


async def run_stub(
    listen_host: str,
    listen_port: int,
    models: list[str],
    token: str | None,
    chunk_delay: float,
    *,
    max_loaded: int | None = None,
    load_time: float = 0.0,
) -> None:
    """Serve a stub Ollama until cancelled."""
    stub = StubOllama(
        models, token=token, chunk_delay=chunk_delay, max_loaded=max_loaded, load_time=load_time
    )
    # Ollama only polices Host when it listens on loopback.
    stub.check_host = listen_host != "" and is_local_host(listen_host)
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
