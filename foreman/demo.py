"""`foreman demo`: the stand-in Ollama and foreman in front of it, in one process."""

from __future__ import annotations

import dataclasses
import sys

from foreman.config import Config
from foreman.server import serve
from foreman.stub import StubOllama


async def run_demo(config: Config) -> None:
    stub = StubOllama(chunk_delay=0.05)
    port = stub.listen(0, "127.0.0.1")
    settings = dataclasses.replace(config, ollama_url=stub.url)
    host = config.listen_host or "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{config.listen_port}"
    model = stub.models[0].partition(":")[0]
    print(
        f"foreman demo: stand-in Ollama on {stub.url} (port {port}), foreman on {base}\n"
        f"try:\n"
        f"  curl {base}/api/tags\n"
        f"  curl {base}/api/chat -d '{{\"model\": \"{model}\", \"messages\": "
        f"[{{\"role\": \"user\", \"content\": \"hello\"}}]}}'\n"
        f"stop with Ctrl-C",
        file=sys.stderr,
        flush=True,
    )
    try:
        await serve(settings)
    finally:
        await stub.stop()
