"""Who a request comes from: a client's name and its weight in the queue.

With auth on, a client is a token: named in a tokens file (``name=alice``)
or else by a short hash of the token, never by the token itself. With auth
off, a client is its address. Names are what logs, metrics and the queue's
status show; the weight is the client's share of the target against others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

DEFAULT_WEIGHT = 1.0


@dataclass(frozen=True, slots=True)
class Client:
    """A client as foreman tells them apart: a name safe to show, and a weight."""

    name: str
    weight: float = DEFAULT_WEIGHT


def token_hash_name(token: str) -> str:
    """The name of a token given none: a short stable hash, safe to log.

    Names from a tokens file cannot contain ":", so the two never collide.
    """
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def token_client(token: str, name: str | None = None, weight: float | None = None) -> Client:
    """The client a token stands for, with the defaults for what is not given."""
    return Client(name or token_hash_name(token), DEFAULT_WEIGHT if weight is None else weight)


def address_client(address: str | None) -> Client:
    """The client of a request when auth is off (or no token identified it)."""
    return Client(address or "unknown")
