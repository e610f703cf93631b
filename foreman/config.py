"""foreman's settings: read once from the environment (and flags) into a frozen Config.

This is the only module that looks at environment variables, and even it only
sees the mapping it is handed, so tests never have to patch ``os.environ``.
Every setting has a ``FOREMAN_*`` variable and a flag of the same name; a flag
overrides its variable. A bad value raises ``ConfigError`` whose message is a
single line naming the variable, the bad value and what is accepted, which the
command line prints before exiting with status 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, TypeVar
from urllib.parse import urlsplit

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"


class ConfigError(Exception):
    """One-line message naming the variable, the bad value and what is accepted."""


@dataclass(frozen=True, repr=False)
class Config:
    """Everything foreman needs to know to start; built by ``load()``.

    The defaults equal what ``load({})`` returns, so tests can build a Config
    directly and override only what they care about.
    """

    # scheme://[user:pass@]host[:port][/prefix], never a trailing "/"
    ollama_url: str = DEFAULT_OLLAMA_URL
    ollama_token: str | None = None
    poll_interval: float = 30.0
    # "" means all interfaces; IPv6 without brackets ("::1")
    listen_host: str = ""
    listen_port: int = 8080
    tokens: tuple[str, ...] = ()
    tokens_file: str | None = None
    log_format: LogFormat = "text"
    log_level: LogLevel = "info"
    shutdown_grace: float = 30.0
    concurrency: int = 1
    max_queue: int = 128
    queue_timeout: float = 600.0
    admin_tokens: tuple[str, ...] = ()
    admin_tokens_file: str | None = None
    metrics_public: bool = False
    max_body: int = 64 << 20
    client_timeout: float = 60.0
    target_idle_timeout: float = 600.0

    @property
    def target_display(self) -> str:
        """The target URL without any user:password@, safe for /healthz and logs."""
        return _strip_userinfo(self.ollama_url)

    @property
    def auth_enabled(self) -> bool:
        """Whether clients must present one of ``tokens``."""
        return bool(self.tokens)

    def __repr__(self) -> str:
        # The generated repr would print bearer tokens and URL credentials the
        # moment someone logs a Config; show only what is safe.
        return (
            f"Config(ollama_url={self.target_display!r}, "
            f"ollama_token={'<hidden>' if self.ollama_token else None}, "
            f"poll_interval={self.poll_interval!r}, "
            f"listen_host={self.listen_host!r}, listen_port={self.listen_port!r}, "
            f"tokens=<{len(self.tokens)} hidden>, tokens_file={self.tokens_file!r}, "
            f"log_format={self.log_format!r}, log_level={self.log_level!r}, "
            f"shutdown_grace={self.shutdown_grace!r}, concurrency={self.concurrency!r}, "
            f"max_queue={self.max_queue!r}, queue_timeout={self.queue_timeout!r}, "
            f"admin_tokens=<{len(self.admin_tokens)} hidden>, "
            f"admin_tokens_file={self.admin_tokens_file!r}, metrics_public={self.metrics_public!r}, "
            f"max_body={self.max_body!r}, client_timeout={self.client_timeout!r}, "
            f"target_idle_timeout={self.target_idle_timeout!r})"
        )


@dataclass(frozen=True)
class Setting:
    """One configurable value: its variable, its flag and how --help shows it.

    ``field`` is the Config field and the argparse ``dest``; the one exception
    is ``listen``, which fills both ``listen_host`` and ``listen_port``.
    """

    field: str
    env: str
    flag: str
    default: str | None  # as text, as shown in --help; None = unset
    help: str
    metavar: str = "VALUE"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "ollama_url",
        "FOREMAN_OLLAMA_URL",
        "--ollama-url",
        DEFAULT_OLLAMA_URL,
        "Base URL of the Ollama server foreman stands in front of "
        "(http or https, optional path prefix).",
        "URL",
    ),
    Setting(
        "ollama_token",
        "FOREMAN_OLLAMA_TOKEN",
        "--ollama-token",
        None,
        "Bearer token foreman attaches to every request it sends to the Ollama server.",
        "TOKEN",
    ),
    Setting(
        "poll_interval",
        "FOREMAN_POLL_INTERVAL",
        "--poll-interval",
        "30s",
        "How often the model inventory is polled, as a Go-style duration "
        "(500ms, 30s, 1m30s) or bare seconds (30, 0.5).",
        "DURATION",
    ),
    Setting(
        "listen",
        "FOREMAN_LISTEN",
        "--listen",
        ":8080",
        "Address to listen on as host:port; :8080 means all interfaces, "
        "[::1]:8080 an IPv6 address.",
        "HOST:PORT",
    ),
    Setting(
        "tokens",
        "FOREMAN_TOKENS",
        "--tokens",
        None,
        "Comma-separated bearer tokens accepted from clients; with no tokens "
        "configured, clients need no token.",
        "TOKEN,...",
    ),
    Setting(
        "tokens_file",
        "FOREMAN_TOKENS_FILE",
        "--tokens-file",
        None,
        "File with one accepted client token per line (# comments allowed), "
        "combined with FOREMAN_TOKENS.",
        "PATH",
    ),
    Setting(
        "log_format",
        "FOREMAN_LOG_FORMAT",
        "--log-format",
        "text",
        "Log format on stderr: text, or json for one JSON object a line.",
        "{text,json}",
    ),
    Setting(
        "log_level",
        "FOREMAN_LOG_LEVEL",
        "--log-level",
        "info",
        "Lowest level logged: debug, info, warning or error.",
        "LEVEL",
    ),
    Setting(
        "shutdown_grace",
        "FOREMAN_SHUTDOWN_GRACE",
        "--shutdown-grace",
        "30s",
        "How long in-flight responses may run after SIGTERM or SIGINT "
        "before foreman exits.",
        "DURATION",
    ),
    Setting(
        "concurrency",
        "FOREMAN_CONCURRENCY",
        "--concurrency",
        "1",
        "How many generation requests may be at the Ollama server at once; "
        "the rest wait in foreman's queue.",
        "N",
    ),
    Setting(
        "max_queue",
        "FOREMAN_MAX_QUEUE",
        "--max-queue",
        "128",
        "How many generation requests may wait for their turn; one more is "
        "refused at once with 503 and Retry-After.",
        "N",
    ),
    Setting(
        "queue_timeout",
        "FOREMAN_QUEUE_TIMEOUT",
        "--queue-timeout",
        "10m",
        "Longest a request may wait for its turn, including while the Ollama "
        "server is unreachable.",
        "DURATION",
    ),
    Setting(
        "admin_tokens",
        "FOREMAN_ADMIN_TOKENS",
        "--admin-tokens",
        None,
        "Comma-separated bearer tokens that may also manage models (pull, push, "
        "create, copy, delete, blobs); with none, model management is refused.",
        "TOKEN,...",
    ),
    Setting(
        "admin_tokens_file",
        "FOREMAN_ADMIN_TOKENS_FILE",
        "--admin-tokens-file",
        None,
        "File with one admin token per line (# comments allowed), combined with "
        "FOREMAN_ADMIN_TOKENS; re-read, like FOREMAN_TOKENS_FILE, on SIGHUP.",
        "PATH",
    ),
    Setting(
        "metrics_public",
        "FOREMAN_METRICS_PUBLIC",
        "--metrics-public",
        "0",
        "1 serves /metrics without a token (for a Prometheus on a trusted "
        "network); 0 protects it like the API.",
        "{0,1}",
    ),
    Setting(
        "max_body",
        "FOREMAN_MAX_BODY",
        "--max-body",
        "64MiB",
        "Largest request body accepted (images in chat bodies are base64); "
        "larger gets 413. Sizes like 512KB, 64MiB, 1GB or bare bytes.",
        "SIZE",
    ),
    Setting(
        "client_timeout",
        "FOREMAN_CLIENT_TIMEOUT",
        "--client-timeout",
        "60s",
        "Longest foreman waits on a client: for its request head or body to "
        "arrive, between requests on a kept-alive connection, and for it to "
        "take a piece of an answer; then the connection is closed.",
        "DURATION",
    ),
    Setting(
        "target_idle_timeout",
        "FOREMAN_TARGET_IDLE_TIMEOUT",
        "--target-idle-timeout",
        "10m",
        "Longest silence accepted from the Ollama server before and during an "
        "answer (a model load can take minutes); then 504, or an error line "
        "in a stream that has begun.",
        "DURATION",
    ),
)

_BY_FIELD: dict[str, Setting] = {s.field: s for s in SETTINGS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per Setting, so ``foreman --help`` documents every variable.

    Options default to None so ``load()`` can tell "not given" from any value;
    no ``choices=`` either, so every bad value gets the same one-line error.
    """
    for s in SETTINGS:
        where = f"default {s.default}" if s.default is not None else "unset by default"
        text = f"{s.help} (env {s.env}, {where})"
        # argparse %-formats help strings.
        parser.add_argument(
            s.flag,
            dest=s.field,
            default=None,
            metavar=s.metavar,
            help=text.replace("%", "%%"),
        )


