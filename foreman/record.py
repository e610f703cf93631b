"""One request's record: what the request log line and the metrics both read.

Times are `time.monotonic()` readings, so a duration never mixes clocks
(a wall clock can jump when the machine syncs its time or wakes up).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

#: the status recorded for a request whose client left before its answer was complete
#: (never sent: there is no one to send it to; nginx logs the same number)
CLIENT_LEFT = 499


@dataclass(slots=True)
class RequestRecord:
    method: str
    path: str
    #: the route pattern that served it, a metrics label of bounded size
    route: str
    remote: str | None
    started: float = field(default_factory=time.monotonic)
    #: the client as logs show it: a short hash of its token, or its address
    client: str | None = None
    #: the model the request named
    model: str | None = None
    #: seconds waited in the queue for a turn
    queue_wait: float | None = None
    #: when the first byte of a relayed answer went out
    first_byte: float | None = None
    #: bytes of a relayed answer passed to the client
    relayed_bytes: int | None = None
    #: when it was sent to a target (None while it waits for one)
    sent: float | None = None
    #: bytes and chunks of the answer passed on so far, counted as they go (the status page)
    streamed_bytes: int = 0
    streamed_chunks: int = 0
    #: the target's eval_count and eval_duration, from a final chunk
    eval_count: int | None = None
    eval_duration: int | None = None
    #: when it was given its turn at the target (queued routes)
    dispatched: float | None = None
    #: seconds it held a slot at the target, from its turn to the end of its answer
    service: float | None = None
    #: it made the target load its model
    model_load: bool = False
    #: the name of the target it was sent to, if any
    target: str | None = None
    status: int = 0
    finished: float | None = None

    def finish(self, status: int) -> None:
        """The answer is complete (or given up on) with `status`."""
        self.status = status
        self.finished = time.monotonic()
        if self.dispatched is not None:
            self.service = self.finished - self.dispatched

    @property
    def duration(self) -> float:
        """Seconds from the request's head to its end (or to now, while it runs)."""
        return (self.finished or time.monotonic()) - self.started

    @property
    def time_to_first_byte(self) -> float | None:
        """Seconds to the first relayed byte; None if nothing was relayed."""
        return None if self.first_byte is None else self.first_byte - self.started
