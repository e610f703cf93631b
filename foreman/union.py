"""What several targets have together: /api/tags, /api/ps and /v1/models as one answer.

One entry per model by Ollama's name rules (`foreman.names.canonical`): the
first target in the configured order that lists a model gives its entry, and
entries keep that order (each target's own order, targets in turn), so the
answer is stable from one request to the next.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from foreman.names import DEFAULT_NAMESPACE, canonical


def _entries(document: object, key: str) -> list[dict[str, object]]:
    if not isinstance(document, dict):
        return []
    entries = document.get(key)
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _name(entry: dict[str, object], *fields: str) -> str | None:
    for field in fields:
        value = entry.get(field)
        if isinstance(value, str) and value.strip():
            return canonical(value)
    return None


def merged(documents: Iterable[object], key: str, fields: tuple[str, ...]) -> list[dict[str, object]]:
    """The entries under `key` of every document, one per model named by `fields`."""
    seen: set[str] = set()
    out: list[dict[str, object]] = []
    for document in documents:
        for entry in _entries(document, key):
            name = _name(entry, *fields)
            if name is None or name in seen:
                continue
            seen.add(name)
            out.append(entry)
    return out


def tags_body(bodies: Iterable[bytes]) -> bytes:
    """/api/tags of several targets (their last-known bodies) as one."""
    documents = []
    for body in bodies:
        try:
            documents.append(json.loads(body))
        except ValueError:
            continue
    return json.dumps({"models": merged(documents, "models", ("name", "model"))}).encode()


def ps_body(documents: Iterable[object]) -> bytes:
    """/api/ps of several targets as one: every model some target holds in memory."""
    return json.dumps({"models": merged(documents, "models", ("name", "model"))}).encode()


def v1_models_body(documents: Iterable[object], tags: bytes) -> bytes:
    """/v1/models of several targets as one; a model only an away target lists is
    described from its last-known /api/tags entry."""
    data = merged(documents, "data", ("id",))
    seen = {canonical(str(e["id"])) for e in data}
    for entry in _entries(json.loads(tags), "models"):
        name = entry.get("name") or entry.get("model")
        if isinstance(name, str) and canonical(name) not in seen:
            seen.add(canonical(name))
            parts = name.split("/")
            owner = parts[-2] if len(parts) > 1 else DEFAULT_NAMESPACE
            data.append({"id": name, "object": "model", "created": 0, "owned_by": owner})
    return json.dumps({"object": "list", "data": data}).encode()
