"""Which models the target holds in memory now, as far as foreman can tell.

Two sources: the target's own `/api/ps` (polled with the inventory, and again
as soon as a model foreman made it load starts answering), and what foreman
dispatched itself in between (a model a request just went to is loaded). How
many models the target keeps at once is learnt from `/api/ps`: when a
dispatch loads one more than that, the least recently used one is taken to
be evicted, as Ollama does, until the next `/api/ps` says otherwise.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from foreman.names import canonical


@dataclass(frozen=True, slots=True)
class ResidentModel:
    """A model in the target's memory, with what its last `/api/ps` said of it."""

    name: str
    #: bytes it takes, in all and in the GPU's memory; None when only foreman's dispatch knows of it
    size: int | None = None
    size_vram: int | None = None
    #: when the target will unload it, as the target wrote it
    expires_at: str | None = None


class ResidentModels:
    def __init__(self) -> None:
        # Canonical names, least recently used first.
        self._models: OrderedDict[str, None] = OrderedDict()
        #: the most models /api/ps has shown at once (0 before it has shown any)
        self.capacity = 0
        # What the last /api/ps said of each model it listed.
        self._reported: dict[str, ResidentModel] = {}

    def current(self) -> frozenset[str]:
        return frozenset(self._models)

    def described(self) -> list[ResidentModel]:
        """The models held, the most recently used first, with what /api/ps said of each."""
        return [self._reported.get(name) or ResidentModel(name) for name in reversed(self._models)]

    def __contains__(self, model: str) -> bool:
        return model in self._models

    def reported(self, document: object) -> None:
        """The target's `/api/ps` answer: exactly these are loaded now."""
        names: list[str] = []
        reported: dict[str, ResidentModel] = {}
        if isinstance(document, dict) and isinstance(document.get("models"), list):
            for entry in document["models"]:
                if isinstance(entry, dict):
                    name = entry.get("model") or entry.get("name")
                    if isinstance(name, str) and name:
                        name = canonical(name)
                        names.append(name)
                        reported[name] = _described(name, entry)
        self._reported = reported
        kept = [m for m in self._models if m in names]  # keep the recency order we know
        self._models = OrderedDict.fromkeys([*kept, *(n for n in names if n not in kept)])
        self.capacity = max(self.capacity, len(self._models))

    def dispatched(self, model: str) -> bool:
        """A request for `model` went to the target; whether that makes it load the model."""
        if model in self._models:
            self._models.move_to_end(model)
            return False
        self._models[model] = None
        if self.capacity:
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
        return True


def _described(name: str, entry: dict[str, object]) -> ResidentModel:
    size, vram, expires = entry.get("size"), entry.get("size_vram"), entry.get("expires_at")
    return ResidentModel(
        name,
        size if isinstance(size, int) and not isinstance(size, bool) else None,
        vram if isinstance(vram, int) and not isinstance(vram, bool) else None,
        # Bounded: it is shown as it came.
        expires[:64] if isinstance(expires, str) else None,
    )
