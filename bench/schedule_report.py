"""The simulator's Markdown: the issue's targets met or not, then per workload a summary, newcomers, waits, seeds."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from schedule_metrics import RunFigures, percentile
from schedule_workloads import MIXED, Workload

# Results by workload name, then policy name: one RunFigures per seed, in seed order.
Results = dict[str, dict[str, list[RunFigures]]]

# The targets for fair+affinity against round-robin on the mixed-model workload.
LOADS_TARGET = 0.60
TIME_TARGET = 0.30
KINDS = ("essay", "question", "interactive", "returning")


def report(
    facts: list[str],
    workloads: Sequence[Workload],
    names: list[str],
    seeds: list[int],
    results: Results,
    affinity: float,
) -> str:
    """`names`: the policies in the order FIFO, round-robin, fair, fair+affinity."""
    lines = ["# Scheduling simulator: FIFO, round-robin, fair, fair with affinity", "", *facts, ""]
    lines += _definitions(affinity)
    if MIXED in results:
        lines += _targets(results[MIXED], names, seeds, affinity)
    else:
        lines += [f"The issue's targets are on {MIXED}, which this run left out.", ""]
    lines += _other_checks(results, names, seeds, affinity)
    for workload in workloads:
        lines += _workload(workload, names, seeds, results[workload.name])
    return "\n".join(lines).rstrip()


def _definitions(affinity: float) -> list[str]:
    return [
        "- *Service*: slot time at the target, from dispatch to the end of the answer, a model load included, "
        "per unit of weight (all weights are 1 here). *Target time*: the sum of that over all requests.",
        "- *Backlogged*: has a request waiting. *Gap*: the largest |S₁ − S₂| over any interval in which both "
        "clients were continuously backlogged, over every pair of clients. *T_max*: the longest single "
        f"request's service in the run. *Bound*: 2·T_max; for fair+affinity 2·(T_max + {affinity:g} s), the "
        "issue adding the affinity budget to T_max when affinity acts. FIFO and round-robin are held to "
        "2·T_max for comparison.",
        "- *Newcomer*: a request from a client with nothing waiting or in flight; *back from idle* if its "
        "client's last answer had ended before it arrived (or it is the client's first), *resubmitted* if it "
        "was sent the moment that answer ended (a closed loop with one request outstanding). It is "
        "*overtaken* when a request other than an earlier newcomer's is dispatched between its arrival and "
        "its own dispatch.",
        "- *Past fair turn*: from the moment a request was the fair choice and another one was dispatched "
        "instead (an affinity pick, *out of turn*) to its own dispatch.",
        "- *Queue wait*: arrival to dispatch. *First token*: arrival to the start of the answer, after a load.",
        "",
    ]


def _targets(mixed: dict[str, list[RunFigures]], names: list[str], seeds: list[int], affinity: float) -> list[str]:
    _, rr, fair, sticky = names
    lines = [
        f"## Targets (issue 12, point 6) on {MIXED}",
        "",
        "| target | figures | verdict |",
        "| --- | --- | --- |",
    ]
    for what, goal, unit, value in (
        ("fewer model loads", LOADS_TARGET, "", lambda f: f.loads),
        ("less total target time", TIME_TARGET, " s", lambda f: f.target_time),
    ):
        base = sum(value(f) for f in mixed[rr])
        ours = sum(value(f) for f in mixed[sticky])
        cut = 1 - ours / base if base else 0.0
        per_seed = [1 - value(s) / value(r) if value(r) else 0.0 for s, r in zip(mixed[sticky], mixed[rr])]
        text = (
            f"{_num(ours)}{unit} vs {_num(base)}{unit} over {len(seeds)} seeds: {_pct(-cut)}; per seed "
            f"{_pct(-max(per_seed))} to {_pct(-min(per_seed))}, at least {goal:.0%} less in "
            f"{sum(c >= goal for c in per_seed)}/{len(seeds)}"
        )
        lines.append(f"| {sticky}: at least {goal:.0%} {what} than {rr} | {text} | {_verdict(cut >= goal)} |")
    for name, bound in ((fair, "2·T_max"), (sticky, f"2·(T_max + {affinity:g} s)")):
        text, holds = _bound_figures(seeds, mixed[name])
        lines.append(f"| {name}: the bound {bound} holds in every seed | {text} | {_verdict(holds)} |")
    return lines + [""]


def _other_checks(results: Results, names: list[str], seeds: list[int], affinity: float) -> list[str]:
    """Not targets: the bound elsewhere, affinity's budget, newcomers back from idle under the fair policies."""
    _, _, fair, sticky = names
    lines = ["Not targets: the bound on the other workloads, affinity's budget, newcomers back from idle:", ""]
    for workload, by_policy in results.items():
        if workload == MIXED:
            continue
        for name, bound in ((fair, "2·T_max"), (sticky, f"2·(T_max + {affinity:g} s)")):
            text, holds = _bound_figures(seeds, by_policy[name])
            lines.append(f"- {workload}, {name}, bound {bound}: {text} — {_held(holds)}")
    for workload, by_policy in results.items():
        runs = by_policy[sticky]
        if not any(f.past_fair_turn for f in runs):
            continue
        within = sum(f.past_turn_within(affinity) for f in runs)
        k = max(range(len(runs)), key=lambda k: max(runs[k].past_fair_turn, default=0.0) - runs[k].t_max)
        lines.append(
            f"- {workload}, {sticky}: no request waits past its fair turn longer than the budget plus one slot "
            f"({affinity:g} s + T_max): {within}/{len(runs)} seeds; worst, seed {seeds[k]}: "
            f"{max(runs[k].past_fair_turn):.1f} s against {affinity + runs[k].t_max:.1f} s — "
            f"{_held(within == len(runs))}"
        )
    for workload, by_policy in results.items():
        for name in (fair, sticky):
            runs = by_policy[name]
            back = sum(len(f.newcomer_waits) for f in runs)
            overtaken = [o for f in runs for o in f.overtaken]
            text = f"- {workload}, {name}: newcomers back from idle overtaken: {len(overtaken)} of {back}"
            if overtaken:
                idled = [idle for idle, _ in overtaken if math.isfinite(idle)]
                ahead = [service for _, service in overtaken]
                text += (
                    f"; {len(overtaken) - len(idled)} were their client's first request, the others had idled "
                    f"{_s(percentile(idled, 50))} s (p50), {_s(max(idled, default=math.nan))} s at most; "
                    f"service that went ahead {_s(percentile(ahead, 50))} s (p50), {_s(max(ahead))} s at most"
                )
            lines.append(text)
    return lines + [""]


