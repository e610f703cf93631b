"""The top-level fields of a JSON object body, found without building the document.

A chat body can be tens of megabytes of small objects (a long history, many
images). `json.loads` builds a Python object for every value in it, over a
gigabyte for 60 MB, and holds the event loop, every client's, for seconds.
foreman only wants one or two top-level fields (`model`, `name`), so a large
body is walked at its top level alone: nested values are skipped by matching
their brackets and strings with regular expressions that run in C, one window
of the body at a time, and the walk lets the event loop run between windows.
Small bodies are parsed with `json.loads`, which is faster for them.

What the walk checks of a large body: that it is one object with string keys
and well-formed top-level values, that every nested string ends and that the
brackets balance. It does not check scalars or delimiters inside nested
values; the target judges those as it always does.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Generator, Mapping

# Below this a body is parsed whole: json.loads of 1 MiB takes milliseconds.
SCAN_THRESHOLD = 1 << 20
# Most bytes one regular expression reads at a time, so a step of the walk
# stays short (about a millisecond).
_WINDOW = 256 << 10
# Nesting this deep is refused (as Go's encoding/json, Ollama's parser, does at
# 10000); it bounds the walk's memory. (The innermost levels a regular
# expression takes whole are not counted.)
MAX_DEPTH = 10000
# A key longer than this, even fully escaped, cannot spell a wanted field.
_MAX_WANTED_KEY = 256

# Longest the walk runs before letting the event loop serve others.
_SLICE = 0.005

_WHITESPACE = re.compile(rb"[ \t\n\r]*+")
# What bytes.strip() takes away: a body of only these is "empty", as for small bodies.
_BLANK = re.compile(rb"[ \t\n\r\x0b\x0c]*+")
# A scalar at the top level; nested scalars are skipped unchecked.
_SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][-+]?[0-9]++)?+|true|false|null")
# The inside of a string up to its closing quote (or the window's end).
_STRING_PART = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
# What a nested value may hold without the walk's attention: runs of scalars
# and delimiters, whole strings, and whole containers up to _LEVELS deep (an
# Ollama chat message with tool calls is seven). Python's re has no
# recursion, so each level is spelled out; one bracket class for arrays and
# objects keeps the pattern small (the walk itself checks the brackets it
# steps through pair up). All quantifiers are possessive: nothing matched is
# ever backtracked into, so a match reads each byte at most a few times.
_LEVELS = 12
_ATOM = rb'[^"\[\]{}\\]++|"(?:[^"\\]++|\\.)*+"'


def _run_pattern(levels: int) -> re.Pattern[bytes]:
    inner = _ATOM
    for _ in range(levels):
        inner = _ATOM + rb"|[\[{](?:" + inner + rb")*+[\]}]"
    return re.compile(rb"(?:" + inner + rb")*+", re.DOTALL)


_RUN = _run_pattern(_LEVELS)
_QUOTE = ord('"')
_OPEN = {ord("["): ord("]"), ord("{"): ord("}")}
_CLOSE = frozenset(_OPEN.values())
_BOM = b"\xef\xbb\xbf"


def _end(pattern: re.Pattern[bytes], body: bytes, pos: int, endpos: int | None = None) -> int:
    """Where `pattern`, which also matches nothing, stops matching at `pos`."""
    match = pattern.match(body, pos) if endpos is None else pattern.match(body, pos, endpos)
    assert match is not None
    return match.end()


class BodyError(ValueError):
    """The body cannot be checked."""


class EmptyBody(BodyError):
    """Nothing but whitespace."""


class NotJSON(BodyError):
    """Not valid JSON; the message says where, as json's errors do."""


class NotAnObject(BodyError):
    """Valid JSON (as far as it was read) whose top level is not an object."""


def _not_json(body: bytes, reason: str, pos: int) -> NotJSON:
    line = body.count(b"\n", 0, pos) + 1
    column = pos - (body.rfind(b"\n", 0, pos) + 1) + 1
    return NotJSON(f"{reason}: line {line} column {column} (char {pos})")


def _parsed_fields(body: bytes, wanted: tuple[str, ...]) -> dict[str, object]:
    if not body.strip():
        raise EmptyBody("request body is empty")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise NotJSON(str(e)) from None
    if not isinstance(document, dict):
        raise NotAnObject("request body must be a JSON object")
    return {name: document[name] for name in wanted if name in document}


