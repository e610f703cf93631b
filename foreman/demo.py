"""`foreman demo`: the stand-in Ollama and foreman in front of it, in one process."""

from __future__ import annotations

import dataclasses
import socket
import sys

from foreman.config import Config
from foreman.server import serve
from foreman.stub import StubOllama


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def run_demo(config: Config) -> None:
    stub = StubOllama(chunk_delay=0.05)
    port = stub.listen(0, "127.0.0.1")
    host = config.listen_host or "127.0.0.1"
    # The curl line printed below needs the real port, before foreman binds it.
    listen_port = config.listen_port or _free_port(host)
    settings = dataclasses.replace(config, ollama_url=stub.url, listen_port=listen_port)
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{listen_port}"
    model = stub.models[0].partition(":")[0]
    auth = " -H 'Authorization: Bearer YOUR-TOKEN'" if config.tokens else ""
    print(
        f"foreman demo: stand-in Ollama on {stub.url} (port {port}), foreman on {base}\n"
        f"try:\n"
        f"  curl{auth} {base}/api/tags\n"
        f"  curl{auth} {base}/api/chat -d '{{\"model\": \"{model}\", \"messages\": "
        f"[{{\"role\": \"user\", \"content\": \"hello\"}}]}}'\n"
        f"stop with Ctrl-C",
        file=sys.stderr,
        flush=True,
    )
    try:
        await serve(settings)
    finally:
        await stub.stop()