def _bound_figures(seeds: list[int], runs: list[RunFigures]) -> tuple[str, bool]:
    """How the bound fared over the seeds, and whether it held in every one."""
    holding = sum(f.holds for f in runs)
    k = max(range(len(runs)), key=lambda k: runs[k].gap.seconds / runs[k].bound)
    w = runs[k]
    text = (
        f"holds in {holding}/{len(runs)} seeds; worst gap ÷ bound {w.gap.seconds / w.bound:.2f} (seed "
        f"{seeds[k]}: gap {w.gap.seconds:.1f} s, bound {w.bound:.1f} s, {w.gap.clients[0]} vs {w.gap.clients[1]})"
    )
    return text, holding == len(runs)


def _workload(
    workload: Workload, names: list[str], seeds: list[int], by_policy: dict[str, list[RunFigures]]
) -> list[str]:
    lines = [f"## {workload.name}", "", workload.about + ".", ""]
    lines += _summary(names, by_policy)
    lines += _newcomers(names, by_policy)
    lines += _waits("Queue wait (s), p50 / p95 over all seeds", names, seeds, by_policy, lambda f: f.queue_waits)
    lines += _waits(
        "Wait to the first token (s, queue + load), p50 / p95 over all seeds",
        names,
        seeds,
        by_policy,
        lambda f: f.first_token_waits,
    )
    lines += _per_seed(names, seeds, by_policy)
    return lines


