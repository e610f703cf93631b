"""Which `Host` headers a foreman listening on loopback only takes, against DNS rebinding.

A web page can make the browser that shows it send requests to a name the
page's owner controls, then point that name at 127.0.0.1: the browser
believes it is talking to the page's own site and lets the page read the
answers. Such a request still carries the attacker's name in `Host`. Ollama
listening on loopback refuses those with 403 and so does foreman: only
names and addresses that cannot be made to point somewhere else pass.
Listening on other interfaces, any `Host` is taken, as by Ollama.
"""

from __future__ import annotations

import functools
import ipaddress
import socket

# Names that are local by definition (RFC 6761) or by convention: Ollama
# takes these suffixes too.
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


@functools.cache
def loopback_only(listen_host: str) -> bool:
    """Whether FOREMAN_LISTEN's host binds loopback only ("" is every interface)."""
    if listen_host.lower() == "localhost":
        return True
    address = _ip(listen_host)
    return address is not None and address.is_loopback


def allowed_host(header: str) -> bool:
    """Whether a request with this `Host` may be served by a loopback-only foreman.

    Allowed: no Host (HTTP/1.0), `localhost` and names under `.localhost`,
    `.local` and `.internal`, this machine's own name, and addresses that are
    loopback, private, link-local or unspecified; with any port.
    """
    host = _without_port(header.strip()).lower()
    address = _ip(host)
    if address is not None:
        return (
            address.is_loopback or address.is_private or address.is_link_local
            or address.is_unspecified
        )
    name = host.removesuffix(".")  # "localhost." is localhost too
    return (
        name in ("", "localhost", _own_name())
        or name.endswith(_LOCAL_SUFFIXES)
    )


def _without_port(host: str) -> str:
    """The host part of a `Host` value; the whole value when the port is not a number."""
    if host.startswith("["):  # "[::1]:8080", "[::1]"
        address, _, after = host[1:].partition("]")
        port = after.removeprefix(":")
        return address if after in ("", ":" + port) and (port == "" or port.isdigit()) else host
    if host.count(":") == 1:  # "127.0.0.1:8080", "localhost:8080"; bare IPv6 has more
        name, _, port = host.partition(":")
        # "localhost:80,evil.example" (two Host headers joined) is no local name.
        return name if port.isdigit() or not port else host
    return host


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.cache
def _own_name() -> str:
    # The machine's name as the system knows it: no lookup, nothing sent.
    return socket.gethostname().lower().removesuffix(".")
