"""Sharing the machine by what it costs, through HTTP against the stand-in.

The stand-in paces its answers (`chunk_delay` × `options.num_predict`), so a
request's service time is what the test says; with `max_loaded`/`load_time`
it holds one model at a time and loading another takes time, as a Mac does.
Orders are read from the stand-in's own record of what arrived.
"""

from __future__ import annotations

import asyncio
import json

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import tokens_file, until

LLAMA, QWEN = "llama3.2", "qwen2.5:0.5b"


def chat(label: str, chunks: int, model: str = LLAMA) -> dict:
    return {
        "model": model,
        "stream": False,
        "messages": [{"role": "user", "content": label}],
        "options": {"num_predict": chunks},
    }


def arrival_order(stub) -> list[str]:
    return [json.loads(r.body)["messages"][0]["content"] for r in stub.requests if r.path == "/api/chat"]


class Clients:
    """Sends chats under tokens, each on its own connection, and waits for them."""

    def __init__(self, front) -> None:
        self.front = front
        self.http = front.client(max_clients=200)
        self.sent: list[asyncio.Future] = []

    def send(self, token: str, body: dict) -> None:
        self.sent.append(asyncio.ensure_future(self.http.fetch(
            self.front.url + "/api/chat", method="POST", body=json.dumps(body),
            headers={"Authorization": f"Bearer {token}"}, request_timeout=120,
        )))

    async def all_answered(self) -> None:
        answers = await asyncio.gather(*self.sent)
        assert {a.code for a in answers} == {200}


async def queue_up(front, stub, clients: Clients, plan: list[tuple[str, dict]]) -> None:
    """Hold the target, queue `plan` in order, then let everything run."""
    stub.hold = asyncio.Event()
    for token, body in plan:
        clients.send(token, body)
        await until(lambda n=len(clients.sent): front.foreman.queue.waiting + front.foreman.queue.in_flight == n)
    stub.hold.set()
    await clients.all_answered()


async def test_turns_follow_service_not_request_count(start_foreman, stub) -> None:
    """A client with four-times-longer requests gets about a quarter as many turns."""
    stub.chunk_delay = 0.05
    front = start_foreman(FOREMAN_TOKENS="essays,questions")
    await front.ready()
    clients = Clients(front)
    plan = [("essays", chat(f"e{k}", 16)) for k in range(6)]
    plan += [("questions", chat(f"q{k}", 4)) for k in range(24)]
    await queue_up(front, stub, clients, plan)
    order = arrival_order(stub)
    # While both had requests waiting (until the essays ran out), count the turns.
    last_essay = max(i for i, label in enumerate(order) if label.startswith("e"))
    during = order[: last_essay + 1]
    essays, questions = sum(x.startswith("e") for x in during), sum(x.startswith("q") for x in during)
    assert essays == 6
    # Equal time would be 4 questions per essay; allow for per-request overhead.
    assert 2.5 * essays <= questions <= 5 * essays, order


async def test_weights_share_turns_two_to_one(start_foreman, stub, tmp_path) -> None:
    stub.chunk_delay = 0.02
    path = tokens_file(tmp_path, "tok-a name=alice weight=2\ntok-b name=bob\n")
    front = start_foreman(FOREMAN_TOKENS_FILE=path)
    await front.ready()
    clients = Clients(front)
    plan = [("tok-a", chat(f"a{k}", 5)) for k in range(16)] + [("tok-b", chat(f"b{k}", 5)) for k in range(16)]
    await queue_up(front, stub, clients, plan)
    order = arrival_order(stub)
    first = order[:12]
    assert 7 <= sum(x.startswith("a") for x in first) <= 9, order