def _summary(names: list[str], by_policy: dict[str, list[RunFigures]]) -> list[str]:
    lines = [
        "| policy | loads / seed | target time / seed (s) | makespan / seed (s) | largest gap (s) "
        "| worst gap ÷ bound | bound holds | past fair turn, max (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        runs = by_policy[name]
        past = [w for f in runs for w in f.past_fair_turn]
        # Only the fair policies know a fair turn; without affinity they never pass it.
        fair_policy = name in names[2:]
        lines.append(
            f"| {name} | {_mean(f.loads for f in runs):.1f} | {_num(_mean(f.target_time for f in runs))} "
            f"| {_num(_mean(f.makespan for f in runs))} | {max(f.gap.seconds for f in runs):.1f} "
            f"| {max(f.gap.seconds / f.bound for f in runs):.2f} | {sum(f.holds for f in runs)}/{len(runs)} "
            f"| {_s(max(past)) if past else ('0' if fair_policy else '—')} |"
        )
    return lines + [""]


def _newcomers(names: list[str], by_policy: dict[str, list[RunFigures]]) -> list[str]:
    lines = [
        "Newcomers, over all seeds:",
        "",
        "| policy | all: wait p50 / max (s) | back from idle / seed | wait p50 / p95 / max (s) | overtaken "
        "| overtaken ones: idled p50 / max (s) | service that went ahead p50 / max (s) | resubmitted / seed "
        "| wait p50 / max (s) | overtaken |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        runs = by_policy[name]
        back = [w for f in runs for w in f.newcomer_waits]
        overtaken = [o for f in runs for o in f.overtaken]
        idled = [idle for idle, _ in overtaken if math.isfinite(idle)]
        firsts = len(overtaken) - len(idled)
        ahead = [service for _, service in overtaken]
        again = [w for f in runs for w in f.resubmit_waits]
        every = back + again
        lines.append(
            f"| {name} | {_s(percentile(every, 50))} / {_s(max(every, default=math.nan))} "
            f"| {len(back) / len(runs):.1f} "
            f"| {_s(percentile(back, 50))} / {_s(percentile(back, 95))} / {_s(max(back, default=math.nan))} "
            f"| {len(overtaken)} of {len(back)} "
            f"| {_s(percentile(idled, 50))} / {_s(max(idled, default=math.nan))}"
            f"{f' (and {firsts} first requests)' if firsts else ''} "
            f"| {_s(percentile(ahead, 50))} / {_s(max(ahead, default=math.nan))} "
            f"| {len(again) / len(runs):.1f} | {_s(percentile(again, 50))} / {_s(max(again, default=math.nan))} "
            f"| {sum(f.resubmits_overtaken for f in runs)} of {len(again)} |"
        )
    return lines + [""]


def _waits(title: str, names: list[str], seeds: list[int], by_policy: dict[str, list[RunFigures]], pick) -> list[str]:
    lines = [
        title + ":",
        "",
        "| kind (requests / seed) | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for kind in KINDS:
        pooled = {name: [w for f in by_policy[name] for w in pick(f).get(kind, [])] for name in names}
        if not pooled[names[0]]:
            continue
        cells = [f"{_s(percentile(pooled[n], 50))} / {_s(percentile(pooled[n], 95))}" for n in names]
        lines.append(f"| {kind} ({len(pooled[names[0]]) / len(seeds):.0f}) | " + " | ".join(cells) + " |")
    return lines + [""]


def _per_seed(names: list[str], seeds: list[int], by_policy: dict[str, list[RunFigures]]) -> list[str]:
    rr, sticky = names[1], names[3]
    lines = [
        "Per seed: largest gap / bound (s) and whether it holds; loads and target time, round-robin → "
        "fair+affinity:",
        "",
        "| seed | " + " | ".join(names) + " | loads | target time (s) |",
        "| ---: |" + " ---: |" * (len(names) + 2),
    ]
    for k, seed in enumerate(seeds):
        cells = []
        for name in names:
            f = by_policy[name][k]
            cells.append(f"{f.gap.seconds:.1f} / {f.bound:.1f} {'yes' if f.holds else '**no**'}")
        a, b = by_policy[rr][k], by_policy[sticky][k]
        cells += [f"{a.loads} → {b.loads}", f"{_num(a.target_time)} → {_num(b.target_time)}"]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    broken = [(seed, name, f) for name in names[2:] for seed, f in zip(seeds, by_policy[name]) if not f.holds]
    if broken:
        lines += ["", "Where a fair policy breaks the bound (the pair, and the stretch both were backlogged in):", ""]
        for seed, name, f in broken:
            start, end = f.gap.during
            (a, b), (sa, sb), (oa, ob) = f.gap.clients, f.gap.service, f.gap.out_of_turn
            lines.append(
                f"- seed {seed}, {name}: {a} vs {b}, both backlogged {start:.1f}–{end:.1f} s: gap "
                f"{f.gap.seconds:.1f} s > bound {f.bound:.1f} s (T_max {f.t_max:.1f} s); service in that stretch "
                f"{sa:.1f} s vs {sb:.1f} s, of it out of turn {oa:.1f} s vs {ob:.1f} s"
            )
    return lines + [""]


def _verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def _held(holds: bool) -> str:
    return "holds" if holds else "**broken**"


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def _num(value: float) -> str:
    return f"{value:,.0f}"


def _s(value: float) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _pct(change: float) -> str:
    return f"{change:+.0%}".replace("-", "−")