def _scan(body: bytes, wanted: tuple[str, ...]) -> Generator[None, None, dict[str, object]]:
    """Walk the top level of a JSON object in `body`; yields now and then to let others run.

    Returns the `wanted` fields present: strings decoded, other values only
    as truthy (True) or falsy (False), which is all a model check needs.
    A repeated key keeps its last value, as with json.loads.
    """
    size = len(body)
    if _end(_BLANK, body, 0) == size:
        raise EmptyBody("request body is empty")
    pos = _end(_WHITESPACE, body, len(_BOM) if body.startswith(_BOM) else 0)
    if pos == size:
        raise _not_json(body, "Expecting value", pos)
    if body[pos] != ord("{"):
        if body[pos] in _OPEN or body[pos] == _QUOTE or _SCALAR.match(body, pos):
            raise NotAnObject("request body must be a JSON object")
        raise _not_json(body, "Expecting value", pos)
    found: dict[str, object] = {}
    pos = _end(_WHITESPACE, body, pos + 1)
    if pos < size and body[pos] == ord("}"):
        pos += 1
    else:
        while True:
            if pos >= size or body[pos] != _QUOTE:
                raise _not_json(body, "Expecting property name enclosed in double quotes", pos)
            key_start = pos
            pos = yield from _skip_string(body, pos)
            key = _decode(body, key_start, pos) if pos - key_start <= _MAX_WANTED_KEY else None
            pos = _end(_WHITESPACE, body, pos)
            if pos >= size or body[pos] != ord(":"):
                raise _not_json(body, "Expecting ':' delimiter", pos)
            pos = _end(_WHITESPACE, body, pos + 1)
            value_start = pos
            pos = yield from _skip_value(body, pos)
            if isinstance(key, str) and key in wanted:
                found[key] = _value_for_check(body, value_start, pos)
            pos = _end(_WHITESPACE, body, pos)
            yield
            if pos < size and body[pos] == ord(","):
                pos = _end(_WHITESPACE, body, pos + 1)
                continue
            if pos < size and body[pos] == ord("}"):
                pos += 1
                break
            raise _not_json(body, "Expecting ',' delimiter", pos)
    pos = _end(_WHITESPACE, body, pos)
    if pos != size:
        raise _not_json(body, "Extra data", pos)
    return found


def _decode(body: bytes, start: int, end: int) -> object:
    try:
        return json.loads(body[start:end])
    except ValueError as e:
        raise _not_json(body, f"Invalid string ({e})", start) from None


def _value_for_check(body: bytes, start: int, end: int) -> object:
    first = body[start]
    if first == _QUOTE:
        return _decode(body, start, end)
    if first in _OPEN:
        # An empty container is falsy, as its parsed value would be.
        return _end(_WHITESPACE, body, start + 1) != end - 1
    return bool(json.loads(body[start:end]))


def _skip_value(body: bytes, pos: int) -> Generator[None, None, int]:
    """The end of the top-level value starting at `pos`."""
    if pos >= len(body):
        raise _not_json(body, "Expecting value", pos)
    first = body[pos]
    if first == _QUOTE:
        return (yield from _skip_string(body, pos))
    if first in _OPEN:
        return (yield from _skip_container(body, pos))
    scalar = _SCALAR.match(body, pos)
    if scalar is None:
        raise _not_json(body, "Expecting value", pos)
    return scalar.end()


def _skip_string(body: bytes, start: int) -> Generator[None, None, int]:
    """The end (past the closing quote) of the string whose opening quote is at `start`."""
    size = len(body)
    pos = start + 1
    while True:
        window_end = min(size, pos + _WINDOW)
        pos = _end(_STRING_PART, body, pos, window_end)
        if pos < window_end and body[pos] == _QUOTE:
            return pos + 1
        # The window ended, or a backslash ends it (the next window starts
        # with that backslash and the character it escapes).
        if window_end == size:
            raise _not_json(body, "Unterminated string starting at", start)
        yield


def _skip_container(body: bytes, start: int) -> Generator[None, None, int]:
    """The end of the array or object opening at `start`; its contents are checked for shape only."""
    size = len(body)
    closes = bytearray([_OPEN[body[start]]])  # the closing bracket each open level expects
    pos = start + 1
    while True:
        window_end = min(size, pos + _WINDOW)
        pos = _end(_RUN, body, pos, window_end)
        yield
        if pos == size:
            raise _not_json(body, "Expecting ',' delimiter", pos)
        if pos == window_end:
            continue
        char = body[pos]
        if char == _QUOTE:
            # A string that runs past the window.
            pos = yield from _skip_string(body, pos)
        elif char in _OPEN:
            if len(closes) >= MAX_DEPTH:
                raise _not_json(body, "Nested too deeply", pos)
            closes.append(_OPEN[char])
            pos += 1
        elif char in _CLOSE:
            if closes.pop() != char:
                raise _not_json(body, "Mismatched bracket", pos)
            pos += 1
            if not closes:
                return pos
        else:
            raise _not_json(body, "Expecting value", pos)


def _run_through(walk: Generator[None, None, dict[str, object]]) -> dict[str, object]:
    while True:
        try:
            next(walk)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def fields_now(body: bytes, wanted: tuple[str, ...]) -> Mapping[str, object]:
    """The `wanted` top-level fields of the JSON object `body`, found in one go.

    Raises `EmptyBody`, `NotJSON` or `NotAnObject`.
    """
    if len(body) < SCAN_THRESHOLD:
        return _parsed_fields(body, wanted)
    return _run_through(_scan(body, wanted))


async def top_level_fields(body: bytes, wanted: tuple[str, ...]) -> Mapping[str, object]:
    """As `fields_now`, letting other clients be served while a large body is walked."""
    if len(body) < SCAN_THRESHOLD:
        return _parsed_fields(body, wanted)
    walk = _scan(body, wanted)
    loop = asyncio.get_running_loop()
    turn_ends = loop.time() + _SLICE
    while True:
        try:
            next(walk)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if loop.time() >= turn_ends:
            await asyncio.sleep(0)
            turn_ends = loop.time() + _SLICE
