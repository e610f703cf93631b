"""Which headers cross from one hop to the other, and how a path goes on the wire."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable

from tornado import httputil

# Headers that describe one connection rather than the message (RFC 9110
# 7.6.1); forwarding them would corrupt the framing of the other hop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Never forwarded to the target: Host must be the target's own (Ollama on
# loopback answers a foreign Host with 403), the client's Authorization is
# for foreman, and the length is recomputed for the body actually sent.
_NOT_FORWARDED_UPSTREAM = HOP_BY_HOP | {"host", "authorization", "content-length", "expect"}

# Dropped from the target's answer: the relay re-frames the body itself.
_NOT_RELAYED_DOWNSTREAM = HOP_BY_HOP | {"content-length"}


def forwardable_headers(headers: httputil.HTTPHeaders) -> httputil.HTTPHeaders:
    """The client's headers that may go to the target (end-to-end, not credentials)."""
    named_in_connection = _connection_tokens(headers.get_list("Connection"))
    out = httputil.HTTPHeaders()
    for name, value in headers.get_all():
        lower = name.lower()
        if lower in _NOT_FORWARDED_UPSTREAM or lower in named_in_connection:
            continue
        out.add(name, value)
    return out


def downstream_headers(headers: httputil.HTTPHeaders) -> list[tuple[str, str]]:
    """The target's headers that may go to the client."""
    named = _connection_tokens(headers.get_list("Connection"))
    return [
        (k, v)
        for k, v in headers.get_all()
        if k.lower() not in _NOT_RELAYED_DOWNSTREAM and k.lower() not in named
    ]


def _connection_tokens(values: Iterable[str]) -> set[str]:
    return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


def path_as_sent(path: str) -> str:
    """A client's path, for Tornado's client to put on the wire as the client sent it.

    Tornado's server decodes a request line as Latin-1 and its client encodes
    one as UTF-8: raw UTF-8 in a path would arrive double-encoded.
    """
    if path.isascii():
        return path
    raw = path.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Not UTF-8 either: percent-encode the bytes that are not ASCII.
        return urllib.parse.quote(raw, safe="".join(map(chr, range(33, 127))))
