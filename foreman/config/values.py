"""The grammar of setting values: text in, a value out or ValueError.

These know nothing of variables or flags; ``readers`` wraps them into the
one-line errors that name the setting.
"""

from __future__ import annotations

import ipaddress
import math
import re
from fractions import Fraction
from urllib.parse import urlsplit

# --- sizes ------------------------------------------------------------------

_MAX_SIZE = 1 << 62
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}


def parse_size(text: str) -> int:
    """Bytes in "512KB", "64MiB", "1GB", "1.5GiB" or bare "1048576"; raises ValueError."""
    match = _SIZE.fullmatch(text.strip())
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r}")
    # Exact arithmetic: a float would round large byte counts (and overflow).
    size = Fraction(match.group(1)) * _SIZE_UNITS[unit]
    if size > _MAX_SIZE:
        raise ValueError(f"size too large: {text!r}")
    return int(size)


# --- durations --------------------------------------------------------------

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_BARE_SECONDS = re.compile(_NUMBER)
# Longer units first so "ms" is not read as "m" followed by garbage. Go accepts
# both MICRO SIGN and GREEK SMALL LETTER MU for microseconds.
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNIT_SECONDS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration ("500ms", "1m30s", "1.5h") or bare seconds ("30").

    Raises ValueError for anything else, including empty, negative, "inf" and
    "nan" (none of which the grammar can spell) and values too large for a float.
    """
    text = text.strip()
    if _BARE_SECONDS.fullmatch(text):
        total = float(text)
    else:
        if not text:
            raise ValueError("empty duration")
        total = 0.0
        pos = 0
        while pos < len(text):
            part = _DURATION_PART.match(text, pos)
            if part is None:
                raise ValueError(f"not a duration: {text!r}")
            total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
            pos = part.end()
    if not math.isfinite(total):
        raise ValueError(f"duration too large: {text!r}")
    return total


# --- listen address ---------------------------------------------------------

_PORT = re.compile(r"[0-9]+")
# Host names and IPv4 literals; anything fancier belongs in brackets or DNS.
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")


def parse_listen(text: str) -> tuple[str, int]:
    """Split "host:port", ":port" or "[v6addr]:port" into (host, port).

    The host comes back without brackets and "" for all interfaces. Port 0 is
    allowed (the OS picks a free one). Raises ValueError for anything else.
    """
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"no ':' before the port in {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            # Strip a zone ("fe80::1%eth0") before checking: it is passed through.
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif host and not _HOSTNAME.fullmatch(host):
        # Catches unbracketed IPv6 ("::1:8080"), where the port is ambiguous.
        raise ValueError(f"{host!r} is not a host name or address")
    if not _PORT.fullmatch(port_text):
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port


# --- waking the target ------------------------------------------------------

_MAC = re.compile(r"[0-9A-Fa-f]{2}(?P<sep>[:-])[0-9A-Fa-f]{2}(?:(?P=sep)[0-9A-Fa-f]{2}){4}")


def parse_mac(text: str) -> str:
    """An Ethernet address ("a4:83:e7:12:34:56" or "A4-83-E7-12-34-56"), as "a4:83:e7:12:34:56".

    Raises ValueError for anything else, and for a group (multicast or
    broadcast) or all-zero address, which no network card has as its own.
    """
    text = text.strip()
    if not _MAC.fullmatch(text):
        raise ValueError(f"not an Ethernet address: {text!r}")
    octets = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if octets[0] & 1:
        raise ValueError("a multicast or broadcast address, not a machine's own")
    if not any(octets):
        raise ValueError("the all-zero address, not a machine's own")
    return ":".join(f"{octet:02x}" for octet in octets)


def parse_wake_address(text: str) -> tuple[str, int]:
    """(ip, port) from "ip:port" or "[v6addr]:port": an address literal, never a name to look up.

    Port 1 to 65535. Raises ValueError for anything else.
    """
    host, port = parse_listen(text)
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if port == 0:
        raise ValueError("port 0")
    return host, port


# --- the target URL ---------------------------------------------------------


def strip_userinfo(url: str) -> str:
    """A parsed URL without any user:password@, safe for /healthz and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"


_SCHEME_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/*")


def hide_userinfo(text: str) -> str:
    """Text that failed to parse as a URL, without anything that may be a password."""
    # A password may itself hold "/", ":" or even "://", so keep a scheme
    # prefix and drop everything up to the last "@" rather than trust the
    # URL's structure.
    if "@" not in text:
        return text
    scheme = _SCHEME_PREFIX.match(text)
    prefix = scheme.group(0) if scheme else ""
    return prefix + text[len(prefix) :].rpartition("@")[2]


def normalise_url(text: str) -> str:
    """The target URL without trailing "/", or ValueError saying what is wrong."""
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("it contains whitespace or control characters")
    if "?" in text or "#" in text:
        # API paths are appended to the URL; a query or fragment would swallow them.
        raise ValueError("query strings and fragments are not allowed")
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ValueError("the [IPv6] host is malformed") from None
    try:
        port = parts.port
    except ValueError:
        port = 0  # not a number or out of range: same advice as port 0
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("the scheme must be http or https")
    if not parts.hostname:
        raise ValueError("there is no host")
    if parts.netloc.endswith(":") or port == 0:
        raise ValueError("the port must be from 1 to 65535")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


# --- tokens -----------------------------------------------------------------


def is_token(text: str) -> bool:
    """Whether `text` can be a bearer token: printable ASCII, no spaces (it travels in a header)."""
    return bool(text) and all("!" <= c <= "~" for c in text)
