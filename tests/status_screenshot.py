"""The screenshot of the status page that README shows.

    python -m tests.status_screenshot docs/status.png

Runs a scripted workload on the stand-in, in this process: two targets
("studio", the stand-in, and "mini", a port nothing listens on, so it is
away), three named clients, a queue, a running stream (alice's, held after
some tokens) and bob and carol waiting behind it. Then headless chromium
(tests/browser.py) opens the page, is given alice's token like a user would
give it, and the whole page is captured at a desktop width.

So that the charts have an hour to show without taking one, the hour is
replayed: the status ledger's clock starts 54 minutes behind and catches up
two minutes a round; every round's requests are real ones through foreman
and the stand-in, only their minutes are the ledger's. The last round runs
at the real time. The workload comes from a seeded generator.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

from tornado.simple_httpclient import SimpleAsyncHTTPClient

from foreman import config
from foreman.ledger import Ledger
from foreman.server import Foreman
from foreman.stub import StubOllama
from tests.browser import DESKTOP, Chromium
from tests.helpers import free_port, until

TOKENS = "tok-alice name=alice weight=2\ntok-bob name=bob\ntok-carol name=carol\n"
LLAMA, QWEN = "llama3.2:latest", "qwen2.5:0.5b"
# alice's stream stops here until the picture is taken.
HELD_AT_TOKEN = 42
REPLAYED_MINUTES = 54
MINUTES_A_ROUND = 2


def _targets_file(directory: Path, studio: str) -> Path:
    path = directory / "targets.toml"
    path.write_text(
        f'[[target]]\nname = "studio"\nurl = "{studio}"\n\n'
        f'[[target]]\nname = "mini"\nurl = "http://127.0.0.1:{free_port()}"\n'
    )
    return path


class _Chats:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = SimpleAsyncHTTPClient(force_instance=True, max_clients=20)
        self.sent: list[asyncio.Future] = []

    def send(self, token: str, model: str, words: int, stream: bool = True) -> asyncio.Future:
        body = {
            "model": model,
            "stream": stream,
            "messages": [{"role": "user", "content": "tell me something"}],
            "options": {"num_predict": words},
        }
        answer = asyncio.ensure_future(self.http.fetch(
            self.url + "/api/chat", method="POST", body=json.dumps(body),
            headers={"Authorization": f"Bearer {token}"}, request_timeout=120, raise_error=False,
        ))
        self.sent.append(answer)
        return answer


class _ReplayClock:
    """Wall-clock time, `behind` seconds ago."""

    def __init__(self, minutes: int) -> None:
        self.behind = minutes * 60.0

    def __call__(self) -> float:
        return time.time() - self.behind


async def _round(foreman_: Foreman, stub: StubOllama, chats: _Chats, rng: random.Random) -> None:
    """A few requests queued up at once, then let through."""
    stub.hold = asyncio.Event()
    count = rng.choice([1, 2, 2, 3, 3, 4, 5])
    answers = []
    for _ in range(count):
        token = rng.choice(["tok-alice", "tok-alice", "tok-bob", "tok-carol"])
        model = rng.choice([LLAMA, LLAMA, LLAMA, QWEN])
        answers.append(chats.send(token, model, rng.randint(20, 90), stream=rng.random() < 0.7))
        await until(lambda n=len(answers): foreman_.queue.waiting + foreman_.queue.in_flight == n, timeout=30)
    stub.hold.set()
    await asyncio.gather(*answers)
    stub.hold = None


async def capture(path: Path, viewport: dict = DESKTOP, replayed_minutes: int = REPLAYED_MINUTES) -> Path:
    """Run the workload, photograph the page at `viewport`, write the PNG to `path`."""
    rng = random.Random(15)
    clock = _ReplayClock(replayed_minutes)
    with tempfile.TemporaryDirectory(prefix="foreman-screenshot-") as scratch:
        directory = Path(scratch)
        # One model in memory at a time, as on a small Mac: switching loads.
        stub = StubOllama(chunk_delay=0.002, max_loaded=1, load_time=0.05)
        stub.listen()
        (directory / "tokens").write_text(TOKENS)
        settings = config.load({
            "FOREMAN_TARGETS_FILE": str(_targets_file(directory, stub.url)),
            "FOREMAN_TOKENS_FILE": str(directory / "tokens"),
            "FOREMAN_LISTEN": "127.0.0.1:0",
            "FOREMAN_CONCURRENCY": "1",
            "FOREMAN_POLL_INTERVAL": "1s",
        })
        front = Foreman(settings)
        # Before any request: every handler reads the ledger from the services.
        front.ledger = front.services.ledger = Ledger(clock=clock)
        front.start()
        chats = _Chats(front.urls[0])
        release = asyncio.Event()
        browser = None
        try:
            assert front.first_poll is not None
            await front.first_poll
            while clock.behind > 0:
                await _round(front, stub, chats, rng)
                clock.behind = max(0.0, clock.behind - MINUTES_A_ROUND * 60.0)
            for token, model, words in [("tok-bob", QWEN, 30), ("tok-carol", LLAMA, 50)]:
                await chats.send(token, model, words)

            async def pace(index: int) -> None:
                if index >= HELD_AT_TOKEN:
                    await release.wait()

            stub.pace = pace
            chats.send("tok-alice", LLAMA, 400)
            await until(lambda: front.queue.in_flight == 1, timeout=30)
            for token, model in [("tok-bob", LLAMA), ("tok-bob", QWEN), ("tok-carol", LLAMA)]:
                chats.send(token, model, 30)
            await until(lambda: front.queue.waiting == 3, timeout=30)

            browser = await Chromium.start(directory / "chromium")
            page = await browser.new_page(viewport)
            await page.goto(front.urls[0] + "/foreman/")
            await page.wait_for("!document.getElementById('token-form').hidden")
            await page.evaluate(
                "document.getElementById('token-input').value = 'tok-alice';"
                " document.getElementById('token-form').requestSubmit(); true"
            )
            await page.wait_for(
                "document.body.dataset.state === 'ok' &&"
                f" document.querySelector('#running .tokens')?.textContent === '{HELD_AT_TOKEN}' &&"
                " document.querySelector('#targets .away') !== null"
            )
            png = await page.screenshot(viewport)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
        finally:
            release.set()
            stub.pace = None
            await asyncio.gather(*chats.sent, return_exceptions=True)
            if browser is not None:
                await browser.close()
            chats.http.close()
            await front.drain(5)
            await stub.stop()
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.status_screenshot PATH.png", file=sys.stderr)
        return 2
    # "mini" is away on purpose: its failed polls are not news.
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    written = asyncio.run(capture(Path(args[0])))
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
