"""What one simulated run measured: the service gap against the bound, newcomers, loads, target time, waits.

Service is what the issue calls it: the seconds a request holds a slot,
from dispatch to the end of its answer (a model load included), divided by
its client's weight. A client is backlogged while it has a request waiting.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from schedule_engine import ClientTrace, Request, Run


class ServiceCurve:
    """S(t): the weighted service a client had received by time t (piecewise linear)."""

    def __init__(self, requests: Sequence[Request], weight: float) -> None:
        changes: dict[float, int] = {}
        for r in requests:
            changes[r.dispatched] = changes.get(r.dispatched, 0) + 1
            changes[r.ended] = changes.get(r.ended, 0) - 1
        #: times where the number of its requests holding a slot changes
        self.times = sorted(changes)
        self._served: list[float] = []
        self._rate: list[float] = []
        served, rate, last = 0.0, 0.0, 0.0
        for t in self.times:
            served += rate * (t - last)
            rate += changes[t] / weight
            last = t
            self._served.append(served)
            self._rate.append(rate)

    def at(self, t: float) -> float:
        k = bisect.bisect_right(self.times, t) - 1
        if k < 0:
            return 0.0
        return self._served[k] + self._rate[k] * (t - self.times[k])

    def breaks_within(self, start: float, end: float) -> list[float]:
        return self.times[bisect.bisect_right(self.times, start) : bisect.bisect_left(self.times, end)]


@dataclass(frozen=True)
class Gap:
    """The largest |S_a/w_a − S_b/w_b| over an interval in which both a and b were continuously backlogged."""

    seconds: float
    clients: tuple[str, str] = ("", "")
    #: the co-backlogged stretch it was found in
    during: tuple[float, float] = (0.0, 0.0)
    #: each client's weighted service over that stretch, and the part of it from out-of-turn (affinity) picks
    service: tuple[float, float] = (0.0, 0.0)
    out_of_turn: tuple[float, float] = (0.0, 0.0)


def largest_gap(run: Run) -> Gap:
    """The largest service gap between any two clients over any interval both were backlogged throughout."""
    by_client: dict[str, list[Request]] = {}
    for r in run.requests:
        by_client.setdefault(r.client, []).append(r)
    traces = [t for t in run.clients.values() if any(b > a for a, b in t.backlogged)]
    curves = {t.name: ServiceCurve(by_client.get(t.name, []), t.weight) for t in traces}
    worst = Gap(0.0)
    for i, a in enumerate(traces):
        for b in traces[i + 1 :]:
            for start, end in _overlaps(a, b):
                # D(t) = S_a(t) − S_b(t) is linear between the two curves' breaks,
                # so its widest swing over sub-intervals is max − min at those breaks.
                points = [
                    start,
                    end,
                    *curves[a.name].breaks_within(start, end),
                    *curves[b.name].breaks_within(start, end),
                ]
                diffs = [curves[a.name].at(t) - curves[b.name].at(t) for t in points]
                swing = max(diffs) - min(diffs)
                if swing > worst.seconds:
                    worst = Gap(swing, (a.name, b.name), (start, end))
    if worst.seconds == 0:
        return worst
    start, end = worst.during
    pair = [(by_client[name], run.clients[name].weight) for name in worst.clients]
    return Gap(
        worst.seconds,
        worst.clients,
        worst.during,
        tuple(_served_within(rs, start, end, w, lambda r: True) for rs, w in pair),
        tuple(_served_within(rs, start, end, w, lambda r: r.out_of_turn) for rs, w in pair),
    )


def _served_within(requests: list[Request], start: float, end: float, weight: float, which) -> float:
    return sum(max(0.0, min(end, r.ended) - max(start, r.dispatched)) for r in requests if which(r)) / weight


def _overlaps(a: ClientTrace, b: ClientTrace) -> list[tuple[float, float]]:
    """Stretches of positive length in which both were backlogged."""
    out = []
    i = j = 0
    while i < len(a.backlogged) and j < len(b.backlogged):
        start = max(a.backlogged[i][0], b.backlogged[j][0])
        end = min(a.backlogged[i][1], b.backlogged[j][1])
        if end > start:
            out.append((start, end))
        if a.backlogged[i][1] < b.backlogged[j][1]:
            i += 1
        else:
            j += 1
    return out


@dataclass(frozen=True)
class RunFigures:
    """One run, summed up."""

    gap: Gap
    #: the longest single request's service (slot time, load included)
    t_max: float
    bound: float
    loads: int
    #: slot-seconds at the target, loads included
    target_time: float
    #: from the first arrival to the last answer's end
    makespan: float
    #: newcomers back from idle (their client's last answer ended before they arrived, or they are its first)
    newcomer_waits: list[float]
    #: of those, the ones that saw a request go ahead that was not an earlier newcomer's: how long each had
    #: idled (inf: its client's first request) and the service of the requests that went ahead
    overtaken: list[tuple[float, float]]
    #: newcomers sent the moment their client's previous answer ended (a closed loop with one outstanding)
    resubmit_waits: list[float]
    resubmits_overtaken: int
    #: seconds from first being passed over (fair turn given to another) to dispatch; fair policies only
    past_fair_turn: list[float]
    #: kind of client -> queue waits (arrival to dispatch) and first-token waits (arrival to answer start)
    queue_waits: dict[str, list[float]]
    first_token_waits: dict[str, list[float]]

    @property
    def holds(self) -> bool:
        return self.gap.seconds <= self.bound + 1e-9

    def past_turn_within(self, budget: float) -> bool:
        """No request waited past its fair turn longer than the budget plus one slot (the longest request)."""
        return max(self.past_fair_turn, default=0.0) <= budget + self.t_max + 1e-9


def figures(run: Run, affinity_budget: float) -> RunFigures:
    """Sum a run up; `affinity_budget` is added to T_max in the bound when the policy uses affinity."""
    requests = run.requests
    t_max = max(r.hold for r in requests)
    queue_waits: dict[str, list[float]] = {}
    first_token: dict[str, list[float]] = {}
    for r in requests:
        queue_waits.setdefault(r.kind, []).append(r.dispatched - r.arrival)
        first_token.setdefault(r.kind, []).append(r.started - r.arrival)
    position = {id(r): k for k, r in enumerate(run.dispatch_log)}

    def ahead_of(n: Request) -> list[Request]:
        ahead = run.dispatch_log[n.dispatches_before : position[id(n)]]
        return [r for r in ahead if not (r.newcomer and r.arrival_seq < n.arrival_seq)]

    back = [r for r in requests if r.newcomer and r.idle_before > 0]
    resubmitted = [r for r in requests if r.newcomer and r.idle_before == 0]
    return RunFigures(
        gap=largest_gap(run),
        t_max=t_max,
        bound=2 * (t_max + affinity_budget),
        loads=run.loads,
        target_time=sum(r.hold for r in requests),
        makespan=max(r.ended for r in requests) - min(r.arrival for r in requests),
        newcomer_waits=[r.dispatched - r.arrival for r in back],
        overtaken=[(r.idle_before, sum(a.hold for a in ahead)) for r in back if (ahead := ahead_of(r))],
        resubmit_waits=[r.dispatched - r.arrival for r in resubmitted],
        resubmits_overtaken=sum(bool(ahead_of(r)) for r in resubmitted),
        past_fair_turn=[r.dispatched - r.passed_over for r in requests if r.passed_over is not None],
        queue_waits=queue_waits,
        first_token_waits=first_token,
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100), linear between the closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
