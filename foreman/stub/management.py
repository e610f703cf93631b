"""The stand-in's model routes that do not run it: show, pull, push, create, copy, delete, blobs.

``/api/pull``, ``/api/push`` and ``/api/create`` stream NDJSON progress
under the stub's chunk_delay/pace/break_after and ``progress_error`` knobs;
``/api/show``, ``/api/copy``, ``DELETE /api/delete`` and the blob routes
answer at once. Pull, create and copy add to the inventory; delete removes
from it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from foreman.stub.base import (
    JSON_TYPE,
    NDJSON_TYPE,
    Route,
    StubHandler,
    dumps,
    first_name,
    parse_object,
)
from foreman.stub.catalog import model_size, name_digest, show_document
from foreman.stub.naming import display_name
from foreman.stub.running import RunHandler

_BLOB_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


class ShowHandler(StubHandler):
    """POST /api/show: the model's metadata document (no hold: nothing runs)."""

    methods = ("POST",)

    def post(self) -> None:
        body = parse_object(self.request.body, self.send_json_error)
        if body is None:
            return
        requested = first_name(body, ("model", "name"))
        if requested is None:
            self.send_json_error(400, "model is required")
            return
        name = self.stub.resolve(requested)
        if name is None:
            self.send_json_error(404, f"model '{requested}' not found")
            return
        self.send_json(show_document(name))


def _layers(name: str) -> list[tuple[str, int]]:
    """A model's layers as (digest, size): weights, template, parameters."""
    sizes = (model_size(name), 1_400 + len(name), 96)
    return [(f"sha256:{name_digest(f'{name}#{i}')}", size) for i, size in enumerate(sizes)]


