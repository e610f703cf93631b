"""The status page at /foreman/, in a real browser, against a real foreman and the stand-in.

Chromium runs headless (tests/browser.py) and loads the page from foreman
while a scripted workload holds the queue still: alice's stream runs at the
target (the stand-in's `hold`), bob's two requests wait behind it. The
assertions read the rendered page. Without chromium these tests are skipped,
and the report says the page was not tested in a browser.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
from pathlib import Path

import pytest

from foreman.clients import Client
from tests.browser import DESKTOP, PHONE, Chromium, group_members, require_chromium
from tests.helpers import tokens_file, until
from tests.status_screenshot import capture

PAGE = Path(__file__).resolve().parent.parent / "foreman" / "status" / "page"
TOKENS = "tok-a name=alice weight=2\ntok-b name=bob\n"
LLAMA = "llama3.2"
# Served with a 401 before a token is given: the one network error expected.
REFUSED_FETCH = re.compile(r"status of 401 .*/foreman/status$")


@pytest.fixture
def browser(io_loop, tmp_path):
    require_chromium()
    chromium = io_loop.run_sync(lambda: Chromium.start(tmp_path / "chromium"), timeout=90)
    yield chromium
    io_loop.run_sync(chromium.close, timeout=60)
    assert list(group_members(chromium.process.pid)) == [], "chromium left processes behind"


def chat(label: str, stream: bool = True) -> dict:
    return {"model": LLAMA, "stream": stream, "messages": [{"role": "user", "content": label}]}


class Workload:
    """Chats sent under tokens, each on its own connection, answered when the test says."""

    def __init__(self, front) -> None:
        self.front = front
        self.http = front.client(max_clients=50)
        self.sent: list[asyncio.Future] = []

    def send(self, token: str, label: str, stream: bool = True) -> None:
        self.sent.append(asyncio.ensure_future(self.http.fetch(
            self.front.url + "/api/chat", method="POST", body=json.dumps(chat(label, stream)),
            headers={"Authorization": f"Bearer {token}"}, request_timeout=120, raise_error=False,
        )))

    async def answered(self) -> None:
        answers = await asyncio.gather(*self.sent)
        assert [a.code for a in answers] == [200] * len(answers)


async def hold_the_queue(front, stub) -> Workload:
    """alice streaming at the target (held), bob's two requests waiting behind her."""
    stub.hold = asyncio.Event()
    work = Workload(front)
    work.send("tok-a", "alice's story")
    await until(lambda: front.foreman.queue.in_flight == 1 and stub.active_chats == 1)
    work.send("tok-b", "bob's first")
    work.send("tok-b", "bob's second")
    await until(lambda: front.foreman.queue.waiting == 2)
    return work


async def status_document(front, token: str | None = "tok-a") -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = await front.fetch("/foreman/status", headers=headers)
    assert answer.code == 200, answer.body
    return json.loads(answer.body)


async def open_page(browser, front, viewport=None):
    page = await browser.new_page(viewport) if viewport else await browser.new_page()
    await page.goto(front.url + "/foreman/")
    return page


async def give_token(page, token: str) -> None:
    """Type `token` into the form and submit it, as a user would."""
    await page.wait_for("!document.getElementById('token-form').hidden")
    await page.evaluate(
        "(() => { const input = document.getElementById('token-input');"
        f" input.value = {json.dumps(token)};"
        " document.getElementById('token-form').requestSubmit(); return true; })()"
    )


def state_is(state: str) -> str:
    return f"document.body.dataset.state === {json.dumps(state)}"


def unexpected_problems(page) -> list[str]:
    return [p for p in page.problems() if not REFUSED_FETCH.search(p)]


# --- with a queue and a stream ---------------------------------------------------


async def test_the_page_shows_targets_clients_the_running_stream_and_charts(start_foreman, stub, browser, tmp_path) -> None:
    front = start_foreman(
        FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS), FOREMAN_CONCURRENCY="1", FOREMAN_MODEL_AFFINITY="30s"
    )
    await front.ready()
    work = await hold_the_queue(front, stub)
    page = await open_page(browser, front)
    await page.wait_for(state_is("needs-token"))
    await give_token(page, "tok-a")
    await page.wait_for(state_is("ok"))

    doc = await status_document(front)
    names = [t["name"] for t in doc["targets"]]
    shown = await page.evaluate(
        "[...document.querySelectorAll('#targets [data-target]')].map(e => [e.dataset.target, e.className])"
    )
    assert [name for name, _ in shown] == names
    assert all("up" in classes.split() for _, classes in shown)

    await page.wait_for("document.querySelector('#clients [data-client=\"bob\"] .waiting')?.textContent === '2'")
    assert await page.text('#clients [data-client="alice"] .running') == "1"
    assert await page.text('#clients [data-client="alice"] .weight') == "2"
    running = await page.text('#running [data-client="alice"]')
    assert LLAMA in running and "/api/chat" in running and names[0] in running
    assert await page.evaluate("document.querySelectorAll('#charts svg').length") == 3
    summary = await page.text("#summary")
    assert "2 requests waiting" in summary and "1 running" in summary

    # The token lives in this tab's sessionStorage only, never in the page or its URL.
    assert await page.evaluate("sessionStorage.getItem('foreman.token')") == "tok-a"
    assert await page.evaluate("localStorage.length") == 0
    assert "tok-a" not in await page.evaluate("location.href + document.documentElement.outerHTML")

    # It refreshes by itself: once the queue runs, the requests show as recent.
    stub.hold.set()
    await work.answered()
    await page.wait_for("document.querySelectorAll('#recent [data-client=\"bob\"]').length === 2")
    await page.wait_for("document.querySelector('#running tr.empty') !== null")
    assert await page.text('#recent [data-client="alice"] .status') == "200"
    # What the target holds now, with the size its /api/ps gave after the load.
    held = f'#targets [data-target="{names[0]}"] [data-model="llama3.2:latest"]'
    await page.wait_for(f"/GB|MB/.test(document.querySelector({json.dumps(held)})?.textContent || '')")
    assert unexpected_problems(page) == []


