"""The native routes that run the model: chat, generate, embed and embeddings.

Each validates its body as Ollama does, resolves the model (404 if absent),
waits out ``hold``, answers ``chat_status`` if set, waits for the model to be
resident (its ``load_duration``), then replies: a scripted
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

# Fixed "timings" in nanoseconds (Ollama reports durations in ns); load_duration
# is the handler's load_ns: the wait for the model, at least 5 ms.
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
        final = _final_response(requested, prompt_tokens, reply.count, self.load_ns)
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
        parsed = self.parse_prompt()
        if parsed is None:
            return
        body, requested, prompt = parsed
        unloading = not prompt and body.get("keep_alive") in (0, "0", "0s", "0m")
        name = await self.admit(requested, load=not unloading)  # Ollama unloads without a load
        if name is None:
            return
        if not prompt:
            if unloading:
                self.stub.unload(name)
            self.set_header("Content-Type", JSON_TYPE)
            await self.send_last(dumps(_load_answer(requested, unloading)))
            return
        reply = Reply.for_prompt(prompt, body.get("options"))
        stats = _final_response(requested, count_tokens([prompt]), reply.count, self.load_ns)
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
            answer["total_duration"] = self.load_ns + tokens * _PROMPT_TOKEN_NS
            answer["load_duration"] = self.load_ns
            answer["prompt_eval_count"] = tokens
        self.set_header("Content-Type", JSON_TYPE)
        await self.send_last(dumps(answer))


class EmbeddingsHandler(EmbedHandler):
    """POST /api/embeddings (legacy): one ``prompt`` to ``{"embedding": [...]}``."""

    async def run(self) -> None:
        parsed = self.parse_prompt()
        if parsed is None:
            return
        body, requested, prompt = parsed
        if await self.admit(requested) is None:
            return
        vector = embedding_for(prompt) if prompt else []  # no prompt only loads the model
        self.set_header("Content-Type", JSON_TYPE)
        await self.send_last(dumps({"embedding": vector}))


def _final_response(requested: str, prompt_tokens: int, count: int, load_ns: int) -> dict[str, Any]:
    prompt_ns = prompt_tokens * _PROMPT_TOKEN_NS
    eval_ns = count * _EVAL_TOKEN_NS
    return {
        "model": requested,
        "created_at": created_at(count),
        "message": {"role": "assistant", "content": ""},
        "done_reason": "stop",
        "done": True,
        "total_duration": load_ns + prompt_ns + eval_ns,
        "load_duration": load_ns,
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


def _load_answer(requested: str, unloading: bool) -> dict[str, Any]:
    """Ollama's answer to a prompt-less generate: a load, or an unload with keep_alive 0."""
    return {
        "model": requested,
        "created_at": timestamp(STUB_EPOCH),
        "response": "",
        "done": True,
        "done_reason": "unload" if unloading else "load",
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
