"""The status document (GET /foreman/status), from what foreman already keeps.

Nothing here asks a target anything: targets are described by what their
pollers and the queue last learnt, requests by their records, the past by
the ledger. Nothing here holds a token: clients are their names (a tokens
file's, a hash of the token, or an address), targets their URLs without
credentials.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from foreman import __version__
from foreman.clients import DEFAULT_WEIGHT
from foreman.names import short
from foreman.record import RequestRecord
from foreman.services import Services
from foreman.shown import bounded
from foreman.ledger import Finished
from foreman.targets import Machine
from foreman.timestamps import rfc3339, rfc3339_epoch
from foreman.wake import shown_address


def status_document(services: Services) -> dict[str, Any]:
    now, monotonic_now = time.time(), time.monotonic()

    def wall(moment: float) -> str:
        """A monotonic reading, as the wall-clock time it was."""
        return rfc3339_epoch(now - (monotonic_now - moment))

    running = sorted(
        (
            handler.record
            for handler in services.activity.handlers
            if handler.record.sent is not None and handler.record.finished is None
        ),
        key=lambda record: record.sent or 0.0,
    )
    queue = services.queue
    return {
        "foreman": {
            "version": __version__,
            "now": rfc3339_epoch(now),
            "started": rfc3339_epoch(services.ledger.started),
        },
        "queue": {**queue.snapshot(), "paused": queue.paused},
        "targets": [_target(services, machine) for machine in _machines(services)],
        "clients": _clients(services, running),
        "in_flight": [_running(record, wall, monotonic_now) for record in running],
        "recent": [_finished(entry) for entry in services.ledger.recent()],
        "history": [
            {
                "time": rfc3339_epoch(start),
                "queue_depth": minute.queue_depth,
                "requests": minute.requests,
                "tokens_per_second": round(minute.tokens / covered, 2),
                "model_loads": minute.model_loads,
            }
            for start, minute, covered in services.ledger.history()
        ],
    }


def _machines(services: Services) -> list[Machine]:
    return [] if services.targets is None else list(services.targets.machines)


def _target(services: Services, machine: Machine) -> dict[str, Any]:
    inventory = machine.inventory
    queue = services.queue
    # With one target the queue itself waits out an outage (its pause);
    # with several, each machine is away on its own.
    alone = services.targets is None or not services.targets.several
    paused = alone and queue.paused
    waker = machine.waker
    return {
        "name": machine.name,
        "url": machine.display_url,
        "reachable": machine.reachable and not paused,
        "last_poll": rfc3339(inventory.last_poll),
        "last_error": machine.away_error
        or inventory.last_error
        or (queue.last_error if paused else None)
        or (None if inventory.polls_tried else "not polled yet"),
        "models": inventory.model_count,
        # Unknown (null) unless /api/ps is asked: what foreman sent requests
        # for alone would keep listing models the target has long unloaded.
        "resident": [
            {
                "name": bounded(short(model.name)),
                "size": model.size,
                "size_vram": model.size_vram,
                "expires_at": model.expires_at,
            }
            for model in inventory.resident.described()
        ]
        if inventory.tracks_resident
        else None,
        "in_flight": queue.in_flight if alone else machine.in_flight,
        "concurrency": machine.concurrency,
        "wake": None
        if waker is None
        else {
            "mac": waker.mac,
            "address": shown_address(waker.address),
            "waking": waker.waking,
            "packets_sent": waker.sent,
        },
    }


def _clients(services: Services, running: list[RequestRecord]) -> list[dict[str, Any]]:
    weights = {client.name: client.weight for client in services.tokens.named_clients}
    waiting: dict[str, int] = {}
    for name, (weight, count) in services.queue.scheduler.waiting_by_client().items():
        weights[name], waiting[name] = weight, count
    at_target = Counter(record.client or "unknown" for record in running)
    hour = services.ledger.hour_by_client()
    clients = []
    for name in sorted(set(weights) | set(waiting) | set(at_target) | set(hour)):
        service, requests = hour.get(name, (0.0, 0))
        clients.append(
            {
                "name": name,
                "weight": weights.get(name, DEFAULT_WEIGHT),
                "waiting": waiting.get(name, 0),
                "in_flight": at_target[name],
                "service_seconds": round(service, 3),
                "requests": requests,
            }
        )
    return clients


def _running(
    record: RequestRecord, wall: Callable[[float], str], monotonic_now: float
) -> dict[str, Any]:
    sent = record.sent or record.started
    return {
        "client": record.client or "unknown",
        "model": None if record.model is None else bounded(record.model),
        "target": record.target,
        "route": record.route,
        "method": record.method,
        "started": wall(sent),
        "elapsed": round(monotonic_now - sent, 3),
        "queue_wait": _seconds(record.queue_wait),
        "bytes": record.streamed_bytes,
        "tokens": record.streamed_chunks,
    }


def _finished(entry: Finished) -> dict[str, Any]:
    return {
        "time": rfc3339_epoch(entry.ended),
        "client": entry.client,
        "model": entry.model,
        "target": entry.target,
        "route": entry.route,
        "method": entry.method,
        "status": entry.status,
        "queue_wait": _seconds(entry.queue_wait),
        "duration": round(entry.duration, 3),
        "tokens": entry.tokens,
        "tokens_per_second": None
        if entry.tokens_per_second is None
        else round(entry.tokens_per_second, 2),
    }


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
