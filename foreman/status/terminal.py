"""`foreman status`: fetch a foreman's status document and lay it out for a terminal.

A client of GET /foreman/status like any other: plain HTTP from the
standard library and nothing of foreman's server, so it runs against a
foreman on another machine or of another version, and fails with one line
that says why. `render` is pure: a document in, the text out.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import Message
from typing import IO, Any
from urllib.parse import urlsplit

from foreman import __version__
from foreman.shown import escaped

DEFAULT_URL = "http://127.0.0.1:8080"
STATUS_PATH = "/foreman/status"
# The command's own variables: a shell's, not the server's settings.
URL_VARIABLE = "FOREMAN_STATUS_URL"
TOKEN_VARIABLE = "FOREMAN_STATUS_TOKEN"
VARIABLES = (URL_VARIABLE, TOKEN_VARIABLE)
TIMEOUT = 5.0
# A status document is tens of kB (100 recent requests, 60 minutes); an
# answer far bigger than that is not one, and is not read into memory.
MAX_BODY = 8 * 1024 * 1024
# Of an error answer, enough for Ollama's {"error": "..."} sentence.
MAX_ERROR_BODY = 64 * 1024
ERROR_TEXT_LIMIT = 200
# What a document must hold to be foreman's status document at all.
_OBJECTS = ("foreman", "queue")
_LISTS = ("targets", "clients", "in_flight", "recent")


class StatusUnavailable(Exception):
    """Why there is no status document to show; its str is the one line to print."""


def base_url(text: str) -> str:
    """`text` as foreman's base URL, `http://` assumed; ValueError saying what is wrong.

    The error never repeats a password written into the URL.
    """
    given = text.strip()
    if "://" not in given:
        given = "http://" + given
    try:
        parts = urlsplit(given)
    except ValueError:  # an unclosed [ of an IPv6 address
        # Not repeated: what could not be split may hold a password.
        raise ValueError(f"the address is not one like {DEFAULT_URL} (an unclosed '['?)") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("give the address without a user or password (a token goes in --token)")
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"'{escaped(text)}' is not an http:// or https:// address")
    if parts.query or parts.fragment:
        raise ValueError("the address has a query or fragment; give foreman's base address alone")
    try:
        parts.port  # reading it checks it
    except ValueError:
        raise ValueError(f"'{escaped(text)}' has a port that is not a number from 0 to 65535") from None
    if not parts.hostname or any(c.isspace() for c in given):
        raise ValueError(f"'{escaped(text)}' is not an address like {DEFAULT_URL}")
    return given


def status_url(base: str) -> str:
    """Where the foreman at `base` serves its status document (a trailing slash tolerated)."""
    return base.rstrip("/") + STATUS_PATH


def fetch_status(url: str, token: str | None, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The status document of the foreman at base URL `url`, or StatusUnavailable saying why."""
    where = status_url(url)
    shown = escaped(where)
    headers = {"Accept": "application/json", "User-Agent": f"foreman-status/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        request = urllib.request.Request(where, headers=headers)
        with _OPENER.open(request, timeout=timeout) as response:
            body = response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as e:
        with e:
            raise StatusUnavailable(_refusal(shown, e, bool(token))) from None
    except urllib.error.URLError as e:
        raise StatusUnavailable(f"cannot reach foreman at {shown}: {_why(e.reason, where, timeout)}") from None
    except (OSError, http.client.HTTPException) as e:
        raise StatusUnavailable(f"cannot reach foreman at {shown}: {_why(e, where, timeout)}") from None
    except ValueError:
        # http.client rejects a header value it cannot send (a token with a
        # newline or non-Latin-1 letters) and quotes it: never show that.
        raise StatusUnavailable(f"cannot ask {shown}: the URL or the token cannot be sent in HTTP") from None
    return _document(shown, body)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """foreman never redirects its status; following one would carry the token elsewhere."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


# No proxies: foreman is on this machine or this LAN, and a proxy from the
# environment (which Python applies even to 127.0.0.1) would see the token.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def _why(reason: object, where: str, timeout: float) -> str:
    """A connection failure in a few words."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is foreman running and listening there?)"
    if isinstance(reason, socket.gaierror):
        host = urlsplit(where).hostname or ""
        return f"cannot resolve the name '{escaped(host)}' ({escaped(str(reason.strerror))})"
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "the connection closed without an answer"
    if isinstance(reason, http.client.IncompleteRead):
        return "the answer was cut off"
    if isinstance(reason, http.client.HTTPException):
        return "the answer is not HTTP"
    if isinstance(reason, OSError):
        return escaped(str(reason.strerror or reason))
    return escaped(str(reason))


def _refusal(where: str, error: urllib.error.HTTPError, had_token: bool) -> str:
    """An answer other than 200, as one line."""
    code = error.code
    said = _error_text(error)
    if code == 401:
        if not had_token:
            return f"foreman at {where} needs a token: give --token or set {TOKEN_VARIABLE}"
        return f"foreman at {where} refused the token (401{': ' + said if said else ''})"
    answered = f"{where} answered {code} {escaped(str(error.reason or ''))}".rstrip()
    if said:
        answered += f": {said}"
    if code == 404:
        return f"{answered}; is it a foreman, and one recent enough to have {STATUS_PATH}?"
    if 300 <= code < 400:
        location = escaped(str(error.headers.get("Location", "")))[:ERROR_TEXT_LIMIT]
        return f"{answered} (a redirect to '{location}'); give --url the address foreman listens on"
    return answered


def _error_text(error: urllib.error.HTTPError) -> str:
    """The sentence of Ollama's `{"error": "..."}` answer, escaped and bounded; "" if none."""
    try:
        body = error.read(MAX_ERROR_BODY)
        said = json.loads(body).get("error")
    except (OSError, http.client.HTTPException, ValueError, RecursionError, AttributeError):
        return ""
    if not isinstance(said, str):
        return ""
    return _cut(escaped(said[: ERROR_TEXT_LIMIT * 8]), ERROR_TEXT_LIMIT)


def _document(where: str, body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise StatusUnavailable(f"{where} answered more than {MAX_BODY // 2**20} MiB: not foreman's status document")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested past Python's limit
        raise StatusUnavailable(f"{where} answered, but not with JSON: is it a foreman?") from None
    if not (
        isinstance(document, dict)
        and all(isinstance(document.get(k), dict) for k in _OBJECTS)
        and all(isinstance(document.get(k), list) for k in _LISTS)
    ):
        raise StatusUnavailable(f"{where} answered JSON, but not foreman's status document")
    return document


# --- the text -----------------------------------------------------------------

NOTHING = "-"
# A cell holds at most this much of a name or an error; the table narrows
# name columns further when the lines are wider than the screen.
_CELL = 80
# ...but not below this, so a narrowed column still tells its names apart.
_NARROWEST = 8


@dataclass
class _Table:
    """One section: a title line, column headers, and rows of cells already made safe."""

    title: str
    headers: tuple[str, ...]
    rows: list[list[str]]
    narrowable: tuple[int, ...]  # the columns that give up room when the lines are too wide

    def lines(self, width: int) -> list[str]:
        widths = [max(len(cell) for cell in column) for column in zip(self.headers, *self.rows)]
        excess = sum(widths) + 2 * (len(widths) - 1) - width if width > 0 else 0
        while excess > 0:
            roomy = [i for i in self.narrowable if widths[i] > max(_NARROWEST, len(self.headers[i]))]
            if not roomy:
                break
            widest = max(roomy, key=lambda i: widths[i])
            widths[widest] -= 1
            excess -= 1
        return [self.title] + [
            "  ".join(_cut(cell, w).ljust(w) for cell, w in zip(cells, widths)).rstrip()
            for cells in [list(self.headers), *self.rows]
        ]


def render(document: dict[str, Any], width: int = 100, *, url: str | None = None, recent: int = 10) -> str:
    """The status document as text for a terminal: a header line, then each section.

    Columns are aligned like `ollama ps`. When the lines would be wider than
    `width` the name columns narrow first, then the lines are cut with an
    ellipsis (`width` 0: no limit). Every string from the document is
    escaped, so a name with control characters cannot move the cursor. An
    empty section is one line ("nothing running"). `recent` is how many of
    the last finished requests to show (0: no such section). A missing or
    malformed field shows as "-" rather than failing.
    """
    now = _time(_mapping(document.get("foreman")).get("now"))
    sections = [
        _targets(_records(document.get("targets")), now),
        _clients(_records(document.get("clients"))),
        _running(_records(document.get("in_flight"))),
    ]
    if recent > 0:
        sections.append(_recent(_records(document.get("recent"))[:recent], now))
    lines = _header(document, url, now, width)
    for section in sections:
        lines += ["", *(section.lines(width) if isinstance(section, _Table) else [section])]
    return "\n".join(_cut(line, width) if width > 0 else line for line in lines)


def _header(document: dict[str, Any], url: str | None, now: datetime | None, width: int) -> list[str]:
    """Which foreman, since when; how many targets are up, requests waiting and running."""
    about = _mapping(document.get("foreman"))
    queue = _mapping(document.get("queue"))
    targets = _records(document.get("targets"))
    up = sum(1 for t in targets if t.get("reachable") is True)
    head = f"foreman {_text(about.get('version'))}"
    if url:
        head += f" at {_text(url)}"
    started = _time(about.get("started"))
    if now is not None and started is not None:
        head += f", up {duration((now - started).total_seconds())}"
    counts = [
        f"{up} of {len(targets)} target{'s' if len(targets) != 1 else ''} up",
        f"{_count(queue.get('waiting'))} waiting",
        f"{_count(queue.get('in_flight'))} running",
    ]
    if queue.get("paused") is True:
        counts.append("paused")
    line = f"{head}: {', '.join(counts)}"
    # Too wide for one line: the counts matter more than a cut address.
    return [line] if width <= 0 or len(line) <= width else [head, ", ".join(counts)]


def _targets(targets: list[dict[str, Any]], now: datetime | None) -> _Table | str:
    if not targets:
        return "no targets"
    rows = []
    for target in targets:
        reachable = target.get("reachable")
        state = "up" if reachable is True else "away" if reachable is False else NOTHING
        if reachable is False:
            notes = _away(target, now)
        else:
            resident = target.get("resident")
            if resident is None:
                notes = ["not known (model affinity is off)"]
            else:
                notes = [_resident(r, now) for r in _records(resident)] or ["nothing"]
        rows.append([
            _text(target.get("name")),
            state,
            _text(target.get("url")),
            f"{_count(target.get('in_flight'))}/{_count(target.get('concurrency'))}",
            _count(target.get("models")),
            notes[0],
        ])
        # One model (or remark) a line under its target, as `ollama ps` lists models.
        rows += [["", "", "", "", "", note] for note in notes[1:]]
    headers = ("NAME", "STATE", "URL", "RUNNING", "MODELS", "IN MEMORY")
    return _Table("TARGETS", headers, rows, narrowable=(0, 2, 5))


def _away(target: dict[str, Any], now: datetime | None) -> list[str]:
    """Why a target is away, when it was last asked, and whether foreman is waking it."""
    error = target.get("last_error")
    said = [_text(error) if error is not None else "unreachable"]
    polled = _time(target.get("last_poll"))
    if polled is not None and now is not None:
        said.append(f"last poll {ago((now - polled).total_seconds())}")
    wake = _mapping(target.get("wake"))
    if wake.get("waking") is True:
        sent = wake.get("packets_sent")
        said.append(f"waking: {_count(sent)} wake packet{'' if sent == 1 else 's'} sent")
    return said


def _resident(model: dict[str, Any], now: datetime | None) -> str:
    """One model in memory: its name, its size, how much of it is on the GPU, until when."""
    shown = _text(model.get("name"))
    total, vram = _number(model.get("size")), _number(model.get("size_vram"))
    if total is not None:
        shown += f" {size(total)}"
        if vram is not None and total > 0 and vram < total:
            shown += f" ({round(100 * vram / total)}% GPU)"
    expires = _time(model.get("expires_at"))
    if expires is not None:
        shown += f" {_until(expires, now)}"
    return shown


def _until(expires: datetime, now: datetime | None) -> str:
    if now is not None and expires - now > timedelta(days=365):
        return "kept loaded"  # Ollama's keep_alive -1 expires centuries from now
    try:
        local = expires.astimezone()
    except (OverflowError, OSError):
        return NOTHING
    if now is None or abs(expires - now) > timedelta(hours=23):
        return f"until {local:%Y-%m-%d %H:%M}"
    return f"until {local:%H:%M:%S}"


def _clients(clients: list[dict[str, Any]]) -> _Table | str:
    if not clients:
        return "no clients in the last hour"
    rows = [
        [
            _text(client.get("name")),
            _weight(client.get("weight")),
            _count(client.get("waiting")),
            _count(client.get("in_flight")),
            _count(client.get("requests")),
            duration(_number(client.get("service_seconds"))),
        ]
        for client in clients
    ]
    headers = ("NAME", "WEIGHT", "WAITING", "RUNNING", "REQUESTS (1H)", "TARGET TIME (1H)")
    return _Table("CLIENTS", headers, rows, narrowable=(0,))


def _running(running: list[dict[str, Any]]) -> _Table | str:
    if not running:
        return "nothing running"
    rows = [
        [
            _text(request.get("client")),
            _text(request.get("model")),
            _text(request.get("target")),
            _route(request),
            duration(_number(request.get("elapsed"))),
            duration(_number(request.get("queue_wait"))),
            size(_number(request.get("bytes"))),
            _count(request.get("tokens")),
        ]
        for request in running
    ]
    headers = ("CLIENT", "MODEL", "TARGET", "ROUTE", "FOR", "WAITED", "BYTES", "TOKENS")
    return _Table("RUNNING", headers, rows, narrowable=(0, 1, 2, 3))


def _recent(finished: list[dict[str, Any]], now: datetime | None) -> _Table | str:
    if not finished:
        return "no recent requests"
    rows = []
    for request in finished:
        ended = _time(request.get("time"))
        rate = _number(request.get("tokens_per_second"))
        rows.append([
            ago((now - ended).total_seconds()) if ended is not None and now is not None else NOTHING,
            _text(request.get("client")),
            _text(request.get("model")),
            _text(request.get("target")),
            _route(request),
            _count(request.get("status")),
            duration(_number(request.get("queue_wait"))),
            duration(_number(request.get("duration"))),
            _count(request.get("tokens")),
            f"{rate:.1f}" if rate is not None else NOTHING,
        ])
    headers = ("ENDED", "CLIENT", "MODEL", "TARGET", "ROUTE", "STATUS", "WAITED", "TOOK", "TOKENS", "TOK/S")
    return _Table("RECENT (newest first)", headers, rows, narrowable=(1, 2, 3, 4))


def _route(request: dict[str, Any]) -> str:
    route = _text(request.get("route"))
    method = request.get("method")
    # Nearly every request that reaches a model is a POST; say so only when not.
    if isinstance(method, str) and method != "POST":
        return f"{_text(method)} {route}"
    return route


# --- units ----------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """Seconds for a person: "15 ms", "0.4 s", "12 s", "3m04s", "2h05m", "3d04h"; "-" for None."""
    if seconds is None:
        return NOTHING
    seconds = max(seconds, 0.0)
    if seconds == 0:
        return "0 s"
    if seconds < 0.1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def ago(seconds: float) -> str:
    """How long ago, in whole seconds below a minute: "just now", "12 s ago", "3m04s ago"."""
    if seconds < 1:
        return "just now"
    return f"{int(seconds)} s ago" if seconds < 60 else f"{duration(seconds)} ago"


def size(count: float | None) -> str:
    """A byte count in decimal units as Ollama shows them: "340 B", "1.2 kB", "2.0 GB"."""
    if count is None:
        return NOTHING
    if count < 1000:
        return f"{int(count)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        count /= 1000
        if count < 999.95:
            break
    return f"{count:.1f} {unit}"


def _weight(value: object) -> str:
    number = _number(value)
    return NOTHING if number is None else f"{number:g}"


# --- reading the document defensively -----------------------------------------
#
# A foreman of another version may leave a field out or give it another
# type; the text then shows "-" there instead of the command failing.


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _records(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer past a float's range
        return None
    return number if number == number and abs(number) != float("inf") else None


def _count(value: object) -> str:
    number = _number(value)
    return NOTHING if number is None else str(int(number))


def _text(value: object, limit: int = _CELL) -> str:
    """A string from the document, escaped and cut to `limit` characters; "-" if absent."""
    if value is None:
        return NOTHING
    text = value if isinstance(value, str) else json.dumps(value)
    return _cut(escaped(text[: limit * 2]), limit)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"
