"""Tokens files (FOREMAN_TOKENS_FILE, FOREMAN_ADMIN_TOKENS_FILE): a token a line, with fields.

A line is a token, optionally followed by fields separated by spaces or
tabs: ``s3cr3t-token name=alice weight=2``. Blank lines and lines starting
with ``#`` are skipped. No token, and nothing else a line holds but a valid
name, is ever put in an error message (a stray field may be a piece of a
mistyped token); errors name the file, the line and what is wrong.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from foreman.clients import Client, token_client
from foreman.config.readers import ConfigError
from foreman.config.values import is_token

MAX_NAME_LENGTH = 64
MAX_WEIGHT = 1000.0
# The metrics label that stands for every client without a name.
RESERVED_NAMES = frozenset({"anonymous"})

# No ":" in a name, so it never looks like a token's hash name ("token:...").
_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_NAME_LENGTH}}}")
# Plain decimals only: float() would also take "inf", "nan", "1e3", "1_0".
_WEIGHT = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_FIELDS = ("name", "weight")
_FORMAT = "put a token per line, then optionally name=NAME and weight=NUMBER, separated by spaces"
# Fields are separated by spaces and tabs only: any other whitespace is a
# character a token cannot hold, refused as such.
_SEPARATOR = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class TokenFields:
    """The fields one line of a tokens file gives its token."""

    token: str = field(repr=False)
    name: str | None
    weight: float | None
    #: where the line is, for errors: "FOREMAN_TOKENS_FILE='/etc/foreman/tokens' line 3"
    line: str


def read(text: str, label: str) -> tuple[str | None, tuple[str, ...], tuple[TokenFields, ...]]:
    """(path, its tokens, the fields its lines give them); (None, (), ()) when unset."""
    path = text.strip()
    if not path:
        return None, (), ()
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
    entries: list[TokenFields] = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{label}={path!r} line {number}"
        token, *words = _SEPARATOR.split(stripped)
        if not is_token(token):
            raise ConfigError(
                f"{where} (value hidden): the token holds whitespace other than spaces and tabs, "
                f"or a character that is not printable ASCII; {_FORMAT}"
            )
        tokens.append(token)
        if words:
            entries.append(TokenFields(token, *read_fields(words, where), where))
    if not tokens:
        # An empty file would silently turn inbound auth off; fail closed.
        raise ConfigError(
            f"{label}={path!r} holds no tokens; put one token per line "
            "(# starts a comment), or leave it unset"
        )
    token_clients(entries)  # a contradiction within the file is its error
    return path, tuple(dict.fromkeys(tokens)), tuple(entries)


def read_fields(words: list[str], where: str) -> tuple[str | None, float | None]:
    """(name, weight) from the words after a line's token; None for what is not given."""
    given: dict[str, str] = {}
    for position, word in enumerate(words, start=2):
        key, equals, value = word.partition("=")
        if not equals or key not in _FIELDS:
            raise ConfigError(
                f"{where} (value hidden): field {position} is not name= or weight=; {_FORMAT}"
            )
        if key in given:
            raise ConfigError(f"{where} (value hidden): {key}= is given twice; give each field once")
        given[key] = value
    name = given.get("name")
    if name is not None:
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"{where} (value hidden): name= must be 1 to {MAX_NAME_LENGTH} ASCII letters, "
                "digits, '-', '_' or '.'"
            )
        if name in RESERVED_NAMES:
            raise ConfigError(
                f"{where} (token hidden): name={name} is reserved (metrics use it for "
                "clients without a name); choose another name"
            )
    weight = given.get("weight")
    if weight is None:
        return name, None
    number = float(weight) if _WEIGHT.fullmatch(weight) else math.nan
    if not 0 < number <= MAX_WEIGHT:
        raise ConfigError(
            f"{where} (value hidden): weight= must be a number greater than 0 and at most "
            f"{MAX_WEIGHT:g}, e.g. weight=2 or weight=0.5"
        )
    return name, number


def token_clients(entries: Iterable[TokenFields]) -> dict[str, Client]:
    """The client each token given fields stands for; raises ConfigError on a contradiction.

    A token may appear on several lines (and in both files, client and
    admin): a field given on one line holds for all, and a field given
    twice must agree. A name belongs to one token.
    """
    named_by: dict[str, TokenFields] = {}  # token -> the line that names it
    weighed_by: dict[str, TokenFields] = {}  # token -> the line that gives its weight
    owner: dict[str, TokenFields] = {}  # name -> the line that gave it first
    for entry in entries:
        if entry.name is not None:
            earlier = named_by.setdefault(entry.token, entry)
            if earlier.name != entry.name:
                raise ConfigError(
                    f"{entry.line} (value hidden): the same token has another name on "
                    f"{earlier.line}; give a token one name"
                )
            holder = owner.setdefault(entry.name, entry)
            if holder.token != entry.token:
                raise ConfigError(
                    f"{entry.line} (token hidden): name={entry.name} is already the name of "
                    f"another token, on {holder.line}; give each token its own name"
                )
        if entry.weight is not None:
            earlier = weighed_by.setdefault(entry.token, entry)
            if earlier.weight != entry.weight:
                raise ConfigError(
                    f"{entry.line} (value hidden): the same token has another weight on "
                    f"{earlier.line}; give a token one weight"
                )
    tokens = dict.fromkeys([*named_by, *weighed_by])
    return {
        token: token_client(
            token,
            named_by[token].name if token in named_by else None,
            weighed_by[token].weight if token in weighed_by else None,
        )
        for token in tokens
    }
