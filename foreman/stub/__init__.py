"""A deterministic stand-in for an Ollama server (tests, ``foreman stub``, ``foreman demo``).

The package, from the bottom up: `naming` (model names, by Ollama's rules),
`memory` (resident models, loads, evictions), `state` (knobs, inventory,
counters), `base` (constants, JSON helpers, the request gate every handler
passes), `catalog` (what the stub says about a model), `running` (streaming and run bookkeeping), one module per route
family — `info` (``/``, version, tags, ps), `generation` (chat, generate,
embed), `management` (show, pull, push, create, copy, delete, blobs), `v1`
(OpenAI-compatible) — and `server` (`StubOllama`, the route table, the
command line). Import what you need from here.
"""

from foreman.stub.base import EMBEDDING_SIZE, STUB_EPOCH, STUB_VERSION
from foreman.stub.catalog import embedding_for, show_document
from foreman.stub.naming import display_name, namespace_of, parse_model_name, same_model
from foreman.stub.server import (
    DESCRIPTION,
    ROUTES,
    StubOllama,
    add_stub_arguments,
    routes_help,
    run_stub,
    stub_from_args,
)
from foreman.stub.state import DEFAULT_MODELS, RecordedRequest

__all__ = [
    "DEFAULT_MODELS",
    "DESCRIPTION",
    "EMBEDDING_SIZE",
    "ROUTES",
    "STUB_EPOCH",
    "STUB_VERSION",
    "RecordedRequest",
    "StubOllama",
    "add_stub_arguments",
    "display_name",
    "embedding_for",
    "namespace_of",
    "parse_model_name",
    "routes_help",
    "run_stub",
    "same_model",
    "show_document",
    "stub_from_args",
]
