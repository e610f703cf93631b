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

from foreman.names import canonical


class ResidentModels:
    def __init__(self) -> None:
        # Canonical names, least recently used first.
        self._models: OrderedDict[str, None] = OrderedDict()
        #: the most models /api/ps has shown at once (0 before it has shown any)
        self.capacity = 0

    def current(self) -> frozenset[str]:
        return frozenset(self._models)

    def __contains__(self, model: str) -> bool:
        return model in self._models

    def reported(self, document: object) -> None:
        """The target's `/api/ps` answer: exactly these are loaded now."""
        names: list[str] = []
        if isinstance(document, dict) and isinstance(document.get("models"), list):
            for entry in document["models"]:
                if isinstance(entry, dict):
                    name = entry.get("model") or entry.get("name")
                    if isinstance(name, str) and name:
                        names.append(canonical(name))
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
