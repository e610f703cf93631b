"""The stand-in's OpenAI-compatible routes under /v1.

Modelled on Ollama's OpenAI layer: ``stream`` defaults to false; streams are
SSE (``data: {chunk}`` events, then ``data: [DONE]``); errors have OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}``. Generation and
embeddings reuse the native routes' machinery, so hold, chat_status,
chunk_delay, pace and break_after apply as they do to /api/chat.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

from foreman.stub.base import STUB_EPOCH, Route, StubHandler, dumps
from foreman.stub.catalog import embedding_for
from foreman.stub.naming import namespace_of
from foreman.stub.running import Reply, RunHandler, count_tokens, embed_inputs, pull_hint

V1_JSON_TYPE = "application/json"  # Ollama's OpenAI layer writes these with json.Encoder
GIN_JSON_TYPE = "application/json; charset=utf-8"  # its request checks answer via Gin
SSE_TYPE = "text/event-stream"

_CREATED = int(STUB_EPOCH.timestamp())
_FINGERPRINT = "fp_ollama"
_DONE_EVENT = b"data: [DONE]\n\n"


def openai_error(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _send_openai_error(handler: StubHandler, status: int, message: str) -> None:
    # Ollama rejects a bad request body in its middleware (Gin: charset, no
    # newline); errors from the handler behind it pass through its writer.
    handler.set_status(status)
    if status == 400:
        handler.set_header("Content-Type", GIN_JSON_TYPE)
        handler.finish(dumps(openai_error(status, message)))
    else:
        handler.set_header("Content-Type", V1_JSON_TYPE)
        handler.finish(dumps(openai_error(status, message)) + b"\n")


def _v1_json(obj: object) -> bytes:
    return dumps(obj) + b"\n"


def _event(obj: object) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def _request_number(body: bytes) -> int:
    """Ollama numbers responses at random (0-998); the stub derives it from the request."""
    return int.from_bytes(hashlib.sha256(body).digest()[:4], "big") % 999


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _max_tokens(body: dict[str, Any]) -> dict[str, Any]:
    """The native options for OpenAI's ``max_tokens``."""
    limit = body.get("max_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return {"num_predict": limit}
    return {}


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class V1RunHandler(RunHandler):
    """A /v1 POST that runs the model: OpenAI error shape, Ollama's wording."""

    started_counter = "openai_started"

    def fail(self, status: int, message: str) -> None:
        _send_openai_error(self, status, message)

    def not_found(self, requested: str) -> str:
        return pull_hint(requested)


def _message_text(content: object) -> str | None:
    """A message's text: a string, or the text parts of a list; None if neither."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return " ".join(str(p.get("text") or "") for p in content if p.get("type") == "text")
    return None


class ChatCompletionsHandler(V1RunHandler):
    """POST /v1/chat/completions."""

    async def run(self) -> None:
        parsed = self.parse_body()
        if parsed is None:
            return
        body, requested = parsed
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            self.fail(400, "invalid message format")
            return
        if not messages:
            self.fail(400, "[] is too short - 'messages'")
            return
        native = []
        for message in messages:
            text = _message_text(message.get("content"))
            if text is None:
                self.fail(400, "invalid message content type")
                return
            native.append({"role": message.get("role"), "content": text})
        if await self.admit(requested) is None:
            return
        reply = Reply.for_chat(native, _max_tokens(body))
        usage = _usage(count_tokens(m["content"] for m in native), reply.count)
        head = {
            "id": f"chatcmpl-{_request_number(self.request.body)}",
            "object": "chat.completion",
            "created": _CREATED,
            "model": requested,
            "system_fingerprint": _FINGERPRINT,
        }
        if body.get("stream") is not True:
            completion = {
                **head,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.text()},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
            await self.send_whole(V1_JSON_TYPE, reply.count, lambda: _v1_json(completion))
            return

        head["object"] = "chat.completion.chunk"

        def chunk(content: str, finish: str | None) -> dict[str, Any]:
            delta = {"role": "assistant", "content": content}
            return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        def closing() -> list[bytes]:
            events = [_event(chunk("", "stop"))]
            if _include_usage(body):
                events.append(_event({**head, "choices": [], "usage": usage}))
            return [*events, _DONE_EVENT]

        await self.send_stream(
            SSE_TYPE, reply.count, lambda i: _event(chunk(reply.piece(i), None)), closing
        )


class CompletionsHandler(V1RunHandler):
    """POST /v1/completions (legacy, prompt-based)."""

    async def run(self) -> None:
        parsed = self.parse_prompt()
        if parsed is None:
            return
        body, requested, prompt = parsed
        if await self.admit(requested) is None:
            return
        if prompt:
            reply = Reply.for_prompt(prompt, _max_tokens(body))
            count, finish = reply.count, "stop"
            usage = _usage(count_tokens([prompt]), count)
        else:  # Ollama turns an empty prompt into a load request
            reply, count, finish = Reply([""], 0), 0, "load"
            usage = _usage(0, 0)
        head = {
            "id": f"cmpl-{_request_number(self.request.body)}",
            "object": "text_completion",
            "created": _CREATED,
        }
        if body.get("stream") is not True:
            completion = {
                **head,
                "model": requested,
                "system_fingerprint": _FINGERPRINT,
                "choices": [{"text": reply.text(), "index": 0, "finish_reason": finish}],
                "usage": usage,
            }
            await self.send_whole(V1_JSON_TYPE, count, lambda: _v1_json(completion))
            return

        with_usage = _include_usage(body)

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            # Ollama's completion chunks list choices before the model.
            out = {
                **head,
                "choices": [{"text": text, "index": 0, "finish_reason": finish}],
                "model": requested,
                "system_fingerprint": _FINGERPRINT,
            }
            if with_usage:
                out["usage"] = _usage(0, 0)
            return out

        def closing() -> list[bytes]:
            last = chunk("", finish)
            events = [_event(last)]
            if with_usage:
                events.append(_event({**last, "choices": [], "usage": usage}))
            return [*events, _DONE_EVENT]

        await self.send_stream(
            SSE_TYPE, count, lambda i: _event(chunk(reply.piece(i), None)), closing
        )


class V1EmbeddingsHandler(V1RunHandler):
    """POST /v1/embeddings: floats, or base64 little-endian float32 on request."""

    async def run(self) -> None:
        parsed = self.parse_body()
        if parsed is None:
            return
        body, requested = parsed
        encoding = body.get("encoding_format") or "float"
        if not isinstance(encoding, str) or encoding.lower() not in ("float", "base64"):
            self.fail(
                400,
                f"Invalid value for 'encoding_format' = {encoding}. "
                "Supported values: ['float', 'base64'].",
            )
            return
        raw = body.get("input")
        if raw == "":
            raw = [""]
        texts = embed_inputs(raw)
        if raw is None or raw == []:
            self.fail(400, "invalid input")
            return
        if texts is None:
            self.fail(400, "invalid input type")
            return
        if await self.admit(requested) is None:
            return
        data = []
        for index, text in enumerate(texts):
            vector: Any = embedding_for(text, body.get("dimensions"))
            if encoding.lower() == "base64":
                packed = struct.pack(f"<{len(vector)}f", *vector)
                vector = base64.b64encode(packed).decode()
            data.append({"object": "embedding", "embedding": vector, "index": index})
        tokens = count_tokens(texts)
        answer = {
            "object": "list",
            "data": data,
            "model": requested,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        self.set_header("Content-Type", V1_JSON_TYPE)
        await self.send_last(_v1_json(answer))


def _model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": namespace_of(name)}


class ModelsHandler(StubHandler):
    """GET /v1/models: the inventory as an OpenAI list."""

    methods = ("GET",)

    def get(self) -> None:
        self.set_header("Content-Type", V1_JSON_TYPE)
        entries = [_model_entry(name) for name in self.stub.models]
        self.finish(_v1_json({"object": "list", "data": entries}))


class ModelHandler(StubHandler):
    """GET /v1/models/{model}: one model (its id may hold "/" and ":")."""

    methods = ("GET",)

    def get(self, requested: str) -> None:
        if self.stub.resolve(requested) is None:
            _send_openai_error(self, 404, f"model '{requested}' not found")
            return
        self.set_header("Content-Type", V1_JSON_TYPE)
        self.finish(_v1_json(_model_entry(requested)))


ROUTES = [
    Route("/v1/models", ModelsHandler),
    Route("/v1/models/<model>", ModelHandler, r"/v1/models/(.+)"),
    Route("/v1/chat/completions", ChatCompletionsHandler),
    Route("/v1/completions", CompletionsHandler),
    Route("/v1/embeddings", V1EmbeddingsHandler),
]
