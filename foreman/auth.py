"""Inbound bearer tokens: who may use foreman."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


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
        scheme, _, credential = (authorization or "").strip().partition(" ")
        offered = credential.strip().encode()
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
        credential = (authorization or "").strip().partition(" ")[2].strip()
        return "token:" + hashlib.sha256(credential.encode()).hexdigest()[:12]
    return remote_ip or "unknown"
