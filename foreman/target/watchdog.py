"""Cutting a relayed request off when the target falls silent for too long."""

from __future__ import annotations

import asyncio
import time

from foreman.target.contract import Upstream


class SilenceWatch:
    """Closes the upstream once the target has sent nothing for `timeout` seconds.

    Chunks only stamp `Upstream.last_heard`; the timer looks at the stamp
    when it fires and sleeps again for the rest, so a busy stream costs no
    timer per chunk.
    """

    def __init__(self, upstream: Upstream, timeout: float) -> None:
        self._upstream = upstream
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(timeout, self._check)

    def _check(self) -> None:
        silent_for = time.monotonic() - self._upstream.last_heard
        if silent_for >= self._timeout:
            self._timer = None
            self._upstream.cut_off_silent_target()
        else:
            self._timer = self._loop.call_later(self._timeout - silent_for, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
