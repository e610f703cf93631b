"""foreman's settings, each declared once, as a field of the frozen Config."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from foreman.clients import Client
from foreman.config import readers, targets_file, tokens_files
from foreman.config.declare import (
    Setting,
    add_setting_arguments,
    declared_settings,
    filled_by,
    hidden,
    hidden_each,
    load_settings,
    redacted_repr,
    setting,
    settings_of,
)
from foreman.config.readers import DEFAULT_OLLAMA_URL, ConfigError
from foreman.config.targets_file import TargetEntry, TargetSpec
from foreman.config.tokens_files import TokenFields
from foreman.config.values import strip_userinfo

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]

_LOG_FORMATS: dict[str, LogFormat] = {"text": "text", "json": "json"}
_LOG_LEVELS: dict[str, LogLevel] = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
}


def _without_credentials(url: str) -> str:
    return repr(strip_userinfo(url))


@dataclass(frozen=True, repr=False)
@declared_settings
class Config:
    """Everything foreman needs to know to start; built by ``load()``.

    Each field declares its setting: the FOREMAN_* variable and flag named
    after it, how its text is read, its default, its --help line and whether
    it is a secret. The defaults equal what ``load({})`` returns, so tests
    can build a Config directly and override only what they care about.
    Fields are read, and their errors reported, in this order.
    """

    # scheme://[user:pass@]host[:port][/prefix], never a trailing "/"
    ollama_url: str = setting(
        default=DEFAULT_OLLAMA_URL,
        read=targets_file.target_urls,
        metavar="URL[,URL...]",
        redact=_without_credentials,
        help="Base URL of the Ollama server foreman stands in front of "
        "(http or https, optional path prefix); several, comma-separated, for "
        "several machines, each named by its host:port.",
    )
    ollama_token: str | None = setting(
        default=None,
        read=readers.bearer_token,
        metavar="TOKEN",
        redact=hidden,
        help="Bearer token foreman attaches to every request it sends to the Ollama server.",
    )
    poll_interval: float = setting(
        default="30s",
        read=readers.duration(allow_zero=False),
        metavar="DURATION",
        help="How often the model inventory is polled, as a Go-style duration "
        "(500ms, 30s, 1m30s) or bare seconds (30, 0.5).",
    )
    # "" means all interfaces; IPv6 without brackets ("::1")
    listen_host: str = setting(
        name="listen",
        fills=("listen_host", "listen_port"),
        default=":8080",
        read=readers.listen_address,
        metavar="HOST:PORT",
        help="Address to listen on as host:port; :8080 means all interfaces, "
        "[::1]:8080 an IPv6 address.",
    )
    listen_port: int = filled_by("listen")
    tokens: tuple[str, ...] = setting(
        default=None,
        read=readers.token_list,
        metavar="TOKEN,...",
        redact=hidden_each,
        help="Comma-separated bearer tokens accepted from clients; with no tokens "
        "configured, clients need no token.",
    )
    # The path, kept to re-read on SIGHUP; its tokens join `tokens`, the
    # fields its lines give them join `token_fields`.
    tokens_file: str | None = setting(
        fills=("tokens_file", "tokens", "token_fields"),
        default=None,
        read=tokens_files.read,
        metavar="PATH",
        help="File with one accepted client token per line (# comments allowed), "
        "combined with FOREMAN_TOKENS. A token may be followed by name=NAME (what "
        "logs show instead of a hash of the token; up to 64 letters, digits, '-', "
        "'_', '.') and weight=NUMBER (the client's share against others, more than "
        "0 and at most 1000; default 1), e.g. 's3cr3t-token name=alice weight=2'.",
    )
    log_format: LogFormat = setting(
        default="text",
        read=readers.choice(_LOG_FORMATS, "a log format"),
        metavar="{text,json}",
        help="Log format on stderr: text, or json for one JSON object a line.",
    )
    log_level: LogLevel = setting(
        default="info",
        read=readers.choice(_LOG_LEVELS, "a log level"),
        metavar="LEVEL",
        help="Lowest level logged: debug, info, warning or error.",
    )
    shutdown_grace: float = setting(
        default="30s",
        read=readers.duration(allow_zero=True),
        metavar="DURATION",
        help="How long in-flight responses may run after SIGTERM or SIGINT "
        "before foreman exits.",
    )
    concurrency: int = setting(
        default="1",
        read=readers.count(minimum=1),
        metavar="N",
        help="How many generation requests may be at the Ollama server at once; "
        "the rest wait in foreman's queue.",
    )
    max_queue: int = setting(
        default="128",
        read=readers.count(minimum=0),
        metavar="N",
        help="How many generation requests may wait for their turn; one more is "
        "refused at once with 503 and Retry-After.",
    )
    max_queue_per_client: int = setting(
        default="32",
        read=readers.count(minimum=1),
        metavar="N",
        help="How many generation requests one client (a token, or an address "
        "without tokens) may have waiting; one more is refused with 429 and "
        "Retry-After, while other clients are still admitted.",
    )
    queue_timeout: float = setting(
        default="10m",
        read=readers.duration(allow_zero=False),
        metavar="DURATION",
        help="Longest a request may wait for its turn, including while the Ollama "
        "server is unreachable.",
    )
    model_affinity: float = setting(
        default="30s",
        read=readers.duration(allow_zero=True),
        metavar="DURATION",
        help="How long a request whose model the Ollama server would have to load "
        "may be passed over for requests whose model it holds in memory (fewer "
        "model loads); 0 turns this off.",
    )
    admin_tokens: tuple[str, ...] = setting(
        default=None,
        read=readers.token_list,
        metavar="TOKEN,...",
        redact=hidden_each,
        help="Comma-separated bearer tokens that may also manage models (pull, push, "
        "create, copy, delete, blobs); with none, model management is refused.",
    )
    admin_tokens_file: str | None = setting(
        fills=("admin_tokens_file", "admin_tokens", "token_fields"),
        default=None,
        read=tokens_files.read,
        metavar="PATH",
        help="File with one admin token per line (# comments allowed), combined with "
        "FOREMAN_ADMIN_TOKENS; re-read, like FOREMAN_TOKENS_FILE, on SIGHUP. Its lines "
        "take name= and weight= like FOREMAN_TOKENS_FILE's; a token in both files "
        "has one name and one weight (fields given in both must agree).",
    )
    # What the tokens files say about their tokens (name=, weight=); the
    # tokens themselves are left out of its repr.
    token_fields: tuple[TokenFields, ...] = filled_by("tokens_file", "admin_tokens_file")
    metrics_public: bool = setting(
        default="0",
        read=readers.yes_no,
        metavar="{0,1}",
        help="1 serves /metrics without a token (for a Prometheus on a trusted "
        "network); 0 protects it like the API.",
    )
    max_body: int = setting(
        default="64MiB",
        read=readers.size,
        metavar="SIZE",
        help="Largest request body accepted (images in chat bodies are base64); "
        "larger gets 413. Sizes like 512KB, 64MiB, 1GB or bare bytes.",
    )
    client_timeout: float = setting(
        default="60s",
        read=readers.duration(allow_zero=False),
        metavar="DURATION",
        help="Longest foreman waits on a client: for its request head or body to "
        "arrive, between requests on a kept-alive connection, and for it to "
        "take a piece of an answer; then the connection is closed.",
    )
    target_idle_timeout: float = setting(
        default="10m",
        read=readers.duration(allow_zero=False),
        metavar="DURATION",
        help="Longest silence accepted from the Ollama server before and during an "
        "answer (a model load can take minutes); then 504, or an error line "
        "in a stream that has begun.",
    )
    max_body_memory: int = setting(
        default="512MiB",
        read=readers.size,
        metavar="SIZE",
        help="Most memory spent at once on request bodies and on JSON answers held "
        "until complete, across all clients; a request that would need more gets "
        "503 with Retry-After. Sizes like FOREMAN_MAX_BODY.",
    )
    # "a4:83:e7:12:34:56" (lower case, ':'), or None: waking is off
    wake_mac: str | None = setting(
        default=None,
        read=readers.ethernet_address,
        metavar="MAC",
        help="The Ollama machine's Ethernet address (e.g. a4:83:e7:12:34:56); set, "
        "foreman sends Wake-on-LAN magic packets while requests wait for an "
        "unreachable target (a sleeping Mac), and 'foreman wake' sends one.",
    )
    wake_address: tuple[str, int] = setting(
        default="255.255.255.255:9",
        read=readers.wake_address,
        metavar="IP:PORT",
        help="Where wake packets go (UDP): the broadcast address, or a subnet's "
        "(e.g. 192.168.1.255:9), which some networks need.",
    )

    # The path; its [[target]] tables go to `target_entries`.
    targets_file: str | None = setting(
        fills=("targets_file", "target_entries"),
        default=None,
        read=targets_file.read,
        metavar="PATH",
        help="TOML file with one [[target]] table per Ollama machine (keys name, url, "
        "token, concurrency, wake_mac, wake_address; FOREMAN_CONCURRENCY, "
        "FOREMAN_OLLAMA_TOKEN and the wake settings fill the keys left out); "
        "instead of FOREMAN_OLLAMA_URL.",
    )
    target_entries: tuple[TargetEntry, ...] = filled_by("targets_file")

    def __post_init__(self) -> None:
        # Each file is consistent on its own; a token or a name in both must
        # be too, and only here are both files known.
        tokens_files.token_clients(self.token_fields)

    @property
    def token_clients(self) -> dict[str, Client]:
        """The client each token given fields in a tokens file stands for.

        Tokens without fields are named by a short hash of the token, weight 1.
        """
        return tokens_files.token_clients(self.token_fields)

    @property
    def target_display(self) -> str:
        """The target URLs without any user:password@, safe for /healthz and logs."""
        return ", ".join(spec.display_url for spec in self.target_specs)

    @property
    def target_specs(self) -> tuple[TargetSpec, ...]:
        """Every target, each key the file left out filled from the FOREMAN_* settings."""
        if self.target_entries:
            return tuple(
                targets_file.TargetSpec(
                    entry.name,
                    entry.url,
                    entry.token if entry.token is not None else self.ollama_token,
                    entry.concurrency if entry.concurrency is not None else self.concurrency,
                    entry.wake_mac if entry.wake_mac is not None else self.wake_mac,
                    entry.wake_address if entry.wake_address is not None else self.wake_address,
                )
                for entry in self.target_entries
            )
        urls = targets_file.split_urls(self.ollama_url)
        return tuple(
            targets_file.TargetSpec(
                targets_file.host_port(url), url, self.ollama_token, self.concurrency,
                self.wake_mac, self.wake_address,
            )
            for url in urls
        )

    @property
    def auth_enabled(self) -> bool:
        """Whether clients must present one of ``tokens``."""
        return bool(self.tokens)

    def __repr__(self) -> str:
        # The generated repr would print bearer tokens and URL credentials the
        # moment someone logs a Config.
        return redacted_repr(self)


SETTINGS: tuple[Setting, ...] = settings_of(Config)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per setting, so ``foreman --help`` documents every variable."""
    add_setting_arguments(parser, SETTINGS)


def load(environ: Mapping[str, str], args: argparse.Namespace | None = None) -> Config:
    """Build the Config from flags, then environment, then defaults.

    Each setting takes the flag's value if given (not None), else the variable
    if set and non-empty, else the default. Raises ConfigError on the first
    bad value, in SETTINGS order.
    """
    config = load_settings(Config, environ, args)
    url_given = environ.get("FOREMAN_OLLAMA_URL") or getattr(args, "ollama_url", None)
    if config.targets_file is not None and url_given:
        raise ConfigError(
            f"FOREMAN_TARGETS_FILE={config.targets_file!r} and FOREMAN_OLLAMA_URL are both set; "
            "list every target in the file and unset FOREMAN_OLLAMA_URL"
        )
    return config
