"""Telling systemd how foreman is doing (the sd_notify protocol).

The protocol is one datagram of `KEY=value` lines to the Unix socket named
in `$NOTIFY_SOCKET`, which systemd sets for a `Type=notify` service; a name
starting with `@` is in the abstract namespace. No library needed. The
variable is systemd's, not a setting of foreman's, so it is read here.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("foreman.notify")


def notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1") to systemd; False when not run by it."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", address.lstrip("\0"), e)
        return False
    return True