def load(environ: Mapping[str, str], args: argparse.Namespace | None = None) -> Config:
    """Build the Config from flags, then environment, then defaults.

    Each setting takes the flag's value if given (not None), else the variable
    if set and non-empty, else the default. Raises ConfigError on the first
    bad value, in SETTINGS order.
    """

    def pick(field: str) -> tuple[str | None, str]:
        s = _BY_FIELD[field]
        flag_value = getattr(args, field, None) if args is not None else None
        if flag_value is not None:
            return str(flag_value), f"{s.flag} ({s.env})"
        env_value = environ.get(s.env)
        if env_value:
            return env_value, s.env
        return s.default, s.env

    ollama_url = _parse_url(*_required(pick("ollama_url")))
    ollama_token = _parse_ollama_token(*pick("ollama_token"))
    poll_interval = _parse_duration_setting(*_required(pick("poll_interval")), allow_zero=False)
    listen_host, listen_port = _parse_listen_setting(*_required(pick("listen")))
    inline_tokens = _parse_tokens(*pick("tokens"))
    tokens_file, file_tokens = _read_tokens_file(*pick("tokens_file"))
    log_format = _parse_choice(*_required(pick("log_format")), _LOG_FORMATS, "a log format")
    log_level = _parse_choice(*_required(pick("log_level")), _LOG_LEVELS, "a log level")
    shutdown_grace = _parse_duration_setting(
        *_required(pick("shutdown_grace")), allow_zero=True
    )
    concurrency = _parse_count(*_required(pick("concurrency")), minimum=1)
    max_queue = _parse_count(*_required(pick("max_queue")), minimum=0)
    queue_timeout = _parse_duration_setting(*_required(pick("queue_timeout")), allow_zero=False)
    admin_tokens = _parse_tokens(*pick("admin_tokens"))
    admin_tokens_file, admin_file_tokens = _read_tokens_file(*pick("admin_tokens_file"))
    metrics_public = _parse_flag(*_required(pick("metrics_public")))
    max_body = _parse_size_setting(*_required(pick("max_body")))
    client_timeout = _parse_duration_setting(*_required(pick("client_timeout")), allow_zero=False)
    target_idle_timeout = _parse_duration_setting(
        *_required(pick("target_idle_timeout")), allow_zero=False
    )
    return Config(
        ollama_url=ollama_url,
        ollama_token=ollama_token,
        poll_interval=poll_interval,
        listen_host=listen_host,
        listen_port=listen_port,
        # dict.fromkeys keeps the first occurrence of each token, in order.
        tokens=tuple(dict.fromkeys(inline_tokens + file_tokens)),
        tokens_file=tokens_file,
        log_format=log_format,
        log_level=log_level,
        shutdown_grace=shutdown_grace,
        concurrency=concurrency,
        max_queue=max_queue,
        queue_timeout=queue_timeout,
        admin_tokens=tuple(dict.fromkeys(admin_tokens + admin_file_tokens)),
        admin_tokens_file=admin_tokens_file,
        metrics_public=metrics_public,
        max_body=max_body,
        client_timeout=client_timeout,
        target_idle_timeout=target_idle_timeout,
    )


