"""Readers: a setting's text in, its value out, or a one-line ConfigError.

Every reader takes ``(text, label)``: the text as given ("" when a setting
with no default is unset) and the label that names where it came from
("FOREMAN_LISTEN", or "--listen (FOREMAN_LISTEN)" for a flag). The message
names the label, the bad value (unless it is a secret) and what is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from foreman.config.values import (
    hide_userinfo,
    is_token,
    normalise_url,
    parse_duration,
    parse_listen,
    parse_mac,
    parse_size,
    parse_wake_address,
)

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"

_T = TypeVar("_T")
Reader = Callable[[str, str], _T]


class ConfigError(Exception):
    """One-line message naming the variable, the bad value and what is accepted."""


# --- numbers ----------------------------------------------------------------


def duration(*, allow_zero: bool) -> Reader[float]:
    """A reader of Go-style durations or bare seconds; zero refused unless `allow_zero`."""

    def read(text: str, label: str) -> float:
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise ConfigError(
                f"{label}={text!r} is not a duration; "
                "use e.g. 500ms, 30s, 1m30s or bare seconds like 30"
            ) from None
        if seconds == 0 and not allow_zero:
            raise ConfigError(
                f"{label}={text!r} is zero; use a duration greater than zero, e.g. 500ms or 30s"
            )
        return seconds

    return read


def size(text: str, label: str) -> int:
    """A byte count greater than zero ("64MiB", "512KB", bare bytes)."""
    try:
        value = parse_size(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(
            f"{label}={text!r} is not a size; use e.g. 512KB, 64MiB, 1GB or bare bytes (more than 0)"
        )
    return value


_MAX_COUNT = 1_000_000


def count(*, minimum: int) -> Reader[int]:
    """A reader of whole numbers from `minimum` to a million."""

    def read(text: str, label: str) -> int:
        stripped = text.strip()
        if not stripped.isdecimal() or not minimum <= int(stripped) <= _MAX_COUNT:
            raise ConfigError(
                f"{label}={text!r} is not a valid count; use a whole number from "
                f"{minimum} to {_MAX_COUNT}"
            )
        return int(stripped)

    return read


# --- words ------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def yes_no(text: str, label: str) -> bool:
    """1 or 0, and the usual spellings of yes and no."""
    value = text.strip().lower()
    if value in _TRUE | _FALSE:
        return value in _TRUE
    raise ConfigError(f"{label}={text!r} is not a yes/no value; use 1 or 0 (also true/false, yes/no, on/off)")


def choice(choices: Mapping[str, _T], what: str) -> Reader[_T]:
    """A reader of one of `choices` (any case), described as `what` in the error."""
    names = list(choices)
    accepted = ", ".join(names[:-1]) + " or " + names[-1]

    def read(text: str, label: str) -> _T:
        value = choices.get(text.strip().lower())
        if value is None:
            raise ConfigError(f"{label}={text!r} is not {what}; use {accepted}")
        return value

    return read


# --- addresses --------------------------------------------------------------


def listen_address(text: str, label: str) -> tuple[str, int]:
    """(host, port) from "host:port", ":port" or "[v6addr]:port"."""
    try:
        return parse_listen(text)
    except ValueError:
        raise ConfigError(
            f"{label}={text!r} is not a valid listen address; "
            "use host:port or :port with a port from 0 to 65535"
        ) from None


def target_url(text: str, label: str) -> str:
    """An http(s) URL with a host, normalised to have no trailing "/"."""
    text = text.strip()
    try:
        return normalise_url(text)
    except ValueError as e:
        # Show the URL without its password, as /healthz does.
        raise ConfigError(
            f"{label}={hide_userinfo(text)!r} is not a usable Ollama URL ({e}); "
            "use http:// or https:// with a host and optional port and path, "
            f"e.g. {DEFAULT_OLLAMA_URL}"
        ) from None


def ethernet_address(text: str, label: str) -> str | None:
    """A machine's Ethernet address, normalised to "a4:83:e7:12:34:56"; None when unset."""
    if not text.strip():
        return None
    try:
        return parse_mac(text)
    except ValueError as e:
        detail = f" ({e})" if "not an Ethernet address" not in str(e) else ""
        raise ConfigError(
            f"{label}={text!r} is not the target's Ethernet address{detail}; use six pairs "
            "of hex digits separated by ':' or '-', e.g. a4:83:e7:12:34:56"
        ) from None


def wake_address(text: str, label: str) -> tuple[str, int]:
    """(ip, port) to send wake packets to, from "ip:port" or "[v6addr]:port"."""
    try:
        return parse_wake_address(text)
    except ValueError:
        raise ConfigError(
            f"{label}={text!r} is not an address to send wake packets to; use an IP "
            "address and a port from 1 to 65535, e.g. 255.255.255.255:9 or 192.168.1.255:9"
        ) from None


# --- tokens: never shown in a message ---------------------------------------


def bearer_token(text: str, label: str) -> str | None:
    """One bearer token, or None when unset."""
    token = text.strip()
    if not token:
        return None
    if not is_token(token):
        raise ConfigError(
            f"{label} (value hidden) contains whitespace or a character that is not "
            "printable ASCII; give the bearer token alone, without 'Bearer '"
        )
    return token


def token_list(text: str, label: str) -> tuple[str, ...]:
    """Comma-separated bearer tokens, each once; () when unset."""
    if not text.strip():
        return ()
    tokens = [t for t in (t.strip() for t in text.split(",")) if t]
    for position, token in enumerate(tokens, start=1):
        if not is_token(token):
            raise ConfigError(
                f"{label} (value hidden): token {position} contains whitespace or a "
                "character that is not printable ASCII; separate tokens with commas"
            )
    if not tokens:
        # Set to something like "," - the operator wanted auth, so fail closed.
        raise ConfigError(
            f"{label} (value hidden) holds no tokens; list tokens separated by commas, "
            "or leave it unset to accept clients without a token"
        )
    return tuple(dict.fromkeys(tokens))
