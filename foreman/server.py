"""Running foreman as a process: listen, poll, and shut down gracefully."""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import socket

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from foreman.activity import Activity
from foreman.app import make_app
from foreman.config import Config
from foreman.inventory import Inventory
from foreman.ollama import TargetClient
from foreman.queue import FairQueue

log = logging.getLogger("foreman.server")

_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


def raise_open_file_limit() -> None:
    """Each client costs foreman two descriptors; the usual soft limit of 1024 is low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as e:
            log.warning("could not raise the open-file limit from %d: %s", soft, e)


def listening_urls(sockets: list[socket.socket]) -> list[str]:
    urls = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        urls.append(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
    return urls


class ListenError(OSError):
    """The listen address could not be bound; the message names the address."""

    def __str__(self) -> str:
        return str(self.strerror)


class Foreman:
    """One foreman: its app, target client, poller and listening sockets."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.target = TargetClient(config.ollama_url, config.ollama_token, config.target_display)
        self.inventory = Inventory(self.target, config.poll_interval)
        self.activity = Activity()
        self.queue = FairQueue(config.concurrency, config.max_queue, config.queue_timeout)
        # A good poll proves the target is back: resume a paused queue at once.
        self.inventory.on_success(self.queue.reachable)
        self.app = make_app(config, self.target, self.inventory, self.activity, self.queue)
        self.server = HTTPServer(self.app)
        self.urls: list[str] = []
        self.first_poll: asyncio.Future[bool] | None = None

    def start(self) -> None:
        """Listen on the configured address and start polling the target."""
        host, port = self.config.listen_host, self.config.listen_port
        try:
            sockets = bind_sockets(port, address=host or None)
        except OSError as e:
            # Typically the port is taken; say which address, not just errno.
            shown = f"[{host}]" if ":" in host else host
            raise ListenError(
                e.errno, f"cannot listen on {shown}:{port} (FOREMAN_LISTEN): {e.strerror or e}"
            ) from None
        self.server.add_sockets(sockets)
        self.urls = listening_urls(sockets)
        self.first_poll = self.inventory.start()

    async def drain(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for up to `grace` seconds, then close."""
        self.server.stop()
        self.activity.draining = True
        self.queue.close()
        self.inventory.stop()
        if not await self.activity.wait_idle(grace):
            log.warning("grace period over: closing %d requests still in flight", self.activity.in_flight)
        await self.server.close_all_connections()
        self.target.close()


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or `stop` is set), then drain and return."""
    raise_open_file_limit()
    stop = stop or asyncio.Event()
    # Handlers first: a supervisor may send SIGTERM the moment it sees the
    # "listening" line, and that must drain, not kill, the process.
    signals = _install_signal_handlers(stop)
    try:
        foreman = Foreman(config)
        foreman.start()
        # Everything built so far lives as long as the process: take it out
        # of the collector's sight, so full collections under many streams
        # (late chunks, when they run) stay short.
        gc.collect()
        gc.freeze()
        log.info(
            "foreman listening on %s, target %s", ", ".join(foreman.urls), config.target_display
        )
        if not config.auth_enabled and config.listen_host not in _LOOPBACK_HOSTS:
            log.warning(
                "no FOREMAN_TOKENS set: anyone who can reach %s can use the target",
                config.listen_host or "this machine",
            )
        await stop.wait()
        log.info(
            "shutting down: no new connections; waiting up to %gs for %d in-flight requests",
            config.shutdown_grace,
            foreman.activity.in_flight,
        )
        await foreman.drain(config.shutdown_grace)
    finally:
        for sig in signals:
            asyncio.get_running_loop().remove_signal_handler(sig)
    log.info("foreman stopped")


def _install_signal_handlers(stop: asyncio.Event) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    installed = []

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: exiting at once", sig.name)
            raise SystemExit(0)
        log.info("%s received", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
        installed.append(sig)
    return installed