async def test_named_clients_in_the_log_and_the_metrics(start_foreman, stub, tmp_path, caplog) -> None:
    import logging

    path = tokens_file(tmp_path, "tok-a name=alice weight=2\ntok-plain\n")
    front = start_foreman(FOREMAN_TOKENS_FILE=path, FOREMAN_METRICS_PUBLIC="1")
    await front.ready()
    clients = Clients(front)
    with caplog.at_level(logging.INFO, logger="foreman.access"):
        clients.send("tok-a", chat("x", 2))
        clients.send("tok-plain", chat("y", 2))
        await clients.all_answered()
    lines = [r for r in caplog.records if getattr(r, "path", None) == "/api/chat"]
    assert {r.client for r in lines} >= {"alice"}
    assert all(r.service is not None and r.service >= 0 for r in lines), [(r.getMessage(), r.service) for r in lines]
    assert not any("tok-a" in r.getMessage() or "tok-plain" in r.getMessage() for r in caplog.records)
    metrics = (await front.fetch("/metrics")).body.decode()
    assert "tok-plain" not in metrics and "tok-a" not in metrics
    samples = {
        (s.name, s.labels.get("client")): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples[("foreman_client_requests_total", "alice")] == 1
    assert samples[("foreman_client_requests_total", "anonymous")] == 1
    assert samples[("foreman_client_service_seconds_total", "alice")] > 0
    assert samples[("foreman_client_queue_wait_seconds_count", "alice")] == 1
    assert ("foreman_model_loads_total", None) in samples


async def fewer_loads_run(start_foreman, affinity: str, stub) -> int:
    front = start_foreman(FOREMAN_TOKENS="x,y", FOREMAN_MODEL_AFFINITY=affinity)
    await front.ready()
    before = stub.loads_total
    clients = Clients(front)
    plan = [("x", chat(f"x{k}", 2, LLAMA)) for k in range(6)] + [("y", chat(f"y{k}", 2, QWEN)) for k in range(6)]
    await queue_up(front, stub, clients, plan)
    return stub.loads_total - before


async def test_model_affinity_halves_the_loads_on_a_one_model_machine(start_foreman, stub) -> None:
    stub.max_loaded, stub.load_time = 1, 0.1
    without = await fewer_loads_run(start_foreman, "0", stub)
    with_affinity = await fewer_loads_run(start_foreman, "30s", stub)
    assert with_affinity <= 0.5 * without, (with_affinity, without)


async def test_affinity_passes_a_request_over_for_no_longer_than_its_budget(start_foreman, stub) -> None:
    """A request for another model waits at most the budget (plus one request) beyond its turn."""
    stub.max_loaded, stub.load_time, stub.chunk_delay = 1, 0.05, 0.1
    front = start_foreman(FOREMAN_TOKENS="busy,other", FOREMAN_MODEL_AFFINITY="1s")
    await front.ready()
    clients = Clients(front)
    # busy keeps llama3.2 loaded with a long backlog; other wants qwen once, and
    # would be the fair choice at once (a newcomer).
    plan = [("busy", chat(f"b{k}", 3, LLAMA)) for k in range(30)] + [("other", chat("o", 1, QWEN))]
    await queue_up(front, stub, clients, plan)
    order = arrival_order(stub)
    # Each busy request takes about 0.3 s: a 1 s budget lets a few go first, never the backlog.
    assert order.index("o") <= 1 + 6, order


async def test_a_request_that_never_reached_the_target_changes_nothing_foreman_knows_it_holds(start_foreman, stub) -> None:
    """While the target is away, tries for another model do not make foreman think it loaded it."""
    stub.max_loaded = 1
    front = start_foreman(FOREMAN_TOKENS="x", FOREMAN_MODEL_AFFINITY="30s", FOREMAN_QUEUE_TIMEOUT="1m")
    await front.ready()
    clients = Clients(front)
    clients.send("x", chat("first", 1, LLAMA))
    await clients.all_answered()
    resident = front.foreman.inventory.resident
    await until(lambda: resident.current() == {"registry.ollama.ai/library/llama3.2:latest"})
    port = int(stub.url.rsplit(":", 1)[1])
    await stub.stop()
    clients.sent.clear()
    clients.send("x", chat("second", 1, QWEN))
    queue = front.foreman.queue
    await until(lambda: queue.paused)
    # The tries that failed sent nothing: what the target holds is as before.
    assert resident.current() == {"registry.ollama.ai/library/llama3.2:latest"}
    loads = queue.model_loads
    stub.listen(port)
    await clients.all_answered()
    # Once it got through, it made the target load qwen: counted once, and known.
    assert queue.model_loads == loads + 1
    await until(lambda: "registry.ollama.ai/library/qwen2.5:0.5b" in resident.current())
