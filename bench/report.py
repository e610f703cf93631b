"""Markdown for the results: one table per scenario, the header, timings, foreman's log."""

from __future__ import annotations

import json
import math
import statistics

import header
import procs
from nginx import nginx_version
from scenarios import MODES, TWO_TARGETS, Rig, Settings

# ---------------------------------------------------------------- aggregation


def med(rounds: list[dict], key: str) -> float | None:
    values = [r[key] for r in rounds if r.get(key) is not None]
    return statistics.median(values) if values else None


def med_added(results: dict[str, list[dict]], mode: str, key: str) -> float | None:
    """Median over rounds of (mode − direct) in the same round."""
    if mode not in results:
        return None
    pairs = [
        (m[key], d[key])
        for m, d in zip(results[mode], results["direct"])
        if m.get(key) is not None and d.get(key) is not None
    ]
    return statistics.median(a - b for a, b in pairs) if pairs else None


def total_errors(rounds: list[dict]) -> int:
    return sum(r.get("errors", 0) for r in rounds)


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return "—"
    return f"{a / b:.2f}"


class Table:
    def __init__(self, modes: tuple[str, ...], nginx_note: str) -> None:
        self.modes = modes
        self.nginx_note = nginx_note
        self.lines = [
            "| figure | direct | nginx | foreman | foreman÷direct | foreman÷nginx |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]

    def row(
        self, label: str, values: dict[str, float | None], to_direct: bool = True, to_nginx: bool = True,
        digits: int = 3, cells: dict[str, str] | None = None,
    ) -> None:
        shown = []
        for mode in MODES:
            if cells and mode in cells:
                shown.append(cells[mode])
            elif mode == "nginx" and mode not in self.modes:
                shown.append(self.nginx_note)
            else:
                shown.append(fmt(values.get(mode), digits))
        foreman = values.get("foreman")
        self.lines.append(
            f"| {label} | {' | '.join(shown)} | "
            f"{ratio(foreman, values.get('direct')) if to_direct else '—'} | "
            f"{ratio(foreman, values.get('nginx')) if to_nginx else '—'} |"
        )

    def text(self) -> str:
        return "\n".join(self.lines)


def verdict(label: str, value: float | None, limit: float, unit: str) -> str:
    if value is None:
        return f"- target {label} ≤ {limit:g} {unit}: not measured — **not met**"
    met = value <= limit
    return f"- target {label} ≤ {limit:g} {unit}: foreman {fmt(value)} {unit} — **{'met' if met else 'not met'}**"


def per_mode(results: dict[str, list[dict]], key: str) -> dict[str, float | None]:
    return {mode: med(rounds, key) for mode, rounds in results.items()}


def added(results: dict[str, list[dict]], key: str) -> dict[str, float | None]:
    return {mode: med_added(results, mode, key) for mode in results if mode != "direct"}


def errors_row(table: Table, results: dict[str, list[dict]]) -> None:
    table.row(
        "failed requests (non-200, broken, timed out), all rounds",
        {},
        to_direct=False,
        to_nginx=False,
        cells={mode: str(total_errors(rounds)) for mode, rounds in results.items()},
    )


def report_s1(results: dict[str, list[dict]], modes: tuple[str, ...], note: str, s: Settings) -> str:
    t = Table(modes, note)
    t.row("round trip p50 (ms)", per_mode(results, "p50_ms"))
    t.row("round trip p99 (ms)", per_mode(results, "p99_ms"))
    add50, add99 = added(results, "p50_ms"), added(results, "p99_ms")
    t.row("added over direct, p50 (ms)", add50, to_direct=False, cells={"direct": "0"})
    t.row("added over direct, p99 (ms)", add99, to_direct=False, cells={"direct": "0"})
    t.row("requests per second", per_mode(results, "rps"))
    t.row("proxy CPU per request (µs)", per_mode(results, "proxy_cpu_us"), to_direct=False)
    t.row("target CPU per request (µs)", per_mode(results, "target_cpu_us"))
    t.row("load generator CPU per request (µs)", per_mode(results, "client_cpu_us"))
    errors_row(t, results)
    return "\n".join(
        [
            (f"### S1 latency: {s.s1_requests:,} sequential tiny non-streaming chats on one keep-alive connection "
            f"({s.s1_warmup} warm-up), median of {s.rounds} rounds"),
            "",
            t.text(),
            "",
            verdict("S1 added over direct p50", add50.get("foreman"), 0.5, "ms"),
        ]
    )


def report_s2(results: dict[str, list[dict]], modes: tuple[str, ...], note: str, s: Settings) -> str:
    t = Table(modes, note)
    t.row("wall time (ms)", per_mode(results, "wall_ms"))
    t.row("chunks per second", per_mode(results, "chunks_per_s"))
    relay = per_mode(results, "relay_cpu_us")
    t.row("relay CPU per chunk (µs; direct: the target's own)", relay)
    t.row("target CPU per chunk (µs)", per_mode(results, "target_cpu_us"))
    t.row("load generator CPU per chunk (µs)", per_mode(results, "client_cpu_us"))
    errors_row(t, results)
    return "\n".join(
        [
            (f"### S2 relay: one {s.s2_chunks:,}-chunk stream at full speed ({s.s2_chunk_size} content bytes a chunk), "
            f"median of {s.rounds} rounds"),
            "",
            t.text(),
            "",
            verdict("S2 foreman CPU per relayed chunk", relay.get("foreman"), 4, "µs"),
        ]
    )


def report_s3(
    variants: dict[str, dict[str, list[dict]]], rss: dict[str, float | None], modes: tuple[str, ...], note: str,
    s: Settings,
) -> str:
    t = Table(modes, note)
    checks = []
    for name, results in variants.items():
        add50, add99 = added(results, "p50_ms"), added(results, "p99_ms")
        t.row(f"**{name}**: delay per chunk p50 (ms)", per_mode(results, "p50_ms"))
        t.row(f"{name}: delay per chunk p99 (ms)", per_mode(results, "p99_ms"))
        t.row(f"{name}: added over direct p50 (ms)", add50, to_direct=False, cells={"direct": "0"})
        t.row(f"{name}: added over direct p99 (ms)", add99, to_direct=False, cells={"direct": "0"})
        t.row(f"{name}: worst chunk delay (ms)", per_mode(results, "max_ms"))
        t.row(f"{name}: proxy CPU (% of one core)", per_mode(results, "proxy_cpu_pct"), to_direct=False)
        t.row(f"{name}: target CPU (% of one core)", per_mode(results, "target_cpu_pct"))
        t.row(f"{name}: load generator CPU (% of one core)", per_mode(results, "client_cpu_pct"))
        checks.append(verdict(f"S3 ({name}) added delay per chunk p99", add99.get("foreman"), 1, "ms"))
    t.row("proxy peak RSS (MB; nginx: master + worker)", rss, to_direct=False)
    for name, results in variants.items():
        errors_row_named(t, name, results)
        t.row(
            f"{name}: streams whose request was too late for the common start, all rounds",
            {},
            to_direct=False,
            to_nginx=False,
            cells={mode: str(sum(r.get("late", 0) for r in rounds)) for mode, rounds in results.items()},
        )
    checks.append(verdict("S3 foreman peak RSS", rss.get("foreman"), 40, "MB"))
    return "\n".join(
        [
            (f"### S3 fan-in: {s.s3_streams} concurrent streams of {s.s3_chunks} chunks at "
            f"{1 / s.s3_interval:g} chunks/s, median of {s.rounds} rounds"),
            "",
            ("Delay per chunk = arrival at the load generator minus the target's send stamp. "
            "*bursts*: all streams send on the same 50 ms grid (as one batched decoder would), "
            f"so {s.s3_streams} chunks arrive at once every interval; *spread*: stream k sends at "
            f"k/{s.s3_streams} of the interval, an even {s.s3_streams / s.s3_interval:,.0f} chunks/s. "
            "Every round opens all streams first; the target starts sending at a common time "
            f"({0.3 + s.s3_streams * 0.004:.1f} s after the requests go out), so the figures are the steady state "
            "of the streams, not the start-up burst of requests; CPU % covers the streaming only. "
            "Peak RSS is VmHWM over the whole scenario (fresh processes for it)."),
            "",
            t.text(),
            "",
            *checks,
        ]
    )


def errors_row_named(t: Table, name: str, results: dict[str, list[dict]]) -> None:
    t.row(
        f"{name}: failed streams, all rounds",
        {},
        to_direct=False,
        to_nginx=False,
        cells={mode: str(total_errors(rounds)) for mode, rounds in results.items()},
    )


def report_s4(
    results: dict[str, list[dict]], memory: list[dict], rss: dict[str, float | None], modes: tuple[str, ...],
    note: str, s: Settings,
) -> str:
    t = Table(modes, note)
    t.row("wall time per request (ms)", per_mode(results, "wall_per_req_ms"))
    t.row("requests per second", per_mode(results, "rps"))
    dispatch = per_mode(results, "proxy_cpu_ms")
    t.row("proxy CPU per request (ms; foreman: dispatch cost)", dispatch, to_direct=False)
    t.row("target CPU per request (ms)", per_mode(results, "target_cpu_ms"))
    t.row("load generator CPU per request (ms)", per_mode(results, "client_cpu_ms"))
    t.row("proxy peak RSS (MB)", rss, to_direct=False)
    per_waiter = med(memory, "per_waiter_kb")
    waiting = med(memory, "waiting")
    t.row(
        f"memory per waiting request (KB, {fmt(waiting)} waiting)",
        {"foreman": per_waiter},
        to_direct=False,
        to_nginx=False,
        cells={"direct": "no queue", "nginx": "no queue" if "nginx" in modes else note},
    )
    errors_row(t, results)
    statuses: dict[str, dict[str, int]] = {}
    for mode, rounds in results.items():
        for r in rounds:
            for key, n in (r.get("statuses") or {}).items():
                statuses.setdefault(mode, {}).setdefault(key, 0)
                statuses[mode][key] += n
    before = med(memory, "rss_before_kib")
    during = med(memory, "rss_waiting_kib")
    return "\n".join(
        [
            (f"### S4 queue: {s.s4_requests:,} tiny non-streaming chats from {s.s4_connections} connections, "
            f"foreman with FOREMAN_CONCURRENCY=1 (direct and nginx have no queue), median of {s.rounds} rounds"),
            "",
            t.text(),
            "",
            f"Memory per waiting request: a fresh foreman per round, 50 warm-up requests, RSS read; one generation "
            f"held at the target, {s.s4_waiters} more requests sent on their own connections and counted waiting in "
            f"`/healthz` queue.waiting; RSS read again (median {fmt(before and before / 1024)} MiB before, "
            f"{fmt(during and during / 1024)} MiB while waiting). Status counts over all rounds: "
            + "; ".join(f"{mode} {json.dumps(c, sort_keys=True)}" for mode, c in statuses.items()),
            "",
            verdict("S4 dispatch cost per request", dispatch.get("foreman"), 0.3, "ms"),
            verdict("S4 memory per waiting request", per_waiter, 20, "KB"),
        ]
    )


def report_two_targets(scenarios: dict[str, dict[str, list[dict]]], s: Settings) -> str:
    """One-target foreman next to foreman in front of two targets, scenario by scenario."""
    lines = [
        "| figure | foreman, 1 target | foreman, 2 targets | 2÷1 |",
        "| --- | ---: | ---: | ---: |",
    ]
    checks = []

    def row(label: str, one: float | None, two: float | None) -> None:
        lines.append(f"| {label} | {fmt(one)} | {fmt(two)} | {ratio(two, one)} |")

    def no_worse(label: str, one: float | None, two: float | None, slack: float, unit: str) -> None:
        # Medians of a few rounds on a shared machine wobble: "no worse" allows 10 % or `slack`.
        if one is None or two is None:
            checks.append(f"- {label} with two targets no worse than with one: not measured — **not met**")
            return
        limit = max(one * 1.1, one + slack)
        met = two <= limit
        checks.append(
            f"- {label} with two targets no worse than with one (≤ {fmt(limit)} {unit}): "
            f"{fmt(two)} {unit} — **{'met' if met else 'not met'}**"
        )

    for scenario, results in scenarios.items():
        if TWO_TARGETS not in results:
            continue
        add50, add99 = added(results, "p50_ms"), added(results, "p99_ms")
        if scenario == "S1":
            rps, cpu = per_mode(results, "rps"), per_mode(results, "proxy_cpu_us")
            row("S1 added over direct, p50 (ms)", add50.get("foreman"), add50.get(TWO_TARGETS))
            row("S1 added over direct, p99 (ms)", add99.get("foreman"), add99.get(TWO_TARGETS))
            row("S1 requests per second", rps.get("foreman"), rps.get(TWO_TARGETS))
            row("S1 foreman CPU per request (µs)", cpu.get("foreman"), cpu.get(TWO_TARGETS))
            no_worse("S1 added delay p50", add50.get("foreman"), add50.get(TWO_TARGETS), 0.05, "ms")
            no_worse("S1 foreman CPU per request", cpu.get("foreman"), cpu.get(TWO_TARGETS), 20, "µs")
        else:
            cpu = per_mode(results, "proxy_cpu_pct")
            row(f"{scenario}: added over direct p50 (ms)", add50.get("foreman"), add50.get(TWO_TARGETS))
            row(f"{scenario}: added over direct p99 (ms)", add99.get("foreman"), add99.get(TWO_TARGETS))
            row(f"{scenario}: foreman CPU (% of one core)", cpu.get("foreman"), cpu.get(TWO_TARGETS))
            no_worse(f"{scenario} added delay p99", add99.get("foreman"), add99.get(TWO_TARGETS), 0.2, "ms")
            no_worse(f"{scenario} foreman CPU", cpu.get("foreman"), cpu.get(TWO_TARGETS), 2, "% of one core")
        errors = {mode: total_errors(rounds) for mode, rounds in results.items()}
        lines.append(
            f"| {scenario}: failed requests, all rounds | {errors.get('foreman', 0)} | "
            f"{errors.get(TWO_TARGETS, 0)} | — |"
        )
    return "\n".join(
        [
            f"### Two targets: foreman in front of two bench targets, median of {s.rounds} rounds",
            "",
            ("The same S1 and S3 runs as above, interleaved with them round by round, against a foreman "
            "given both targets' URLs (FOREMAN_OLLAMA_URL=url1,url2; both hold the same model, so every "
            "request may go to either). *Added* is over the direct connection to one target, as above. "
            "Added delay and foreman's CPU per request are the price of routing between targets; "
            "the aim is no worse than with one."),
            "",
            *lines,
            "",
            *checks,
        ]
    )


def machine_header(nginx: str | None, s: Settings, quick: bool, rev: str | None) -> list[str]:
    m = header.machine()
    return [
        "# foreman benchmarks: direct vs nginx vs foreman",
        "",
        header.date_item(),
        (f"- machine: {m.cpu}, {m.cores} cores, Linux {m.kernel}; load average at start "
        f"{m.load1:.2f} / {m.load5:.2f} (1 / 5 min)"),
        (f"- Python {m.python}, Tornado {m.tornado}, "
        f"nginx {nginx_version(nginx) if nginx else 'skipped'}"),
        f"- foreman: {header.foreman_under_test(rev)}",
        header.command_item(quick),
        f"- {s.rounds} rounds; in each round every scenario runs direct, nginx and foreman one after the other, "
        "the order rotating by round; figures are medians across rounds (an *added* figure is the median of "
        "the per-round differences from direct). CPU from "
        + (
            "/proc/<pid>/task/*/schedstat (ns; /proc/<pid>/stat counts 10 ms ticks)"
            if procs.CPU_SOURCE == "schedstat"
            else "/proc/<pid>/stat utime+stime"
        )
        + ", RSS from /proc/<pid>/status. Load generator: this script, one asyncio process "
        "(bench/load.py). Target: bench/target.py, one asyncio process for the whole run. foreman: "
        "`python -m foreman`, FOREMAN_CONCURRENCY=1000 for S1–S3, 1 for S4; nginx: 1 worker, "
        "upstream keepalive 64, proxy_buffering off. A fresh nginx and foreman per scenario.",
    ]


def notes_section(notes: list[str]) -> list[str]:
    return [f"- note: {n}" for n in notes] + ([""] if notes else [])


def sections_joined(sections: list[str]) -> list[str]:
    out = []
    for section in sections:
        out += [section, ""]
    return out


def timing(rig: Rig, total: float) -> list[str]:
    scenarios = sorted({scenario for scenario, _ in rig.mode_seconds}, key=lambda x: (x.split()[0], x))
    lines = [
        "### Time spent per mode (s, warm-up and all rounds)",
        "",
        "| scenario | direct | nginx | foreman |",
        "| --- | ---: | ---: | ---: |",
    ]
    totals = dict.fromkeys(MODES, 0.0)
    for scenario in scenarios:
        cells = []
        for mode in MODES:
            value = rig.mode_seconds.get((scenario, mode))
            totals[mode] += value or 0
            cells.append(f"{value:.1f}" if value is not None else "—")
        lines.append(f"| {scenario} | {' | '.join(cells)} |")
    lines.append(f"| total | {' | '.join(f'{totals[m]:.1f}' for m in MODES)} |")
    lines += ["", f"Whole run: {total:.0f} s including process start-ups.", ""]
    return lines


def logs_section(rig: Rig) -> list[str]:
    if not rig.foreman_logs:
        return ["foreman logged nothing at FOREMAN_LOG_LEVEL=warning and exited cleanly after every scenario."]
    counts: dict[tuple[str, str], int] = {}
    for scenario, line in rig.foreman_logs:
        key = (scenario, line[:300])
        counts[key] = counts.get(key, 0) + 1
    lines = ["foreman's log at FOREMAN_LOG_LEVEL=warning (distinct lines, first 20):", "", "```"]
    for (scenario, line), n in list(counts.items())[:20]:
        lines.append(f"[{scenario}] {f'{n}× ' if n > 1 else ''}{line}")
    lines += ["```"]
    return lines
