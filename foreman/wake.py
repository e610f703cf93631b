"""Waking a sleeping target with Wake-on-LAN magic packets.

A Mac asleep with "Wake for network access" on wakes when its network card
sees a magic packet: six 0xFF bytes, then its Ethernet address sixteen
times, in any frame; a UDP datagram to the broadcast address (port 9, the
discard service, by convention) is the usual carrier.

`Waker` sends them while requests wait for an unreachable target: one at
once, then one every `REPEAT` seconds (Wi-Fi often needs several), never two
less than `MIN_GAP` apart, until it is told to stop. The socket is
non-blocking: a packet that cannot go out now is skipped, never waited for.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

log = logging.getLogger("foreman.wake")

#: seconds between packets while requests wait for the target
REPEAT = 3.0
#: the shortest gap between two packets, whatever asks for them
MIN_GAP = 1.0


def magic_packet(mac: str) -> bytes:
    """The magic packet for `mac` ("a4:83:e7:12:34:56" or with '-')."""
    address = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(address) != 6:
        raise ValueError(f"{mac!r} is not an Ethernet address")
    return b"\xff" * 6 + address * 16


def shown_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def send_packet(mac: str, address: tuple[str, int]) -> None:
    """Send one magic packet for `mac` to `address` (host, port), now; raises OSError."""
    with _open_socket(address[0]) as sock:
        sock.sendto(magic_packet(mac), address)


def _open_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        # Without it the kernel refuses a datagram to a broadcast address.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    except OSError:
        sock.close()
        raise
    return sock


class Waker:
    """Sends magic packets for one target while told to, at a bounded rate."""

    def __init__(
        self,
        mac: str,
        address: tuple[str, int],
        *,
        repeat: float = REPEAT,
        needed: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mac = mac
        self.address = address
        self._packet = magic_packet(mac)
        self._repeat = max(repeat, MIN_GAP)
        self._clock = clock
        # Asked before each packet: a tick when nothing waits any more sends none.
        self._needed = needed
        self._socket: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_sent = -float("inf")
        self._on_sent: list[Callable[[], None]] = []
        #: packets sent since the process started
        self.sent = 0
        #: packets sent since the target was last reachable
        self.sent_this_outage = 0
        self._failed_this_outage = False

    @property
    def waking(self) -> bool:
        """Packets are being sent (an outage with requests waiting)."""
        return self._timer is not None

    def on_sent(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each packet sent (metrics count them)."""
        self._on_sent.append(listener)

    def start(self) -> None:
        """Begin (or go on) sending: one packet as soon as the rate allows, then every `repeat` seconds."""
        if self._timer is not None:
            return
        delay = max(0.0, self._last_sent + MIN_GAP - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def stop(self, outage_over: bool = True) -> None:
        """No more packets: the target answered (`outage_over`), or nothing waits for it now.

        Until the outage is over, a later `start` goes on counting it.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if outage_over:
            self.sent_this_outage = 0
            self._failed_this_outage = False

    def close(self) -> None:
        self.stop()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def summary(self) -> str:
        """What waking did in this outage, for the error a client gets after waiting."""
        where = f"to {self.mac} via {shown_address(self.address)}"
        if self.sent_this_outage == 1:
            return f"1 wake packet was sent {where}"
        if self.sent_this_outage:
            return f"{self.sent_this_outage} wake packets were sent {where}"
        return f"no wake packet could be sent {where}"

    def _tick(self) -> None:
        if self._needed():
            self._send()
        self._timer = asyncio.get_running_loop().call_later(self._repeat, self._tick)

    def _send(self) -> None:
        try:
            if self._socket is None:
                self._socket = _open_socket(self.address[0])
            self._socket.sendto(self._packet, self.address)
        except OSError as e:
            # A network that is down, or no route: try again at the next tick.
            if not self._failed_this_outage:
                log.warning(
                    "could not send a wake packet to %s via %s: %s",
                    self.mac, shown_address(self.address), e.strerror or e,
                )
            self._failed_this_outage = True
            return
        self._last_sent = self._clock()
        self.sent += 1
        self.sent_this_outage += 1
        if self.sent_this_outage == 1:
            log.info(
                "target unreachable with requests waiting: sent a wake packet to %s via %s; "
                "repeating every %gs until it answers",
                self.mac, shown_address(self.address), self._repeat,
            )
        else:
            log.debug("sent wake packet %d of this outage", self.sent_this_outage)
        for listener in self._on_sent:
            listener()
