"""Running foreman as a process: listen, poll, and shut down gracefully."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import resource
import signal
import socket
from collections.abc import Callable

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from foreman.accept import Acceptor
from foreman.activity import Activity
from foreman.app import inbound_tokens, make_app
from foreman.auth import FailedAuthLog, TokenSet
from foreman.budget import MemoryBudget
from foreman.config import Config, ConfigError
from foreman.metrics import Metrics
from foreman.notify import notify
from foreman.services import Services
from foreman.ledger import Ledger
from foreman.queue import FairQueue
from foreman.targets import Machine, Targets
from foreman.wake import Waker

log = logging.getLogger("foreman.server")

_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}
# Ollama's clients send a few hundred bytes of headers; this is generous.
MAX_HEADER_SIZE = 64 << 10
# After the grace period, how long ended requests get to send their error.
_STRAGGLER_GRACE = 2.0


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


def _stop_waking(waker: Waker, reachable: bool) -> None:
    waker.stop(outage_over=reachable)


def client_names(config: Config) -> frozenset[str]:
    """The names tokens files give clients: the only client labels metrics use."""
    return frozenset(fields.name for fields in config.token_fields if fields.name)


class ListenError(OSError):
    """The listen address could not be bound; the message names the address."""

    def __str__(self) -> str:
        return str(self.strerror)


class Foreman:
    """One foreman: its app, target client, poller and listening sockets."""

    def __init__(self, config: Config) -> None:
        self.config = config
        track_resident = config.model_affinity > 0
        self.targets = Targets(
            Machine(
                spec,
                poll_interval=config.poll_interval,
                idle_timeout=config.target_idle_timeout,
                track_resident=track_resident,
            )
            for spec in config.target_specs
        )
        first = self.targets.first
        self.target = first.target
        self.inventory = first.inventory
        self.activity = Activity()
        several = self.targets.several
        self.queue = FairQueue(
            sum(m.concurrency for m in self.targets.machines),
            config.max_queue,
            config.queue_timeout,
            max_per_client=config.max_queue_per_client,
            affinity=config.model_affinity,
            resident=first.inventory.resident.current,
            placement=self.targets if several else None,
        )
        queue = self.queue
        self.targets.watch_waiting(lambda: queue.waiting)
        # A good poll (or an answer beginning) proves a target is back: dispatch at once.
        for machine in self.targets.machines:
            machine.on_back(queue.reachable)
            spec = machine.spec
            if spec.wake_mac is None:
                continue
            if several:
                waker = Waker(spec.wake_mac, spec.wake_address, needed=lambda: queue.waiting > 0)
            else:
                waker = Waker(spec.wake_mac, spec.wake_address, needed=lambda: queue.stalled)
                # Requests wait for an unreachable target: wake it, until it answers.
                queue.on_pause(waker.start)
                queue.on_resume(functools.partial(_stop_waking, waker))
            machine.waker = waker
        self.waker: Waker | None = first.waker
        self.tokens = TokenSet(inbound_tokens(config), config.token_clients)
        self.admins = TokenSet(config.admin_tokens, config.token_clients)
        self.metrics = Metrics(self.queue, self.inventory)
        self.metrics.name_clients(client_names(config))
        self.metrics.name_targets(self.targets.machines)
        self.memory = MemoryBudget(config.max_body_memory)
        self.ledger = Ledger()
        for machine in self.targets.machines:
            if machine.waker is not None:
                machine.waker.on_sent(self.metrics.wake_packets.inc)
        self.services = Services(
            config, self.target, self.inventory, self.activity, self.queue,
            self.tokens, self.admins, self.metrics, FailedAuthLog(), self.memory,
            self.waker, self.targets, self.ledger,
        )
        self.app = make_app(self.services)
        self.server = HTTPServer(
            self.app,
            # Tornado waits an hour for a request head and forever for a body:
            # a client that stalls would hold a connection (and memory) that long.
            idle_connection_timeout=config.client_timeout,
            body_timeout=config.client_timeout,
            max_header_size=MAX_HEADER_SIZE,
        )
        self.acceptor: Acceptor | None = None
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
        # Our own accept loop, not add_sockets': Tornado's spins at full CPU
        # when accept() fails for lack of file descriptors.
        self.acceptor = Acceptor(self.server, sockets)
        self.acceptor.start()
        self.urls = listening_urls(sockets)
        polls = [machine.inventory.start() for machine in self.targets.machines]
        self.first_poll = polls[0] if len(polls) == 1 else asyncio.ensure_future(_all_polled(polls))

    def reload_tokens(self, load: Callable[[], Config]) -> None:
        """Re-read the tokens (files included); a bad file keeps the current ones."""
        try:
            fresh = load()
        except ConfigError as e:
            log.error("reload: keeping the current tokens: %s", e)
            return
        named = fresh.token_clients
        self.tokens.replace(inbound_tokens(fresh), named)
        self.admins.replace(fresh.admin_tokens, named)
        self.metrics.name_clients(client_names(fresh))
        log.info(
            "reload: %d client tokens, %d admin tokens, %d of them named or weighted",
            len(fresh.tokens),
            len(fresh.admin_tokens),
            len(named),
        )

    async def drain(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for up to `grace` seconds, then close.

        Requests still running then are ended with an error a client can act
        on (an in-band error line when their answer has begun), not cut off.
        """
        if self.acceptor is not None:
            self.acceptor.stop()
        self.activity.draining = True
        self.queue.close()
        for machine in self.targets.machines:
            machine.inventory.stop()
        if not await self.activity.wait_idle(grace):
            log.warning("grace period over: ending %d requests still in flight", self.activity.in_flight)
            for handler in list(self.activity.handlers):
                handler.cut_for_shutdown()
            await self.activity.wait_idle(_STRAGGLER_GRACE)
        await self.server.close_all_connections()
        for machine in self.targets.machines:
            machine.close()


async def _all_polled(polls: list[asyncio.Future[bool]]) -> bool:
    """Every target tried once, reachable or not."""
    return all(await asyncio.gather(*polls))


async def serve(
    config: Config, reload: Callable[[], Config] | None = None, stop: asyncio.Event | None = None
) -> None:
    """Serve until SIGTERM or SIGINT (or `stop` is set), then drain and return.

    SIGHUP calls `reload` for fresh settings and takes the tokens from them.
    """
    raise_open_file_limit()
    stop = stop or asyncio.Event()
    # Handlers first: a supervisor may send SIGTERM the moment it sees the
    # "listening" line, and that must drain, not kill, the process.
    signals = _install_signal_handlers(stop)
    loop = asyncio.get_running_loop()
    try:
        foreman = Foreman(config)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, foreman.reload_tokens, reload)
            signals.append(signal.SIGHUP)
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
        assert foreman.first_poll is not None
        # Ready once listening and the target has been tried, reachable or not.
        foreman.first_poll.add_done_callback(lambda _: notify("READY=1", "STATUS=serving"))
        await stop.wait()
        notify("STOPPING=1")
        log.info(
            "shutting down: no new connections; waiting up to %gs for %d in-flight requests",
            config.shutdown_grace,
            foreman.activity.in_flight,
        )
        await foreman.drain(config.shutdown_grace)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
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
