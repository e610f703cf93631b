"""Times as foreman's JSON documents write them: RFC 3339 in UTC, to the millisecond."""

from __future__ import annotations

import datetime


def rfc3339(moment: datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339_epoch(seconds: float) -> str:
    """A Unix time (`time.time()`), written as `rfc3339` writes a datetime."""
    return rfc3339(datetime.datetime.fromtimestamp(seconds, datetime.UTC)) or ""
