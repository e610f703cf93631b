"""The scheduling simulator: foreman's FairScheduler and three other policies on a simulated clock.

    python bench/schedule.py                 # 20 seeds, full-size workloads, a few seconds
    python bench/schedule.py --quick         # 5 seeds, quarter-size workloads, under a second
    python bench/schedule.py --seeds 40 --first-seed 100 --output /tmp/s.md

The very class foreman runs (foreman/scheduling.py) is driven by a
discrete-event loop (bench/schedule_engine.py), side by side with FIFO and
the round-robin of foreman/queue.py on main (the same turns, without
asyncio), over seeded workloads (bench/schedule_workloads.py): heavy
closed-loop clients, interactive clients with Poisson arrivals, a client
back from a long idle, models with load times and one resident at a time.
Per policy (bench/schedule_metrics.py): the largest service gap between two
backlogged clients against the bound, newcomer waits, model loads, total
target time, waits per kind of client; and the issue's targets on the
mixed-model workload, met or not (bench/schedule_report.py). The report
(Markdown) goes to stdout and to --output, progress to stderr. The same
arguments give the same report.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import header  # noqa: E402
from schedule_engine import policies, simulate  # noqa: E402
from schedule_metrics import RunFigures, figures  # noqa: E402
from schedule_report import report  # noqa: E402
from schedule_workloads import WORKLOADS  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEDULER = os.path.join(HERE, "..", "foreman", "scheduling.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 seeds and quarter-size workloads (seconds)")
    parser.add_argument("--seeds", type=int, default=None, help="how many seeds (default 20, 5 with --quick)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one up (default 0)")
    parser.add_argument("--scale", type=float, default=None, help="workload size (default 1, 0.25 with --quick)")
    parser.add_argument("--affinity", type=float, default=30.0, help="fair+affinity's budget in seconds (default 30)")
    parser.add_argument("--only", nargs="+", choices=sorted(WORKLOADS), help="run these workloads only")
    parser.add_argument("--output", default=os.path.join(HERE, "schedule-results.md"), help="where the report goes too")
    args = parser.parse_args()
    count = args.seeds if args.seeds is not None else (5 if args.quick else 20)
    scale = args.scale if args.scale is not None else (0.25 if args.quick else 1.0)
    if count < 1 or scale <= 0 or args.affinity <= 0:
        parser.error("--seeds, --scale and --affinity must be positive")
    seeds = list(range(args.first_seed, args.first_seed + count))
    chosen = [WORKLOADS[name] for name in (args.only or WORKLOADS)]
    made = policies(args.affinity)

    results: dict[str, dict[str, list[RunFigures]]] = {}
    began = time.monotonic()
    for workload in chosen:
        results[workload.name] = {name: [] for name in made}
        for seed in seeds:
            scripts = workload.scripts(seed, scale)
            for name, make in made.items():
                run = simulate(scripts, workload.setup, make)
                budget = args.affinity if name.startswith("fair+affinity") else 0.0
                results[workload.name][name].append(figures(run, budget))
        elapsed = time.monotonic() - began
        header.log(f"{workload.name}: {len(seeds)} seeds × {len(made)} policies, {elapsed:.1f} s so far")

    facts = [
        f"- command: `{header.command_line()}`{' (smoke run)' if args.quick else ''}",
        f"- seeds: {seeds[0]}–{seeds[-1]} ({len(seeds)}); workload scale {scale:g}; "
        f"affinity budget {args.affinity:g} s",
        f"- scheduler: foreman/scheduling.py, sha256 {_digest(SCHEDULER)}; Python {platform.python_version()}",
    ]
    header.publish(report(facts, chosen, list(made), seeds, results, args.affinity), args.output)


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


if __name__ == "__main__":
    main()
