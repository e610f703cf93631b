"""Classifying a failed request to the target by what failed, not by what the error says.

The stage the request reached decides: an error before a connection was
established (name lookup, TCP connect, TLS handshake, including their
timeouts) means the target is unreachable and the request may wait it out.
So does a connection that failed before any byte of an answer arrived,
whether it was new or pooled: closed, reset, or found dead by keepalive
(see `foreman.target.keepalive`). Silence past foreman's own deadline on a
live connection is a timeout, and garbage is unusable. Any byte received
means the target answered: a request is retried only when nothing came back.
"""

from __future__ import annotations

import errno
import socket
import ssl

from tornado import httputil
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPTimeoutError

from foreman.target.contract import Upstream
from foreman.target.errors import (
    TargetError,
    TargetTimeout,
    TargetUnreachable,
    TargetUnusable,
)


def classify(error: BaseException, upstream: Upstream, where: str) -> TargetError:
    """The `TargetError` for `error`, raised by a request to the target at `where`."""
    if isinstance(error, TargetError):
        return error
    if upstream.refused is not None:
        return refused(upstream, where)
    if upstream.response_started:
        return TargetUnusable(f"the target {where} broke off its response: {describe(error)}")
    if upstream.head_received or isinstance(error, httputil.HTTPInputError):
        return TargetUnusable(f"the target {where} sent a malformed HTTP response")
    if upstream.answered:
        # Bytes, but never a complete head (an SSH or SMTP banner, then a
        # close): something is listening there and it is not Ollama. Retrying
        # would only send the request again.
        return TargetUnusable(f"the target {where} sent something that is not an HTTP answer")
    if isinstance(error, ssl.SSLError):
        # A certificate or protocol mismatch is a configuration error;
        # retrying cannot fix it. (A handshake that times out is not this.)
        return TargetUnusable(f"TLS with the target {where} failed: {describe(error)}")
    if not upstream.connected:
        # Still finding or dialling the target: nothing reached it.
        return TargetUnreachable(f"cannot connect to the target {where}: {describe(error)}")
    if isinstance(error, HTTPTimeoutError):
        # foreman's own deadline passed on a connection the target kept open.
        return TargetTimeout(f"the target {where} did not answer in time")
    if isinstance(error, (OSError, StreamClosedError, HTTPClientError)):
        # Connected, but closed or reset before any byte of an answer, or
        # found dead by keepalive or the user timeout (ETIMEDOUT: a target
        # asleep or off the network, new connection or pooled one alike).
        return TargetUnreachable(f"cannot connect to the target {where}: {describe(error)}")
    return TargetUnusable(f"talking to the target {where} failed: {describe(error)}")


def refused(upstream: Upstream, where: str) -> TargetUnusable:
    """The error for an answer foreman refused (see `Upstream.refuse`)."""
    return TargetUnusable(f"the target {where} {upstream.refused}")


def describe(error: BaseException) -> str:
    """A short phrase for a low-level error, for messages a user reads."""
    if isinstance(error, socket.gaierror):
        return f"name lookup failed ({error.strerror or error})"
    if isinstance(error, HTTPTimeoutError):
        # Tornado says which phase timed out ("while resolving", "during TLS handshake").
        detail = str(error).removeprefix("Timeout").strip()
        return f"timed out {detail}" if detail else "connection timed out"
    if isinstance(error, OSError) and error.errno == errno.ETIMEDOUT:
        # The kernel gave up: keepalive probes or data went unacknowledged.
        return "the connection went dead (nothing acknowledged; asleep or off the network?)"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, TimeoutError):
        return "connection timed out"
    if isinstance(error, HTTPClientError):
        return error.message or str(error)
    return str(error) or type(error).__name__
