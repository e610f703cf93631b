"""Randomised requests at a real foreman in front of the stand-in, over real sockets.

A few hundred requests per run: random methods, routes (every route in the
README's endpoint table, and variants of them), bodies, headers and, sent
byte for byte over a bare socket, broken framing. Whatever arrives, foreman
answers no 5xx, every error it produces has Ollama's (or on /v1 OpenAI's)
JSON shape, nothing is left in flight, nothing is logged with a traceback,
and a normal chat still works afterwards. Along the way: no request without
an accepted token gets a 2xx (but from /healthz), no management route does
without an admin token, and every NDJSON stream is whole lines of JSON.

Every run is driven by `random.Random(seed)` for a seed in a fixed list, so a
failure reproduces: the test id names the seed (`-k 'seed-17'`) and each
problem reported names the case's number and label. A case is one request
(or one connection's worth of bytes); its label says what was sent.

Well-formed requests go through Tornado's HTTP client or, byte for byte,
through the bare-socket client below (which also pipelines a second request
behind some); malformed ones only through the bare socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import urllib.parse
from dataclasses import dataclass, field

import pytest
from tornado.httpclient import HTTPRequest

from foreman.stub import DEFAULT_MODELS
from tests.helpers import ndjson, until

TOKEN = "fuzz-client-token"
ADMIN = "fuzz-admin-token"
DIGEST = "sha256:" + "ab" * 32
CONCURRENCY = 20
# Requests whose bodies are at least this large may legitimately see the
# connection reset after an early answer (404, 401, 405...): foreman stops
# reading and closes, and the kernel then resets the unread rest.
LARGE = 64 * 1024

# Every route in the README's endpoint table, with the method it takes.
ROUTES: list[tuple[str, str]] = [
    ("GET", "/healthz"),
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/api/version"),
    ("HEAD", "/api/version"),
    ("GET", "/api/tags"),
    ("GET", "/api/ps"),
    ("POST", "/api/show"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/llama3.2"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("HEAD", f"/api/blobs/{DIGEST}"),
    ("POST", f"/api/blobs/{DIGEST}"),
    ("GET", "/metrics"),
]
MANAGEMENT = {"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", f"/api/blobs/{DIGEST}"}
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "FOO", "get", "M-SEARCH", "PROPFIND"]

GOOD_MODELS = [
    "llama3.2",
    "llama3.2:latest",
    "LLAMA3.2",
    "library/llama3.2",
    "registry.ollama.ai/library/llama3.2:latest",
    "qwen2.5:0.5b",
    "hf.co/example/tiny-gguf:Q4_K_M",
    "llama3.2@sha256:" + "0" * 64,
]
ODD_MODELS = [
    "nope",
    "llama3.2:",
    ":latest",
    "/",
    "../../etc/passwd",
    "llama3.2/../qwen2.5",
    "ünïcödé:💥",
    "a" * 5000,
    "http://evil/llama3.2",
    "llama3.2\r\nX-Injected: 1",
    "llama3.2\x00",
]
TEXTS = ["hello", "", "Why is the sky blue?", "ünïcödé ☃ 💥", "a\u0000b", '"quoted" \\ back', "x " * 30]
# A lone surrogate is valid JSON ("\ud800") but cannot be encoded as UTF-8: the
# stand-in (unlike Ollama, which substitutes U+FFFD) fails on one with a 500,
# so such names go only where foreman answers by itself (an unknown model).
SURROGATE_MODEL = "llama3.2\ud800"


# --- what is sent and what came back ---------------------------------------------


@dataclass
class Case:
    """One request (or one connection's bytes) and what it is allowed to get back."""

    number: int
    label: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    #: "client" (Tornado's HTTP client), "raw" (a well-formed request over a
    #: bare socket), "broken" (malformed head: refused before any handler runs)
    #: or "cutoff" (broken body framing: a handler may have begun)
    via: str = "client"
    wire: bytes | None = None
    #: methods of the requests on the wire, in order, to parse the answers
    wire_methods: list[str] = field(default_factory=list)
    #: close the connection this long after sending, without waiting for an answer
    hang_up_after: float | None = None
    #: whether the Authorization header carries a token foreman accepts
    authorised: bool = True
    admin: bool = False

    @property
    def bare_path(self) -> str:
        return self.path.partition("?")[0]

    def __str__(self) -> str:
        return f"case {self.number} [{self.via}] {self.label}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool = True


@dataclass
class Outcome:
    case: Case
    answers: list[Answer]
    error: str | None = None


class _Wire(asyncio.Protocol):
    """Collects everything the server sends until it closes, keeping data seen before a reset."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


async def send_raw(port: int, wire: bytes, hang_up_after: float | None, timeout: float = 20.0) -> tuple[bytes, str | None]:
    """Send `wire` on a fresh connection; return what came back before foreman (or we) closed it."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_Wire, "127.0.0.1", port)
    transport.write(wire)
    if hang_up_after is not None:
        await asyncio.sleep(hang_up_after)
        transport.close()
        await asyncio.wait_for(asyncio.shield(proto.closed), timeout)
        return bytes(proto.data), None
    try:
        await asyncio.wait_for(asyncio.shield(proto.closed), timeout)
    except TimeoutError:
        transport.abort()
        return bytes(proto.data), f"foreman neither finished answering nor closed within {timeout}s"
    return bytes(proto.data), None


def _dechunk(data: bytes) -> tuple[bytes, bytes, bool]:
    body = bytearray()
    while True:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            return bytes(body), b"", False
        size = int(line.split(b";")[0].strip() or b"x", 16)
        if size == 0:
            # Trailers (none expected) end with an empty line.
            _, sep, data = data.partition(b"\r\n")
            return bytes(body), data, bool(sep)
        if len(data) < size + 2:
            body += data[:size]
            return bytes(body), b"", False
        body += data[:size]
        data = data[size + 2 :]


def parse_answers(data: bytes, methods: list[str]) -> list[Answer]:
    """The HTTP responses in `data`, in order; 1xx interim answers are skipped."""
    answers: list[Answer] = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        if not sep:
            answers.append(Answer(0, {}, head, complete=False))
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            continue
        method = methods[min(len(answers), len(methods) - 1)] if methods else "GET"
        complete = True
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body, data, complete = _dechunk(data)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            body, data = data[:length], data[length:]
            complete = len(body) == length
        else:
            body, data = data, b""
        answers.append(Answer(status, headers, body, complete))
    return answers


# --- generating cases ------------------------------------------------------------


def _route_path(rng: random.Random, path: str) -> str:
    """`path` as is, or a variant a scanner or a confused client might send."""
    variants = [
        lambda p: p,
        lambda p: p,
        lambda p: p,
        lambda p: p + "/",
        lambda p: "/" + p,
        lambda p: p.replace("/", "//"),
        lambda p: "/api/../" + p.lstrip("/"),
        lambda p: p + "/..",
        lambda p: "/x/.." + p,
        lambda p: "/api/%2e%2e" + p,
        lambda p: p.replace("/", "%2F"),
        lambda p: p.replace("/", "%2f", 2),
        lambda p: p.upper(),
        lambda p: p + "?" + urllib.parse.urlencode({"stream": "false", "model": "../../x"}),
        lambda p: p + "?%ZZ=%FF&a",
        lambda p: p + "?" + "q=" + "z" * 3000,
        lambda p: p + "?&&&=&=",
        lambda p: p + "#frag",
        lambda p: p + "%00",
        lambda p: p + "/" + "a" * rng.choice([300, 4000, 20000]),
        lambda p: p + "/ünïcödé/💥",
        lambda p: p + "%C3%BC%FF",
        lambda p: p + ";jsessionid=1",
        lambda p: "/" + "/".join(rng.choice(["..", ".", "%2e", "api", "v1", "", "%", "~"]) for _ in range(rng.randint(1, 8))),
    ]
    return rng.choice(variants)(path)


def _valid_document(rng: random.Random, path: str) -> dict:
    model = rng.choice(GOOD_MODELS)
    text = rng.choice(TEXTS)
    stream = rng.choice([True, False, None])
    if path.startswith("/v1/chat"):
        doc: dict = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": rng.randint(1, 4)}
    elif path.startswith("/v1/completions"):
        doc = {"model": model, "prompt": text, "max_tokens": rng.randint(1, 4)}
    elif path.endswith(("embeddings", "embed")):
        doc = {"model": model, ("input" if path != "/api/embeddings" else "prompt"): text}
    elif path == "/api/generate":
        doc = {"model": model, "prompt": text, "options": {"num_predict": rng.randint(1, 4)}}
    elif path == "/api/copy":
        doc = {"source": model, "destination": "fuzz-copy-" + str(rng.randint(0, 9))}
    elif path in ("/api/pull", "/api/push", "/api/create", "/api/delete"):
        # Never the stand-in's own models: deleting one would change later cases.
        doc = {"model": "fuzz-" + str(rng.randint(0, 9)), "from": model}
    else:
        doc = {
            "model": model,
            "messages": [{"role": rng.choice(["user", "system", "assistant", "tool"]), "content": text}],
            "options": {"num_predict": rng.randint(1, 4)},
        }
    if stream is not None:
        doc["stream"] = stream
    return doc


def _nest(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "array" else '{"a":' * depth + "1" + "}" * depth


def _body(rng: random.Random, path: str) -> tuple[str, bytes | None]:
    """A label and a body: mostly sensible, often not."""
    valid = _valid_document(rng, path)
    dumped = json.dumps(valid).encode()
    choice = rng.randrange(24)
    if choice < 6:
        return "valid body", dumped
    if choice == 6:
        field_name = rng.choice(["model", "messages", "stream", "options", "prompt", "input"])
        value = rng.choice([123, None, [], {}, True, "", "   ", 1.5, ["llama3.2"], {"name": "llama3.2"}, "yes", -1])
        return f"{field_name}={value!r}", json.dumps({**valid, field_name: value}).encode()
    if choice == 7:
        odd = rng.choice(ODD_MODELS + ([SURROGATE_MODEL] if path not in MANAGEMENT else []))
        return f"model {odd[:20]!r}", json.dumps({**valid, "model": odd}).encode()
    if choice == 8:
        fragment = rng.choice(['{', '{"model":', '[1,2', '"str"', "null", "true", "123", '{"model": "llama3.2"',
                               "}", "{}", "[]", '{"model": "llama3.2",}', "{'model': 'llama3.2'}", "NaN", "-"])
        return f"fragment {fragment!r}", fragment.encode()
    if choice == 9:
        cut = rng.randint(1, max(1, len(dumped) - 1))
        return f"truncated at {cut}", dumped[:cut]
    if choice == 10:
        bad = rng.choice([b'{"model": "\xff\xfe"}', b"\xc3\x28", b'{"model": "llama3.2", "x": "\xed\xa0\x80"}',
                          b"\xfe\xff\x00{", b'\xef\xbb\xbf' + dumped, b'{"model": "llama3.2"}\x80'])
        return "invalid UTF-8 or BOM", bad
    if choice == 11:
        number = rng.choice(["1e999", "-1e999", "1" + "0" * 5000, "1" + "0" * 300, "NaN", "Infinity",
                             "0." + "0" * 10000 + "1", "1e-99999", "-0"])
        where = rng.choice(["model", "temperature", "seed"] if "model" in valid else ["temperature", "seed"])
        text = dumped.decode()
        if where == "model":
            return f"model={number[:12]}...", text.replace(json.dumps(valid["model"]), number, 1).encode()
        # Never in num_predict: the stand-in would generate that many chunks.
        return f"{where}={number[:12]}...", (text[:-1] + f', "{where}": {number}' + "}").encode()
    if choice == 12:
        depth, kind = rng.choice([100_000, 20_000, 5_000]), rng.choice(["array", "object"])
        return f"nested {kind} depth {depth}", _nest(depth, kind).encode()
    if choice == 13:
        depth, kind = rng.choice([50, 300]), rng.choice(["array", "object"])
        return f"valid body holding {kind} depth {depth}", (dumped.decode()[:-1] + f', "x": {_nest(depth, kind)}' + "}").encode()
    if choice == 14:
        return "empty body", b""
    if choice == 15:
        big = "x" * (1 << 20)
        where = rng.choice(["content", "model", "key", "junk"])
        if where == "content":
            return "1 MiB content", json.dumps({**valid, "messages": [{"role": "user", "content": big}], "prompt": big}).encode()
        if where == "model":
            return "1 MiB model name", json.dumps({**valid, "model": big}).encode()
        if where == "key":
            return "1 MiB key", json.dumps({**valid, big: 1}).encode()
        return "1 MiB of junk", rng.randbytes(1 << 20)
    if choice == 16:
        return "random bytes", rng.randbytes(rng.randint(1, 300))
    if choice == 17:
        return "non-object JSON", rng.choice([b"[]", b'"llama3.2"', b"1", b"null", b'[{"model": "llama3.2"}]'])
    if choice == 18:
        return "duplicate keys", b'{"model": "nope", "model": "llama3.2", "messages": [], "stream": false}'
    if choice == 19:
        return "form body", b"model=llama3.2&stream=false&" + b"&" * 2000
    if choice == 20:
        return "whitespace only", rng.choice([b" ", b"\r\n\t ", b"\x00"])
    if choice == 21:
        return "no body", None
    return "valid body", dumped


def _auth(rng: random.Random) -> tuple[str, str | None, bool, bool]:
    """A label, an Authorization value (None: no header), whether it is accepted, whether it is an admin's."""
    # Mostly accepted: a refused token is answered before the body is read.
    choice = rng.randrange(20)
    if choice < 14:
        return "token", f"Bearer {TOKEN}", True, False
    if choice == 14:
        return "lower-case scheme", f"bearer {TOKEN}", True, False
    if choice in (15, 16):
        return "admin token", f"Bearer {ADMIN}", True, True
    junk = rng.choice([None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
                       "Bearer " + "a" * 10000, f"Token {TOKEN}", f"{TOKEN}", "Bearer \u00e9\u00ff", f"Bearer {TOKEN} {TOKEN}",
                       f"Bearer {TOKEN},Bearer x"])
    return f"auth {junk!r:.40}", junk, False, False


def _content_type(rng: random.Random) -> str | None:
    return rng.choice([None, "application/json", "application/json", "text/plain", "application/x-www-form-urlencoded",
                       "multipart/form-data; boundary=xyz", "application/json; charset=utf-16", "junk/;;;=",
                       "application/x-ndjson", ""])


def _head(method: str, path: str, headers: dict[str, str], version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def well_formed_case(rng: random.Random, number: int, port: int) -> Case:
    method, path = rng.choice(ROUTES)
    if rng.random() < 0.15:
        method = rng.choice(METHODS)
    if rng.random() < 0.3:
        path = _route_path(rng, path)
    body_label, body = _body(rng, path)
    if method in ("GET", "HEAD") and rng.random() < 0.7:
        body_label, body = "no body", None
    auth_label, authorization, authorised, admin = _auth(rng)
    headers: dict[str, str] = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if (content_type := _content_type(rng)) is not None:
        headers["Content-Type"] = content_type
    if rng.random() < 0.1:
        headers["Content-Encoding"] = "gzip"  # a lie: the body is not gzipped
    if rng.random() < 0.1:
        headers["X-Forwarded-For"] = "1.2.3.4, <script>, ::1"
    if rng.random() < 0.05:
        headers["Upgrade"] = "websocket"
        headers["Connection"] = "Upgrade"
    label = f"{method} {path[:80]!r} {body_label}, {auth_label}"
    case = Case(number, label, method, path, headers, body, authorised=authorised, admin=admin)
    # Tornado's client sends only what a URL can say, with a method in capitals.
    url_path = path.isascii() and path.startswith("/") and "#" not in path
    if rng.random() < 0.5 and url_path and method.isupper():
        return case
    case.via = "raw"
    headers = {"Host": f"127.0.0.1:{port}", **headers}
    if body is not None:
        if rng.random() < 0.2:
            # Chunked, in random pieces.
            headers["Transfer-Encoding"] = "chunked"
            pieces, rest = [], body
            while rest:
                size = rng.randint(1, max(1, len(rest) // 3 + 1))
                pieces.append(b"%x\r\n%s\r\n" % (size, rest[:size]))
                rest = rest[size:]
            payload = b"".join(pieces) + b"0\r\n\r\n"
            case.label += ", chunked"
        else:
            headers["Content-Length"] = str(len(body))
            payload = body
    else:
        payload = b""
    if rng.random() < 0.1:
        headers["Expect"] = "100-continue"
    version = "HTTP/1.1" if rng.random() < 0.9 else "HTTP/1.0"
    if rng.random() < 0.3 and version == "HTTP/1.1":
        # A second request behind the first: framing must hold.
        follow = _head("GET", "/healthz", {"Host": f"127.0.0.1:{port}", "Connection": "close"})
        case.wire = _head(method, path, headers, version) + payload + follow
        case.wire_methods = [method, "GET"]
        case.label += ", then GET /healthz on the same connection"
    else:
        headers["Connection"] = "close"
        case.wire = _head(method, path, headers, version) + payload
        case.wire_methods = [method]
        case.label += f", {version}" if version != "HTTP/1.1" else ""
    return case


def broken_head_case(rng: random.Random, number: int, port: int) -> Case:
    """A request whose head is malformed: refused before any handler runs."""
    host = f"Host: 127.0.0.1:{port}\r\nConnection: close\r\n"
    valid = b"POST /api/chat HTTP/1.1\r\n" + host.encode() + b"Content-Length: 2\r\n"
    wires = {
        "header line without colon": valid + b"this line has no colon\r\n\r\n{}",
        "header name with a space": valid + b"X Bad Name: 1\r\n\r\n{}",
        "100 KB header": valid + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n{}",
        "100 KB path": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n" + host.encode() + b"\r\n",
        "1000 headers": valid + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(1000)) + b"\r\n{}",
        "no Host": b"GET /api/tags HTTP/1.1\r\n\r\n",
        "two Hosts": b"GET /api/tags HTTP/1.1\r\n" + host.encode() * 2 + b"\r\n",
        "invalid Host": b"GET /api/tags HTTP/1.1\r\nHost: a b/c\r\n\r\n",
        "request line without version": b"GET /api/tags\r\n" + host.encode() + b"\r\n",
        "HTTP/9.9": b"GET /api/tags HTTP/9.9\r\n" + host.encode() + b"\r\n",
        "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "TLS client hello": bytes.fromhex("16030100a5010000a10303") + rng.randbytes(160),
        "request line of spaces": b"     \r\n" + host.encode() + b"\r\n",
        "NUL in request line": b"GET /api/\x00tags HTTP/1.1\r\n" + host.encode() + b"\r\n",
        "control character in header value": valid + b"X-Ctl: a\x01b\x7f\r\n\r\n{}",
        "obsolete line folding": valid + b"X-Fold: a\r\n  folded\r\n\r\n{}",
        "only CRLFs": b"\r\n" * 50,
        "random bytes then CRLFCRLF": rng.randbytes(200) + b"\r\n\r\n",
        "a thousand query fields": b"GET /api/tags?" + b"&".join(b"a%d=1" % i for i in range(1500)) + b" HTTP/1.1\r\n" + host.encode() + b"\r\n",
        "LF only line endings": b"GET /api/tags HTTP/1.1\n" + host.encode().replace(b"\r", b"") + b"Connection: close\n\n",
    }
    label = rng.choice(sorted(wires))
    # Some of these are well-formed enough for an answer (folded or LF-only
    # lines are tolerated); each asks for the connection to be closed after
    # it. A TLS hello never completes a head: the client hangs up.
    hang_up_after = 0.3 if label == "TLS client hello" else None
    return Case(number, label, "POST", "/api/chat", via="broken", wire=wires[label], wire_methods=["POST"],
                hang_up_after=hang_up_after)


def cutoff_case(rng: random.Random, number: int, port: int) -> Case:
    """A request whose body framing is broken: its handler may already have begun."""
    method, path = rng.choice(ROUTES)
    if method in ("GET", "HEAD") and rng.random() < 0.5:
        method = "POST"
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
    body = json.dumps(_valid_document(rng, path)).encode()
    kinds = {
        "Content-Length longer than the body, then hang up": (head + b"Content-Length: %d\r\n\r\n" % (len(body) + 100) + body, 0.1),
        "Content-Length and Transfer-Encoding": (head + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body), None),
        "negative Content-Length": (head + b"Content-Length: -5\r\n\r\n" + body, None),
        "two different Content-Lengths": (head + b"Content-Length: %d\r\nContent-Length: 3\r\n\r\n" % len(body) + body, None),
        "non-numeric Content-Length": (head + b"Content-Length: 1e3\r\n\r\n" + body, None),
        "bad chunk size": (head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + body + b"\r\n0\r\n\r\n", None),
        "negative chunk size": (head + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n" + body + b"\r\n0\r\n\r\n", None),
        "huge chunk size": (head + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n" + body + b"\r\n0\r\n\r\n", None),
        "chunk longer than its size": (head + b"Transfer-Encoding: chunked\r\n\r\n1\r\n" + body + b"\r\n0\r\n\r\n", None),
        "chunked body cut off, then hang up": (head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s" % (len(body) + 50, body), 0.1),
        "Transfer-Encoding gzip": (head + b"Transfer-Encoding: gzip\r\n\r\n" + body, None),
        "Content-Length shorter than the body": (head + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % (len(body) // 2) + body, None),
        "two equal Content-Lengths": (head + b"Connection: close\r\nContent-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(body), len(body)) + body, None),
        "Content-Length far beyond any limit": (head + b"Content-Length: 99999999999999\r\n\r\n" + body, None),
    }
    label = rng.choice(sorted(kinds))
    wire, hang_up_after = kinds[label]
    return Case(number, f"{method} {path} {label}", method, path, via="cutoff", wire=wire,
                wire_methods=[method], hang_up_after=hang_up_after)


# --- running and judging ---------------------------------------------------------


async def run_case(front, http, case: Case) -> Outcome:
    if case.via == "client":
        request = HTTPRequest(
            front.url + urllib.parse.quote(case.path, safe="/%?=&:@!$'()*+,;~-._#"),
            method=case.method,
            headers=case.headers,
            body=case.body,
            allow_nonstandard_methods=True,
            request_timeout=30,
            decompress_response=False,
            follow_redirects=False,
        )
        response = await http.fetch(request, raise_error=False)
        if response.code == 599:
            return Outcome(case, [], f"no answer: {response.error!r}")
        return Outcome(case, [Answer(response.code, {k.lower(): v for k, v in response.headers.get_all()}, response.body or b"")])
    port = int(front.url.rsplit(":", 1)[1])
    assert case.wire is not None
    data, error = await send_raw(port, case.wire, case.hang_up_after)
    return Outcome(case, parse_answers(data, case.wire_methods), error)


def _is_error_document(body: bytes) -> bool:
    try:
        document = json.loads(body)
    except ValueError:
        return False
    return isinstance(document, dict) and "error" in document


def problems(outcome: Outcome) -> list[str]:
    """Everything wrong with one outcome, each naming the case."""
    case, found = outcome.case, []
    large = len(case.body or b"") >= LARGE or len(case.wire or b"") >= LARGE
    if outcome.error and not (large and not outcome.answers):
        found.append(f"{case}: {outcome.error}")
    for index, answer in enumerate(outcome.answers):
        where = f"{case}: answer {index + 1}"
        if answer.status >= 500:
            # The stand-in never fails here and 20 at a time cannot fill the
            # queue (FOREMAN_MAX_QUEUE 128): no 5xx is legitimate.
            found.append(f"{where} is {answer.status}: {answer.body[:300]!r}")
            continue
        if answer.status == 0:
            if not (large or case.via in ("broken", "cutoff")):
                found.append(f"{where} has a broken head: {answer.body[:200]!r}")
            continue
        first_of_well_formed = index == 0 and case.via in ("client", "raw")
        if not answer.complete and not large:
            found.append(f"{where} ({answer.status}) was cut short")
        answered = case.wire_methods[index] if index < len(case.wire_methods) else case.method
        if answer.status >= 400 and answered != "HEAD" and answer.complete:
            # Tornado's HTTP layer refuses a malformed message with a bare
            # 400 and closes; anything foreman itself says is JSON.
            bare_http_layer_400 = answer.status == 400 and not answer.body and not first_of_well_formed
            if not bare_http_layer_400 and not _is_error_document(answer.body):
                found.append(f"{where} is {answer.status} without a JSON error: {answer.body[:200]!r}")
        if first_of_well_formed and 200 <= answer.status < 300:
            if not case.authorised and case.bare_path != "/healthz":
                found.append(f"{where} is {answer.status} for a request without an accepted token")
            if case.bare_path in MANAGEMENT and not case.admin:
                found.append(f"{where} is {answer.status} on a management route without an admin token")
            if answer.headers.get("content-type", "").startswith("application/x-ndjson") and answer.complete:
                try:
                    lines = ndjson(answer.body)
                except ValueError as e:
                    found.append(f"{where}: NDJSON line that is not JSON ({e})")
                else:
                    if lines and "error" not in lines[-1] and lines[-1].get("done") is not True and lines[-1].get("status") != "success":
                        found.append(f"{where}: stream ended without a final line: {lines[-1]!r}")
        if index == 1 and case.wire_methods[1:] == ["GET"] and answer.status != 200 and not (
            answer.status == 400 and not answer.body
        ):
            found.append(f"{where}: the pipelined GET /healthz got {answer.status}")
    if case.via in ("client", "raw") and not outcome.answers and not large and not outcome.error:
        found.append(f"{case}: no answer at all")
    return found


async def fuzz(front, cases: list[Case]) -> list[Outcome]:
    http = front.client(max_clients=CONCURRENCY)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(case: Case) -> Outcome:
        async with gate:
            try:
                return await run_case(front, http, case)
            except Exception as e:  # noqa: BLE001 - a client-side failure is a finding too
                return Outcome(case, [], f"client failed: {e!r}")

    return await asyncio.gather(*(one(case) for case in cases))


def traceback_records(caplog) -> list[str]:
    bad = []
    for record in caplog.records:
        if record.levelno < logging.ERROR:
            continue
        if record.exc_info or record.name in ("tornado.application", "asyncio") or record.name.startswith("foreman") and record.name != "foreman.access":
            bad.append(f"{record.name}: {record.getMessage()[:300]}")
    return bad


async def still_serves(front, stub) -> None:
    """A normal streaming chat and /healthz work; the stand-in's inventory is as it was."""
    stub.models[:] = list(DEFAULT_MODELS)
    await front.inventory.refresh()
    health = await front.fetch("/healthz")
    assert health.code == 200, health.body
    assert json.loads(health.body)["status"] == "ok"
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "still there?"}], "options": {"num_predict": 5}}
    chat = await front.fetch("/api/chat", method="POST", body=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert chat.code == 200, chat.body
    assert chat.headers["Content-Type"] == "application/x-ndjson"
    lines = ndjson(chat.body)
    assert len(lines) == 6 and lines[-1]["done"] is True


async def nothing_in_flight(front, stub, seed: int) -> None:
    """Every handler has ended now that every connection has; so has every run at the stand-in."""
    activity = front.foreman.activity
    try:
        await until(lambda: activity.in_flight == 0, timeout=15)
    except TimeoutError:
        stuck = [f"{type(h).__name__} {h.request.method} {h.request.path[:80]}" for h in activity.handlers]
        raise AssertionError(f"seed {seed}: still in flight: {stuck}") from None
    await until(lambda: stub.active_chats == 0, timeout=15)


def start(start_foreman):
    return start_foreman(FOREMAN_TOKENS=TOKEN, FOREMAN_ADMIN_TOKENS=ADMIN)


SEEDS = (17, 101, 2024, 7919)
PER_SEED = 120


@pytest.mark.timeout(seconds=60)
@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed-{s}" for s in SEEDS])
async def test_randomised_requests_get_no_5xx_and_leave_nothing_in_flight(start_foreman, stub, caplog, seed) -> None:
    front = start(start_foreman)
    await front.ready()
    port = int(front.url.rsplit(":", 1)[1])
    rng = random.Random(seed)
    cases = [
        broken_head_case(rng, n, port) if rng.random() < 0.12 else well_formed_case(rng, n, port)
        for n in range(PER_SEED)
    ]
    outcomes = await fuzz(front, cases)
    found = [p for outcome in outcomes for p in problems(outcome)]
    assert not found, f"seed {seed}: {len(found)} problems:\n" + "\n".join(found)
    await nothing_in_flight(front, stub, seed)
    assert not traceback_records(caplog), traceback_records(caplog)
    await still_serves(front, stub)
    statuses = sorted({a.status for o in outcomes for a in o.answers})
    assert len(statuses) > 5, statuses  # the cases reached more than one kind of answer


CUTOFF_SEEDS = (5, 77)
CUTOFF_PER_SEED = 40


@pytest.mark.timeout(seconds=60)
@pytest.mark.parametrize("seed", CUTOFF_SEEDS, ids=[f"seed-{s}" for s in CUTOFF_SEEDS])
async def test_broken_body_framing_gets_no_5xx_and_foreman_keeps_serving(start_foreman, stub, caplog, seed) -> None:
    """Content-Length/Transfer-Encoding games, bad chunks, bodies cut off by a hang-up.

    Tornado's HTTP layer refuses these after the head was read (so after a
    handler began) with a bare 400 and a closed connection, or the client
    hangs up mid-body; either way the handler must not stay in flight.
    """
    front = start(start_foreman)
    await front.ready()
    port = int(front.url.rsplit(":", 1)[1])
    rng = random.Random(seed)
    cases = [cutoff_case(rng, n, port) for n in range(CUTOFF_PER_SEED)]
    outcomes = await fuzz(front, cases)
    found = [p for outcome in outcomes for p in problems(outcome)]
    for outcome in outcomes:
        if outcome.case.hang_up_after is None and not outcome.answers:
            # Without a hang-up of ours, foreman must say no, not just close.
            found.append(f"{outcome.case}: closed without an answer")
        for answer in outcome.answers[:1]:
            if 200 <= answer.status < 300 and "Transfer-Encoding" in outcome.case.label and "Content-Length" in outcome.case.label:
                found.append(f"{outcome.case}: ambiguous framing was accepted ({answer.status})")
    assert not found, f"seed {seed}: {len(found)} problems:\n" + "\n".join(found)
    await nothing_in_flight(front, stub, seed)
    assert not traceback_records(caplog), traceback_records(caplog)
    await still_serves(front, stub)


# --- what the fuzzing found --------------------------------------------------------

BODY_NEVER_COMPLETES = {
    "hang-up mid-body": lambda port, path: (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 100\r\n\r\n{{\"mod".encode(), 0.2),
    "Content-Length and Transfer-Encoding": lambda port, path: (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 2\r\n"
        "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".encode(), None),
    "bad chunk size": lambda port, path: (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n\r\n"
        "zz\r\n{}\r\n0\r\n\r\n".encode(), None),
}


@pytest.mark.parametrize(
    "framing, path",
    [
        ("hang-up mid-body", "/api/chat"),
        ("hang-up mid-body", "/api/tags"),
        ("Content-Length and Transfer-Encoding", "/api/chat"),
        ("bad chunk size", "/api/tags"),
    ],
)
async def test_a_request_whose_body_never_completes_is_not_left_in_flight(foreman, stub, framing, path) -> None:
    """Found by the fuzzing: such a handler began (prepare ran) but never finishes.

    Tornado's _execute returns without finish() when the body fails, so
    on_finish() never ran; a relay handler's task even waited for ever, as its
    on_connection_close() did not fail the body's future. Each stayed counted
    in flight, and a drain waited its whole grace period for them.
    """
    await foreman.ready()
    port = int(foreman.url.rsplit(":", 1)[1])
    wire, hang_up_after = BODY_NEVER_COMPLETES[framing](port, path)
    _, error = await send_raw(port, wire, hang_up_after, timeout=5)
    assert error is None
    try:
        await until(lambda: foreman.foreman.activity.in_flight == 0, timeout=1)
    except TimeoutError:
        pass
    left = [f"{type(h).__name__} {h.request.method} {h.request.path}" for h in foreman.foreman.activity.handlers]
    assert foreman.foreman.activity.in_flight == 0, f"still in flight after the connection closed: {left}"


@pytest.mark.parametrize("path", ["/v1/models/ünï", "/v1/models/llama3.2:ä"])
async def test_a_raw_non_ascii_model_path_is_refused_not_relayed(foreman, stub, path) -> None:
    # No model name Ollama takes has a non-ASCII letter (foreman.names): a path
    # with one is not a plain name, so it never goes on the wire (issue 11, item 7).
    await foreman.ready()
    port = int(foreman.url.rsplit(":", 1)[1])
    for raw in (path.encode(), path.encode("latin-1")):
        wire = b"GET " + raw + f" HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        data, error = await send_raw(port, wire, None, timeout=10)
        answers = parse_answers(data, ["GET"])
        assert error is None and answers and answers[0].status == 400, data
    assert not [r for r in stub.requests if r.path.startswith("/v1/models/")], "the path reached the target"


async def test_a_duplicate_content_length_is_refused_and_not_forwarded(foreman, stub) -> None:
    await foreman.ready()
    port = int(foreman.url.rsplit(":", 1)[1])
    body = json.dumps({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}).encode()
    wire = (
        f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    data, error = await send_raw(port, wire, None, timeout=10)
    assert error is None
    answers = parse_answers(data, ["POST"])
    assert not [r for r in stub.requests if r.path == "/api/chat"], "the request was forwarded"
    assert answers and answers[0].status == 400, [a.status for a in answers]