async def test_the_page_fits_a_phone(start_foreman, stub, browser, tmp_path) -> None:
    front = start_foreman(FOREMAN_METRICS_PUBLIC="1", FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS))
    await front.ready()
    work = await hold_the_queue(front, stub)
    page = await open_page(browser, front, PHONE)
    await page.wait_for(state_is("ok"))
    await page.wait_for("document.querySelector('#running [data-client=\"alice\"]') !== null")
    # Wide tables scroll in their own box; the page itself does not scroll sideways.
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert await page.evaluate("getComputedStyle(document.querySelector('#recent').parentElement).overflowX") == "auto"
    smallest = await page.evaluate(
        "Math.min(...[...document.querySelectorAll('body *')]"
        ".filter(e => e.childNodes.length && [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()))"
        ".map(e => parseFloat(getComputedStyle(e).fontSize)))"
    )
    assert smallest >= 14
    assert await page.evaluate("document.querySelector('meta[name=viewport]').content") == "width=device-width, initial-scale=1"
    stub.hold.set()
    await work.answered()
    assert unexpected_problems(page) == []


# --- tokens ------------------------------------------------------------------------


async def test_without_a_token_the_page_asks_for_one_and_shows_no_data(start_foreman, stub, browser, tmp_path) -> None:
    front = start_foreman(FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS))
    await front.ready()
    work = await hold_the_queue(front, stub)
    assert {c["name"] for c in (await status_document(front))["clients"]} == {"alice", "bob"}
    page = await open_page(browser, front)
    await page.wait_for(state_is("needs-token"))
    assert "This foreman needs a token to show its status" in await page.text("#token-form")
    assert await page.evaluate("document.getElementById('token-input').type") == "password"
    text = await page.text()
    assert "alice" not in text and "bob" not in text and front.url.split("//")[1] not in text
    assert await page.evaluate("document.getElementById('status').hidden")
    assert await page.evaluate("document.querySelectorAll('#targets *, #clients tbody *, #charts *').length") == 0
    stub.hold.set()
    await work.answered()
    assert unexpected_problems(page) == []


async def test_a_refused_token_says_so_and_another_can_be_given(start_foreman, stub, browser, tmp_path) -> None:
    front = start_foreman(FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS))
    await front.ready()
    page = await open_page(browser, front)
    await give_token(page, "not-a-token")
    await page.wait_for(state_is("refused"))
    assert "That token was refused" in await page.text("#token-form")
    assert await page.evaluate("sessionStorage.getItem('foreman.token')") is None
    assert "not-a-token" not in await page.evaluate("document.documentElement.outerHTML")

    await give_token(page, "tok-b")
    await page.wait_for(state_is("ok"))
    await page.wait_for("document.querySelector('#targets [data-target]') !== null")
    # A stored token that stops being accepted (the tokens file changed) is refused too.
    front.foreman.tokens.replace(["tok-a"])
    await page.wait_for(state_is("refused"), timeout=30)
    assert await page.evaluate("document.querySelectorAll('#targets *').length") == 0


async def test_forget_token_drops_it_and_the_data(start_foreman, stub, browser, tmp_path) -> None:
    front = start_foreman(FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS))
    await front.ready()
    page = await open_page(browser, front)
    await give_token(page, "tok-a")
    await page.wait_for(state_is("ok"))
    await page.evaluate("document.getElementById('forget-token').click(), true")
    await page.wait_for(state_is("needs-token"))
    assert await page.evaluate("sessionStorage.length") == 0
    assert await page.evaluate("document.querySelectorAll('#targets *').length") == 0
    # A reload does not bring it back either.
    await page.goto(front.url + "/foreman/")
    await page.wait_for(state_is("needs-token"))


