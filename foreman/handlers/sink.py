"""The `Sink` that writes a target's answer to one client as it arrives.

Each chunk goes out the moment it comes, and the flush is awaited, so a slow
reader slows the target instead of filling foreman's memory; a reader that
takes nothing for FOREMAN_CLIENT_TIMEOUT is dropped. A single JSON document
is held until complete, so a target that breaks off mid-document can still
be answered with a clean 502; what is held counts against
FOREMAN_MAX_BODY_MEMORY, and goes out a piece at a time under the same
deadline.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from tornado.iostream import StreamClosedError

from foreman.handlers.base import BaseHandler, ForemanError

log = logging.getLogger("foreman.relay")

# A single JSON document (a non-streaming answer or an error) is held until
# it is complete: nothing is gained by sending half of it, and a target that
# breaks off mid-document can then still be answered with a clean 502.
_WHOLE_DOCUMENT_TYPES = frozenset({"application/json"})
# Larger whole documents than this are relayed as they come instead.
_MAX_HELD_DOCUMENT = 64 << 20
# A held document larger than this is written a piece of this size at a time.
_PIECE = 1 << 20
# Enough of the end of an answer to hold its final chunk's statistics.
_TAIL = 2048
# Bounded: a target's 400-digit count would overflow what the metrics add it to.
_EVAL_COUNT = re.compile(rb'"eval_count":\s*(\d{1,15})\b')
_EVAL_DURATION = re.compile(rb'"eval_duration":\s*(\d{1,18})\b')


class ClientSink:
    """The `Sink` that writes a target's answer to one client."""

    def __init__(
        self, handler: BaseHandler, on_start: Callable[[], None], on_lost: Callable[[], None]
    ) -> None:
        self._handler = handler
        self._record = handler.record
        # Called when the client cannot take the answer any more.
        self._lose_client = on_lost
        connection = handler.request.connection
        assert connection is not None
        self._connection = connection
        self._on_start = on_start
        self._memory = handler.memory
        self._held: list[bytes] | None = None
        self._held_size = 0
        #: whether any byte has gone out to the client
        self.sent = False
        #: whether what went out ends with a complete line
        self.at_line_start = True
        #: the answer's media type, e.g. "application/x-ndjson"
        self.media_type = ""
        #: the target answered with a web page, not Ollama's API
        self.not_ollama = False
        # What ends one chunk of a stream: a line, or an event of server-sent events.
        self._chunk_end = b"\n"
        # The last two pieces that went out: a final chunk's stats are read from them.
        self._before_last = self._last = b""

    def start(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        self._on_start()
        handler = self._handler
        handler.set_status(status, reason or None)
        for name in ("Content-Type", "Date", "Server"):
            handler.clear_header(name)
        content_type = ""
        for name, value in headers:
            handler.add_header(name, value)
            if name.lower() == "content-type":
                content_type = value
        media_type = self.media_type = content_type.partition(";")[0].strip().lower()
        if media_type == "text/event-stream":
            self._chunk_end = b"\n\n"
        if media_type in _WHOLE_DOCUMENT_TYPES:
            self._held = []
        elif media_type == "text/html" and 200 <= status < 300:
            # Ollama never answers with a web page: a login portal, a proxy's
            # error page or the wrong port. Hold it and say so instead.
            self.not_ollama = True
            self._held = []

    def write(self, chunk: bytes) -> Awaitable[object] | None:
        if self._held is not None:
            if self.not_ollama:
                return None  # answered with a 502, never passed on: nothing to keep
            self._held.append(chunk)
            self._held_size += len(chunk)
            # A held document counts against FOREMAN_MAX_BODY_MEMORY until it
            # is written; past that, or past the size worth holding, it is
            # passed on as it comes, at the client's pace.
            if self._held_size <= _MAX_HELD_DOCUMENT and self._memory.grow_by(len(chunk)):
                return None
            chunk, self._held = b"".join(self._held), None
        self.at_line_start = chunk.endswith(b"\n")
        record = self._record
        record.streamed_bytes += len(chunk)
        # Ollama streams about one token per chunk: what the status page shows as it runs.
        record.streamed_chunks += chunk.count(self._chunk_end)
        self._before_last, self._last = self._last, chunk
        if self.sent:
            # Status and headers are out and the handler's buffer is empty:
            # this is what flush() would do, without its bookkeeping per chunk.
            written = self._connection.write(chunk)
        else:
            self.sent = True
            record.first_byte = time.monotonic()
            self._handler.write(chunk)
            written = self._handler.flush()
        if not written.done():
            return self._within_deadline(written)
        if written.exception() is not None:
            self._lose_client()
        # Nothing raised from here: Tornado's client logs whatever a
        # streaming callback raises as an uncaught exception, traceback and all.
        return None

    async def _within_deadline(self, written: asyncio.Future[None]) -> bool:
        """Whether the client took `written` in time; if not, it is dropped."""
        # The client is not taking what it asked for. Waiting slows the target
        # (backpressure), but not forever: past the deadline the client is
        # dropped, which closes the target request too.
        # (What is needed is taken now: the relay may end, and detach this
        # sink, while the write is pending.)
        timeout, client = self._handler.config.client_timeout, self._handler.client_id
        connection, lose_client = self._connection, self._lose_client
        try:
            await asyncio.wait_for(asyncio.shield(written), timeout)
        except TimeoutError:
            log.warning("client %s took nothing for %gs; dropping it", client, timeout)
            connection.close()  # type: ignore[attr-defined]
            lose_client()
            return False
        except StreamClosedError:
            lose_client()
            return False
        return True

    async def finish(self) -> None:
        """The target's answer is complete: pass on what is held, then end the response."""
        handler = self._handler
        if self.not_ollama:
            handler.fail(
                ForemanError(
                    502,
                    f"the target {handler.services.target.display_url} answered with a web page, not "
                    "Ollama's API; is FOREMAN_OLLAMA_URL pointing at Ollama?",
                )
            )
            return
        if self._held and not await self._pass_on_held():
            return
        record = self._record
        record.relayed_bytes = record.streamed_bytes
        # Only a final chunk carries these; read them without parsing JSON.
        tail = (self._before_last + self._last)[-_TAIL:]
        count, duration = _EVAL_COUNT.search(tail), _EVAL_DURATION.search(tail)
        if count:
            record.eval_count = int(count.group(1))
        if duration:
            record.eval_duration = int(duration.group(1))
        handler.finish()

    async def _pass_on_held(self) -> bool:
        """Write the held document; False if the client was dropped meanwhile."""
        handler = self._handler
        parts, self._held = self._held or [], None
        self._record.streamed_bytes += self._held_size
        self._before_last, self._last = (parts[-2] if len(parts) > 1 else b""), parts[-1]
        if self._held_size <= _PIECE:
            handler.write(b"".join(parts))  # finish() writes it, within its own deadline
            return True
        # A large document goes out a piece at a time, each within
        # FOREMAN_CLIENT_TIMEOUT, as a stream does: a slow reader that keeps
        # reading is served, one that stops is dropped. Its length is known,
        # so it is framed as if written at once.
        handler.set_header("Content-Length", str(self._held_size))
        parts.reverse()
        while parts:
            piece = 0
            while parts and piece < _PIECE:
                part = parts.pop()
                piece += len(part)
                handler.write(part)
            written = handler.flush()
            if not written.done():
                if not await self._within_deadline(written):
                    return False
            elif written.exception() is not None:
                self._lose_client()
                return False
        return True

    def detach(self) -> None:
        """The relay is over: let go of the handler, its client's connection and any held bytes.

        Tornado's client can keep this sink (its streaming callback) in a
        reference cycle after a failed request; nothing of the client's may
        stay alive with it.
        """
        self._held = None
        self._before_last = self._last = b""
        self._handler = self._record = self._connection = None  # type: ignore[assignment]
        self._lose_client = self._on_start = self._memory = None  # type: ignore[assignment]
