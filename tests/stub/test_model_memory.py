"""The stand-in's model memory: --max-loaded, --load-time, load_duration and /api/ps.

Over real HTTP against the stub. Waits are on the stub's own counters
(`wait_for`) and events with generous deadlines; timing is asserted only from
below (a run that waited for a load reports at least the load time).
"""

import asyncio
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from foreman.stub import StubOllama
from tests.helpers import subprocess_env
from tests.stub.support import Lines, as_json, chat_body, open_chat_socket, post, post_chat

A, B, C, D = "alpha:latest", "beta:latest", "gamma:latest", "delta:latest"
LOAD_TIME = 0.2
LOAD_NS = int(LOAD_TIME * 1e9)
FIXED_LOAD_NS = 5_000_000  # what a run that did not wait reports, as before the memory


@pytest.fixture
def stub(stub):
    """The shared stub with four models and no memory knobs set yet."""
    stub.models = [A, B, C, D]
    return stub


async def chat(http, stub, model: str, **extra) -> dict:
    response = await post_chat(http, stub, chat_body(model=model, stream=False, **extra))
    assert response.code == 200, response.body
    return json.loads(response.body)


async def ps(http, stub) -> list[str]:
    response = await http.fetch(stub.url + "/api/ps")
    return [model["name"] for model in json.loads(response.body)["models"]]


class Parked:
    """The first `runs` runs to pause between chunks wait there, holding their models.

    `entered` is set once they all wait, `release` lets them go; later runs
    are not paced.
    """

    def __init__(self, stub: StubOllama, runs: int = 1) -> None:
        self.runs = runs
        self.count = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        stub.pace = self.pace

    async def pace(self, index: int) -> None:
        if self.count < self.runs:
            self.count += 1
            if self.count == self.runs:
                self.entered.set()
            await self.release.wait()


async def park_runs_on(http, stub, *models: str) -> tuple[Parked, asyncio.Future]:
    """A chat on each of `models` that stays in progress, holding its model, until released."""
    parked = Parked(stub, len(models))
    running = asyncio.gather(*(chat(http, stub, model) for model in models))
    await asyncio.wait_for(parked.entered.wait(), 30)
    assert all(stub.busy[model] == 1 for model in models)
    return parked, running


async def test_alternating_two_models_with_one_slot_loads_on_every_switch(stub, http):
    stub.max_loaded, stub.load_time = 1, LOAD_TIME
    for model in (A, B, A, B):
        answer = await chat(http, stub, model)
        assert answer["load_duration"] >= LOAD_NS
        assert answer["total_duration"] >= answer["load_duration"] + answer["eval_duration"]
        assert await ps(http, stub) == [model] == stub.loaded
    assert stub.load_log == [A, B, A, B]
    assert stub.loads == {A: 2, B: 2} and stub.loads_total == 4
    assert stub.eviction_log == [A, B, A] and stub.evictions == 3


async def test_the_same_model_twice_loads_once(stub, http):
    stub.max_loaded, stub.load_time = 1, LOAD_TIME
    first = await chat(http, stub, A)
    second = await chat(http, stub, A)
    assert first["load_duration"] >= LOAD_NS
    assert second["load_duration"] == FIXED_LOAD_NS  # resident: no wait
    assert stub.loads == {A: 1} and stub.evictions == 0
    assert await ps(http, stub) == [A]


async def test_every_route_that_runs_a_model_waits_for_its_load(stub, http):
    stub.max_loaded, stub.load_time = 1, LOAD_TIME

    lines = Lines()
    await post_chat(http, stub, chat_body(model=A), streaming_callback=lines.feed)
    assert lines.lines[-1]["done"] is True and lines.lines[-1]["load_duration"] >= LOAD_NS

    generated = await post(http, stub, "/api/generate", as_json(model=B, prompt="hi", stream=False))
    assert json.loads(generated.body)["load_duration"] >= LOAD_NS

    embedded = await post(http, stub, "/api/embed", as_json(model=A, input="hi"))
    assert json.loads(embedded.body)["load_duration"] >= LOAD_NS

    # OpenAI's shapes have no load_duration; the run still loads its model.
    v1 = as_json(model=B, messages=[{"role": "user", "content": "hi"}])
    assert (await post(http, stub, "/v1/chat/completions", v1)).code == 200

    assert stub.load_log == [A, B, A, B]
    assert await ps(http, stub) == [B]


