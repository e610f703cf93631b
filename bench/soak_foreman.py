"""The foreman under soak: started fresh per phase, warmed up, measured at rest, stopped by SIGTERM; its log summed up."""

from __future__ import annotations

import asyncio
import collections
import re
import signal
import time
from dataclasses import dataclass

import load
import procs
from api import TINY, stream_body
from soak_settings import MAX_QUEUE, Settings

RECORD_START = re.compile(r"^(\d{4}-\d\d-\d\d[ T][\d:,.]+ ?|\{)")


@dataclass(frozen=True)
class Source:
    """Where every phase's foreman comes from and what it runs against."""

    target_port: int
    logdir: str
    foreman_dir: str | None  # a directory holding foreman/ (`--foreman-rev`), or None: the working tree
    env: dict[str, str]  # `--env`, over the soak's own settings


async def start(
    name: str, concurrency: int, source: Source, env: dict[str, str] | None = None
) -> tuple[procs.Child, int]:
    """A fresh foreman; `env` is the phase's own settings (e.g. a short FOREMAN_CLIENT_TIMEOUT), over `--env`."""
    return await procs.start_foreman(
        name, source.target_port, source.logdir, concurrency, MAX_QUEUE, source.foreman_dir,
        {**source.env, **(env or {})},
    )


async def baseline(child: procs.Child, port: int, s: Settings) -> tuple[int, int, int]:
    """Warm up, let it settle for a second; the warm-up's errors, then foreman's RSS (KiB) and open fds."""
    errors = await warm_up(port, s)
    await asyncio.sleep(1.0)
    return errors, procs.rss_kib([child.pid]), procs.open_fds(child.pid)


async def warm_up(port: int, s: Settings) -> int:
    """Tiny chats on 10 connections and a few short streams; returns the errors."""
    errors = 0
    clients = [load.Client(port) for _ in range(10)]
    request = load.post("/api/chat", port, TINY)

    async def chats(client: load.Client, count: int) -> int:
        bad = 0
        for _ in range(count):
            try:
                response = await client.request(request, timeout=10)
                bad += response.status != 200
            except Exception:  # noqa: BLE001
                bad += 1
        return bad

    errors += sum(await asyncio.gather(*(chats(c, s.warmup_requests // 10) for c in clients)))
    for client in clients:
        client.close()
    streams = [load.Client(port) for _ in range(s.warmup_streams)]
    outcomes = await asyncio.gather(
        *(c.request(load.post("/api/chat", port, stream_body(20, 4, 0.005)), "count", timeout=30) for c in streams),
        return_exceptions=True,
    )
    errors += sum(1 for o in outcomes if isinstance(o, BaseException) or not o.done_ok)
    for client in streams:
        client.close()
    return errors


async def sigterm_exit(child: procs.Child, wait: float) -> float | None:
    """SIGTERM with nothing in flight: seconds until foreman exits, None if it has not after `wait`.

    foreman drains on SIGTERM: it waits up to FOREMAN_SHUTDOWN_GRACE (30 s) for
    the requests it counts as in flight. With every client gone, it should exit at once.
    """
    if not child.alive():
        return None
    started = time.monotonic()
    child.popen.send_signal(signal.SIGTERM)
    for _ in range(int(wait / 0.05) + 1):
        if not child.alive():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


async def final_readings(out: dict, child: procs.Child, watch, sigterm_wait: float) -> None:
    """What every fault phase reads once its clients are gone: RSS, fds, the
    whole-life peak, the probes of other clients, and how fast SIGTERM ends it."""
    pid = child.pid
    out["rss_end"] = procs.rss_kib([pid])
    out["fds_end"] = procs.open_fds(pid)
    out["hwm_rss"] = procs.peak_rss_kib([pid])
    out["probes_unfinished"] = await watch.stop()
    out["probes"] = watch.probes
    out["exit_after_sigterm"] = await sigterm_exit(child, sigterm_wait)


# ---------------------------------------------------------------- report


def mib(kib: float | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


def exit_text(seconds: float | None, wait: float) -> str:
    if seconds is not None:
        return f"foreman exited after {seconds:.2f} s."
    return (
        f"**foreman was still running {wait:g} s later** (it drains for up to FOREMAN_SHUTDOWN_GRACE, 30 s, "
        "while it counts a request in flight: something was still counted although no client was left); "
        "it was then killed."
    )


def log_summary(out: dict) -> list[str]:
    """foreman's log records, grouped by shape; a traceback is shown by its last line and foreman's frame."""
    lines = [line for line in out["log"].splitlines() if line.strip()]
    records: list[list[str]] = []
    for line in lines:
        if records and not RECORD_START.match(line):
            records[-1].append(line)
        else:
            records.append([line])
    shapes: collections.Counter[str] = collections.Counter()
    example: dict[str, str] = {}
    for record in records:
        text = record[0][:200]
        if len(record) > 1:
            frames = [r.strip() for r in record if r.strip().startswith('File "') and "/foreman/" in r]
            text += f" … {record[-1].strip()[:80]}" + (f" (in {frames[-1][:120]})" if frames else "")
        shape = re.sub(r"\d+(\.\d+)?", "N", RECORD_START.sub("", text))
        shapes[shape] += 1
        example.setdefault(shape, text)
    rows = [f"### foreman's log (level warning): {len(records)} records, {len(lines)} lines", ""]
    for shape, count in shapes.most_common(6):
        rows.append(f"- x{count}: `{example[shape]}`")
    if len(shapes) > 6:
        rows.append(f"- … and {len(shapes) - 6} other kinds of record")
    rows.append("")
    return rows
