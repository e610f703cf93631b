"""Relaying a target's answer to a client as it arrives.

`RelayHandler` sends a client's request to the target and hands each chunk
of the answer to the client the moment it comes, awaiting the flush so that
a slow reader slows the target instead of filling foreman's memory. When
the client goes away, the target connection is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from tornado.iostream import StreamClosedError

from foreman.handlers.base import BaseHandler, ForemanError, target_failure
from foreman.ollama import (
    BodyProducer,
    Cancelled,
    TargetError,
    TargetUnreachable,
    Upstream,
)
from foreman.queue import ClientLeft, QueueError, Ticket

log = logging.getLogger("foreman.relay")

# A single JSON document (a non-streaming answer or an error) is held until
# it is complete: nothing is gained by sending half of it, and a target that
# breaks off mid-document can then still be answered with a clean 502.
_WHOLE_DOCUMENT_TYPES = frozenset({"application/json"})
# Larger whole documents than this are relayed as they come instead.
_MAX_HELD_DOCUMENT = 64 << 20
# Enough of the end of an answer to hold its final chunk's statistics.
_TAIL = 2048
_EVAL_COUNT = re.compile(rb'"eval_count":\s*(\d+)')
_EVAL_DURATION = re.compile(rb'"eval_duration":\s*(\d+)')


class ClientSink:
    """The `Sink` that writes a target's answer to one client."""

    def __init__(self, handler: RelayHandler, on_start: Callable[[], None]) -> None:
        self._handler = handler
        connection = handler.request.connection
        assert connection is not None
        self._connection = connection
        self._on_start = on_start
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
        #: bytes of the answer passed to the client so far
        self.sent_bytes = 0
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
        if media_type in _WHOLE_DOCUMENT_TYPES:
            self._held = []
        elif media_type == "text/html" and 200 <= status < 300:
            # Ollama never answers with a web page: a login portal, a proxy's
            # error page or the wrong port. Hold it and say so instead.
            self.not_ollama = True
            self._held = []

    def write(self, chunk: bytes) -> Awaitable[None] | None:
        if self._held is not None:
            self._held.append(chunk)
            self._held_size += len(chunk)
            if self._held_size <= _MAX_HELD_DOCUMENT:
                return None
            chunk, self._held = b"".join(self._held), None
        self.at_line_start = chunk.endswith(b"\n")
        self.sent_bytes += len(chunk)
        self._before_last, self._last = self._last, chunk
        if self.sent:
            # Status and headers are out and the handler's buffer is empty:
            # this is what flush() would do, without its bookkeeping per chunk.
            written = self._connection.write(chunk)
        else:
            self.sent = True
            self._handler.first_byte_at = time.time()
            self._handler.write(chunk)
            written = self._handler.flush()
        if not written.done():
            return self._within_deadline(written)
        if written.exception() is not None:
            self._handler.lose_client()
        # Nothing raised from here: Tornado's client logs whatever a
        # streaming callback raises as an uncaught exception, traceback and all.
        return None

    async def _within_deadline(self, written: asyncio.Future[None]) -> None:
        # The client is not taking what it asked for. Waiting slows the target
        # (backpressure), but not forever: past the deadline the client is
        # dropped, which closes the target request too.
        try:
            await asyncio.wait_for(asyncio.shield(written), self._handler.config.client_timeout)
        except TimeoutError:
            log.warning(
                "client %s took nothing for %gs; dropping it",
                self._handler.client_id, self._handler.config.client_timeout,
            )
            self._connection.close()  # type: ignore[attr-defined]
            self._handler.lose_client()
        except StreamClosedError:
            self._handler.lose_client()

    def finish(self) -> None:
        handler = self._handler
        if self.not_ollama:
            handler.fail(
                ForemanError(
                    502,
                    f"the target {handler.target.display_url} answered with a web page, not "
                    "Ollama's API; is FOREMAN_OLLAMA_URL pointing at Ollama?",
                )
            )
            return
        if self._held:
            document = b"".join(self._held)
            self.sent_bytes += len(document)
            self._before_last, self._last = b"", document
            handler.write(document)
        handler.relayed_bytes = self.sent_bytes
        # Only a final chunk carries these; read them without parsing JSON.
        tail = (self._before_last + self._last)[-_TAIL:]
        count, duration = _EVAL_COUNT.search(tail), _EVAL_DURATION.search(tail)
        if count:
            handler.eval_count = int(count.group(1))
        if duration:
            handler.eval_duration = int(duration.group(1))
        handler.finish()


