"""`TargetClient`: the `Target` over HTTP, with one shared client for the whole process.

One `PooledHTTPClient` (Tornado's simple client with keep-alive connections
and closable requests) is configured for multi-minute streams and many
concurrent ones. Failures come out as the `TargetError` kinds of
`foreman.target.errors`, classified by what failed.
"""

from __future__ import annotations

from typing import Any, cast

from tornado import httputil
from tornado.netutil import Resolver

from foreman.target._tornado import PooledHTTPClient, UpstreamRequest
from foreman.target.contract import BodyProducer, Sink, TargetResponse, Upstream
from foreman.target.errors import Cancelled, TargetStatusError, TargetTimeout
from foreman.target.failures import classify, refused
from foreman.target.headers import downstream_headers, forwardable_headers, path_as_sent
from foreman.target.metadata_body import ACCEPT_ENCODING, MetadataBody
from foreman.target.pool import ConnectionPool
from foreman.target.watchdog import SilenceWatch

# Covers finding, dialling and (for https) the TLS handshake with the target.
CONNECT_TIMEOUT = 10.0
# A model load can take minutes before the first byte.
DEFAULT_IDLE_TIMEOUT = 600.0
METADATA_TIMEOUT = 30.0
# One HTTP client per process; the queue (when there is one) bounds how many
# requests reach it, so this only has to be larger than any sane load.
MAX_CONNECTIONS = 1024
# A stream that runs for hours must not trip Tornado's body limit, which with
# a streaming_callback is the only one that applies.
MAX_STREAMED_BODY = 1 << 50


class TargetClient:
    """The `Target` over HTTP."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        display_url: str,
        metadata_timeout: float = METADATA_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        resolver: Resolver | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.display_url = display_url
        self._token = token
        self._metadata_timeout = metadata_timeout
        self._idle_timeout = idle_timeout
        self._http = PooledHTTPClient(
            force_instance=True,
            max_clients=MAX_CONNECTIONS,
            max_body_size=MAX_STREAMED_BODY,
            resolver=resolver,
            defaults={"connect_timeout": connect_timeout},
        )

    @property
    def pool(self) -> ConnectionPool:
        """The keep-alive connections, for tests and benchmarks."""
        return self._http.pool

    def close(self) -> None:
        self._http.close()

    async def fetch(self, path: str, timeout: float | None = None) -> TargetResponse:
        headers = httputil.HTTPHeaders(
            {
                "Accept": "application/json",
                # Asked explicitly: foreman inflates the answer itself, bounded.
                "Accept-Encoding": ACCEPT_ENCODING,
                "Connection": "keep-alive",
            }
        )
        self._authorize(headers)
        upstream = Upstream()
        body = MetadataBody(upstream)
        request = UpstreamRequest(
            self.base_url + path,
            headers=headers,
            request_timeout=self._metadata_timeout if timeout is None else timeout,
            follow_redirects=False,
            # Tornado would inflate without a limit (and hold the result whole).
            decompress_response=False,
            streaming_callback=body.write,
        )
        request.upstream = upstream
        request.on_head = body.start
        try:
            response = await self._http.fetch(request, raise_error=False)
        except Exception as e:
            raise classify(e, upstream, self.display_url) from e
        finally:
            upstream.detach()
        content = body.finish()
        if upstream.refused is not None:
            # Refused after Tornado had read the whole answer anyway.
            raise refused(upstream, self.display_url)
        response_headers = response.headers
        if body.inflated:
            response_headers = response_headers.copy()
            del response_headers["Content-Encoding"]
        if not 200 <= response.code < 300:
            raise TargetStatusError(
                response.code,
                content,
                response_headers.get("Content-Type"),
                response_headers.get("Location"),
            )
        return TargetResponse(response.code, response_headers, content)

    async def relay(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: httputil.HTTPHeaders,
        sink: Sink,
        upstream: Upstream,
        body_producer: BodyProducer | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        outgoing = forwardable_headers(headers)
        if body_producer is not None and "Content-Length" in headers:
            # Tornado sends a produced body chunked unless told its length.
            outgoing["Content-Length"] = headers["Content-Length"]
        # Without it Tornado asks the target to close after each response.
        outgoing["Connection"] = "keep-alive"
        if "Content-Type" not in outgoing and (body or body_producer):
            # Tornado would label the body a form; say only that it is bytes.
            outgoing["Content-Type"] = "application/octet-stream"
        self._authorize(outgoing)

        def on_head(code: int, reason: str, response_headers: httputil.HTTPHeaders) -> None:
            upstream.response_started = True
            sink.start(code, reason, downstream_headers(response_headers))

        request = UpstreamRequest(
            self.base_url + path_as_sent(path),
            method=method,
            headers=outgoing,
            body=body,
            body_producer=cast(Any, body_producer),
            # No overall deadline: a generation may stream for many minutes.
            request_timeout=0,
            follow_redirects=False,
            decompress_response=False,
            allow_nonstandard_methods=True,
            # Tornado awaits what the callback returns before the next chunk.
            streaming_callback=cast(Any, sink.write),
        )
        request.upstream = upstream
        request.on_head = on_head
        if upstream.closed:
            raise Cancelled("the client went away before the request was sent")
        silence_allowed = self._idle_timeout if idle_timeout is None else idle_timeout
        watchdog = SilenceWatch(upstream, silence_allowed)
        try:
            await self._http.fetch(request, raise_error=False)
        except Exception as e:
            if upstream.closed:
                raise Cancelled("the client went away") from e
            if upstream.went_silent:
                raise TargetTimeout(
                    f"the target {self.display_url} sent nothing for {silence_allowed:g}s"
                    + (" (FOREMAN_TARGET_IDLE_TIMEOUT)" if idle_timeout is None else "")
                ) from e
            raise classify(e, upstream, self.display_url) from e
        finally:
            watchdog.stop()
            upstream.detach()
            # Tornado's connection objects can outlive the request in a
            # reference cycle (a failed read keeps its traceback): the body
            # and the callbacks into the client's handler must not live on
            # with them.
            request.body = b""
            request.body_producer = request.streaming_callback = None
            request.on_head = request.upstream = None
        if upstream.refused is not None:
            # Refused (an invalid status) after Tornado had read the whole
            # answer anyway; none of it went to the sink.
            raise refused(upstream, self.display_url)

    def _authorize(self, headers: httputil.HTTPHeaders) -> None:
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