# --- sizes ------------------------------------------------------------------

_MAX_SIZE = 1 << 62
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}


def parse_size(text: str) -> int:
    """Bytes in "512KB", "64MiB", "1GB", "1.5GiB" or bare "1048576"; raises ValueError."""
    match = _SIZE.fullmatch(text.strip())
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r}")
    # Exact arithmetic: a float would round large byte counts (and overflow).
    size = Fraction(match.group(1)) * _SIZE_UNITS[unit]
    if size > _MAX_SIZE:
        raise ValueError(f"size too large: {text!r}")
    return int(size)


def _parse_size_setting(text: str, label: str) -> int:
    try:
        size = parse_size(text)
    except ValueError:
        size = 0
    if size <= 0:
        raise ConfigError(
            f"{label}={text!r} is not a size; use e.g. 512KB, 64MiB, 1GB or bare bytes (more than 0)"
        )
    return size


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse_flag(text: str, label: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE | _FALSE:
        return value in _TRUE
    raise ConfigError(f"{label}={text!r} is not a yes/no value; use 1 or 0 (also true/false, yes/no, on/off)")


# --- counts -----------------------------------------------------------------

_MAX_COUNT = 1_000_000


def _parse_count(text: str, label: str, *, minimum: int) -> int:
    stripped = text.strip()
    if not stripped.isdecimal() or not minimum <= int(stripped) <= _MAX_COUNT:
        raise ConfigError(
            f"{label}={text!r} is not a valid count; use a whole number from "
            f"{minimum} to {_MAX_COUNT}"
        )
    return int(stripped)


# --- durations --------------------------------------------------------------

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_BARE_SECONDS = re.compile(_NUMBER)
# Longer units first so "ms" is not read as "m" followed by garbage. Go accepts
# both MICRO SIGN and GREEK SMALL LETTER MU for microseconds.
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNIT_SECONDS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration ("500ms", "1m30s", "1.5h") or bare seconds ("30").

    Raises ValueError for anything else, including empty, negative, "inf" and
    "nan" (none of which the grammar can spell) and values too large for a float.
    """
    text = text.strip()
    if _BARE_SECONDS.fullmatch(text):
        total = float(text)
    else:
        if not text:
            raise ValueError("empty duration")
        total = 0.0
        pos = 0
        while pos < len(text):
            part = _DURATION_PART.match(text, pos)
            if part is None:
                raise ValueError(f"not a duration: {text!r}")
            total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
            pos = part.end()
    if not math.isfinite(total):
        raise ValueError(f"duration too large: {text!r}")
    return total


def _parse_duration_setting(text: str, label: str, *, allow_zero: bool) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise ConfigError(
            f"{label}={text!r} is not a duration; "
            "use e.g. 500ms, 30s, 1m30s or bare seconds like 30"
        ) from None
    if seconds == 0 and not allow_zero:
        raise ConfigError(
            f"{label}={text!r} is zero; use a duration greater than zero, e.g. 500ms or 30s"
        )
    return seconds


# --- listen address ---------------------------------------------------------

_PORT = re.compile(r"[0-9]+")
# Host names and IPv4 literals; anything fancier belongs in brackets or DNS.
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")


def parse_listen(text: str) -> tuple[str, int]:
    """Split "host:port", ":port" or "[v6addr]:port" into (host, port).

    The host comes back without brackets and "" for all interfaces. Port 0 is
    allowed (the OS picks a free one). Raises ValueError for anything else.
    """
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"no ':' before the port in {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            # Strip a zone ("fe80::1%eth0") before checking: it is passed through.
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif host and not _HOSTNAME.fullmatch(host):
        # Catches unbracketed IPv6 ("::1:8080"), where the port is ambiguous.
        raise ValueError(f"{host!r} is not a host name or address")
    if not _PORT.fullmatch(port_text):
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    return host, port


def _parse_listen_setting(text: str, label: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ValueError:
        raise ConfigError(
            f"{label}={text!r} is not a valid listen address; "
            "use host:port or :port with a port from 0 to 65535"
        ) from None


# --- the target URL ---------------------------------------------------------


def _strip_userinfo(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"


def _hide_userinfo(text: str) -> str:
    # For text that failed to parse: a password may itself hold "/", ":" or
    # even "://", so keep a scheme prefix and drop everything up to the last
    # "@" rather than trust the URL's structure.
    if "@" not in text:
        return text
    scheme = _SCHEME_PREFIX.match(text)
    prefix = scheme.group(0) if scheme else ""
    return prefix + text[len(prefix) :].rpartition("@")[2]


_SCHEME_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/*")


def _normalise_url(text: str) -> str:
    """The target URL without trailing "/", or ValueError saying what is wrong."""
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("it contains whitespace or control characters")
    if "?" in text or "#" in text:
        # API paths are appended to the URL; a query or fragment would swallow them.
        raise ValueError("query strings and fragments are not allowed")
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ValueError("the [IPv6] host is malformed") from None
    try:
        port = parts.port
    except ValueError:
        port = 0  # not a number or out of range: same advice as port 0
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("the scheme must be http or https")
    if not parts.hostname:
        raise ValueError("there is no host")
    if parts.netloc.endswith(":") or port == 0:
        raise ValueError("the port must be from 1 to 65535")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _parse_url(text: str, label: str) -> str:
    text = text.strip()
    try:
        return _normalise_url(text)
    except ValueError as e:
        # Show the URL without its password, as /healthz does.
        raise ConfigError(
            f"{label}={_hide_userinfo(text)!r} is not a usable Ollama URL ({e}); "
            "use http:// or https:// with a host and optional port and path, "
            f"e.g. {DEFAULT_OLLAMA_URL}"
        ) from None


# --- tokens -----------------------------------------------------------------


def _is_token(text: str) -> bool:
    # A bearer token travels in an HTTP header: printable ASCII, no spaces.
    return bool(text) and all("!" <= c <= "~" for c in text)


def _parse_ollama_token(text: str | None, label: str) -> str | None:
    if text is None or not text.strip():
        return None
    token = text.strip()
    if not _is_token(token):
        raise ConfigError(
            f"{label} (value hidden) contains whitespace or a character that is not "
            "printable ASCII; give the bearer token alone, without 'Bearer '"
        )
    return token


def _parse_tokens(text: str | None, label: str) -> list[str]:
    if text is None or not text.strip():
        return []
    tokens = [t.strip() for t in text.split(",")]
    tokens = [t for t in tokens if t]
    for position, token in enumerate(tokens, start=1):
        if not _is_token(token):
            raise ConfigError(
                f"{label} (value hidden): token {position} contains whitespace or a "
                "character that is not printable ASCII; separate tokens with commas"
            )
    if not tokens:
        # Set to something like "," - the operator wanted auth, so fail closed.
        raise ConfigError(
            f"{label} (value hidden) holds no tokens; list tokens separated by commas, "
            "or leave it unset to accept clients without a token"
        )
    return tokens


def _read_tokens_file(path: str | None, label: str) -> tuple[str | None, list[str]]:
    if path is None or not path.strip():
        return None, []
    path = path.strip()
    try:
        # utf-8-sig: files saved by Windows editors may start with a BOM.
        with open(os.path.expanduser(path), encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(
            f"{label}={path!r} cannot be read ({e.strerror or e}); "
            "give a readable file with one token per line"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{label}={path!r} is not UTF-8 text; give a text file with one token per line"
        ) from None
    tokens: list[str] = []
    for number, line in enumerate(lines, start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not _is_token(token):
            raise ConfigError(
                f"{label}={path!r} line {number} (value hidden) contains whitespace or a "
                "character that is not printable ASCII; put one token per line"
            )
        tokens.append(token)
    if not tokens:
        # An empty file would silently turn inbound auth off; fail closed.
        raise ConfigError(
            f"{label}={path!r} holds no tokens; put one token per line "
            "(# starts a comment), or leave it unset"
        )
    return path, tokens


# --- choices ----------------------------------------------------------------

_T = TypeVar("_T")

_LOG_FORMATS: dict[str, LogFormat] = {"text": "text", "json": "json"}
_LOG_LEVELS: dict[str, LogLevel] = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
}


def _parse_choice(text: str, label: str, choices: Mapping[str, _T], what: str) -> _T:
    value = choices.get(text.strip().lower())
    if value is None:
        names = list(choices)
        accepted = ", ".join(names[:-1]) + " or " + names[-1]
        raise ConfigError(f"{label}={text!r} is not {what}; use {accepted}")
    return value


def _required(picked: tuple[str | None, str]) -> tuple[str, str]:
    # Settings with a default always resolve to text; this tells the type checker.
    text, label = picked
    assert text is not None, label
    return text, label