class RelayHandler(BaseHandler):
    """A handler whose answer comes from the target."""

    _upstream: Upstream | None = None
    _ticket: Ticket | None = None
    _client_gone = False
    _cut_by_shutdown = False

    def cut_for_shutdown(self) -> None:
        """The drain's grace period is over: end this answer with a clear error."""
        self._cut_by_shutdown = True
        if self._upstream is not None:
            self._upstream.close()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._ticket is not None:
            self.queue.leave(self._ticket)
        self.lose_client()

    def lose_client(self) -> None:
        """The client cannot take the answer any more: stop asking the target for it."""
        self._client_gone = True
        if self._upstream is not None:
            self._upstream.close()

    def _connection_closed(self) -> bool:
        # A failed flush can be seen before on_connection_close has run.
        stream = getattr(self.request.connection, "stream", None)
        return stream is not None and stream.closed()

    async def relay_queued(self, method: str, path: str, body: bytes | None) -> None:
        """Wait for a turn in the queue, then relay; always finishes."""
        try:
            ticket = self._ticket = self.queue.admit(self.client_id)
        except QueueError as e:
            self.fail(ForemanError(503, str(e), {"Retry-After": str(e.retry_after)}))
            return
        try:
            while True:
                try:
                    await self.queue.turn(ticket)
                except ClientLeft:
                    return
                except QueueError as e:
                    self.queue_wait = time.monotonic() - ticket.admitted
                    self.fail(ForemanError(503, str(e), {"Retry-After": str(e.retry_after)}))
                    return
                self.queue_wait = ticket.waited
                self.note_queue_wait()
                started = time.monotonic()
                unreachable = await self.relay(method, path, body, retry_unreachable=True)
                if unreachable is None:
                    self.queue.done(ticket, time.monotonic() - started)
                    return
                # Nothing reached a model: keep the place and wait the outage out.
                log.info("target unreachable; request from %s waits for it: %s", self.client_id, unreachable)
                self.queue.unreachable(ticket, str(unreachable))
        finally:
            self.queue.done(ticket)
            self._ticket = None

    async def relay(
        self,
        method: str,
        path: str,
        body: bytes | None,
        retry_unreachable: bool = False,
        body_producer: BodyProducer | None = None,
    ) -> TargetUnreachable | None:
        """Send this request to the target and relay the answer.

        Finishes the response, except when `retry_unreachable` is set and the
        target could not be reached: then nothing was sent to the client and
        the error is returned so that the caller can try again.
        """
        if self._client_gone:
            return None
        upstream = self._upstream = Upstream()
        # The target answering at all proves it is back: resume the queue then,
        # not when this (possibly minutes-long) answer ends.
        sink = ClientSink(self, on_start=self.queue.reachable)
        try:
            await self.target.relay(
                method, path, body, self.request.headers, sink, upstream, body_producer
            )
        except Cancelled as e:
            if self._cut_by_shutdown:
                self._answer_failure(
                    TargetError("foreman is shutting down; the answer was cut off, retry shortly"),
                    sink, method, path, status=503,
                )
            else:
                log.debug("client left %s %s; target request closed: %s", method, path, e)
            return None
        except TargetUnreachable as e:
            if retry_unreachable and not self._client_gone:
                return e
            self._answer_failure(e, sink, method, path)
            return None
        except TargetError as e:
            if upstream.head_received:
                self.queue.reachable()
            self._answer_failure(e, sink, method, path)
            return None
        finally:
            self._upstream = None
        if not self._client_gone:
            sink.finish()
        return None

    def _answer_failure(
        self, error: TargetError, sink: ClientSink, method: str, path: str, status: int = 502
    ) -> None:
        self.relayed_bytes = sink.sent_bytes
        if self._client_gone or self._connection_closed():
            return
        if sink.sent:
            # Status and headers are on the wire; all that is left is to say
            # what happened in the stream itself, as Ollama does.
            log.warning("%s %s broke off mid-stream: %s", method, path, error)
            document = self.error_document(status, str(error))
            if sink.media_type == "text/event-stream":
                line = f"data: {document}\n\n"
            else:
                line = document + "\n"
            self.finish(line if sink.at_line_start else "\n" + line)
        elif status == 503:
            self.fail(ForemanError(503, str(error), {"Retry-After": "1"}))
        else:
            self.fail(target_failure(error))