def _transfer(verb: str, name: str) -> list[dict[str, Any]]:
    """Two progress lines per layer (half, then all of it), as pull/push report."""
    lines: list[dict[str, Any]] = []
    for digest, total in _layers(name):
        for completed in (total // 2, total):
            lines.append(
                {
                    "status": f"{verb} {digest[7:19]}",
                    "digest": digest,
                    "total": total,
                    "completed": completed,
                }
            )
    return lines


class ProgressHandler(RunHandler):
    """Pull, push, create: NDJSON progress ending in ``{"status":"success"}``."""

    runs_model = False

    async def progress(
        self, body: dict[str, Any], lines: list[dict[str, Any]], on_success: Callable[[], None]
    ) -> None:
        """Send `lines` then success (streamed unless ``stream`` is false).

        With the stub's ``progress_error`` set, an ``{"error": ...}`` line
        follows the first line instead (non-streaming: a 500 with that
        error), and nothing changes.
        """
        error = self.stub.progress_error
        lines = [*lines, {"status": "success"}]
        if error is not None:
            lines = [lines[0], {"error": error}]
        if body.get("stream") is False:

            def answer() -> bytes:
                if error is not None:
                    self.set_status(500)
                    return dumps({"error": error})
                on_success()
                return dumps({"status": "success"})

            await self.send_whole(JSON_TYPE, len(lines) - 1, answer)
            return

        def closing() -> list[bytes]:
            if error is None:
                on_success()
            return [dumps(lines[-1]) + b"\n"]

        await self.send_stream(
            NDJSON_TYPE, len(lines) - 1, lambda i: dumps(lines[i]) + b"\n", closing
        )


class PullHandler(ProgressHandler):
    """POST /api/pull: progress, then the model is in the inventory (tagged)."""

    started_counter = "pulls_started"

    async def run(self) -> None:
        parsed = self.parse_body("model", "name")
        if parsed is None:
            return
        body, requested = parsed
        name = display_name(requested)
        lines = [
            {"status": "pulling manifest"},
            *_transfer("pulling", name),
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
        ]
        await self.progress(body, lines, lambda: self.stub.add_model(name))


class PushHandler(ProgressHandler):
    """POST /api/push: progress for a model the stub has; 404 otherwise."""

    started_counter = "pushes_started"

    async def run(self) -> None:
        parsed = self.parse_body("model", "name")
        if parsed is None:
            return
        body, requested = parsed
        name = self.stub.resolve(requested)
        if name is None:
            self.fail(404, self.not_found(requested))
            return
        lines = [
            {"status": "retrieving manifest"},
            *_transfer("pushing", name),
            {"status": "pushing manifest"},
        ]
        await self.progress(body, lines, lambda: None)


class CreateHandler(ProgressHandler):
    """POST /api/create: ``from`` a model the stub has and/or ``files`` it holds as blobs."""

    started_counter = "creates_started"

    async def run(self) -> None:
        parsed = self.parse_body("model", "name")
        if parsed is None:
            return
        body, requested = parsed
        source, files = body.get("from"), body.get("files")
        if not source and not files:
            self.fail(400, "neither 'from' or 'files' was specified")
            return
        lines: list[dict[str, Any]] = [{"status": "gathering model components"}]
        if source:
            base = self.stub.resolve(source) if isinstance(source, str) else None
            if base is None:
                self.fail(404, self.not_found(str(source)))
                return
            lines += [{"status": f"using existing layer {d}"} for d, _ in _layers(base)[:1]]
        if files:
            if not isinstance(files, dict) or not all(isinstance(d, str) for d in files.values()):
                self.fail(400, "files must map file names to blob digests")
                return
            for digest in files.values():
                if _blob_key(digest) not in self.stub.blobs:
                    self.fail(400, f"blob {digest} not found")
                    return
                lines.append({"status": f"using existing layer {digest}"})
        for field in ("template", "system", "parameters", "license", "messages"):
            if body.get(field):
                layer = hashlib.sha256(dumps(body[field])).hexdigest()
                lines.append({"status": f"creating new layer sha256:{layer}"})
        lines.append({"status": "writing manifest"})
        name = display_name(requested)
        await self.progress(body, lines, lambda: self.stub.add_model(name))


class CopyHandler(StubHandler):
    """POST /api/copy: 200 with no body; the destination joins the inventory."""

    methods = ("POST",)

    def post(self) -> None:
        body = parse_object(self.request.body, self.send_json_error)
        if body is None:
            return
        for field in ("source", "destination"):
            if first_name(body, (field,)) is None:
                value = body.get(field)
                shown = value if isinstance(value, str) else ""
                self.send_json_error(400, f'{field} "{shown}" is invalid')
                return
        source = self.stub.resolve(body["source"])
        if source is None:
            self.send_json_error(404, f'model "{body["source"]}" not found')
            return
        self.stub.add_model(display_name(body["destination"]))
        self.send_empty(200)


class DeleteHandler(StubHandler):
    """DELETE /api/delete (JSON body): 200 with no body; the model leaves the inventory."""

    methods = ("DELETE",)

    def delete(self) -> None:
        body = parse_object(self.request.body, self.send_json_error)
        if body is None:
            return
        requested = first_name(body, ("model", "name"))
        if requested is None:
            self.send_json_error(400, 'name "" is invalid')
            return
        name = self.stub.resolve(requested)
        if name is None:
            self.send_json_error(404, f"model '{requested}' not found")
            return
        self.stub.remove_model(name)
        self.send_empty(200)


def _blob_key(digest: str) -> str | None:
    """``sha256:<lowercase hex>`` for a blob digest (``:`` or ``-`` form), or None."""
    match = _BLOB_DIGEST.fullmatch(digest)
    return f"sha256:{match.group(1).lower()}" if match else None


class BlobHandler(StubHandler):
    """HEAD/POST /api/blobs/sha256:<hex>: does the stub hold it; store it if it checks out."""

    methods = ("HEAD", "POST")

    def head(self, digest: str) -> None:
        key = _blob_key(digest)
        if key is None:
            self.send_json_error(400, "invalid digest format")
        elif key in self.stub.blobs:
            self.send_empty(200)
        else:
            self.send_json_error(404, f'blob "{digest}" not found')

    def post(self, digest: str) -> None:
        key = _blob_key(digest)
        if key is None:
            self.send_json_error(400, "invalid digest format")
            return
        if key in self.stub.blobs:
            self.send_empty(200)
            return
        got = f"sha256:{hashlib.sha256(self.request.body).hexdigest()}"
        if got != key:
            self.send_json_error(400, f'digest mismatch, expected "{key}", got "{got}"')
            return
        self.stub.blobs[key] = bytes(self.request.body)
        self.stub.notify()
        self.send_empty(201)


ROUTES = [
    Route("/api/show", ShowHandler),
    Route("/api/pull", PullHandler),
    Route("/api/push", PushHandler),
    Route("/api/create", CreateHandler),
    Route("/api/copy", CopyHandler),
    Route("/api/delete", DeleteHandler),
    Route("/api/blobs/<digest>", BlobHandler, r"/api/blobs/([^/]+)"),
]
