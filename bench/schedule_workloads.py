"""The simulator's seeded workloads: who sends what, on which model, and the target they share.

Every request list is drawn from a random.Random seeded by the workload's
name and the seed, so a seed always gives the same workload, whatever the
policy or the other workloads run. Closed-loop clients have a fixed script
(so every policy serves the same work and target times compare); when each
request is sent depends on the policy, as it would.

Kinds of client:
- essay: heavy, closed loop, 1–3 requests outstanding, long answers;
- question: heavy, closed loop, 1–3 outstanding, short answers;
- interactive: a person: Poisson arrivals over the horizon, short answers;
- returning: a few requests at the start, idle for half the horizon, then
  a burst of requests at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from schedule_engine import ClientScript, Request, Setup

# Seconds over which open-loop clients arrive, at scale 1.
HORIZON = 3000.0
ESSAY = (30.0, 150.0)
QUESTION = (1.0, 6.0)
INTERACTIVE = (0.5, 4.0)
RETURNING = (2.0, 15.0)
# Mean seconds between an interactive client's requests.
INTERACTIVE_GAP = 120.0


@dataclass(frozen=True)
class Workload:
    name: str
    about: str
    setup: Setup
    make: Callable[[int, float], list[ClientScript]]

    def scripts(self, seed: int, scale: float) -> list[ClientScript]:
        return self.make(seed, scale)


def _rng(workload: str, seed: int, client: str) -> random.Random:
    # Per client, so adding a client to a workload does not change the others' draws.
    return random.Random(f"{workload}/{seed}/{client}")


def _closed(
    workload: str, seed: int, name: str, kind: str, count: int, service: tuple[float, float], model: str
) -> ClientScript:
    rng = _rng(workload, seed, name)
    outstanding = rng.randint(1, 3)
    requests = tuple(Request(name, kind, rng.uniform(*service), model) for _ in range(count))
    return ClientScript(name, kind, requests, outstanding=outstanding, start=0.0)


def _poisson(workload: str, seed: int, name: str, horizon: float, model: str) -> ClientScript:
    rng = _rng(workload, seed, name)
    requests = []
    t = rng.expovariate(1 / INTERACTIVE_GAP)
    while t < horizon:
        requests.append(Request(name, "interactive", rng.uniform(*INTERACTIVE), model, arrival=t))
        t += rng.expovariate(1 / INTERACTIVE_GAP)
    return ClientScript(name, "interactive", tuple(requests))


def _returning(workload: str, seed: int, name: str, horizon: float, model: str, burst: int) -> ClientScript:
    """A few requests in the first tenth of the horizon, nothing until 60 % of it, then `burst` at once."""
    rng = _rng(workload, seed, name)
    early = sorted(rng.uniform(0, 0.1 * horizon) for _ in range(3))
    back = 0.6 * horizon
    requests = [Request(name, "returning", rng.uniform(*RETURNING), model, arrival=t) for t in early]
    requests += [Request(name, "returning", rng.uniform(*RETURNING), model, arrival=back) for _ in range(burst)]
    return ClientScript(name, "returning", tuple(requests))


def _count(n: int, scale: float) -> int:
    return max(2, round(n * scale))


def one_model(name: str, seed: int, scale: float) -> list[ClientScript]:
    horizon = HORIZON * scale
    scripts = [_closed(name, seed, f"essay-{k}", "essay", _count(12, scale), ESSAY, "llama") for k in (1, 2)]
    scripts += [_closed(name, seed, f"question-{k}", "question", _count(80, scale), QUESTION, "llama") for k in (1, 2)]
    scripts += [_poisson(name, seed, f"interactive-{k}", horizon, "llama") for k in (1, 2, 3, 4)]
    scripts.append(_returning(name, seed, "returning", horizon, "llama", burst=6))
    return scripts


def mixed_model(name: str, seed: int, scale: float) -> list[ClientScript]:
    horizon = HORIZON * scale
    scripts = [
        _closed(name, seed, "essay-llama", "essay", _count(10, scale), ESSAY, "llama"),
        _closed(name, seed, "question-qwen", "question", _count(60, scale), QUESTION, "qwen"),
        _closed(name, seed, "question-mistral", "question", _count(60, scale), QUESTION, "mistral"),
    ]
    scripts += [_poisson(name, seed, f"interactive-{m}", horizon, m) for m in ("llama", "qwen", "mistral")]
    scripts.append(_returning(name, seed, "returning-qwen", horizon, "qwen", burst=6))
    return scripts


ONE_MODEL = "one-model"
MIXED = "mixed-model"

WORKLOADS = {
    w.name: w
    for w in (
        Workload(
            ONE_MODEL,
            "all clients on one model (llama, 10 s load); concurrency 1. Two essay clients (12 answers of "
            f"{ESSAY[0]:g}–{ESSAY[1]:g} s), two question clients (80 of {QUESTION[0]:g}–{QUESTION[1]:g} s), "
            f"four interactive clients (Poisson, one every {INTERACTIVE_GAP:g} s on average, "
            f"{INTERACTIVE[0]:g}–{INTERACTIVE[1]:g} s), a returning client (3 early, 6 at once at 60 % "
            f"of the {HORIZON:g} s horizon, {RETURNING[0]:g}–{RETURNING[1]:g} s)",
            Setup(concurrency=1, load_times={"llama": 10.0}),
            lambda seed, scale: one_model(ONE_MODEL, seed, scale),
        ),
        Workload(
            f"{ONE_MODEL}-c2",
            f"the same clients and draws as {ONE_MODEL}, at concurrency 2",
            Setup(concurrency=2, load_times={"llama": 10.0}),
            lambda seed, scale: one_model(ONE_MODEL, seed, scale),
        ),
        Workload(
            MIXED,
            "three models (llama 5 s load, qwen 12 s, mistral 20 s), one resident at a time; concurrency 1. "
            f"An essay client on llama (10 answers of {ESSAY[0]:g}–{ESSAY[1]:g} s), question clients on qwen "
            f"and on mistral (60 each of {QUESTION[0]:g}–{QUESTION[1]:g} s), one interactive client per model "
            f"(Poisson, one every {INTERACTIVE_GAP:g} s on average), a returning client on qwen",
            Setup(concurrency=1, load_times={"llama": 5.0, "qwen": 12.0, "mistral": 20.0}),
            lambda seed, scale: mixed_model(MIXED, seed, scale),
        ),
    )
}
