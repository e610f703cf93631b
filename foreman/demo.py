"""`foreman demo`: stand-in Ollamas and foreman in front of them, in one process."""

from __future__ import annotations

import dataclasses
import socket
import sys
from collections.abc import Callable

from foreman.config import Config
from foreman.server import serve
from foreman.stub import StubOllama

# What each stand-in holds with `--targets 2`: one model on both, one only on
# each, so routing by inventory shows in the answers' X-Foreman-Target.
SHARED_MODEL = "llama3.2:latest"
TWO_TARGET_MODELS: tuple[tuple[str, ...], ...] = (
    (SHARED_MODEL, "qwen2.5:0.5b"),
    (SHARED_MODEL, "hf.co/example/tiny-gguf:Q4_K_M"),
)
MAX_TARGETS = len(TWO_TARGET_MODELS)


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _chat_line(auth: str, base: str, model: str, *, headers: bool = False) -> str:
    shown = " -i" if headers else ""
    return (
        f"  curl{shown}{auth} {base}/api/chat -d '{{\"model\": \"{model}\", \"messages\": "
        f"[{{\"role\": \"user\", \"content\": \"hello\"}}]}}'"
    )


async def run_demo(
    config: Config,
    *,
    targets: int = 1,
    with_targets: Callable[[str], Config] | None = None,
) -> None:
    """Serve foreman in front of `targets` stand-ins until cancelled.

    With one target the stand-in's URL replaces the configured one; with
    more, `with_targets` turns the comma-separated stand-in URLs into the
    Config, through the same reader FOREMAN_OLLAMA_URL goes through (it may
    raise ConfigError).
    """
    if targets == 1:
        stubs = [StubOllama(chunk_delay=0.05)]
    else:
        stubs = [StubOllama(models, chunk_delay=0.05) for models in TWO_TARGET_MODELS[:targets]]
    try:
        for stub in stubs:
            stub.listen(0, "127.0.0.1")
        host = config.listen_host or "127.0.0.1"
        # The curl lines printed below need the real port, before foreman binds it.
        listen_port = config.listen_port or _free_port(host)
        if targets == 1:
            settings = dataclasses.replace(config, ollama_url=stubs[0].url, listen_port=listen_port)
        else:
            if with_targets is None:
                raise ValueError("several targets need with_targets")
            urls = ",".join(stub.url for stub in stubs)
            settings = dataclasses.replace(with_targets(urls), listen_port=listen_port)
        shown = f"[{host}]" if ":" in host else host
        base = f"http://{shown}:{listen_port}"
        auth = " -H 'Authorization: Bearer YOUR-TOKEN'" if config.tokens else ""
        print(_banner(stubs, base, auth), file=sys.stderr, flush=True)
        await serve(settings)
    finally:
        for stub in stubs:
            await stub.stop()


def _banner(stubs: list[StubOllama], base: str, auth: str) -> str:
    if len(stubs) == 1:
        stub = stubs[0]
        model = stub.models[0].partition(":")[0]
        return (
            f"foreman demo: stand-in Ollama on {stub.url} (port {stub.port}), foreman on {base}\n"
            f"try:\n"
            f"  curl{auth} {base}/api/tags\n"
            f"{_chat_line(auth, base, model)}\n"
            f"stop with Ctrl-C"
        )
    lines = ["foreman demo: two stand-in Ollamas, foreman on " + base]
    for stub in stubs:
        # Targets are named by host:port, as with FOREMAN_OLLAMA_URL.
        name = stub.url.removeprefix("http://")
        lines.append(f"  target {name}: {', '.join(stub.models)}")
    first_only = stubs[0].models[-1]
    second_only = stubs[1].models[-1]
    lines += [
        "try:",
        "  # every model of both, once each:",
        f"  curl{auth} {base}/api/tags",
        f"  # {first_only} is only on the first target: see X-Foreman-Target in the answer",
        _chat_line(auth, base, first_only, headers=True),
        f"  # {second_only} is only on the second",
        _chat_line(auth, base, second_only, headers=True),
        f"  # {SHARED_MODEL} is on both: either may answer",
        _chat_line(auth, base, SHARED_MODEL.partition(':')[0], headers=True),
        "  # each target's state (ok while both answer):",
        f"  curl{auth} {base}/healthz",
        "stop with Ctrl-C",
    ]
    return "\n".join(lines)
