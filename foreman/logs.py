"""Logging to stderr, as text for a person or one JSON object a line."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

import tornado.web

from foreman.record import CLIENT_LEFT, RequestRecord
from foreman.shown import bounded, escaped, shown

access_log = logging.getLogger("foreman.access")

# Attributes every LogRecord has; anything else was passed in `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`<date> <time> <LEVEL> <logger>: <message>`, one line a record.

    Client-controlled parts are escaped where they are logged; escaping the
    line once more here keeps anything missed from starting a line of its own
    (a traceback, added after this, keeps its lines).
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return escaped(line)


def configure(log_format: str, level: str) -> None:
    """Send every log record to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Tornado's own access log is replaced by `log_request`.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """One line per request: method, path, status, duration, model, client, queue wait,
    time to first byte, service time at the target, whether it made the target load its
    model, bytes relayed and the target's eval_count/eval_duration."""
    record: RequestRecord | None = getattr(handler, "record", None)
    if record is None:  # not one of foreman's handlers: nothing to say
        return
    status = record.status or handler.get_status()
    if record.path == "/healthz":
        # Probed every few seconds; its 503 reports the target, not a failure
        # of the request (the poller logs that once, as a warning).
        level = logging.DEBUG if status == 200 else logging.INFO
    elif status == 401:
        # Refused tokens are logged, rate-limited, by foreman.auth.
        level = logging.DEBUG
    elif status == CLIENT_LEFT:
        # A client hanging up (Ctrl-C, a closed tab) is its own business, not a fault.
        level = logging.INFO
    elif status >= 500:
        level = logging.ERROR
    elif status >= 400:
        level = logging.WARNING
    else:
        level = logging.INFO
    if not access_log.isEnabledFor(level):
        return
    duration_ms = 1000.0 * record.duration
    ttfb = record.time_to_first_byte
    ttfb_ms = None if ttfb is None else round(1000.0 * ttfb, 3)
    queue_wait = record.queue_wait
    details = "".join(
        f" {name}={value}"
        for name, value in (
            ("model", None if record.model is None else shown(record.model)),
            ("client", record.client),
            ("wait", None if queue_wait is None else f"{queue_wait:.3f}s"),
            ("ttfb", None if ttfb_ms is None else f"{ttfb_ms:.1f}ms"),
            ("service", None if record.service is None else f"{record.service:.3f}s"),
            ("load", "yes" if record.model_load else None),
            ("target", None if record.target is None else shown(record.target)),
            ("bytes", record.relayed_bytes),
            ("eval_count", record.eval_count),
        )
        if value is not None
    )
    # Method, path and model are the client's: bounded always, and escaped
    # in the text line (json.dumps escapes them in the JSON record).
    access_log.log(
        level,
        "%s %s %d %.1fms%s",
        shown(record.method),
        shown(record.path),
        status,
        duration_ms,
        details,
        extra={
            "method": bounded(record.method),
            "path": bounded(record.path),
            "status": status,
            "duration_ms": round(duration_ms, 3),
            "model": None if record.model is None else bounded(record.model),
            "client": record.client or None,
            "queue_wait": None if queue_wait is None else round(queue_wait, 6),
            "ttfb_ms": ttfb_ms,
            "service": None if record.service is None else round(record.service, 6),
            "model_load": record.model_load,
            "target": record.target,
            "bytes": record.relayed_bytes,
            "eval_count": record.eval_count,
            "eval_duration": record.eval_duration,
            "remote": record.remote,
        },
    )
