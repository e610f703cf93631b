"""Inbound bearer tokens: who may use foreman."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable

log = logging.getLogger("foreman.auth")

# The whitespace HTTP allows around the parts of a header value. str.strip()
# would also remove Unicode spaces (a non-breaking space, \x1c-\x1f, \x85),
# accepting a token with bytes after it that the token does not have.
_HTTP_WHITESPACE = " \t"


def bearer_credential(authorization: str | None) -> tuple[str, str]:
    """(scheme, credential) of an `Authorization` value, trimmed of spaces and tabs only."""
    scheme, _, credential = (authorization or "").strip(_HTTP_WHITESPACE).partition(" ")
    return scheme, credential.strip(_HTTP_WHITESPACE)


class TokenSet:
    """The bearer tokens foreman accepts from its clients."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)

    def replace(self, tokens: Iterable[str]) -> None:
        """Accept these tokens from now on (SIGHUP re-reads the tokens files)."""
        self._tokens = tuple(t.encode() for t in tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def accepts(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header value carries an accepted token."""
        if not self._tokens:
            return True
        scheme, credential = bearer_credential(authorization)
        offered = credential.encode()
        # Compare against every token, always, so the time taken says nothing
        # about which token (or how much of one) matched.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(offered, token)
        return matched and scheme.lower() == "bearer"


def client_identity(authorization: str | None, remote_ip: str | None, auth_enabled: bool) -> str:
    """Who a request is, for fair queueing and logs; never the token itself.

    With auth on, a client is its token (a short stable hash of it), so one
    person's laptop and phone share a turn; with auth off, its address.
    """
    if auth_enabled:
        credential = bearer_credential(authorization)[1]
        return "token:" + hashlib.sha256(credential.encode()).hexdigest()[:12]
    return remote_ip or "unknown"


class FailedAuthLog:
    """Logs refused tokens once per address and interval, not once per request.

    A scanner or a client with a stale token would otherwise fill the log.
    """

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        # address -> (start of its current interval, failures in it)
        self._seen: dict[str, tuple[float, int]] = {}

    def note(self, address: str) -> None:
        now = self._clock()
        started, count = self._seen.get(address, (now - self._interval, 0))
        if now - started < self._interval:
            self._seen[address] = (started, count + 1)
            return
        if count:
            log.warning("%d more requests with a missing or wrong token from %s", count, address)
        else:
            log.warning("request with a missing or wrong token from %s", address)
        self._seen[address] = (now, 0)
        if len(self._seen) > 10_000:
            # Bound the memory a scan from many addresses can take.
            self._seen = {a: v for a, v in self._seen.items() if now - v[0] < self._interval}
