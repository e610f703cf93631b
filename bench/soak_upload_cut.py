"""Phase `upload`: clients that leave mid-upload. Does foreman keep their bodies?

Round after round, N connections each send most of a big body (the rest never
comes) and close. No connection is left open between rounds; a foreman that
keeps nothing of a departed request stays near its baseline, one that keeps
the partial bodies (e.g. in reference cycles only a full collection frees)
grows with every round.
"""

from __future__ import annotations

import asyncio
import collections
import time

import procs
import soak_foreman
from header import log
from soak_foreman import Source, exit_text, log_summary, mib
from soak_settings import Settings
from soak_uploads import Upload, open_uploads, partial_upload, wait_uploads
from soak_watch import Timeline, Watch, latency_rows, peak_between, rss_at, unanswered

WINDOWS = ("rounds", "after the rounds")


async def run_upload_cut(s: Settings, source: Source) -> dict:
    cfg = s.upload_cut
    child, port = await soak_foreman.start("foreman-upload", 1000, source)
    out: dict = {"rounds": []}
    watch: Watch | None = None
    uploads: list[Upload] = []
    try:
        pid = child.pid
        out["warmup_errors"], out["baseline_rss"], out["baseline_fds"] = await soak_foreman.baseline(child, port, s)
        log(f"  baseline RSS {out['baseline_rss'] / 1024:.1f} MiB")
        payload = partial_upload(port, cfg.declared, cfg.sent_mib << 20)

        timeline = Timeline(time.monotonic(), window=WINDOWS[0])
        out["timeline"] = timeline
        watch = Watch(pid, port, timeline, cfg.rounds * 60 + cfg.settle + 30)
        for number in range(cfg.rounds):
            started = timeline.now()
            group, failed = await open_uploads(payload, cfg.connections, port, close_when_sent=True)
            uploads += group
            stuck = await wait_uploads(group, until_closed=True)
            for upload in group:
                upload.close()  # those foreman stopped reading from: cut (reset)
            out["rounds"].append({
                "took": timeline.now() - started,
                "failed": failed,
                "sent_all": sum(1 for u in group if u.sent_at is not None),
                "stuck": stuck,
                "answers": collections.Counter(u.first_line() for u in group if u.received),
                "rss": procs.rss_kib([pid]),
            })
            log(f"  round {number + 1}: RSS {out['rounds'][-1]['rss'] / 1024:.0f} MiB")
            rest = started + cfg.every - timeline.now()
            if rest > 0 and number + 1 < cfg.rounds:
                await asyncio.sleep(rest)
        for upload in uploads:
            upload.close()
        timeline.mark("rounds over")
        timeline.window = WINDOWS[1]
        out["fds_rounds_over"] = procs.open_fds(pid)
        await asyncio.sleep(cfg.settle)
        out["queue_end"] = watch.sampler.queue_now()
        await soak_foreman.final_readings(out, child, watch, s.sigterm_wait)
    finally:
        for upload in uploads:
            upload.close()
        if watch is not None:
            await watch.stop()
        child.stop()
        out["log"] = child.log_text()
    return out


def upload_cut_section(out: dict, s: Settings) -> list[str]:
    cfg = s.upload_cut
    timeline: Timeline = out["timeline"]
    base = out["baseline_rss"]
    over = timeline.events["rounds over"]
    peak = peak_between(timeline, 0, over)
    after1 = rss_at(timeline, over + 1)
    rounds = out["rounds"]
    answers: collections.Counter[str] = collections.Counter()
    for r in rounds:
        answers.update(r["answers"])
    sent_all = sum(r["sent_all"] for r in rounds)
    total = cfg.connections * cfg.rounds
    failed = sum(r["failed"] for r in rounds)
    stuck = sum(r["stuck"] for r in rounds)

    def vs_base(kib: int | None) -> str:
        return "?" if kib is None else f"{mib(kib)} ({(kib - base) / 1024:+.1f} MiB vs baseline)"

    lines = [
        f"## Phase `upload`: clients that leave mid-upload ({cfg.connections} x {cfg.sent_mib} MiB of a "
        f"{cfg.declared / 1e6:g} MB body, {cfg.rounds} rounds)",
        "",
        (f"A fresh foreman (FOREMAN_CONCURRENCY=1000). Each round, {cfg.connections} connections at once each "
        f"send a `POST /api/chat` promising `Content-Length: {cfg.declared}` and {cfg.sent_mib} MiB of it "
        f"(many small JSON objects), then close (FIN); a round starts every {cfg.every:g} s, or when all "
        "of the previous one's connections have closed if that is later. "
        "No connection is open after the last round. Meanwhile another client (127.0.0.2) sends a tiny "
        "chat every 0.5 s and `GET /healthz` every 50 ms, each on a fresh connection."),
        "",
        "| when | RSS | open fds |",
        "|---|---|---:|",
        f"| before: baseline after warm-up | {mib(base)} | {out['baseline_fds']} |",
        "| peak sampled during the rounds (every 0.25 s) | "
        + (f"{vs_base(peak[1])} at t={peak[0]:.1f} s | {peak[2]} |" if peak else "? | |"),
        f"| peak (VmHWM, whole life) | {mib(out['hwm_rss'])} | |",
        f"| last round over, every connection closed | {vs_base(rounds[-1]['rss'] if rounds else None)} | "
        f"{out['fds_rounds_over']} |",
        f"| 1 s later | {vs_base(after1[1] if after1 else None)} | {after1[2] if after1 else '?'} |",
        f"| **after: {cfg.settle:g} s later** | **{vs_base(out['rss_end'])}** | {out['fds_end']} |",
        "",
        "RSS after each round: " + " → ".join(f"{r['rss'] / 1024:.0f}" for r in rounds) + " MiB "
        "(rounds took " + " / ".join(f"{r['took']:.1f}" for r in rounds) + " s).",
        "",
        (f"- {sent_all} of {total} connections handed over all {cfg.sent_mib} MiB before closing"
        + (f"; {failed} failed to connect" if failed else "")
        + (f"; {stuck} were cut (reset) by us after foreman had taken nothing from them for 2 s" if stuck else "")
        + "; answers foreman sent before they closed: "
        + (", ".join(f"{a} x{n}" for a, n in answers.most_common(4)) if answers else "none")
        + "."),
        (f"- /healthz queue (waiting, in_flight) {cfg.settle:g} s after the rounds: {out['queue_end']}. "
        f"SIGTERM then: {exit_text(out['exit_after_sigterm'], s.sigterm_wait)}"),
        "",
        "### Other clients meanwhile (each request on a fresh connection)",
        "",
        *latency_rows(out["probes"], Watch.sources, WINDOWS),
        "",
    ]
    lines += unanswered(out["probes_unfinished"])
    lines += log_summary(out)
    return lines
