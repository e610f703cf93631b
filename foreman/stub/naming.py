"""Model names as the stand-in Ollama reads them.

The stand-in keeps its own rules rather than borrowing `foreman.names`: it
imitates Ollama on its own terms, so a mistake in foreman's resolution shows
up as a disagreement instead of being mirrored here.
"""

from __future__ import annotations


def normalize_model_name(name: str) -> str:
    """Canonical form for comparing model names, as Ollama resolves them.

    No tag means ``:latest``; Ollama's default registry host and ``library/``
    namespace are implied; comparison is case-insensitive.
    """
    name = name.strip().lower()
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:  # a ":" before the last "/" is a registry port
        name += ":latest"
    for prefix in ("registry.ollama.ai/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def display_name(name: str) -> str:
    """How Ollama lists a model it pulled or created: tagged, default host/namespace dropped."""
    name = name.strip()
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    for prefix in ("registry.ollama.ai/", "library/"):
        if name.lower().startswith(prefix):
            name = name[len(prefix) :]
    return name


def namespace_of(name: str) -> str:
    """A model name's namespace (``library`` unless given), as /v1 reports in owned_by."""
    parts = name.split("/")
    return parts[-2] if len(parts) > 1 else "library"
