"""The walk that finds a large body's top-level fields, against json.loads."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foreman import json_fields
from foreman.json_fields import EmptyBody, NotAnObject, NotJSON, fields_now, top_level_fields

WANTED = ("model", "name")


@pytest.fixture
def walk_everything(monkeypatch):
    """Every body is walked, never parsed, with windows of a few bytes so every boundary is crossed."""
    monkeypatch.setattr(json_fields, "SCAN_THRESHOLD", 0)
    monkeypatch.setattr(json_fields, "_WINDOW", 7)


scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=30,
)
keys = st.sampled_from(["model", "name", "messages", 'mo"del', "mod\\el"]) | st.text(max_size=6)
documents = st.dictionaries(keys, values, max_size=6)
# What a model check sees of a value: a string as it is, anything else as truthy or falsy.
seen = lambda value: value if isinstance(value, str) else bool(value)  # noqa: E731
quick = settings(max_examples=300, suppress_health_check=list(HealthCheck))


@quick
@given(document=documents, ensure_ascii=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_the_walk_finds_what_json_loads_finds(walk_everything, document, ensure_ascii, indent) -> None:
    body = json.dumps(document, ensure_ascii=ensure_ascii, indent=indent).encode()
    expected = {k: seen(document[k]) for k in WANTED if k in document}
    assert fields_now(body, WANTED) == expected


@quick
@given(document=documents, where=st.integers(min_value=0), junk=st.binary(min_size=1, max_size=3))
def test_the_walk_never_refuses_what_json_loads_accepts(walk_everything, document, where, junk) -> None:
    body = json.dumps(document).encode()
    cut = where % (len(body) + 1)
    body = body[:cut] + junk + body[cut:]
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        assert fields_now(body, WANTED) == {k: seen(parsed[k]) for k in WANTED if k in parsed}
    else:
        # Refused by both, or accepted by the walk when the fault is deep inside a value.
        try:
            fields_now(body, WANTED)
        except (NotJSON, NotAnObject, EmptyBody):
            pass


@pytest.mark.parametrize(
    "body, error",
    [
        (b"   \n\t ", EmptyBody),
        (b"[1, 2]", NotAnObject),
        (b'"model"', NotAnObject),
        (b"42", NotAnObject),
        (b"nope", NotJSON),
        (b'{"model": "a"', NotJSON),
        (b'{"model": "a"} x', NotJSON),
        (b'{"model" "a"}', NotJSON),
        (b'{"model": "a" "name": "b"}', NotJSON),
        (b'{model: "a"}', NotJSON),
        (b'{"model": tru}', NotJSON),
        (b'{"m": [1, 2}', NotJSON),
        (b'{"m": "unterminated}', NotJSON),
        (b'{"m": [[[[1]]]', NotJSON),
        (b'{"m": [\\]}', NotJSON),
        (b'{"m": ' + b"[" * (2 * json_fields.MAX_DEPTH) + b"]" * (2 * json_fields.MAX_DEPTH) + b"}", NotJSON),
    ],
)
def test_what_the_walk_refuses(walk_everything, body, error) -> None:
    with pytest.raises(error):
        fields_now(body, WANTED)


def test_repeated_keys_and_escapes_read_as_json_does(walk_everything) -> None:
    body = b'{"model": "a", "\\u006dodel": "b\\u00e9\\n", "name": [], "x": {"model": "nested"}}'
    assert fields_now(body, WANTED) == {"model": "b\u00e9\n", "name": False}


def test_errors_say_where(walk_everything) -> None:
    with pytest.raises(NotJSON, match=r"line 2 column 3 \(char 4\)"):
        fields_now(b'{\n  x: 1}', WANTED)


async def test_a_large_body_lets_the_event_loop_run() -> None:
    message = {"role": "user", "content": "a small message"}
    body = json.dumps({"messages": [message] * 400_000, "model": "m"}).encode()
    turns = 0
    walking = True

    async def count_turns() -> None:
        nonlocal turns
        while walking:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.ensure_future(count_turns())
    await asyncio.sleep(0)
    started = turns
    fields = await top_level_fields(body, WANTED)
    walking = False
    await counter
    assert fields == {"model": "m"}
    # The walk gave the loop many turns while it ran, not one at the end.
    assert turns - started > 10