async def test_concurrent_requests_for_a_third_model_wait_for_one_load(stub, http):
    stub.max_loaded, stub.load_time = 2, LOAD_TIME
    parked, running = await park_runs_on(http, stub, A, B)  # memory full, all busy

    waiting = [asyncio.ensure_future(chat(http, stub, C, content=f"n{i}")) for i in range(3)]
    await stub.wait_for(lambda: stub.runs_awaiting_model == 3)
    assert stub.loading is None and stub.evictions == 0  # no room until a run ends

    parked.release.set()
    await running
    answers = await asyncio.gather(*waiting)
    # All three queued before the load began, so each waited for all of it.
    assert all(answer["load_duration"] >= LOAD_NS for answer in answers)
    assert stub.loads == {A: 1, B: 1, C: 1} and stub.evictions == 1
    assert C in stub.loaded and len(stub.loaded) == 2
    assert await ps(http, stub) == stub.loaded
    assert stub.runs_awaiting_model == 0 and not stub.busy


async def test_a_load_evicts_first_and_runs_on_resident_models_queue_behind_it(stub, http):
    stub.max_loaded = 2
    await chat(http, stub, A)
    await chat(http, stub, B)
    stub.load_hold = asyncio.Event()  # the load of C lasts until the test says so

    loading = asyncio.ensure_future(chat(http, stub, C))
    await stub.wait_for(lambda: stub.loading == C)
    assert stub.eviction_log == [A]  # the least recently used idle model, before the load
    assert stub.loaded == [B] and await ps(http, stub) == [B]
    # A run for a resident model waits its turn behind the load, as in Ollama's scheduler.
    behind = asyncio.ensure_future(chat(http, stub, B, content="resident"))
    await stub.wait_for(lambda: stub.runs_awaiting_model == 2)
    assert not stub.busy[B]

    stub.load_hold.set()
    await asyncio.gather(loading, behind)
    assert stub.loads == {A: 1, B: 1, C: 1}
    assert stub.loaded == [B, C] and await ps(http, stub) == [B, C]


async def test_least_recently_used_idle_model_is_evicted(stub, http):
    stub.max_loaded, stub.load_time = 2, LOAD_TIME
    for model in (A, B, A):
        await chat(http, stub, model)
    assert stub.eviction_candidates() == [B, A]

    await chat(http, stub, C)
    assert stub.eviction_log == [B]
    assert await ps(http, stub) == [A, C]

    await chat(http, stub, D)
    assert stub.eviction_log == [B, A]
    assert await ps(http, stub) == [C, D]
    assert stub.loads == {A: 1, B: 1, C: 1, D: 1}


async def test_a_busy_model_is_not_evicted_even_when_least_recently_used(stub, http):
    stub.max_loaded, stub.load_time = 2, LOAD_TIME
    parked, running = await park_runs_on(http, stub, A)
    await chat(http, stub, B)  # used after A started: A is the least recently used
    assert stub.eviction_candidates() == [B]

    await chat(http, stub, C)
    assert stub.eviction_log == [B]
    assert await ps(http, stub) == [A, C]
    parked.release.set()
    await running


async def test_a_load_waits_while_every_resident_model_is_busy(stub, http):
    stub.max_loaded, stub.load_time = 1, LOAD_TIME
    parked, running = await park_runs_on(http, stub, A)

    waiting = asyncio.ensure_future(chat(http, stub, B))
    await stub.wait_for(lambda: stub.runs_awaiting_model == 1)
    assert stub.loading is None and stub.evictions == 0
    assert await ps(http, stub) == [A]

    parked.release.set()
    await running
    answer = await waiting
    assert answer["load_duration"] >= LOAD_NS
    assert stub.load_log == [A, B] and stub.eviction_log == [A]
    assert await ps(http, stub) == [B]


