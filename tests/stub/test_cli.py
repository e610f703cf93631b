"""`foreman stub --help`: what the stand-in does, what its options do, every route it serves."""

import asyncio
import re
import subprocess
import sys

from foreman.stub import StubOllama
from tests.helpers import subprocess_env

# Ollama's surface as the stand-in serves it (README's "The stand-in Ollama").
SERVED = [
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/api/version"),
    ("GET", "/api/tags"),
    ("HEAD", "/api/tags"),
    ("GET", "/api/ps"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/api/show"),
    ("POST", "/api/pull"),
    ("POST", "/api/push"),
    ("POST", "/api/create"),
    ("POST", "/api/copy"),
    ("DELETE", "/api/delete"),
    ("HEAD", "/api/blobs/<digest>"),
    ("POST", "/api/blobs/<digest>"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/<model>"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
]
# What a placeholder in a listed path stands for when the route is tried.
EXAMPLES = {"<digest>": "sha256:" + "0" * 64, "<model>": "llama3.2"}


def stub_help() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "foreman", "stub", "--help"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout


def listed_routes(help_text: str) -> list[tuple[list[str], str]]:
    """(methods, path) for each line of the help's route list."""
    assert "routes served" in help_text, help_text
    routes = []
    for line in help_text.split("routes served", 1)[1].splitlines():
        match = re.fullmatch(r"  ([A-Z]+(?:, [A-Z]+)*) +(/\S*)", line)
        if match:
            routes.append((match.group(1).split(", "), match.group(2)))
    return routes


def test_help_says_what_the_stand_in_does_and_what_each_option_does() -> None:
    text = " ".join(stub_help().split())
    assert "stand-in Ollama" in text and "without a real Ollama" in text
    for flag, what in [
        ("--listen HOST:PORT", "where to listen"),
        ("--models A,B,...", "the models it has"),
        ("--token TOKEN", "require 'Authorization: Bearer TOKEN'"),
        ("--chunk-delay SECONDS", "pause before each streamed chunk"),
        ("--max-loaded N", "hold at most N models in memory"),
        ("--load-time SECONDS", "how long loading a model takes"),
    ]:
        assert f"{flag} {what}" in text, flag


def test_help_lists_every_route_the_stand_in_serves() -> None:
    listed = listed_routes(stub_help())
    missing = [
        (method, path)
        for method, path in SERVED
        if not any(method in methods and path == shown for methods, shown in listed)
    ]
    assert not missing, missing
    assert len({path for _, path in listed}) == len(listed)
    # ... and no route the application has is left out of the list.
    assert len(StubOllama().make_app().wildcard_router.rules) == len(listed)


async def test_each_listed_route_answers_its_methods_and_only_those(stub, http) -> None:
    listed = await asyncio.to_thread(lambda: listed_routes(stub_help()))
    assert listed
    wrong = []
    for methods, path in listed:
        url = stub.url + re.sub(r"<\w+>", lambda m: EXAMPLES[m.group(0)], path)
        for method in ("GET", "HEAD", "POST", "DELETE"):
            response = await http.fetch(
                url,
                method=method,
                body=b"{}" if method in ("POST", "DELETE") else None,
                allow_nonstandard_methods=True,
                raise_error=False,
            )
            # Gin's own 404 (no such route or method) is plain text; a route's
            # answer, even a 404 for a missing model or blob, is JSON.
            unrouted = response.code == 404 and response.headers.get("Content-Type") == "text/plain"
            if unrouted == (method in methods):
                wrong.append((method, path, response.code))
    assert not wrong
