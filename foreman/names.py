"""Model names, resolved the way Ollama resolves them.

A name is `[[scheme://]host/][namespace/]model[:tag]`. Ollama fills what is
missing from defaults (host `registry.ollama.ai`, namespace `library`, tag
`latest`) and compares the parts case-insensitively, so `llama3.2`,
`library/llama3.2:latest` and `REGISTRY.OLLAMA.AI/library/Llama3.2:latest`
are one model. A name with a malformed part is refused ("invalid model
name"): that includes `model@sha256:...` (Ollama dropped digests from names
in 0.1.49) and `model:` (a tag promised, none given). tests/test_names.py
holds the cases, taken from Ollama's `types/model/name.go`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# Ollama's part grammar: an ASCII letter, digit or "_", then up to the limit
# of those and "-", plus "." (not in a namespace) and ":" (host only).
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL_OR_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


class ModelName(NamedTuple):
    host: str
    namespace: str
    model: str
    tag: str


def parse(name: str) -> ModelName | None:
    """`name`'s parts with Ollama's defaults filled in, or None if Ollama would refuse it."""
    text, tag = name.strip(), DEFAULT_TAG
    # A ":" after the last "/" starts the tag; one before it is a host's port.
    if text.rfind(":") > text.rfind("/"):
        text, _, tag = text.rpartition(":")
    *path, model = text.split("/")
    namespace = path.pop() if path else DEFAULT_NAMESPACE
    host = "/".join(path) if path else DEFAULT_HOST
    if "://" in host:
        # Only the host part may carry a scheme; Ollama then takes an empty host as the default.
        host = host.partition("://")[2] or DEFAULT_HOST
    parts = ModelName(host, namespace, model, tag)
    well_formed = (
        _HOST.fullmatch(host)
        and _NAMESPACE.fullmatch(namespace)
        and _MODEL_OR_TAG.fullmatch(model)
        and _MODEL_OR_TAG.fullmatch(tag)
    )
    return parts if well_formed else None


def canonical(name: str) -> str:
    """The fully qualified, lower-cased form used to compare two names.

    A name Ollama would refuse has no such form: it gets `!` and itself,
    lower-cased, which equals no valid name's form (those start with a
    letter, digit or `_`), so it matches no model in an inventory.
    """
    parts = parse(name)
    if parts is None:
        return "!" + name.strip().lower()
    return f"{parts.host}/{parts.namespace}/{parts.model}:{parts.tag}".lower()


def plain(name: str) -> bool:
    """Whether `name` is a model name and nothing more: fit to put in a URL path.

    `parse` is as lenient as Ollama (spaces around a name, a `scheme://`
    before the host); a name that goes on the wire as part of a path gets
    none of that: no empty, `.` or `..` segment, nothing but the characters
    of a name's parts, `/` between them and `:` before a tag or a port.
    """
    if name != name.strip() or "://" in name:
        return False
    if any(segment in ("", ".", "..") for segment in name.split("/")):
        return False
    return parse(name) is not None


def short(name: str) -> str:
    """`name` as Ollama lists it: without its default host and namespace (`llama3.2:latest`)."""
    parts = parse(name)
    if parts is None:
        return name
    if parts.host != DEFAULT_HOST:
        return f"{parts.host}/{parts.namespace}/{parts.model}:{parts.tag}"
    if parts.namespace != DEFAULT_NAMESPACE:
        return f"{parts.namespace}/{parts.model}:{parts.tag}"
    return f"{parts.model}:{parts.tag}"
