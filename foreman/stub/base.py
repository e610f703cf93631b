"""What every route of the stand-in Ollama shares.

Constants of Ollama's surface, the JSON helpers, the Host check, the route
record each route module exports, and `StubHandler`, the gate every request
passes: record it, apply CORS (`foreman.stub.cors`), check Host, bearer
token and method.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import tornado.web

from foreman.stub.cors import decide
from foreman.stub.state import StubState

STUB_VERSION = "0.0.0-stub"
EMBEDDING_SIZE = 8  # floats per vector from the embed routes

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"

# Every timestamp the stub reports is derived from this instant, so responses
# are reproducible byte for byte (tests compare direct and relayed bodies).
STUB_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def dumps(obj: object) -> bytes:
    """Compact UTF-8 JSON, as Go's encoding/json writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def parse_object(raw: bytes, fail: Callable[[int, str], None]) -> dict[str, Any] | None:
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


def first_name(body: dict[str, Any], fields: Iterable[str]) -> str | None:
    """The first non-empty string among body[field] for `fields`."""
    for field in fields:
        value = body.get(field)
        if isinstance(value, str) and value:
            return value
    return None


def is_local_host(host_header: str) -> bool:
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


@tornado.web.stream_request_body
class StubHandler(tornado.web.RequestHandler):
    """Shared gate: record, Host check, bearer check, method check.

    Bodies are streamed in, so Tornado never parses one as a form the way
    Ollama (Go) never does: `curl -d` labels JSON a form, and a prompt with
    many '&' would otherwise be refused.
    """

    methods: ClassVar[tuple[str, ...]] = ()
    open_methods: ClassVar[tuple[str, ...]] = ()  # methods that need no token

    def initialize(self, stub: StubState) -> None:
        self.stub = stub

    def set_default_headers(self) -> None:
        self.clear_header("Server")  # Ollama (Go net/http) sends none

    def compute_etag(self) -> str | None:
        return None  # nor an Etag

    def prepare(self) -> None:
        stub = self.stub
        # Filled in by data_received; the recorded request shares the object.
        self.request.body = bytearray()  # type: ignore[assignment]
        stub.record(self.request)
        headers = self.request.headers
        # Ollama's CORS layer runs first, before the Host check.
        cors = decide(
            self.request.method or "", headers.get("Host", ""), headers.get("Origin"), stub.origins
        )
        for name, value in cors.headers:
            self.add_header(name, value)
        if cors.status is not None:
            self.send_empty(cors.status)
        elif stub.check_host and not is_local_host(headers.get("Host", "")):
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
        self.finish(dumps(obj))

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


class NotFoundHandler(StubHandler):
    """Any other route: methods is empty, so prepare() answers Gin's 404."""


@dataclass(frozen=True)
class Route:
    """One route: its path as people write it, its handler, and its regex if it differs.

    ``path`` is what ``foreman stub --help`` shows (``<digest>`` for a part
    taken from the URL); ``pattern`` is what Tornado matches.
    """

    path: str
    handler: type[StubHandler]
    pattern: str = ""

    @property
    def methods(self) -> tuple[str, ...]:
        return self.handler.methods

    def rule(self, kwargs: dict[str, Any]) -> tuple[str, type[StubHandler], dict[str, Any]]:
        """The (regex, handler, kwargs) triple for `tornado.web.Application`."""
        return (self.pattern or self.path, self.handler, kwargs)
