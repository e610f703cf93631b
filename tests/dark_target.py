"""The dark target, end to end: run inside a private network namespace, report JSON.

    unshare -n python -m tests.dark_target [--dark SECONDS] [--wait-after SECONDS]

A sleeping Mac does not refuse connections: its packets vanish. This brings
the loopback interface of a fresh network namespace up, starts the stand-in
Ollama and a real foreman in front of it (one process, one event loop), gives
foreman pooled connections to the target, starts a stream, and then drops
every packet to and from the stand-in's port with iptables for `--dark`
seconds while requests keep arriving. It prints one JSON object: when each
request was answered (relative to the target's return), how the stream
ended, and when /healthz turned degraded and ok again.

Both ways, because a Mac asleep sends nothing either. `--drop to` drops only
the packets to the stand-in: its kernel then goes on retransmitting the
stream's unacknowledged data to foreman, which keeps that connection looking
alive to keepalive for longer (measured: the stream ends after about 47 s
instead of 20 s).

It changes the firewall, so it refuses to run outside a namespace of its
own (one whose loopback interface starts down). tests/test_dark_target.py
runs it and checks the report; run by hand, it measures (progress.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from foreman import config
from foreman.server import Foreman
from foreman.stub import StubOllama

POLL_INTERVAL = "2s"
# Seconds after going dark at which a request is sent (the first ones find
# foreman's pooled connections to the target, later ones need fresh ones).
SEND_AT = (0.0, 0.3, 1.0, 3.0, 8.0, 15.0, 25.0, 40.0)
# A stream's lines come this far apart once it is under way.
STREAM_PACE = 0.25


class NotIsolated(RuntimeError):
    """Not in a network namespace of its own: the firewall must not be touched."""


def tool(name: str) -> str | None:
    """Where a system tool is: on PATH, or in the sbin directories a user's PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def run(name: str, *args: str) -> None:
    subprocess.run([tool(name) or name, *args], check=True, capture_output=True, timeout=30)


def isolate() -> None:
    """Bring loopback up in a namespace that was created for this run, or refuse."""
    ip = tool("ip") or "ip"
    state = subprocess.run([ip, "-j", "link", "show", "lo"], capture_output=True, text=True, check=True)
    (lo,) = json.loads(state.stdout)
    if "UP" in lo.get("flags", []):
        raise NotIsolated("loopback is already up: not in a fresh network namespace (use unshare -n)")
    others = subprocess.run([ip, "-j", "link", "show"], capture_output=True, text=True, check=True)
    if len(json.loads(others.stdout)) != 1:
        raise NotIsolated("this network namespace has interfaces besides loopback")
    run("ip", "link", "set", "lo", "up")


def firewall(action: str, port: int, directions: tuple[str, ...]) -> None:
    """Drop (action -A) or stop dropping (-D) TCP packets to (and from) `port`: a Mac asleep."""
    for direction in directions:
        run("iptables", action, "INPUT", "-p", "tcp", direction, str(port), "-j", "DROP")


def chat(content: str, *, stream: bool = False, **options: Any) -> bytes:
    body: dict[str, Any] = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    }
    if options:
        body["options"] = options
    return json.dumps(body).encode()


