"""A real browser for the tests: Debian's headless chromium, driven over the DevTools protocol.

One websocket to the browser (`tornado.websocket`), one tab attached to it
in "flat" mode, so the tab's commands travel on the same socket with its
session id. Everything is awaited on the caller's IOLoop, so a foreman
running on that loop keeps serving the page while a test drives it.

Chromium is started in its own process group, touches only loopback (no
proxy, every other host name fails to resolve) and is killed with its whole
group at the end. Nothing is downloaded: without /usr/bin/chromium, the
tests that need it are skipped and say why.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from tornado.websocket import WebSocketClientConnection, websocket_connect

CHROMIUM = "/usr/bin/chromium"
NOT_INSTALLED = "chromium is not installed: the status page was not tested in a browser"

DESKTOP = {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    "--no-proxy-server",
    # Loopback only: any other name fails to resolve inside the browser.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--remote-debugging-port=0",
)
# Screenshots of a PNG page run to a few MB of base64 in one message.
_MAX_MESSAGE = 256 * 1024 * 1024


def require_chromium() -> None:
    """Skip, saying so, where chromium is missing; fail in CI, whose .ci/run installs it as root."""
    if chromium_path() is not None:
        return
    if os.environ.get("CI") and os.geteuid() == 0:
        pytest.fail(f"{NOT_INSTALLED} (.ci/run installs it when run as root: a broken CI)")
    pytest.skip(NOT_INSTALLED)


def chromium_path() -> str | None:
    """The browser the tests drive, or None when it is not installed."""
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else None


class BrowserError(Exception):
    """The browser failed to start, or a DevTools command failed."""


class Chromium:
    """A headless chromium process and the DevTools connection to it."""

    def __init__(self, process: subprocess.Popen, socket: WebSocketClientConnection, profile: Path) -> None:
        self.process = process
        self.profile = profile
        self._socket = socket
        self._next_id = 0
        self._answers: dict[int, asyncio.Future] = {}
        self._listeners: list[tuple[str | None, str, asyncio.Future]] = []
        self.events: list[dict] = []  # every event, for the tests' assertion messages
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, profile: Path, timeout: float = 60.0) -> Chromium:
        """Start chromium with `profile` as its user data directory and connect to it."""
        path = chromium_path()
        if path is None:
            raise BrowserError(NOT_INSTALLED)
        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        log = open(profile.parent / f"{profile.name}.log", "wb")
        process = subprocess.Popen(
            [path, *_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
        log.close()
        try:
            lines = await _wait_for_port_file(process, port_file, timeout)
            url = f"ws://127.0.0.1:{int(lines[0])}{lines[1]}"
            socket = await websocket_connect(url, max_message_size=_MAX_MESSAGE)
        except BaseException:
            _kill_group(process)
            raise
        return cls(process, socket, profile)

    async def send(self, method: str, session: str | None = None, **params: Any) -> dict:
        """Send one DevTools command and return its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        answer = asyncio.get_running_loop().create_future()
        self._answers[self._next_id] = answer
        await self._socket.write_message(json.dumps(message))
        reply = await answer
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def expect(self, method: str, session: str | None = None) -> asyncio.Future:
        """A future for the next event named `method` (from `session`); ask before causing it."""
        future = asyncio.get_running_loop().create_future()
        self._listeners.append((session, method, future))
        return future

    async def new_page(self, viewport: dict = DESKTOP) -> Page:
        """Open a blank tab at `viewport`'s size, attached and ready to drive."""
        created = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=created["targetId"], flatten=True)
        page = Page(self, attached["sessionId"])
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.resize(viewport)
        return page

    async def close(self, timeout: float = 15.0) -> None:
        """Ask chromium to quit, then make sure nothing of it is left."""
        try:
            if self.process.poll() is None:
                await asyncio.wait_for(self.send("Browser.close"), timeout)
        except (BrowserError, TimeoutError, OSError, asyncio.CancelledError):
            pass
        self._socket.close()
        self._reader.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Its helpers (zygote, renderers, network service) share its group and
        # leave after it; whatever is left at the deadline is killed.
        while loop.time() < deadline and (self.process.poll() is None or any(group_members(self.process.pid))):
            await asyncio.sleep(0.05)
        _kill_group(self.process)
        shutil.rmtree(self.profile, ignore_errors=True)

    async def _read(self) -> None:
        while True:
            raw = await self._socket.read_message()
            if raw is None:
                break
            message = json.loads(raw)
            if "id" in message:
                answer = self._answers.pop(message["id"], None)
                if answer is not None and not answer.done():
                    answer.set_result(message)
                continue
            self.events.append(message)
            session, method = message.get("sessionId"), message.get("method")
            for listener in list(self._listeners):
                wanted_session, wanted_method, future = listener
                if wanted_method == method and wanted_session in (None, session):
                    self._listeners.remove(listener)
                    if not future.done():
                        future.set_result(message.get("params", {}))
        closed = BrowserError("chromium closed the DevTools connection")
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(closed)
        self._answers.clear()


