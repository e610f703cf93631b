"""What every foreman handler shares: auth, JSON errors, the request record, in-flight tracking."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

import tornado.web
from tornado import httputil

from foreman.clients import Client, address_client
from foreman.local_hosts import allowed_host, loopback_only
from foreman.budget import Reservation
from foreman.record import CLIENT_LEFT, RequestRecord
from foreman.services import Services
from foreman.shown import shown
from foreman.target import TargetError, TargetStatusError, TargetTimeout, TargetUnreachable

JSON = "application/json; charset=utf-8"
# How long a client is told to wait before retrying while the target is down.
RETRY_AFTER_UNREACHABLE = 5
# For answers after which the connection cannot be trusted (or is going away).
_CLOSE = {"Connection": "close"}
# How long a client is told to wait when foreman's memory for bodies is taken.
RETRY_AFTER_MEMORY = 1

log = logging.getLogger("foreman.clients")


def error_body(message: str) -> str:
    """Ollama's error shape, compact as Go's encoder writes it."""
    return json.dumps({"error": message}, separators=(",", ":"))


class ForemanError(Exception):
    """A request foreman refuses, with the status and sentence to answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def target_failure(error: TargetError) -> ForemanError:
    """The answer for a target failure that happened before any byte was sent on."""
    if isinstance(error, TargetUnreachable):
        return ForemanError(503, str(error), {"Retry-After": str(RETRY_AFTER_UNREACHABLE)})
    if isinstance(error, TargetTimeout):
        return ForemanError(504, str(error))
    return ForemanError(502, str(error))


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    """Auth in `prepare`, one JSON error shape, and a count of what is in flight.

    Bodies are streamed in and kept as they came: Tornado would otherwise
    parse every body sent as a form (curl -d does that), costing time on
    large prompts and refusing a JSON body with over a thousand '&' in it.
    """

    requires_auth = True
    #: the request body is gathered in memory (and counted against FOREMAN_MAX_BODY_MEMORY)
    holds_body = True

    def initialize(self, services: Services, route: str) -> None:
        self.services = services
        self.config = services.config
        request = self.request
        #: what the request log line and the metrics read
        self.record = RequestRecord(request.method or "", request.path, route, request.remote_ip)
        #: who the request is from: its address until prepare() knows better
        self.client: Client = address_client(request.remote_ip)
        #: finish() has been called: the answer is decided
        self.answered = False
        #: the client went away before its answer was complete
        self.client_left = False
        self._counted = False
        self._body_parts: list[bytes] = []
        self._body_size = 0
        #: this request's share of FOREMAN_MAX_BODY_MEMORY: its body, and an answer held whole
        self.memory = Reservation(services.memory)

    @property
    def client_id(self) -> str:
        """The client's name, as the log shows it (empty before prepare() names it)."""
        return self.record.client or ""

    def set_default_headers(self) -> None:
        # Ollama sends no Server header; neither does a transparent front.
        self.clear_header("Server")

    def compute_etag(self) -> str | None:
        # Ollama sends no ETag (and answers no If-None-Match with 304).
        return None

    async def prepare(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            # prepare() runs inside Tornado's task for the whole request.
            task.add_done_callback(self._request_over)
        activity = self.services.activity
        activity.begin(self)
        self._counted = True
        if activity.draining:
            self.fail(
                ForemanError(
                    503, "foreman is shutting down; retry shortly",
                    {"Retry-After": "1", **_CLOSE},
                )
            )
            return
        host = self.request.headers.get("Host", "")
        if loopback_only(self.config.listen_host) and not allowed_host(host):
            # DNS rebinding (foreman.local_hosts): refused before anything else is looked at.
            self.fail(
                ForemanError(
                    403,
                    f"Host '{shown(host)}' is not allowed: foreman listens on loopback only "
                    "(FOREMAN_LISTEN); use localhost or 127.0.0.1",
                    # Nothing more is wanted from such a client.
                    _CLOSE,
                )
            )
            return
        authorization = self.request.headers.get("Authorization")
        tokens = self.services.tokens
        client = tokens.identify(authorization)  # None: refused, or auth is off
        if self.requires_auth and tokens.enabled and client is None:
            # One answer whatever was wrong with the token, and one log line
            # per address and minute, not one per guess.
            self.services.auth_failures.note(self.request.remote_ip or "unknown")
            self.fail(
                ForemanError(
                    401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"}
                )
            )
            return
        if client is not None:
            self.client = client
        self.record.client = self.client.name
        lengths = self.request.headers.get_list("Content-Length")
        if len(lengths) > 1 or "," in "".join(lengths):
            # Tornado would merge equal copies; a front must not guess which
            # framing another hop read (request smuggling).
            self.fail(ForemanError(400, "request has more than one Content-Length", _CLOSE))
            return
        limit = self.body_limit()
        declared = self.request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            self.fail(
                ForemanError(
                    413, f"request body is larger than {limit} bytes (FOREMAN_MAX_BODY)", _CLOSE
                )
            )
            return
        # A chunked body that grows past the limit is cut off by Tornado.
        self.request.connection.set_max_body_size(limit)  # type: ignore[union-attr]
        problem = self.path_problem()
        if problem:
            # What the path carries may go on the wire to the target: only
            # what the route expects there does.
            self.fail(ForemanError(400, problem))
            return
        if self.holds_body and declared.isdigit() and int(declared) > 0:
            # The whole declared body is counted at once: a client that sends
            # it slowly holds that memory all the while.
            refusal = self._memory_refusal(int(declared))
            if refusal is not None:
                self.fail(refusal)

    def path_problem(self) -> str | None:
        """Why this request's path may not reach the target, or None if it may."""
        return self.bad_path_args(self.path_args)

    @classmethod
    def bad_path_args(cls, args: list[str]) -> str | None:
        """Why the path's variable parts (decoded) may not reach the target, or None if they may."""
        return None

    def _memory_refusal(self, size: int) -> ForemanError | None:
        """None once `size` bytes of body are reserved; else the answer to refuse it with."""
        if self.memory.grow_to(size):
            return None
        limit = self.config.max_body_memory
        if size > limit:
            return ForemanError(
                413,
                f"request body is larger than the {limit} bytes foreman may hold for bodies "
                "(FOREMAN_MAX_BODY_MEMORY)",
                _CLOSE,
            )
        return ForemanError(
            503,
            "foreman is holding as many request bodies as it may (FOREMAN_MAX_BODY_MEMORY); "
            "retry shortly",
            {"Retry-After": str(RETRY_AFTER_MEMORY), **_CLOSE},
        )

    def body_limit(self) -> int:
        """The largest request body this route takes."""
        return self.config.max_body

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.answered:  # a refused request's body is read and dropped
            return None
        self._body_size += len(chunk)
        if self._body_size > self.memory.size:
            # A chunked body: counted as it comes (a declared one was counted whole).
            refusal = self._memory_refusal(self._body_size)
            if refusal is not None:
                self._body_parts = []
                self.fail(refusal)
                return None
        self._body_parts.append(chunk)
        return None

    @property
    def body(self) -> bytes:
        """The request body, once it has all arrived (in the HTTP method)."""
        if len(self._body_parts) != 1:
            self._body_parts = [b"".join(self._body_parts)]
        return self._body_parts[0]

    def cut_for_shutdown(self) -> None:
        """The drain's grace period is over: end this request with a clear error.

        Answers foreman makes itself are over in an instant; relays override this.
        """

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> asyncio.Future[None]:
        if not self.answered:
            self.answered = True
            # Tornado logs the request inside finish(): the record must be complete first.
            self.record.finish(CLIENT_LEFT if self.client_left else self.get_status())
        written = super().finish(chunk)
        if written.done():
            self.memory.release()
        else:
            self._deliver_within_deadline(written)
        return written

    def _deliver_within_deadline(self, written: asyncio.Future[None]) -> None:
        # A whole answer is handed to the connection at once (a JSON document
        # of many megabytes, an error): a client that never reads it would
        # keep it in memory for as long as it liked. Past FOREMAN_CLIENT_TIMEOUT
        # it is dropped; what the answer held is counted until it is out.
        connection = self.request.connection
        timeout = self.config.client_timeout
        client = self.client_id or self.request.remote_ip

        def delivered(_: object = None) -> None:
            timer.cancel()
            self.memory.release()

        def overdue() -> None:
            log.warning("client %s took nothing of its answer for %gs; dropping it", client, timeout)
            connection.close()  # type: ignore[union-attr]
            # Closing the connection itself, Tornado forgets the write's future
            # instead of failing it.
            delivered()

        timer = asyncio.get_running_loop().call_later(timeout, overdue)
        written.add_done_callback(delivered)

    def on_connection_close(self) -> None:
        if not self.answered:
            self.client_left = True
        if self.request is not None:  # None once the request is over (see _request_over)
            # Fails Tornado's wait for the rest of a streamed body; without it a
            # client leaving mid-body leaves its handler waiting forever.
            super().on_connection_close()
        # Such a handler never finishes: stop counting it as in flight here.
        self._stop_counting()
        # Nothing of a departed request is kept: its body goes at once.
        self._body_parts = []
        self.memory.release()

    def on_finish(self) -> None:
        self._stop_counting()
        self.services.metrics.observe(self.record)
        self.services.ledger.observe(self.record)
        # The answer is decided: the body has served its purpose.
        self._body_parts = []

    def _request_over(self, _: asyncio.Future[None]) -> None:
        # Tornado's task for this request has ended. A handler whose client
        # left before it answered is never finished, and Tornado leaves it in
        # reference cycles: its template namespace points back at it, and the
        # error that ended the wait for the body keeps the task's frame, and
        # so the handler, its request and its body, alive. Only a full
        # collection, which the collector rarely runs, would free them; with
        # the links cut here, reference counting does.
        self._body_parts = []
        if not self.answered:
            self.memory.release()
        self.ui = None  # type: ignore[assignment]  # as Tornado's finish() does
        self.request = None  # type: ignore[assignment]

    def _stop_counting(self) -> None:
        if self._counted:
            self._counted = False
            self.services.activity.end(self)

    def fail(self, error: ForemanError) -> None:
        """Answer with Ollama's error shape and finish."""
        self.clear()
        self.set_status(error.status)
        for name, value in error.headers.items():
            self.set_header(name, value)
        self.note_queue_wait()
        self.set_header("Content-Type", JSON)
        self.finish(self.error_document(error.status, error.message))

    def error_document(self, status: int, message: str) -> str:
        """The body of an error foreman itself answers; Ollama's shape unless overridden."""
        return error_body(message)

    def note_queue_wait(self) -> None:
        if self.record.queue_wait is not None:
            self.set_header("X-Foreman-Queue-Wait", f"{self.record.queue_wait:.3f}")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Reached for errors Tornado itself raises (405, a bad request line)
        # and for bugs: the client gets a sentence, never a traceback.
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code == 405:
            message = (
                f"method {shown(self.request.method or '')} not allowed on {shown(self.request.path)}"
            )
        elif status_code >= 500:
            message = "internal error in foreman; see its log"
        else:
            message = httputil.responses.get(status_code, "error").lower()
        self.set_header("Content-Type", JSON)
        self.finish(self.error_document(status_code, message))

    def send_target_answer(self, error: TargetStatusError) -> None:
        """Pass a target's error answer through unchanged (a redirect with its `Location`)."""
        self.set_status(error.status)
        if error.location is not None:
            self.set_header("Location", error.location)
        self.send_target_body(error.content_type or JSON, error.body)

    def send_target_body(self, content_type: str, body: bytes) -> None:
        """Finish with a body the target sent, unless the status allows none (204, 304)."""
        if self.get_status() in (204, 304):
            # Tornado refuses to send a body with these, with a traceback.
            self.finish()
            return
        self.set_header("Content-Type", content_type)
        self.finish(body)


class NotFoundHandler(BaseHandler):
    """Every route foreman does not serve."""

    async def prepare(self) -> None:
        await super().prepare()
        if not self.answered:
            method, path = shown(self.request.method or ""), shown(self.request.path)
            self.fail(ForemanError(404, f"no route for {method} {path}"))
