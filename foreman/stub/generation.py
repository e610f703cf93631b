"""The native routes that run the model: chat, generate, embed and embeddings.

Each validates its body as Ollama does, resolves the model (404 if absent),
waits out ``hold``, answers ``chat_status`` if set, then replies: a scripted
"You said: …" streamed as NDJSON (or one object with ``stream: false``), or
unit vectors derived from the input text.
"""

from __future__ import annotations

from typing import Any

from foreman.stub.base import JSON_TYPE, NDJSON_TYPE, STUB_EPOCH, Route, dumps
from foreman.stub.catalog import embedding_for, name_digest, timestamp
from foreman.stub.running import (
    Reply,
    RunHandler,
    count_tokens,
    created_at,
    embed_inputs,
    pull_hint,
)

# Fixed "timings" in nanoseconds (Ollama reports durations in ns).
_LOAD_NS = 5_000_000
_PROMPT_TOKEN_NS = 1_000_000
_EVAL_TOKEN_NS = 20_000_000

_STATS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


class ChatHandler(RunHandler):
    """POST /api/chat: validate like Ollama, then produce a scripted reply."""

    async def run(self) -> None:
        parsed = self.parse_body()
        if parsed is None:
            return
        body, requested = parsed
        messages = body.get("messages")
        if messages is not None and not (
            isinstance(messages, list) and all(isinstance(m, dict) for m in messages)
        ):
            self.fail(400, "messages must be a list of objects")
            return
        if await self.admit(requested) is None:
            return
        if not messages:
            # Ollama treats an empty chat as "load the model" and answers at once.
            self.set_header("Content-Type", JSON_TYPE)
            await self.send_last(dumps(_load_response(requested)))
            return
        reply = Reply.for_chat(messages, body.get("options"))
        prompt_tokens = count_tokens(str(m.get("content") or "") for m in messages)
        final = _final_response(requested, prompt_tokens, reply.count)
        if body.get("stream") is False:
            final["message"]["content"] = reply.text()
            await self.send_whole(JSON_TYPE, reply.count, lambda: dumps(final))
            return

        def line(index: int) -> bytes:
            chunk = {
                "model": requested,
                "created_at": created_at(index),
                "message": {"role": "assistant", "content": reply.piece(index)},
                "done": False,
            }
            return dumps(chunk) + b"\n"

        await self.send_stream(NDJSON_TYPE, reply.count, line, lambda: [dumps(final) + b"\n"])


class GenerateHandler(RunHandler):
    """POST /api/generate: chat's machinery for a prompt; no prompt loads the model."""

    started_counter = "generates_started"

    async def run(self) -> None:
        parsed = self.parse_body()
        if parsed is None:
            return
        body, requested = parsed
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            self.fail(400, "prompt must be a string")
            return
        name = await self.admit(requested)
        if name is None:
            return
        if not prompt:
            self.set_header("Content-Type", JSON_TYPE)
            await self.send_last(dumps(self._load(requested, name, body.get("keep_alive"))))
            return
        reply = Reply.for_prompt(prompt, body.get("options"))
        stats = _final_response(requested, count_tokens([prompt]), reply.count)
        final: dict[str, Any] = {
            "model": requested,
            "created_at": stats["created_at"],
            "response": "",
            "done": True,
            "done_reason": "stop",
        }
        if body.get("raw") is not True:  # raw mode returns no context (documented)
            final["context"] = _context(prompt, reply)
        final.update((k, stats[k]) for k in _STATS)
        if body.get("stream") is False:
            final["response"] = reply.text()
            await self.send_whole(JSON_TYPE, reply.count, lambda: dumps(final))
            return

        def line(index: int) -> bytes:
            chunk = {
                "model": requested,
                "created_at": created_at(index),
                "response": reply.piece(index),
                "done": False,
            }
            return dumps(chunk) + b"\n"

        await self.send_stream(NDJSON_TYPE, reply.count, line, lambda: [dumps(final) + b"\n"])

    def _load(self, requested: str, name: str, keep_alive: object) -> dict[str, Any]:
        """Ollama's answer to a prompt-less generate: load, or unload with keep_alive 0."""
        reason = "load"
        if keep_alive in (0, "0", "0s", "0m"):
            reason = "unload"
            self.stub.unload(name)
        return {
            "model": requested,
            "created_at": timestamp(STUB_EPOCH),
            "response": "",
            "done": True,
            "done_reason": reason,
        }


class EmbedHandler(RunHandler):
    """POST /api/embed: ``input`` (a string or a list of strings) to unit vectors."""

    started_counter = "embeds_started"

    def not_found(self, requested: str) -> str:
        return pull_hint(requested)  # embed fails in Ollama's scheduler, not its lookup

    async def run(self) -> None:
        parsed = self.parse_body()
        if parsed is None:
            return
        body, requested = parsed
        texts = embed_inputs(body.get("input"))
        if texts is None:
            self.fail(400, "invalid input type")
            return
        if await self.admit(requested) is None:
            return
        answer: dict[str, Any] = {"model": requested, "embeddings": []}
        if texts:  # an empty input only loads the model
            answer["embeddings"] = [embedding_for(t, body.get("dimensions")) for t in texts]
            tokens = count_tokens(texts)
            answer["total_duration"] = _LOAD_NS + tokens * _PROMPT_TOKEN_NS
            answer["load_duration"] = _LOAD_NS
            answer["prompt_eval_count"] = tokens
        self.set_header("Content-Type", JSON_TYPE)
        await self.send_last(dumps(answer))


class EmbeddingsHandler(EmbedHandler):
    """POST /api/embeddings (legacy): one ``prompt`` to ``{"embedding": [...]}``."""

    async def run(self) -> None:
        parsed = self.parse_body()
        if parsed is None:
            return
        body, requested = parsed
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            self.fail(400, "prompt must be a string")
            return
        if await self.admit(requested) is None:
            return
        vector = embedding_for(prompt) if prompt else []  # no prompt only loads the model
        self.set_header("Content-Type", JSON_TYPE)
        await self.send_last(dumps({"embedding": vector}))


def _final_response(requested: str, prompt_tokens: int, count: int) -> dict[str, Any]:
    prompt_ns = prompt_tokens * _PROMPT_TOKEN_NS
    eval_ns = count * _EVAL_TOKEN_NS
    return {
        "model": requested,
        "created_at": created_at(count),
        "message": {"role": "assistant", "content": ""},
        "done_reason": "stop",
        "done": True,
        "total_duration": _LOAD_NS + prompt_ns + eval_ns,
        "load_duration": _LOAD_NS,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": count,
        "eval_duration": eval_ns,
    }


def _load_response(requested: str) -> dict[str, Any]:
    return {
        "model": requested,
        "created_at": timestamp(STUB_EPOCH),
        "message": {"role": "assistant", "content": ""},
        "done_reason": "load",
        "done": True,
    }


def _context(prompt: str, reply: Reply) -> list[int]:
    """A short, deterministic stand-in for generate's token ``context``."""
    words = [*prompt.split(), *(reply.piece(i) for i in range(min(reply.count, 16)))]
    return [int(name_digest(word)[:8], 16) % 32_000 for word in words[:32]] or [1]


ROUTES = [
    Route("/api/chat", ChatHandler),
    Route("/api/generate", GenerateHandler),
    Route("/api/embed", EmbedHandler),
    Route("/api/embeddings", EmbeddingsHandler),
]
