"""Request builders and stream readers the stand-in's tests share."""

import asyncio
import json
import math

from tornado.httpclient import HTTPResponse
from tornado.tcpclient import TCPClient


CHAT_STATS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


def parse_event(event: bytes):
    """One SSE event from the stub: `data: <json>` or `data: [DONE]`."""
    assert event.startswith(b"data: "), event
    payload = event[len(b"data: ") :]
    return "[DONE]" if payload == b"[DONE]" else json.loads(payload)


class Lines:
    """Collects an NDJSON body (or, with sse=True, SSE events) as it streams in.

    wait() for a count of lines/events.
    """

    def __init__(self, sse: bool = False) -> None:
        self.lines: list = []
        self._separator = b"\n\n" if sse else b"\n"
        self._parse = parse_event if sse else json.loads
        self._buffer = b""
        self._changed = asyncio.Event()

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *complete, self._buffer = self._buffer.split(self._separator)
        self.lines.extend(self._parse(line) for line in complete)
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.lines) < count:
                await self._changed.wait()


def chat_body(content="hello there", model="llama3.2:latest", **extra) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    ).encode()


async def post_chat(http, stub, body: bytes, **kwargs) -> HTTPResponse:
    return await http.fetch(
        f"{stub.url}/api/chat", method="POST", body=body, raise_error=False, **kwargs
    )


async def open_chat_socket(stub, body: bytes, path: str = "/api/chat", close: bool = False):
    """A raw connection that has sent a POST (a chat by default).

    The test closes it, or with close=True the stub does after answering.
    """
    stream = await TCPClient().connect("127.0.0.1", stub.port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{stub.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    await stream.write(head.encode() + body)
    return stream


def as_json(**fields) -> bytes:
    return json.dumps(fields).encode()


async def post(http, stub, path: str, body: bytes, **kwargs) -> HTTPResponse:
    return await http.fetch(
        stub.url + path, method="POST", body=body, raise_error=False, **kwargs
    )


def error_of(response: HTTPResponse) -> str:
    return json.loads(response.body)["error"]


def openai_error_of(response: HTTPResponse) -> dict:
    error = json.loads(response.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] is None and error["code"] is None
    return error


def chunked_payloads(raw: bytes) -> list[bytes]:
    """The chunks of a chunked HTTP/1.1 response read whole from a socket."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    payloads = []
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        payloads.append(rest[:size])
        rest = rest[size + 2 :]
    return payloads


def unit_length(vector) -> bool:
    return math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, abs_tol=1e-6)
