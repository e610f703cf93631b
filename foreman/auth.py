"""Inbound bearer tokens: who may use foreman."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from foreman.clients import Client, token_client

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
    """The bearer tokens foreman accepts from its clients, and the client each one is."""

    def __init__(self, tokens: Iterable[str], named: Mapping[str, Client] | None = None) -> None:
        self.replace(tokens, named)

    def replace(self, tokens: Iterable[str], named: Mapping[str, Client] | None = None) -> None:
        """Accept these tokens from now on (SIGHUP re-reads the tokens files).

        `named` holds the clients a tokens file gave a name or weight; any
        other token is named by a short hash of it, with weight 1.
        """
        named = named or {}
        tokens = list(tokens)
        #: the clients a tokens file names or weighs (the status page lists them even when idle)
        self.named_clients = tuple(dict.fromkeys(named[t] for t in tokens if t in named))
        # One tuple, swapped whole: a request is identified by the old set or the new.
        self._tokens = tuple((t.encode(), named.get(t) or token_client(t)) for t in tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def accepts(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header value carries an accepted token (any, without tokens)."""
        return not self._tokens or self.identify(authorization) is not None

    def identify(self, authorization: str | None) -> Client | None:
        """The client whose token an `Authorization` header value carries, or None.

        Only the Bearer scheme is accepted. None too when there are no tokens:
        auth is off, and a client is its address (foreman.clients.address_client).
        """
        scheme, credential = bearer_credential(authorization)
        offered = credential.encode()
        # Compare against every token, always, so the time taken says nothing
        # about which token (or how much of one) matched. Only the holder of a
        # good token takes the branch, and it learns nothing it did not know.
        matched: Client | None = None
        for token, client in self._tokens:
            if hmac.compare_digest(offered, token):
                matched = client
        return matched if scheme.lower() == "bearer" else None


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
