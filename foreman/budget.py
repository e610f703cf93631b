"""A ceiling on the memory foreman spends holding clients' bytes at once.

Request bodies are held whole until they are checked and relayed, and a
single JSON answer is held until it is complete (up to 64 MiB each). Each
is cheap alone; a few hundred clients sending or asking at once are not. One
`MemoryBudget` (FOREMAN_MAX_BODY_MEMORY) is shared by every request; each
request takes its bytes from it through a `Reservation` and gives them back,
once, when its answer is written or its client leaves.
"""

from __future__ import annotations


class MemoryBudget:
    """Bytes that may be held for clients at once, and how many are."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: bytes reserved right now
        self.used = 0

    def take(self, size: int) -> bool:
        """Reserve `size` more bytes if they fit; False (and nothing reserved) if not."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used = max(0, self.used - size)


class Reservation:
    """One request's share of the budget: grows as its bytes arrive, released once."""

    __slots__ = ("_budget", "size", "_released")

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        #: bytes this request holds now
        self.size = 0
        self._released = False

    def grow_to(self, size: int) -> bool:
        """Hold `size` bytes in all; False, keeping what it had, if the budget has no room."""
        if self._released:
            # The request is over: a late chunk (a relay outliving its client) takes nothing.
            return False
        more = size - self.size
        if more <= 0:
            return True
        if not self._budget.take(more):
            return False
        self.size = size
        return True

    def grow_by(self, size: int) -> bool:
        return self.grow_to(self.size + size)

    def release(self) -> None:
        """Give everything back, for good; harmless to call again."""
        self._released = True
        if self.size:
            self._budget.give_back(self.size)
            self.size = 0