class Page:
    """One tab: navigate, evaluate JavaScript, wait for a condition, take a screenshot."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, **params: Any) -> dict:
        return await self.browser.send(method, self.session, **params)

    async def resize(self, viewport: dict) -> None:
        await self.send("Emulation.setDeviceMetricsOverride", **viewport)

    async def goto(self, url: str, timeout: float = 30.0) -> None:
        """Load `url` and wait for its load event."""
        loaded = self.browser.expect("Page.loadEventFired", self.session)
        navigated = await self.send("Page.navigate", url=url)
        if navigated.get("errorText"):
            raise BrowserError(f"{url}: {navigated['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression!r} threw: {text}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Wait until `expression` is truthy in the page and return its value.

        Fails with what the page showed at the deadline, to say why.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                shown = await self.evaluate(
                    "`state=${document.body.dataset.state}\\n${document.body.innerText}`"
                )
                raise AssertionError(f"not true within {timeout}s: {expression}\npage: {shown[:3000]}")
            await asyncio.sleep(0.05)

    async def text(self, selector: str = "body") -> str:
        """What `selector`'s first match shows (its innerText), '' if nothing matches."""
        return await self.evaluate(
            f"(document.querySelector({json.dumps(selector)}) || {{innerText: ''}}).innerText"
        )

    async def screenshot(self, viewport: dict = DESKTOP) -> bytes:
        """A PNG of the whole page at `viewport`'s width (as tall as the page)."""
        await self.resize(viewport)
        height = await self.evaluate("Math.ceil(document.documentElement.scrollHeight)")
        await self.resize({**viewport, "height": max(int(height), viewport["height"] // 2)})
        # Two frames, so layout at the new size is painted before the capture.
        await self.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        await self.resize(viewport)
        return base64.b64decode(shot["data"])

    def problems(self) -> list[str]:
        """JavaScript exceptions and console/log errors this tab reported (CSP refusals among them)."""
        found = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif event["method"] == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"{params['entry'].get('source')}: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return found


@asynccontextmanager
async def chromium(profile: Path):
    """A running chromium for the length of a `with` block."""
    browser = await Chromium.start(profile)
    try:
        yield browser
    finally:
        await browser.close()


async def _wait_for_port_file(process: subprocess.Popen, port_file: Path, timeout: float) -> list[str]:
    """Chromium writes its DevTools port and path there once it listens."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if process.poll() is not None:
            raise BrowserError(f"chromium exited with {process.returncode} before listening; see {port_file.parent}.log")
        try:
            lines = port_file.read_text().split()
        except FileNotFoundError:
            lines = []
        if len(lines) >= 2:
            return lines
        await asyncio.sleep(0.05)
    raise BrowserError(f"chromium did not open its DevTools port within {timeout}s")


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def group_members(pid: int) -> Iterator[int]:
    """Processes still in the group `pid` led (for a test that none are left)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # After ")": state, ppid, pgrp, ...
        if int(fields[2]) == pid and fields[0] != "Z":
            yield int(entry.name)
