"""What the soak does, in numbers: the phases, the stalled-connection kinds, the full and --quick sizes.

The full sizes of `upload`, `unread` and `bigbody` are those of issue 11's measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

OTHER_CLIENT = "127.0.0.2"  # still loopback: a second client address for foreman's fair queue
MAX_QUEUE = 100_000
PROBE_EVERY = 0.5
SAMPLE_EVERY = 0.25
HEALTH_EVERY = 0.5
HEALTH_PROBE_EVERY = 0.05  # /healthz timed this often in upload, unread, bigbody: a stall shows to within 50 ms
NOT_READING_RCVBUF = 4096
# (c)'s answer: far more than every buffer between the target and the client
# (loopback autotuning allows several MiB per socket), so that it really stalls.
NOT_READING_CHUNKS = 2000
NOT_READING_CHUNK_SIZE = 8192
BODY_PROMISED = 1000

KINDS = ("a", "b", "c", "d")
KIND_NAMES = {
    "a": "idle: connects, sends nothing",
    "b": f"POST headers with Content-Length: {BODY_PROMISED}, body never sent",
    "c": (
        f"streamed chat ({NOT_READING_CHUNKS} x {NOT_READING_CHUNK_SIZE // 1024} KiB chunks), "
        f"SO_RCVBUF {NOT_READING_RCVBUF // 1024} KiB, never reads"
    ),
    "d": "half a header line (`...HTTP/1.1\\r\\nHost: 127.0`), then nothing",
}


@dataclass(frozen=True)
class Phase:
    key: str
    title: str
    concurrency: int
    streams: int
    chunks: int
    interval: float
    stalled: dict[str, int]
    probe_sources: tuple[tuple[str, str | None], ...]  # (label, local address)


@dataclass(frozen=True)
class UploadCut:
    """Phase `upload`: rounds of connections that each send part of a body, then close."""

    connections: int  # per round, all at once
    sent_mib: int  # body bytes sent before closing, MiB
    declared: int  # the Content-Length promised, bytes
    rounds: int
    every: float  # a round starts this often, or as soon as the previous one is over if that is later
    settle: float  # seconds watched after the last round


@dataclass(frozen=True)
class Unread:
    """Phase `unread`: clients ask for a big whole-document answer (`/api/show`) and never read it."""

    clients: int
    document: int  # bytes of each answer
    client_timeout: float  # FOREMAN_CLIENT_TIMEOUT of this phase's foreman, seconds
    beyond: float  # seconds the clients are held past that timeout
    settle: float  # seconds watched after they are closed


@dataclass(frozen=True)
class BigBody:
    """Phase `bigbody`: one big JSON body of many small objects, then many connections holding part of a body."""

    body: int  # bytes of the big body (sent twice: an unknown model, then the known one)
    holders: int
    held_mib: int  # body MiB each holder sends of a body 1 MiB longer, then holds
    hold: float  # seconds held once every holder has sent its part
    settle: float


@dataclass(frozen=True)
class Settings:
    phases: tuple[Phase, ...]
    warmup_requests: int = 200
    warmup_streams: int = 50
    hold: float = 75.0  # longer than FOREMAN_CLIENT_TIMEOUT's default 60 s
    after: float = 10.0
    churn_rounds: int = 10
    churn_sizes: tuple[tuple[str, int], ...] = (("a", 200), ("b", 200), ("d", 200), ("c", 50))
    sigterm_wait: float = 5.0
    upload_cut: UploadCut = UploadCut(5, 55, 60_000_000, 12, 1.25, 5.0)
    unread: Unread = Unread(10, 50_000_000, 5.0, 10.0, 5.0)
    big_body: BigBody = BigBody(60_000_000, 100, 8, 5.0, 5.0)


OTHER = ("other client (127.0.0.2)", OTHER_CLIENT)
SAME = ("load's own address (127.0.0.1)", None)

FULL = Settings(
    phases=(
        Phase(
            "wide", "FOREMAN_CONCURRENCY=1000: 300 token-speed streams and 400 stalled connections",
            1000, 300, 200, 0.05, {"a": 100, "b": 100, "c": 100, "d": 100}, (OTHER,),
        ),
        Phase(
            "queue", "FOREMAN_CONCURRENCY=4: 200 queued streams, two slots held by clients that never read",
            4, 200, 50, 0.002, {"a": 50, "b": 50, "c": 2, "d": 50}, (OTHER, SAME),
        ),
    ),
)
QUICK = Settings(
    phases=(
        Phase(
            "wide", "FOREMAN_CONCURRENCY=1000: 100 token-speed streams and 200 stalled connections",
            1000, 100, 100, 0.05, {"a": 50, "b": 50, "c": 50, "d": 50}, (OTHER,),
        ),
        Phase(
            "queue", "FOREMAN_CONCURRENCY=4: 60 queued streams, two slots held by clients that never read",
            4, 60, 50, 0.002, {"a": 25, "b": 25, "c": 2, "d": 25}, (OTHER, SAME),
        ),
    ),
    warmup_requests=100,
    warmup_streams=20,
    hold=8.0,
    after=5.0,
    churn_rounds=4,
    churn_sizes=(("a", 100), ("b", 100), ("d", 100), ("c", 20)),
    upload_cut=UploadCut(3, 20, 60_000_000, 4, 0.5, 3.0),
    unread=Unread(5, 30_000_000, 5.0, 4.0, 3.0),
    big_body=BigBody(60_000_000, 20, 8, 3.0, 3.0),
)
