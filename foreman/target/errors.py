"""What can go wrong talking to the target, by what the caller should do next.

- `TargetUnreachable`: no response at all (refused, reset or closed before
  any response byte, a name that does not resolve, a connection or TLS
  handshake that timed out). Nothing reached a model, so the request may be
  retried: the queue waits the target out.
- `TargetTimeout`: connected, but no answer before a deadline.
- `TargetUnusable`: the target sent something foreman cannot relay
  (malformed HTTP, a broken-off response, a non-JSON inventory).
- `TargetStatusError`: the target answered with a non-2xx status (only raised
  by `fetch`; `relay` passes such answers through unchanged).
- `Cancelled`: foreman itself ended the request (its client went away).
"""

from __future__ import annotations


class TargetError(Exception):
    """Something went wrong talking to the target."""


class TargetUnreachable(TargetError):
    """No response at all: safe to retry, nothing reached a model."""


class TargetTimeout(TargetError):
    """Connected, but the target did not answer before a deadline."""


class TargetUnusable(TargetError):
    """The target sent something that cannot be relayed or understood."""


class TargetStatusError(TargetError):
    """The target answered with a non-2xx status.

    The message names only the status: it reaches /healthz, which needs no
    token, and the target's error body can name local paths. The body's start
    is `excerpt`, for the log.
    """

    def __init__(
        self, status: int, body: bytes, content_type: str | None, location: str | None = None
    ) -> None:
        super().__init__(f"the target answered {status}")
        self.status = status
        self.body = body
        self.content_type = content_type
        #: where a redirect (3xx) points, to pass on with the status
        self.location = location

    @property
    def excerpt(self) -> str:
        """The first 200 bytes of the target's answer, escaped, for the log."""
        return repr(self.body[:200])


class Cancelled(TargetError):
    """The request was cancelled by foreman (its client went away)."""
