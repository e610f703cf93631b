"""Ollama's CORS behaviour, for the stand-in.

Ollama runs every request through gin-contrib/cors before anything else,
with the origins of `OLLAMA_ORIGINS` plus its defaults (localhost,
127.0.0.1 and 0.0.0.0 on any port, and a few app schemes). What that does:

- no `Origin`, or `Origin` naming the server itself (`http://<Host>`): not
  a CORS request, nothing added;
- an origin not allowed: a bare 403, whatever the method;
- a preflight (`OPTIONS` with an allowed origin): 204 with the allowed
  methods, headers and max age, and the origin echoed;
- any other request from an allowed origin: the origin echoed and
  `Vary: Origin`, then the request goes on as usual.

`OLLAMA_ORIGINS=*` allows every origin and answers `*` instead of echoing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Ollama's own additions to OLLAMA_ORIGINS, in its wildcard notation.
DEFAULT_ORIGINS: tuple[str, ...] = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)

ALLOWED_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
ALLOWED_HEADERS = ",".join(
    (
        "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With",
        # What OpenAI's client libraries add to every request.
        "X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-Os",
        "X-Stainless-Arch", "X-Stainless-Retry-Count", "X-Stainless-Runtime",
        "X-Stainless-Runtime-Version", "X-Stainless-Async", "X-Stainless-Helper-Method",
        "X-Stainless-Poll-Helper", "X-Stainless-Custom-Poll-Interval", "X-Stainless-Timeout",
    )
)
MAX_AGE = str(12 * 3600)


@dataclass(frozen=True)
class CorsAnswer:
    """What the CORS layer decided for one request."""

    #: answer now with this status (403, or 204 for a preflight); None: go on
    status: int | None
    headers: tuple[tuple[str, str], ...] = ()


def _matcher(origins: Iterable[str]) -> re.Pattern[str] | None:
    """One regex for origins where `*` stands for anything; None if `*` alone is listed."""
    parts = []
    for origin in origins:
        origin = origin.strip()
        if origin == "*":
            return None
        parts.append(".*".join(re.escape(piece) for piece in origin.split("*")))
    return re.compile("|".join(parts) or r"(?!)")


def decide(method: str, host: str, origin: str | None, origins: Iterable[str]) -> CorsAnswer:
    """What Ollama's CORS layer does with a request, given its allowed `origins`."""
    if not origin or origin in (f"http://{host}", f"https://{host}"):
        return CorsAnswer(None)
    matcher = _matcher(origins)
    if matcher is not None and not matcher.fullmatch(origin):
        return CorsAnswer(403)
    if matcher is None:  # every origin: "*", and nothing varies with it
        allow_origin: tuple[tuple[str, str], ...] = (("Access-Control-Allow-Origin", "*"),)
        varies: tuple[str, ...] = ()
    else:
        allow_origin = (("Access-Control-Allow-Origin", origin),)
        varies = ("Origin",)
    if method == "OPTIONS":
        if varies:
            varies += ("Access-Control-Request-Method", "Access-Control-Request-Headers")
        return CorsAnswer(
            204,
            (
                ("Access-Control-Allow-Methods", ALLOWED_METHODS),
                ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
                ("Access-Control-Max-Age", MAX_AGE),
                *(("Vary", name) for name in varies),
                *allow_origin,
            ),
        )
    return CorsAnswer(None, (*allow_origin, *(("Vary", name) for name in varies)))
