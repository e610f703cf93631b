"""Prometheus metrics for one foreman, in its own registry.

prometheus-client does the exposition format and the histogram buckets; a
registry per foreman (not the library's global one) keeps several foremen
in one process (the tests) apart. Gauges that mirror state elsewhere (queue,
target, inventory) are read when scraped, so nothing on the hot path keeps
them current.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from foreman.inventory import Inventory
from foreman.queue import FairQueue
from foreman.record import RequestRecord

if TYPE_CHECKING:
    from foreman.targets import Machine

# Waits and first bytes range from instant to minutes (a model loading).
_WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self, queue: FairQueue, inventory: Inventory) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "foreman_requests",
            "Requests answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "foreman_queue_wait_seconds",
            "Time requests waited in the queue for their turn.",
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_byte = Histogram(
            "foreman_time_to_first_byte_seconds",
            "Time from a request's arrival to the first byte of its answer, by route.",
            ["route"],
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "foreman_generated_tokens",
            "Tokens the target reports having generated (eval_count of final chunks).",
            registry=self.registry,
        )
        # Per client: only the names a tokens file gives, so labels stay bounded.
        self._named: frozenset[str] = frozenset()
        self.client_service = Counter(
            "foreman_client_service_seconds",
            "Seconds queued requests held a slot at the target, by named client "
            "(anonymous: every client without a name).",
            ["client"],
            registry=self.registry,
        )
        self.client_requests = Counter(
            "foreman_client_requests",
            "Queued requests answered by the target, by named client.",
            ["client"],
            registry=self.registry,
        )
        self.client_queue_wait = Histogram(
            "foreman_client_queue_wait_seconds",
            "Time requests waited in the queue for their turn, by named client.",
            ["client"],
            buckets=_WAIT_BUCKETS,
            registry=self.registry,
        )
        self.model_loads = Counter(
            "foreman_model_loads",
            "Requests foreman sent for a model the target did not hold in memory "
            "(as far as foreman knew): model loads it caused.",
            registry=self.registry,
        )
        self.wake_packets = Counter(
            "foreman_wake_packets",
            "Wake-on-LAN magic packets sent while requests waited for an unreachable target.",
            registry=self.registry,
        )
        # Per target: labels are the configured targets' names only.
        self.target_requests = Counter(
            "foreman_target_requests",
            "Requests relayed to each target, by target name.",
            ["target"],
            registry=self.registry,
        )
        self._target_in_flight = Gauge(
            "foreman_target_in_flight",
            "Queued requests at each target now, by target name.",
            ["target"],
            registry=self.registry,
        )
        self._target_reachable = Gauge(
            "foreman_target_reachable",
            "1 while a target is reachable (its last poll succeeded and no request "
            "since failed to reach it), else 0; by target name.",
            ["target"],
            registry=self.registry,
        )
        self._target_names: frozenset[str] = frozenset()
        gauges = {
            "foreman_queue_waiting": ("Requests waiting for a turn.", lambda: queue.waiting),
            "foreman_queue_in_flight": ("Requests at the target now.", lambda: queue.in_flight),
            "foreman_queue_concurrency": ("Requests allowed at the target at once.", lambda: queue.concurrency),
            "foreman_target_up": (
                "1 while the last poll of the target succeeded, else 0.",
                lambda: 0 if inventory.degraded else 1,
            ),
            "foreman_inventory_models": ("Models in the inventory.", lambda: inventory.model_count),
            "foreman_last_successful_poll_timestamp_seconds": (
                "Unix time of the last successful poll of the target (0: never).",
                lambda: inventory.last_poll.timestamp() if inventory.last_poll else 0,
            ),
        }
        for name, (documentation, read) in gauges.items():
            Gauge(name, documentation, registry=self.registry).set_function(read)

    def observe(self, record: RequestRecord) -> None:
        """Count one answered request."""
        self.requests.labels(record.route, str(record.status)).inc()
        first_byte = record.time_to_first_byte
        self.time_to_first_byte.labels(record.route).observe(
            record.duration if first_byte is None else first_byte
        )
        if record.queue_wait is not None:
            self.queue_wait.observe(record.queue_wait)
            self.client_queue_wait.labels(self.client_label(record.client)).observe(record.queue_wait)
        if record.service is not None:
            label = self.client_label(record.client)
            self.client_service.labels(label).inc(record.service)
            self.client_requests.labels(label).inc()
        if record.model_load:
            self.model_loads.inc()
        if record.target is not None and record.target in self._target_names:
            self.target_requests.labels(record.target).inc()
        if record.eval_count:
            self.generated_tokens.inc(record.eval_count)

    def name_targets(self, machines: Iterable[Machine]) -> None:
        """The configured targets: their gauges, and the only target labels used."""
        names = set()
        for machine in machines:
            names.add(machine.name)
            self._target_in_flight.labels(machine.name).set_function(_in_flight_of(machine))
            self._target_reachable.labels(machine.name).set_function(_reachable_of(machine))
        self._target_names = frozenset(names)

    def name_clients(self, names: frozenset[str]) -> None:
        """The client names a tokens file gives (at start and on SIGHUP)."""
        self._named = names

    def client_label(self, client: str | None) -> str:
        return client if client is not None and client in self._named else "anonymous"

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _in_flight_of(machine: Machine) -> Callable[[], float]:
    return lambda: machine.in_flight


def _reachable_of(machine: Machine) -> Callable[[], float]:
    return lambda: int(machine.reachable)
