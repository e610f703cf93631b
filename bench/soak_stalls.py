"""The stalled clients: four kinds of connection that never finish what they start, and what foreman did with them.

(a) connects and sends nothing; (b) sends a POST's headers and never the
body; (c) sends a streamed chat with a small receive buffer and never reads;
(d) sends half a header line. Each is a `Stall` that only watches what
happens to it; `stall_rows` reports them.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import statistics
import time

import load
import procs
from api import stream_body
from soak_settings import (
    BODY_PROMISED,
    KIND_NAMES,
    KINDS,
    NOT_READING_CHUNK_SIZE,
    NOT_READING_CHUNKS,
    NOT_READING_RCVBUF,
    Phase,
)
from soak_watch import Timeline

HOST = procs.HOST


class Stall(asyncio.Protocol):
    """One stalled client: sends `payload` (maybe nothing), then only watches what happens."""

    def __init__(self, kind: str, payload: bytes, paused: bool) -> None:
        self.kind = kind
        self.payload = payload
        self.paused = paused
        self.transport: asyncio.Transport | None = None
        self.opened = 0.0
        self.first_data: float | None = None
        self.closed_at: float | None = None  # when the connection ended, whoever ended it
        self.closed_by_us = False
        self.ended_before_drain = False  # (c): the connection was gone before we started reading
        self.received = 0
        self.head = b""
        self.tail = b""
        self.error = ""
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.opened = time.monotonic()
        if self.paused:
            transport.pause_reading()
        if self.payload:
            transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        if self.first_data is None:
            self.first_data = time.monotonic()
        self.received += len(data)
        self.tail = (self.tail + data)[-64:]
        if len(self.head) < 120:
            self.head += data[: 120 - len(self.head)]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = time.monotonic()
        if exc is not None:
            self.error = type(exc).__name__
        if not self.lost.done():
            self.lost.set_result(None)

    @property
    def answer_complete(self) -> bool:
        """A streamed answer that arrived whole: its done:true line and the terminating chunk."""
        return self.tail.endswith(b"0\r\n\r\n") and b'"done":true' in self.tail

    @property
    def ended_by_server(self) -> bool:
        return self.closed_at is not None and not self.closed_by_us

    def close(self) -> None:
        if self.closed_at is None and self.transport is not None:
            self.closed_by_us = True
            self.transport.abort()


def stall_payload(kind: str, port: int) -> bytes:
    if kind == "a":
        return b""
    if kind == "b":
        return (
            b"POST /api/chat HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (HOST.encode(), port, BODY_PROMISED)
        )
    if kind == "c":
        return load.post("/api/chat", port, stream_body(NOT_READING_CHUNKS, NOT_READING_CHUNK_SIZE, 0.0))
    return b"POST /api/chat HTTP/1.1\r\nHost: 127.0"


async def open_stall(kind: str, port: int) -> Stall:
    return await connect_stall(Stall(kind, stall_payload(kind, port), paused=kind == "c"), port)


async def connect_stall(stall: Stall, port: int) -> Stall:
    """Connect `stall` to foreman; one that never reads gets a small receive buffer."""
    loop = asyncio.get_running_loop()
    if stall.paused:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Before connect, so that the window offered in the handshake is small too.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NOT_READING_RCVBUF)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), 10)
            await loop.create_connection(lambda: stall, sock=sock)
        except BaseException:
            sock.close()
            raise
    else:
        await asyncio.wait_for(loop.create_connection(lambda: stall, HOST, port), 10)
    return stall


async def open_stalls(kind: str, count: int, port: int) -> tuple[list[Stall], int]:
    """Open `count` stalled connections of one kind, 50 at a time; returns them and the failures."""
    opened: list[Stall] = []
    failed = 0
    for start in range(0, count, 50):
        batch = await asyncio.gather(
            *(open_stall(kind, port) for _ in range(min(50, count - start))), return_exceptions=True
        )
        for outcome in batch:
            if isinstance(outcome, Stall):
                opened.append(outcome)
            else:
                failed += 1
        await asyncio.sleep(0.05)
    return opened, failed


async def all_settled(group: list[Stall]) -> bool:
    """Every connection of the group ended, or holds a whole answer."""
    return all(st.closed_at is not None or st.answer_complete for st in group)


# ---------------------------------------------------------------- report


def stall_rows(out: dict, hold: float) -> list[str]:
    stalls: dict[str, list[Stall]] = out["stalls"]
    timeline: Timeline = out["timeline"]
    phase: Phase = out["phase"]
    rows = [
        ("| kind | what the client does | opened | ended by foreman while held | "
        "time to end (from connect: min / median / max) | what the client got first | still open when we closed |"),
        "|---|---|---:|---:|---|---|---:|",
    ]
    for kind in KINDS:
        wanted = phase.stalled.get(kind, 0)
        if not wanted:
            continue
        group = stalls[kind]
        opened = f"{len(group)}" + (f" ({out['failed_open'][kind]} failed)" if out["failed_open"].get(kind) else "")
        if kind == "c":
            ended, times, got, still = c_outcome(out, timeline)
        else:
            ended_group = [st for st in group if st.ended_by_server]
            ended = str(len(ended_group))
            durations = sorted(st.closed_at - st.opened for st in ended_group)  # type: ignore[operator]
            times = (
                f"{durations[0]:.1f} / {statistics.median(durations):.1f} / {durations[-1]:.1f} s"
                if durations else "–"
            )
            heads = collections.Counter(first_line(st) for st in ended_group)
            got = "; ".join(f"{h} x{n}" for h, n in heads.most_common(3)) or "–"
            still = str(sum(1 for st in group if not st.ended_by_server))
        rows.append(f"| ({kind}) | {KIND_NAMES[kind]} | {opened} | {ended} | {times} | {got} | {still} |")
    rows.append("")
    rows.append(
        f"Held for up to {hold:g} s after opening (less if foreman ended every one sooner); "
        f"the hold ended at {timeline.events['hold over'] - timeline.events['stalled opened']:.1f} s."
    )
    return rows


def first_line(st: Stall) -> str:
    if not st.received:
        return "nothing, then " + ("a reset" if st.error else "EOF")
    line = st.head.split(b"\r\n", 1)[0].decode(errors="replace")
    return f"`{line}`"


def c_outcome(out: dict, timeline: Timeline) -> tuple[str, str, str, str]:
    """For the never-reading clients: foreman's in-flight count says when it let go of them."""
    group: list[Stall] = out["stalls"]["c"]
    held = len(group)
    done_at = timeline.events.get("streams done", 0.0)
    opened_at = timeline.events["stalled opened"]
    hold_over = timeline.events["hold over"]
    after = [(t, inflight) for t, _, inflight in timeline.queue if done_at <= t <= hold_over]
    released = next((t for t, inflight in after if inflight == 0), None)
    ended_before_drain = sum(1 for st in group if st.ended_before_drain)
    eof = out["drain_eof"]
    if released is not None:
        ended = f"all {held} (in_flight 0 at {released - opened_at:.0f} s)"
        times = f"≤ {released - opened_at:.0f} s (from /healthz in_flight)"
    else:
        last = after[-1][1] if after else "?"
        ended = f"0 (in_flight still {last} at the end of the hold)"
        times = "–"
    complete = out["drain_complete"]
    rest = held - eof - complete
    parts = []
    if eof:
        parts.append(f"{eof} got the bytes foreman had sent, then EOF (dropped)")
    if complete:
        parts.append(f"{complete} got the whole answer with done:true (never dropped)")
    if rest:
        parts.append(
            f"{rest} still receiving after 2 s"
            + (" (what foreman had handed to the kernel before letting go)" if released is not None else "")
        )
    got = "when finally reading at the end: " + "; ".join(parts)
    if ended_before_drain:
        got += f" ({ended_before_drain} had ended before)"
    still = "0 on foreman's side" if released is not None else str(held - eof)
    return ended, times, got, still
