"""The stand-in's model memory: which models are resident, and loading them.

Ollama on a Mac holds a few models at a time and loads one at a time; a run
for a model that is not resident waits for its load, and a load that finds
memory full first evicts the least recently used model no run is using. The
stub imitates that so foreman's scheduler can be tested against model
switches. `ModelMemory` is a base of `StubState`: its knobs and counters are
plain attributes of the stub (documented on `StubOllama`).

Runs take their model with `acquire_model` and give it back with
`release_model`. Acquisitions pass one at a time, in arrival order, through
a turn (an `asyncio.Lock`, which is FIFO): the run holding the turn evicts
if it must, waits for an idle model to evict if every resident one is busy,
then loads. A run for a resident model goes straight in unless runs are
queued for the turn; then it queues behind them, as Ollama's scheduler
serves its pending requests in order, so a load is never starved.

A run whose client leaves while queued never loads. One that leaves during
its load lets the load complete (as Ollama does): the model ends up resident
and idle, and the turn passes on only then.
"""

from __future__ import annotations

import asyncio
from collections import Counter


class ModelMemory:
    """Resident models, the load turn, and counters of loads and evictions."""

    def __init__(self, *, max_loaded: int | None = None, load_time: float = 0.0) -> None:
        self._freed = asyncio.Event()  # replaced whenever memory may have room
        self._max_loaded: int | None = None
        self.max_loaded = max_loaded  # checked by the setter
        self.load_time = load_time  # seconds a load takes; read when a load starts
        self.load_hold: asyncio.Event | None = None  # a load also waits for it (tests)

        self.loaded: list[str] = []  # resident models in load order: what /api/ps lists
        self.loading: str | None = None  # the model whose load is under way
        self.busy: Counter[str] = Counter()  # runs holding each model
        self.runs_awaiting_model = 0  # runs queued for the turn or waiting for their load
        self.loads: Counter[str] = Counter()  # loads per model (inventory name)
        self.load_log: list[str] = []  # every load, in order
        self.eviction_log: list[str] = []  # every eviction, in order

        self._last_used: dict[str, int] = {}  # model -> tick of its last run's start or end
        self._ticks = 0
        self._expiring: set[str] = set()  # unloaded while busy: goes when its last run ends
        self._turn = asyncio.Lock()
        self._load_task: asyncio.Task[None] | None = None

    # --- knobs and readings ---

    @property
    def max_loaded(self) -> int | None:
        """Most models resident at once; None: no limit."""
        return self._max_loaded

    @max_loaded.setter
    def max_loaded(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"max_loaded must be at least 1 or None, not {value}")
        self._max_loaded = value
        self._signal_freed()  # a load waiting for room may fit now

    @property
    def loads_total(self) -> int:
        return len(self.load_log)

    @property
    def evictions(self) -> int:
        return len(self.eviction_log)

    def eviction_candidates(self) -> list[str]:
        """The resident models no run holds, least recently used (next evicted) first.

        A model's last use is when its latest run started or ended, whichever
        came later.
        """
        idle = [name for name in self.loaded if not self.busy[name]]
        return sorted(idle, key=lambda name: self._last_used.get(name, 0))

    def notify(self) -> None:
        """Called after every change; `StubState` wakes its `wait_for` callers here."""

    # --- used by runs ---

    def take_model_now(self, name: str) -> bool:
        """Hold `name` for a run if that needs no waiting; False if it needs `acquire_model`.

        No waiting: no run is queued for the turn, and the model is resident
        or can be loaded in no time (``load_time`` 0, no unset ``load_hold``,
        and room or an idle model to evict). Without the memory knobs that is
        always so: runs take their model without yielding to the loop, as
        they did before the stub had a memory.
        """
        if self._turn.locked() or self.runs_awaiting_model:
            return False
        if name not in self.loaded:
            if not self._loads_at_once() or not self._evict_for_room():
                return False
            self._finish_load(name)
        self._hold(name)
        return True

    async def acquire_model(self, name: str) -> float | None:
        """Make `name` resident and hold it for a run (release with `release_model`).

        Returns None if the run went straight in (`take_model_now`), else the
        seconds it waited: queued for the turn, for room, for its load.
        Cancelled while the run is queued or waiting for room, it loads
        nothing; during the load, the load completes anyway (as Ollama's
        does) and the model stays resident, idle.
        """
        if self.take_model_now(name):
            return None
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.runs_awaiting_model += 1
        self.notify()
        try:
            await self._take_turn_and_hold(name)
        finally:
            self.runs_awaiting_model -= 1
            self.notify()
        return loop.time() - started

    def release_model(self, name: str) -> None:
        """A run on `name` has ended."""
        self._last_used[name] = self._tick()  # if resident: its use ended just now
        if self.busy[name] > 1:
            self.busy[name] -= 1
        else:
            self.busy.pop(name, None)
            if name in self._expiring:
                self._drop(name)
            self._signal_freed()
        self.notify()

    def unload(self, name: str) -> None:
        """Unload `name` (keep_alive 0, deletion): now if idle, else when its last run ends.

        A run that takes the model before then keeps it resident.
        """
        if name not in self.loaded:
            return
        if self.busy[name]:
            self._expiring.add(name)
        else:
            self._drop(name)
            self._signal_freed()
        self.notify()

    def cancel_loads(self) -> None:
        """Abandon a load under way (the stub is stopping)."""
        if self._load_task is not None:
            self._load_task.cancel()

    # --- the turn ---

    async def _take_turn_and_hold(self, name: str) -> None:
        await self._turn.acquire()  # cancelled while queued: nothing to undo
        handed_off = False
        try:
            if name not in self.loaded:
                await self._make_room()
                load = asyncio.ensure_future(self._load(name))
                self._load_task = load
                try:
                    await asyncio.shield(load)
                except asyncio.CancelledError:
                    if not load.done():
                        # The client left mid-load: the load goes on, and the
                        # turn is passed on when it ends.
                        handed_off = True
                        load.add_done_callback(lambda _: self._turn.release())
                    raise
            self._hold(name)
        finally:
            if not handed_off:
                self._turn.release()

    async def _make_room(self) -> None:
        """Make room for one more model, waiting while every resident one is busy."""
        while not self._evict_for_room():
            await self._freed.wait()

    def _evict_for_room(self) -> bool:
        """Evict least recently used idle models until one more fits; False if it still does not."""
        while self._max_loaded is not None and len(self.loaded) >= self._max_loaded:
            candidates = self.eviction_candidates()
            if not candidates:
                return False
            self._drop(candidates[0])
            self.eviction_log.append(candidates[0])
            self.notify()
        return True

    async def _load(self, name: str) -> None:
        self.loading = name
        self.notify()
        try:
            if self.load_time > 0:
                await asyncio.sleep(self.load_time)
            if self.load_hold is not None:
                await self.load_hold.wait()
            self._finish_load(name)
        finally:
            self.loading = None
            self.notify()

    # --- bookkeeping ---

    def _loads_at_once(self) -> bool:
        return self.load_time <= 0 and (self.load_hold is None or self.load_hold.is_set())

    def _finish_load(self, name: str) -> None:
        self.loaded.append(name)
        self._last_used[name] = self._tick()
        self.loads[name] += 1
        self.load_log.append(name)
        self.notify()

    def _hold(self, name: str) -> None:
        self._expiring.discard(name)  # a new run keeps it, as Ollama's new keep_alive does
        self.busy[name] += 1
        self._last_used[name] = self._tick()
        self.notify()

    def _drop(self, name: str) -> None:
        self.loaded.remove(name)
        self._expiring.discard(name)

    def _tick(self) -> int:
        self._ticks += 1
        return self._ticks

    def _signal_freed(self) -> None:
        self._freed.set()
        self._freed = asyncio.Event()
