"""Handlers whose answer comes from the target, relayed as it arrives.

`RelayHandler` sends a client's request to the target (after a turn in the
queue for generations) and hands the answer to a `ClientSink`. When the
client goes away, the target connection is closed at once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
import time

from foreman.handlers.base import BaseHandler, ForemanError, target_failure
from foreman.handlers.sink import ClientSink
from foreman.queue import ClientLeft, ClientQueueFull, QueueError, QueueTimeout, Ticket
from foreman.shown import shown
from foreman.targets import Machine
from foreman.target import (
    BodyProducer,
    Cancelled,
    TargetError,
    TargetUnreachable,
    Upstream,
)

log = logging.getLogger("foreman.relay")


class RelayHandler(BaseHandler):
    """A handler whose answer comes from the target."""

    _upstream: Upstream | None = None
    _ticket: Ticket | None = None
    #: the target this request goes to; None: the queue's pick, or any reachable one
    machine: Machine | None = None
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
            self.services.queue.leave(self._ticket)
        self.lose_client()

    def lose_client(self) -> None:
        """The client cannot take the answer any more: stop asking the target for it."""
        self._client_gone = True
        if not self.answered:
            self.client_left = True
        if self._upstream is not None:
            self._upstream.close()

    def _connection_closed(self) -> bool:
        if self.request is None:  # the request is over (BaseHandler._request_over)
            return True
        # A failed flush can be seen before on_connection_close has run.
        stream = getattr(self.request.connection, "stream", None)
        return stream is not None and stream.closed()

    async def relay_queued(
        self, method: str, path: str, body: bytes | None, model: str | None = None
    ) -> None:
        """Wait for a turn in the queue, then relay; always finishes.

        `model` (canonical) lets the queue prefer what the target holds in memory.
        """
        queue = self.services.queue
        record = self.record
        try:
            ticket = self._ticket = queue.admit(self.client_id, self.client.weight, model)
        except QueueError as e:
            # Too many of its own requests waiting is the client's to fix: 429.
            status = 429 if isinstance(e, ClientQueueFull) else 503
            self.fail(ForemanError(status, str(e), {"Retry-After": str(e.retry_after)}))
            return
        self.services.ledger.note_depth(queue.waiting)
        try:
            while True:
                try:
                    await queue.turn(ticket)
                except ClientLeft:
                    record.queue_wait = time.monotonic() - ticket.admitted
                    return
                except QueueError as e:
                    record.queue_wait = time.monotonic() - ticket.admitted
                    message = str(e)
                    if isinstance(e, QueueTimeout) and e.target_unreachable:
                        message += "; " + self._waking_done()
                    self.fail(ForemanError(503, message, {"Retry-After": str(e.retry_after)}))
                    return
                record.queue_wait = ticket.waited
                record.model_load = ticket.caused_load
                if ticket.machine is not None:
                    self.machine = ticket.machine
                self.note_queue_wait()
                started = record.dispatched = time.monotonic()
                unreachable = await self.relay(
                    method, path, body, retry_unreachable=True,
                    on_answer=functools.partial(self._model_answered, ticket),
                )
                if unreachable is None:
                    queue.done(ticket, time.monotonic() - started)
                    return
                # Nothing reached a model: keep the place and wait the outage out.
                record.dispatched = record.sent = None
                log.info("target unreachable; request from %s waits for it: %s", self.client_id, unreachable)
                queue.unreachable(ticket, str(unreachable))
        finally:
            queue.done(ticket)
            self._ticket = None

    def _waking_done(self) -> str:
        targets = self.services.targets
        if targets is not None and targets.several:
            model = self._ticket.model if self._ticket is not None else None
            return targets.waking_summary(model)
        waker = self.services.waker
        if waker is None:
            return "no wake packet was sent (FOREMAN_WAKE_MAC is not set)"
        return waker.summary()

    def _model_answered(self, ticket: Ticket) -> None:
        # The target answers for the ticket's model: it holds it now. Noted
        # only now, so an attempt that never reached the target changes nothing.
        if ticket.model is None:
            return
        inventory = ticket.machine.inventory if ticket.machine is not None else self.services.inventory
        inventory.resident.dispatched(ticket.model)
        if ticket.caused_load:
            # The load may have evicted another model: ask what is in memory now.
            inventory.refresh_resident()

    async def relay(
        self,
        method: str,
        path: str,
        body: bytes | None,
        retry_unreachable: bool = False,
        body_producer: BodyProducer | None = None,
        idle_timeout: float | None = None,
        on_answer: Callable[[], object] | None = None,
    ) -> TargetUnreachable | None:
        """Send this request to the target and relay the answer.

        Finishes the response, except when `retry_unreachable` is set and the
        target could not be reached: then nothing was sent to the client and
        the error is returned so that the caller can try again.
        `idle_timeout` overrides FOREMAN_TARGET_IDLE_TIMEOUT (metadata routes);
        `on_answer` is called when the target's answer begins.
        """
        if self._client_gone:
            return None
        machine = self.chosen_machine()
        target = self.services.target if machine is None else machine.target
        if machine is not None:
            self.set_header("X-Foreman-Target", machine.name)
            self.record.target = machine.name
        self.record.sent = time.monotonic()
        upstream = self._upstream = Upstream()
        # The target answering at all proves it is back: resume the queue then,
        # not when this (possibly minutes-long) answer ends.
        def target_answered() -> None:
            if machine is not None:
                machine.answered()
            else:
                self.services.queue.reachable()

        def answer_began() -> None:
            target_answered()
            if on_answer is not None:
                on_answer()

        sink = ClientSink(self, on_start=answer_began, on_lost=self.lose_client)
        try:
            await target.relay(
                method, path, body, self.request.headers, sink, upstream, body_producer,
                idle_timeout,
            )
        except Cancelled as e:
            if self._cut_by_shutdown:
                self.answer_failure(
                    TargetError("foreman is shutting down; the answer was cut off, retry shortly"),
                    sink, method, path, status=503,
                )
            else:
                log.debug("client left %s %s; target request closed: %s", method, shown(path), e)
            return None
        except TargetUnreachable as e:
            if retry_unreachable and not self._client_gone:
                return e
            self.answer_failure(e, sink, method, path)
            return None
        except TargetError as e:
            if upstream.answered:  # even with garbage: it is there, retrying will not help
                target_answered()
            self.answer_failure(e, sink, method, path)
            return None
        else:
            if not self._client_gone:
                await sink.finish()
            return None
        finally:
            self._upstream = None
            # Tornado's client may keep the sink in reference cycles of its
            # own (a failed connection's traceback): it must not keep the
            # handler, the client's connection or held bytes alive with it.
            sink.detach()

    def chosen_machine(self) -> Machine | None:
        """The target this request goes to: the queue's pick, else any reachable one."""
        if self.machine is not None:
            return self.machine
        targets = self.services.targets
        return None if targets is None else targets.any_reachable()

    def answer_failure(
        self, error: TargetError, sink: ClientSink, method: str, path: str, status: int = 502
    ) -> None:
        """Answer a relay that failed: an error line if the answer had begun, else an error."""
        self.record.relayed_bytes = self.record.streamed_bytes
        if self._client_gone or self._connection_closed():
            return
        if sink.sent:
            # Status and headers are on the wire; all that is left is to say
            # what happened in the stream itself, as Ollama does.
            log.warning("%s %s broke off mid-stream: %s", method, shown(path), error)
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
