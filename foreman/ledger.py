"""What finished requests leave behind for the status page: the last hundred, and an hour by the minute.

Only requests that named a model are kept (every queued request does):
the status page's own polling, scrapes, CORS preflights and the `GET /`
or `/api/version` that clients' health checks send every few seconds
would otherwise bury them. Each minute of the last hour keeps a
few counts and, per client, the target time and requests; older minutes
are dropped as new ones begin, so the ledger's size is bounded by the
hour however busy the machine is.

Times here are wall-clock (the page shows them); a request's own
durations come from its monotonic record.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from foreman.record import RequestRecord
from foreman.shown import bounded

#: finished requests kept for `recent`
RECENT = 100
#: minutes of history kept, the current one included
MINUTES = 60
# A client with a flood of addresses (auth off) must not grow a minute
# without bound: past this many clients in one minute, the rest share a row.
MAX_CLIENTS_PER_MINUTE = 500
OTHER_CLIENTS = "(others)"


@dataclass(frozen=True, slots=True)
class Finished:
    """One finished request, as `recent` shows it."""

    #: wall-clock time it ended
    ended: float
    client: str
    model: str | None
    target: str | None
    route: str
    method: str
    status: int
    queue_wait: float | None
    duration: float
    tokens: int | None
    tokens_per_second: float | None


@dataclass(slots=True)
class Minute:
    """One minute of the history."""

    #: minutes since the epoch
    index: int
    queue_depth: int = 0
    requests: int = 0
    tokens: float = 0.0
    model_loads: int = 0
    #: per client: [seconds of target time, requests]
    clients: dict[str, list[float]] = field(default_factory=dict)


class Ledger:
    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._monotonic = monotonic
        #: wall-clock time foreman started
        self.started = clock()
        self._recent: deque[Finished] = deque(maxlen=RECENT)
        self._minutes: dict[int, Minute] = {}

    def observe(self, record: RequestRecord) -> None:
        """A request is over: keep it if it is one people want to see."""
        if record.model is None:
            return
        now = self._clock()
        # The record's times are monotonic: placed on the wall clock from now.
        monotonic_now = self._monotonic()
        ended = now - (monotonic_now - (record.finished or monotonic_now))
        client = record.client or "unknown"
        tokens = record.eval_count
        self._recent.append(
            Finished(
                ended=ended,
                client=client,
                model=None if record.model is None else bounded(record.model),
                target=record.target,
                route=record.route,
                method=record.method,
                status=record.status,
                queue_wait=record.queue_wait,
                duration=record.duration,
                tokens=tokens,
                tokens_per_second=_rate(tokens, record.eval_duration),
            )
        )
        minute = self._minute(ended)
        minute.requests += 1
        if record.model_load:
            minute.model_loads += 1
        if client not in minute.clients and len(minute.clients) >= MAX_CLIENTS_PER_MINUTE:
            client = OTHER_CLIENTS
        served = minute.clients.setdefault(client, [0.0, 0])
        served[0] += record.service or 0.0
        served[1] += 1
        if tokens:
            self._spread_tokens(tokens, ended, record)

    def note_depth(self, waiting: int) -> None:
        """The queue holds `waiting` requests now (called as requests join it)."""
        minute = self._minute(self._clock())
        if waiting > minute.queue_depth:
            minute.queue_depth = waiting

    def recent(self) -> list[Finished]:
        """The last finished requests, newest first."""
        return list(reversed(self._recent))

    def history(self) -> list[tuple[float, Minute, float]]:
        """(start, minute, seconds it covers so far) for each minute of the last hour, oldest first."""
        now = self._clock()
        current = _index(now)
        points = []
        for index in range(current - MINUTES + 1, current + 1):
            minute = self._minutes.get(index) or Minute(index)
            start = index * 60.0
            covered = max(1.0, min(60.0, now - start))
            points.append((start, minute, covered))
        return points

    def hour_by_client(self) -> dict[str, tuple[float, int]]:
        """Seconds of target time and requests finished in the last hour, by client."""
        oldest = _index(self._clock()) - MINUTES + 1
        totals: dict[str, list[float]] = {}
        for minute in self._minutes.values():
            if minute.index < oldest:
                continue
            for client, (service, requests) in minute.clients.items():
                total = totals.setdefault(client, [0.0, 0])
                total[0] += service
                total[1] += requests
        return {client: (service, int(requests)) for client, (service, requests) in totals.items()}

    @property
    def minutes_kept(self) -> int:
        """Minutes with anything in them that the ledger holds (never more than the hour)."""
        return len(self._minutes)

    def _minute(self, moment: float) -> Minute:
        index = _index(moment)
        minute = self._minutes.get(index)
        if minute is None:
            minute = self._minutes[index] = Minute(index)
            oldest = _index(self._clock()) - MINUTES + 1
            for stale in [i for i in self._minutes if i < oldest]:
                del self._minutes[stale]
        return minute

    def _spread_tokens(self, tokens: int, ended: float, record: RequestRecord) -> None:
        # A long generation's tokens belong to the minutes it ran in, not all
        # to the minute it ended: spread evenly over the time it generated.
        if record.eval_duration:
            span = record.eval_duration / 1e9
        elif record.service is not None:
            span = record.service
        else:
            span = 0.0
        begun = ended - span
        oldest = (_index(self._clock()) - MINUTES + 1) * 60.0
        if span <= 0 or _index(begun) == _index(ended):
            self._minute(ended).tokens += tokens
            return
        for index in range(max(_index(begun), _index(oldest)), _index(ended) + 1):
            overlap = min(ended, (index + 1) * 60.0) - max(begun, index * 60.0)
            if overlap > 0:
                self._minute(index * 60.0).tokens += tokens * overlap / span


def _index(moment: float) -> int:
    return math.floor(moment / 60.0)


def _rate(tokens: int | None, duration_ns: int | None) -> float | None:
    """Tokens a second as the target reports them (its generation time, not the wait)."""
    if not tokens or not duration_ns:
        return None
    return tokens / (duration_ns / 1e9)
