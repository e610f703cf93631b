"""Reading a metadata answer (`/api/tags`, `/api/ps`) whole, at a bounded cost.

foreman holds these answers in memory, so a target must not be able to make
them large: neither with a large body nor with a small compressed one that
inflates to gigabytes (512 KiB of gzip is 512 MiB of zeros). The body is
counted as it arrives and inflated piece by piece, never past the limit;
beyond it the connection is closed and the request fails as unusable.
"""

from __future__ import annotations

import zlib

from tornado import httputil

from foreman.target.contract import Upstream

#: the most foreman holds of one metadata answer, as sent and once inflated;
#: an inventory of hundreds of models is a few hundred KiB
MAX_METADATA_BODY = 8 << 20

# How much is inflated at once.
_INFLATE_STEP = 256 << 10

#: what foreman asks for: the encodings it can inflate
ACCEPT_ENCODING = "gzip, deflate"

# zlib's window bits for each Content-Encoding foreman reads (RFC 9110 8.4.1).
_WINDOW_BITS = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,  # HTTP's "deflate" is the zlib format
}


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


class MetadataBody:
    """A metadata answer's body, collected by a fetch's `on_head` and streaming callback."""

    def __init__(self, upstream: Upstream, limit: int = MAX_METADATA_BODY) -> None:
        self._upstream = upstream
        self._limit = limit
        self._parts: list[bytes] = []
        self._raw = 0
        self._held = 0
        self._inflater: zlib._Decompress | None = None
        #: whether the body came compressed (and was inflated)
        self.inflated = False

    def start(self, status: int, reason: str, headers: httputil.HTTPHeaders) -> None:
        """The answer's head arrived: refuse a declared size or an encoding foreman cannot take."""
        declared = headers.get("Content-Length", "")
        # A 304 may state the length of a body it does not carry.
        if status not in (204, 304) and declared.isdigit() and int(declared) > self._limit:
            self._refuse_size()
            return
        codings = [
            token.strip().lower()
            for value in headers.get_list("Content-Encoding")
            for token in value.split(",")
            if token.strip() and token.strip().lower() != "identity"
        ]
        if not codings:
            return
        if len(codings) > 1 or codings[0] not in _WINDOW_BITS:
            self._upstream.refuse(
                f"sent a compressed answer foreman cannot read (Content-Encoding: "
                f"{', '.join(codings)}; it asks for {ACCEPT_ENCODING})"
            )
            return
        self._inflater = zlib.decompressobj(_WINDOW_BITS[codings[0]])
        self.inflated = True

    def write(self, chunk: bytes) -> None:
        """One piece of the body as sent; refuses the answer once it is too large."""
        if self._upstream.refused is not None:
            return  # bytes Tornado had already read when the connection was closed
        self._raw += len(chunk)
        if self._raw > self._limit:
            self._refuse_size()
        elif self._inflater is None:
            self._hold(chunk)
        else:
            self._inflate(self._inflater, chunk)

    def _inflate(self, inflater: zlib._Decompress, data: bytes) -> None:
        # A step at a time: a 64 KiB chunk can inflate to 64 MiB, and zlib
        # builds each step's output twice over before handing it back.
        while True:
            # Never more than one byte past what may still be held: that
            # byte is how the limit is seen to be exceeded.
            most = min(_INFLATE_STEP, self._limit - self._held + 1)
            try:
                piece = inflater.decompress(data, most)
            except zlib.error as e:
                self._upstream.refuse(f"sent a compressed answer that does not inflate ({e})")
                return
            if not self._hold(piece):
                return
            data = inflater.unconsumed_tail
            if len(piece) < most and not data:
                return  # all in; a full step may have left output behind

    def _hold(self, piece: bytes) -> bool:
        self._held += len(piece)
        if self._held > self._limit:
            self._refuse_size()
            return False
        self._parts.append(piece)
        return True

    def finish(self) -> bytes:
        """The whole body, inflated; refuses a compressed one that ended early."""
        if self._inflater is not None and self._raw and not self._inflater.eof:
            self._upstream.refuse("sent a compressed answer that ends early")
        self._inflater = None
        body = b"".join(self._parts)
        self._parts = []
        return body

    def _refuse_size(self) -> None:
        self._parts = []
        self._upstream.refuse(
            f"sent an answer larger than {_size(self._limit)}, the most foreman reads "
            "of a metadata answer (/api/tags, /api/ps)"
        )