async def test_with_public_metrics_no_token_is_asked(start_foreman, stub, browser, tmp_path) -> None:
    front = start_foreman(FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS), FOREMAN_METRICS_PUBLIC="1")
    await front.ready()
    page = await open_page(browser, front)
    await page.wait_for(state_is("ok"))
    await page.wait_for("document.querySelector('#targets [data-target]') !== null")
    assert await page.evaluate("document.getElementById('token-form').hidden")
    assert await page.evaluate("document.getElementById('forget-token').hidden")
    # Model affinity is off here (tests/conftest.py), so foreman does not ask what is loaded.
    assert "Not known" in await page.text("#targets")
    assert page.problems() == []


# --- what the document holds is shown as text -----------------------------------


async def test_a_client_name_with_html_in_it_is_shown_as_text(start_foreman, stub, browser, tmp_path) -> None:
    # A tokens file cannot name a client like this; the token set can, and the
    # page must not care where a name came from.
    hostile = '<img src=x onerror="window.injected=1">'
    front = start_foreman(FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS))
    await front.ready()
    front.foreman.tokens.replace(["tok-a", "tok-x"], {"tok-a": Client("alice", 2.0), "tok-x": Client(hostile)})
    work = Workload(front)
    work.send("tok-x", "hello", stream=False)
    await work.answered()
    page = await open_page(browser, front)
    await give_token(page, "tok-a")
    await page.wait_for(state_is("ok"))
    await page.wait_for(
        f"[...document.querySelectorAll('#recent [data-client]')].some(e => e.dataset.client === {json.dumps(hostile)})"
    )
    assert hostile in await page.text("#clients")
    assert hostile in await page.text("#recent")
    assert await page.evaluate("document.querySelectorAll('img').length") == 0
    assert await page.evaluate("window.injected") is None
    assert unexpected_problems(page) == []


# --- foreman out of reach --------------------------------------------------------


async def test_an_unreachable_foreman_is_retried_and_the_last_data_marked_stale(start_foreman, stub, browser) -> None:
    front = start_foreman()
    await front.ready()
    page = await open_page(browser, front)
    await page.wait_for(state_is("ok"))
    await page.wait_for("document.querySelector('#targets [data-target]') !== null")
    await page.send("Network.enable")
    await page.send(
        "Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1, uploadThroughput=-1,
    )
    await page.wait_for(state_is("unreachable"))
    message = await page.text("#message")
    assert "cannot be reached" in message and "Retrying" in message and "out of date" in message
    assert await page.evaluate("document.getElementById('status').classList.contains('stale')")
    assert await page.evaluate("document.querySelector('#targets [data-target]') !== null")
    await page.send(
        "Network.emulateNetworkConditions", offline=False, latency=0, downloadThroughput=-1, uploadThroughput=-1,
    )
    await page.wait_for(state_is("ok"))
    assert not await page.evaluate("document.getElementById('status').classList.contains('stale')")
    assert await page.evaluate("document.getElementById('message').hidden")


# --- README's screenshot -----------------------------------------------------------


@pytest.mark.timeout(seconds=180)
async def test_the_readme_screenshot_is_taken_by_the_same_setup(io_loop, tmp_path) -> None:
    require_chromium()
    # A shorter hour than README's picture replays; the same code otherwise.
    written = await capture(tmp_path / "status.png", replayed_minutes=10)
    png = written.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert png[12:16] == b"IHDR" and width == DESKTOP["width"] and 900 <= height <= 8000
    assert 20_000 < len(png) < 5_000_000


# --- the page's files, without a browser ---------------------------------------------


def test_the_page_has_no_inline_script_or_style_and_writes_no_markup() -> None:
    html = (PAGE / "index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script src="status.js" defer>']
    assert "<style" not in html and not re.search(r"\sstyle\s*=", html)
    assert not re.search(r"\son[a-z]+\s*=", html)
    # Nothing from elsewhere: no address in any of the files, no protocol-relative link.
    for name in ("index.html", "status.js", "status.css"):
        assert "://" not in (PAGE / name).read_text(), name
    assert not re.search(r"(src|href)=\"//", html)
    script = (PAGE / "status.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "localStorage"):
        assert sink not in script, sink
    css = (PAGE / "status.css").read_text()
    assert "@import" not in css and "url(" not in css


async def test_a_token_a_browser_cannot_send_is_refused_at_once_not_taken_for_an_outage(start_foreman, stub, browser, tmp_path) -> None:
    front = start_foreman(FOREMAN_TOKENS_FILE=tokens_file(tmp_path, TOKENS))
    await front.ready()
    page = await open_page(browser, front)
    # A typographic apostrophe, as a phone's keyboard types it: no header can carry it.
    await give_token(page, "tok\u2019a")
    await page.wait_for(state_is("refused"))
    assert "That cannot be a token" in await page.text("#token-form")
    assert await page.evaluate("!document.getElementById('token-form').hidden")
    assert await page.evaluate("sessionStorage.getItem('foreman.token')") is None
    await give_token(page, "tok-a")
    await page.wait_for(state_is("ok"))
    assert unexpected_problems(page) == []
