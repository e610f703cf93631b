"""Finding a dead connection to the target in seconds, not minutes.

A Mac that goes to sleep, or off the network, does not close its
connections: its packets just stop. Without help the kernel notices only
when data it sent goes unacknowledged for about fifteen minutes of
retransmissions, and an idle connection (a pooled one, or one waiting for a
model to load) never. So every connection to the target gets

- TCP keepalive: after `IDLE` seconds without a packet the kernel asks the
  other kernel, every `INTERVAL` seconds, `PROBES` times. A live Ollama that
  is busy loading a model answers from its kernel; a sleeping Mac does not.
- on Linux, TCP_USER_TIMEOUT: data (a request, or a keepalive probe) not
  acknowledged within `USER_TIMEOUT` seconds ends the connection.

Either way the connection fails with ETIMEDOUT, which the failure
classification turns into "unreachable" when nothing of an answer had come.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger("foreman.target")

IDLE = 10
INTERVAL = 5
PROBES = 3
USER_TIMEOUT = 20.0

# macOS calls the idle time TCP_KEEPALIVE; Linux (and BSDs) TCP_KEEPIDLE.
_IDLE_OPTION: int | None = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)


def keep_alive(sock: socket.socket) -> None:
    """Turn on keepalive (and the user timeout where there is one) on a connected TCP socket.

    An option the platform lacks is skipped; one it refuses is logged, never
    raised: a connection without them still works, it is only found dead later.
    """
    options: list[tuple[int, int, int]] = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    if _IDLE_OPTION is not None:
        options.append((socket.IPPROTO_TCP, _IDLE_OPTION, IDLE))
    if hasattr(socket, "TCP_KEEPINTVL"):
        options.append((socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, INTERVAL))
    if hasattr(socket, "TCP_KEEPCNT"):
        options.append((socket.IPPROTO_TCP, socket.TCP_KEEPCNT, PROBES))
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        options.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(USER_TIMEOUT * 1000)))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError as e:
            log.debug("could not set socket option %d on a connection to the target: %s", option, e)