async def test_a_client_leaving_while_queued_loads_nothing(stub, http):
    stub.max_loaded, stub.load_time = 1, LOAD_TIME
    parked, running = await park_runs_on(http, stub, A)

    socket = await open_chat_socket(stub, chat_body(model=B))
    await stub.wait_for(lambda: stub.runs_awaiting_model == 1)
    socket.close()
    await stub.wait_for(lambda: stub.chats_disconnected == 1 and stub.runs_awaiting_model == 0)

    parked.release.set()
    await running
    assert stub.load_log == [A] and stub.evictions == 0
    assert await ps(http, stub) == [A]


async def test_a_client_leaving_during_its_load_lets_the_load_finish(stub, http):
    stub.max_loaded, stub.load_time = 1, LOAD_TIME
    await chat(http, stub, A)
    stub.load_hold = asyncio.Event()

    socket = await open_chat_socket(stub, chat_body(model=B))
    await stub.wait_for(lambda: stub.loading == B)
    socket.close()
    await stub.wait_for(lambda: stub.chats_disconnected == 1)
    assert stub.loading == B and B not in stub.loaded

    stub.load_hold.set()
    await stub.wait_for(lambda: B in stub.loaded and stub.loading is None)
    assert stub.load_log == [A, B] and not stub.busy
    # Resident and idle: the next run goes straight in.
    assert (await chat(http, stub, B))["load_duration"] == FIXED_LOAD_NS
    assert stub.loads_total == 2


async def test_keep_alive_zero_unloads_a_busy_model_when_its_run_ends(stub, http):
    stub.max_loaded = 1
    parked, running = await park_runs_on(http, stub, A)

    unload = await post(http, stub, "/api/generate", as_json(model=A, keep_alive=0))
    assert json.loads(unload.body)["done_reason"] == "unload"
    assert await ps(http, stub) == [A]  # still running
    parked.release.set()
    await running
    assert await ps(http, stub) == []
    assert stub.loads_total == 1  # the unload loaded nothing


async def test_without_the_knobs_every_model_stays_and_nothing_waits(stub, http):
    for model in (A, B, C, A):
        assert (await chat(http, stub, model))["load_duration"] == FIXED_LOAD_NS
    assert await ps(http, stub) == [A, B, C] == stub.loaded
    assert stub.load_log == [A, B, C] and stub.evictions == 0
    assert stub.max_loaded is None and stub.load_time == 0


def test_max_loaded_below_one_is_refused_at_run_time():
    stub = StubOllama()
    with pytest.raises(ValueError, match="max_loaded"):
        stub.max_loaded = 0
    stub.max_loaded = None


# --- the command line ---------------------------------------------------------


def run_stub_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "foreman", "stub", *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--max-loaded", "0"),
        ("--max-loaded", "two"),
        ("--max-loaded", "1.5"),
        ("--load-time", "-1"),
        ("--load-time", "soon"),
        ("--load-time", "nan"),
    ],
)
def test_bad_memory_flags_give_one_line_and_exit_2(args):
    done = run_stub_command(*args)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and args[0] in lines[0] and repr(args[1]) in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(seconds=60)
async def test_memory_flags_reach_the_running_stub(http):
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "foreman", "stub", "--listen", "127.0.0.1:0"),
        *("--models", f"{A},{B}", "--chunk-delay", "0"),
        *("--max-loaded", "1", "--load-time", str(LOAD_TIME)),
        env=subprocess_env(),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        url = None
        async with asyncio.timeout(30):
            while url is None:
                line = (await process.stderr.readline()).decode()
                assert line, "the stub exited before listening"
                if "listening on " in line:
                    url = line.split("listening on ", 1)[1].strip()
        target = SimpleNamespace(url=url)
        for model in (A, B):
            assert (await chat(http, target, model))["load_duration"] >= LOAD_NS
        assert await ps(http, target) == [B]
    finally:
        process.terminate()
        await process.wait()