async def scenario(dark: float, wait_after: float, directions: tuple[str, ...]) -> dict[str, Any]:
    stub = StubOllama()
    stub.listen()
    front = Foreman(
        config.load(
            {
                "FOREMAN_OLLAMA_URL": stub.url,
                "FOREMAN_LISTEN": "127.0.0.1:0",
                "FOREMAN_POLL_INTERVAL": POLL_INTERVAL,
                "FOREMAN_QUEUE_TIMEOUT": "10m",
                "FOREMAN_CONCURRENCY": "3",
                "FOREMAN_MODEL_AFFINITY": "0",
                "FOREMAN_LOG_LEVEL": "warning",
            }
        )
    )
    front.start()
    assert front.first_poll is not None
    await front.first_poll
    url = front.urls[0]
    http = SimpleAsyncHTTPClient(force_instance=True, max_clients=64)

    async def post(body: bytes, **kwargs: Any):
        request = HTTPRequest(url + "/api/chat", method="POST", body=body, request_timeout=600, **kwargs)
        return await http.fetch(request, raise_error=False)

    # Pooled connections: three answers at once leave three idle connections behind.
    warm = await asyncio.gather(*(post(chat(f"warm {i}")) for i in range(3)))
    assert all(r.code == 200 for r in warm), [r.code for r in warm]

    # A stream under way when the target goes dark: short answers are not paced.
    async def pace(index: int) -> None:
        if index >= 5:
            await asyncio.sleep(STREAM_PACE)

    stub.pace = pace
    stream_lines: list[bytes] = []
    partial = [b""]
    started = asyncio.Event()

    def on_chunk(chunk: bytes) -> None:
        *complete, partial[0] = (partial[0] + chunk).split(b"\n")
        stream_lines.extend(line for line in complete if line.strip())
        if len(stream_lines) >= 8:
            started.set()

    long_story = chat("a long story", stream=True, num_predict=100_000)
    stream = asyncio.ensure_future(post(long_story, streaming_callback=on_chunk))
    await asyncio.wait_for(started.wait(), 10)

    health: list[tuple[float, str]] = []
    watching = True

    async def watch_health() -> None:
        watcher = SimpleAsyncHTTPClient(force_instance=True)
        while watching:
            response = await watcher.fetch(url + "/healthz", raise_error=False, request_timeout=5)
            if response.code in (200, 503):
                health.append((time.monotonic(), json.loads(response.body)["status"]))
            await asyncio.sleep(0.2)
        watcher.close()

    pool = front.target.pool
    reused_before, dialled_before = pool.reused, pool.dialled
    firewall("-A", stub.port, directions)
    dark_at = time.monotonic()
    watcher = asyncio.ensure_future(watch_health())
    sent: list[tuple[float, asyncio.Future[Any]]] = []
    answered: dict[int, float] = {}
    stream_ended: list[float] = []
    stream.add_done_callback(lambda _: stream_ended.append(time.monotonic()))

    for index, offset in enumerate(SEND_AT):
        if offset >= dark:
            break
        await asyncio.sleep(max(0.0, dark_at + offset - time.monotonic()))
        future = asyncio.ensure_future(post(chat(f"in the dark {index}")))
        future.add_done_callback(lambda _, i=index: answered.setdefault(i, time.monotonic()))
        sent.append((time.monotonic() - dark_at, future))
    await asyncio.sleep(max(0.0, dark_at + dark - time.monotonic()))
    reused_dark, dialled_dark = pool.reused - reused_before, pool.dialled - dialled_before
    firewall("-D", stub.port, directions)
    back_at = time.monotonic()

    await asyncio.wait([f for _, f in sent] + [stream], timeout=wait_after)
    # /healthz sees a poll or two after the return.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(t > back_at and s == "ok" for t, s in health):
        await asyncio.sleep(0.1)
    watching = False
    await watcher

    requests = []
    for index, (offset, future) in enumerate(sent):
        entry: dict[str, Any] = {"sent_after_dark": round(offset, 2)}
        if future.done():
            response = future.result()
            entry["status"] = response.code
            entry["answered_after_return"] = round(answered[index] - back_at, 2)
            entry["done"] = response.code == 200 and json.loads(response.body).get("done") is True
            if response.code != 200:
                entry["body"] = response.body.decode(errors="replace")[:300]
        else:
            entry["status"] = None
            future.cancel()
        requests.append(entry)

    stream_report: dict[str, Any] = {"lines": len(stream_lines)}
    if stream_ended:
        stream_report["ended_after_dark"] = round(stream_ended[0] - dark_at, 2)
        stream_report["status"] = stream.result().code
        stream_report["last_line"] = stream_lines[-1].decode(errors="replace") if stream_lines else ""
    else:
        stream.cancel()

    degraded = [t for t, s in health if s == "degraded" and dark_at < t <= back_at]
    ok_again = [t for t, s in health if s == "ok" and t > back_at]
    report = {
        "dark_seconds": round(back_at - dark_at, 2),
        "requests": requests,
        "stream": stream_report,
        "healthz_degraded_after_dark": round(degraded[0] - dark_at, 2) if degraded else None,
        "healthz_ok_after_return": round(ok_again[0] - back_at, 2) if ok_again else None,
        "pool_during_dark": {"reused": reused_dark, "dialled": dialled_dark},
    }
    http.close()
    await front.drain(0)
    await stub.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dark", type=float, default=60.0, help="seconds the target stays dark")
    parser.add_argument("--wait-after", type=float, default=30.0, help="seconds to wait for answers after")
    parser.add_argument(
        "--drop", choices=("both", "to"), default="both",
        help="drop packets both ways (a Mac asleep sends nothing), or only those to the target",
    )
    args = parser.parse_args()
    directions = ("--dport", "--sport") if args.drop == "both" else ("--dport",)
    try:
        isolate()
    except NotIsolated as e:
        print(json.dumps({"refused": str(e)}))
        sys.exit(3)
    deadline = args.dark + args.wait_after + 60
    report = asyncio.run(asyncio.wait_for(scenario(args.dark, args.wait_after, directions), deadline))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
