"""Several targets: FOREMAN_OLLAMA_URL's comma-separated list, or FOREMAN_TARGETS_FILE's TOML.

The file holds one ``[[target]]`` table per target, with keys ``name``,
``url``, ``token``, ``concurrency``, ``wake_mac`` and ``wake_address``; a key
left out takes the value of the matching FOREMAN_* setting (``TargetSpec``
is what a target ends up with). Errors name the file, the target and the
problem, on one line.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from foreman.config import readers
from foreman.config.readers import ConfigError
from foreman.config.values import strip_userinfo

_KEYS = ("name", "url", "token", "concurrency", "wake_mac", "wake_address")


@dataclass(frozen=True)
class TargetEntry:
    """One ``[[target]]`` table as written: None for each key left out."""

    name: str
    url: str
    token: str | None = field(default=None, repr=False)
    concurrency: int | None = None
    wake_mac: str | None = None
    wake_address: tuple[str, int] | None = None


@dataclass(frozen=True)
class TargetSpec:
    """One target as foreman runs it, every key filled in."""

    name: str
    url: str
    token: str | None = field(repr=False)
    concurrency: int
    wake_mac: str | None
    wake_address: tuple[str, int]

    @property
    def display_url(self) -> str:
        return strip_userinfo(self.url)


def host_port(url: str) -> str:
    """A target's name when it has none: the host:port of its URL (the port filled in)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# A comma starts another URL only where a scheme follows: a password may hold commas.
_NEXT_URL = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def split_urls(text: str) -> list[str]:
    """FOREMAN_OLLAMA_URL's URLs, in order."""
    return _NEXT_URL.split(text.strip())


def target_urls(text: str, label: str) -> str:
    """One URL or several, comma-separated, each normalised; the same list joined by ","."""
    urls = [readers.target_url(part, label) for part in split_urls(text)]
    names = [host_port(url) for url in urls]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{label} names the target {name} twice; give each machine once")
    return ",".join(urls)


def read(text: str, label: str) -> tuple[str | None, tuple[TargetEntry, ...]]:
    """(path, its targets); (None, ()) when unset."""
    path = text.strip()
    if not path:
        return None, ()
    where = f"{label}={path!r}"
    try:
        with open(os.path.expanduser(path), "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{where} cannot be read ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where} is not valid TOML ({e})") from None
    unknown_top = sorted(set(document) - {"target"})
    tables = document.get("target")
    if unknown_top:
        raise ConfigError(f"{where}: unknown key {unknown_top[0]!r}; put each target in a [[target]] table")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where} has no [[target]] tables; give one per Ollama machine")
    entries = [_entry(table, f"{where} target {i + 1}") for i, table in enumerate(tables)]
    seen_names: set[str] = set()
    seen_urls: set[str] = set()
    for i, entry in enumerate(entries):
        there = f"{where} target {entry.name!r}"
        if entry.name in seen_names:
            raise ConfigError(f"{there}: the name is used by another target; names must differ")
        if entry.url in seen_urls:
            raise ConfigError(f"{there}: url {strip_userinfo(entry.url)!r} is another target's too")
        seen_names.add(entry.name)
        seen_urls.add(entry.url)
    return path, tuple(entries)


def _entry(table: dict[str, object], where: str) -> TargetEntry:
    name = table.get("name")
    if isinstance(name, str) and name.strip():
        where = f"{where.rsplit(' target ', 1)[0]} target {name!r}"
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys are {', '.join(_KEYS)}")
    url = table.get("url")
    if not isinstance(url, str):
        raise ConfigError(f"{where}: url is required, e.g. url = \"http://192.168.1.20:11434\"")
    url = readers.target_url(url, f"{where}: url")
    if name is None:
        name = host_port(url)
    if not isinstance(name, str) or not name.strip() or len(name) > 64 or not name.isprintable():
        raise ConfigError(f"{where}: name must be a string of 1 to 64 printable characters")
    token = table.get("token")
    if token is not None:
        if not isinstance(token, str):
            raise ConfigError(f"{where}: token must be a string")
        token = readers.bearer_token(token, f"{where}: token")
    concurrency = table.get("concurrency")
    if concurrency is not None:
        if not isinstance(concurrency, int) or isinstance(concurrency, bool):
            raise ConfigError(f"{where}: concurrency must be a whole number, e.g. concurrency = 2")
        concurrency = readers.count(minimum=1)(str(concurrency), f"{where}: concurrency")
    wake_mac = table.get("wake_mac")
    if wake_mac is not None:
        if not isinstance(wake_mac, str):
            raise ConfigError(f"{where}: wake_mac must be a string like \"a4:83:e7:12:34:56\"")
        wake_mac = readers.ethernet_address(wake_mac, f"{where}: wake_mac")
    wake_address = table.get("wake_address")
    if wake_address is not None:
        if not isinstance(wake_address, str):
            raise ConfigError(f"{where}: wake_address must be a string like \"192.168.1.255:9\"")
        wake_address = readers.wake_address(wake_address, f"{where}: wake_address")
    return TargetEntry(name.strip(), url, token, concurrency, wake_mac, wake_address)
