"""Model management: pull, push, create, copy, delete, blobs. Admin tokens only.

These change what the shared machine has, so foreman forwards them only for
a token in FOREMAN_ADMIN_TOKENS. They are not generations and do not queue.
After a change the inventory is re-polled at once, so a pulled model can be
used (and a deleted one is refused) without waiting for the next poll.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

from foreman.handlers.base import ForemanError
from foreman.handlers.relay import RelayHandler
from foreman.shown import shown
from foreman.target import BodyProducer

# Model files are gigabytes; a blob upload is streamed, never held in memory.
MAX_BLOB_SIZE = 1 << 40
UPLOAD_TIMEOUT = 24 * 3600.0
# Chunks of an upload that may wait for the target to take them.
_UPLOAD_BACKLOG = 16
# The digests Ollama takes in /api/blobs/{digest}; it answers anything else
# with 400 "invalid digest format", and so does foreman, without relaying it.
_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")


class ManageHandler(RelayHandler):
    """Relays a management request for an admin, then refreshes the inventory."""

    SUPPORTED_METHODS = ("POST",)  # type: ignore[assignment]

    async def prepare(self) -> None:
        await super().prepare()
        if self.answered:
            return
        admins = self.services.admins
        if not admins.enabled or not admins.accepts(self.request.headers.get("Authorization")):
            self.fail(
                ForemanError(
                    403,
                    "managing models needs an admin token (FOREMAN_ADMIN_TOKENS); "
                    "ask whoever runs foreman",
                )
            )
            return
        try:
            self.name_target()
        except ForemanError as e:
            self.fail(e)

    async def relay_change(self, body: bytes | None, producer: BodyProducer | None = None) -> None:
        await self.relay(self.request.method, self.request.path, body, body_producer=producer)
        if 200 <= self.get_status() < 300:
            machine = self.machine
            (machine.inventory if machine is not None else self.services.inventory).refresh()

    def name_target(self) -> None:
        """With several targets, the change is for the one the X-Foreman-Target header names."""
        targets = self.services.targets
        if targets is None or not targets.several:
            self.machine = None if targets is None else targets.first
            return
        named = self.request.headers.get("X-Foreman-Target", "").strip()
        machine = targets.by_name.get(named)
        if machine is None:
            names = ", ".join(targets.by_name)
            said = "no X-Foreman-Target header" if not named else f"no target named '{shown(named)}'"
            raise ForemanError(
                400,
                f"{said}: with several targets, name the one to change in the "
                f"X-Foreman-Target header; the targets are {names}",
            )
        self.machine = machine

    async def post(self) -> None:
        await self.relay_change(self.body)


class DeleteHandler(ManageHandler):
    """`DELETE /api/delete`, which carries its model in a JSON body."""

    SUPPORTED_METHODS = ("DELETE",)  # type: ignore[assignment]

    async def delete(self) -> None:
        await self.relay_change(self.body)


class BlobHandler(ManageHandler):
    """`HEAD /api/blobs/{digest}` and `POST /api/blobs/{digest}`, the upload streamed through."""

    SUPPORTED_METHODS = ("HEAD", "POST")  # type: ignore[assignment]
    # Passed through as it arrives, never gathered (nor counted in FOREMAN_MAX_BODY_MEMORY).
    holds_body = False

    _upload: asyncio.Queue[bytes | None] | None = None
    _sending: asyncio.Future[None] | None = None

    def body_limit(self) -> int:
        return MAX_BLOB_SIZE

    @classmethod
    def bad_path_args(cls, args: list[str]) -> str | None:
        if args and not _DIGEST.fullmatch(args[0]):
            return "invalid digest format"
        return None

    async def prepare(self) -> None:
        await super().prepare()
        if self.answered or self.request.method != "POST":
            return
        # A model file takes longer than FOREMAN_CLIENT_TIMEOUT to upload;
        # the target's own pace (backpressure) bounds it instead.
        self.request.connection.set_body_timeout(UPLOAD_TIMEOUT)  # type: ignore[union-attr]
        self._upload = asyncio.Queue(_UPLOAD_BACKLOG)
        self._sending = asyncio.ensure_future(self.relay_change(None, self._produce))

    async def data_received(self, chunk: bytes) -> None:
        if self._upload is None or self._sending is None:
            return
        # Waits while the target is slower than the client (backpressure),
        # but not once the relay is over (the target answered early).
        put = asyncio.ensure_future(self._upload.put(chunk))
        await asyncio.wait([put, self._sending], return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()

    async def _produce(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        assert self._upload is not None
        while (chunk := await self._upload.get()) is not None:
            await write(chunk)

    async def head(self, digest: str) -> None:
        await self.relay("HEAD", self.request.path, None)

    async def post(self, digest: str) -> None:  # type: ignore[override]
        assert self._upload is not None and self._sending is not None
        if not self._sending.done():
            await self._upload.put(None)
        await self._sending


routes = [
    (r"/api/pull", ManageHandler),
    (r"/api/push", ManageHandler),
    (r"/api/create", ManageHandler),
    (r"/api/copy", ManageHandler),
    (r"/api/delete", DeleteHandler),
    (r"/api/blobs/([^/]+)", BlobHandler),
]
