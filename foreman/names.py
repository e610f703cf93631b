"""Model names, resolved the way Ollama resolves them.

A name is `[host/][namespace/]model[:tag][@digest]`. Ollama fills what is
missing from defaults (host `registry.ollama.ai`, namespace `library`, tag
`latest`) and compares names case-insensitively, so `llama3.2`,
`library/llama3.2:latest` and `REGISTRY.OLLAMA.AI/library/Llama3.2:latest`
are one model.
"""

from __future__ import annotations

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


def canonical(name: str) -> str:
    """The fully qualified, lower-cased form used to compare two names."""
    # A digest pins content, but Ollama matches the named model; drop it.
    text = name.partition("@")[0].strip()
    if "://" in text:
        text = text.partition("://")[2].strip()
    tag = DEFAULT_TAG
    # A ":" after the last "/" is a tag; one before it is a host's port.
    colon, slash = text.rfind(":"), text.rfind("/")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :] or DEFAULT_TAG
    parts = text.split("/")
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    host = "/".join(parts[:-2]) if len(parts) >= 3 else DEFAULT_HOST
    return f"{host}/{namespace}/{model}:{tag}".lower()
