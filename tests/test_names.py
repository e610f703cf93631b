"""One table of model-name cases from Ollama's rules, held against foreman and the stand-in.

Each row: a name a client asks for, a name in the inventory (as Ollama lists
it), and whether Ollama serves that model for that request. The rules are
those of Ollama's ``types/model/name.go`` (ParseName = ParseNameBare merged
with DefaultName; IsValid) and of how its server finds a model
(``parseAndValidateModelRef``, then ``getExistingName``: part by part,
case-insensitively), as of ollama/ollama fb30760 (August 2026):

- a ``:`` after the last ``/`` starts the tag; one before it is a host's port;
- missing host, namespace or tag become ``registry.ollama.ai``, ``library``
  and ``latest``; a separator with nothing after it ("llama3.2:") leaves a
  part missing, which makes the name invalid;
- ``scheme://`` is cut from the host part only, and plays no part in the
  match; an empty host after it falls back to the default;
- a name is valid only if every part is well formed (ASCII letters, digits,
  ``_`` first; then also ``-``, plus ``.`` in host, model and tag, and ``:``
  in the host); Ollama answers an invalid one with 400 "invalid model name",
  so it is the same model as nothing;
- ``@digest`` is not part of a name since Ollama 0.1.49 ("types/model: remove
  knowledge of digest"): the ``@`` lands in the model part, which is invalid.

Version-dependent rules are left out: surrounding whitespace (trimmed only
since 2026) and the ``:cloud``/``:local`` source suffixes.

The same rows run against `foreman.names.canonical` and the stand-in's own
resolution (directly, and over HTTP with ``/api/show``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from foreman.names import canonical
from foreman.stub import StubOllama, parse_model_name

DIGEST = "sha256:" + "a1b2c3d4" * 8

# (requested, listed, same model for Ollama)
NAME_CASES: list[tuple[str, str, bool]] = [
    # plain names, defaults spelt out or left out
    ("llama3.2", "llama3.2:latest", True),
    ("llama3.2:latest", "llama3.2:latest", True),
    ("library/llama3.2", "llama3.2:latest", True),
    ("library/llama3.2:latest", "llama3.2:latest", True),
    ("registry.ollama.ai/library/llama3.2", "llama3.2:latest", True),
    ("registry.ollama.ai/library/llama3.2:latest", "llama3.2:latest", True),
    ("qwen2.5:0.5b", "qwen2.5:0.5b", True),
    # case differences, in every part
    ("LLAMA3.2", "llama3.2:latest", True),
    ("Llama3.2:LATEST", "llama3.2:latest", True),
    ("REGISTRY.OLLAMA.AI/LIBRARY/Llama3.2", "llama3.2:latest", True),
    ("hf.co/example/tiny-gguf:q4_k_m", "hf.co/example/tiny-gguf:Q4_K_M", True),
    ("HF.CO/Example/Tiny-GGUF:Q4_K_M", "hf.co/example/tiny-gguf:Q4_K_M", True),
    # ... but only ASCII folds: a Kelvin sign is no "k", and makes the tag invalid
    ("hf.co/example/tiny-gguf:Q4_\u212a_M", "hf.co/example/tiny-gguf:Q4_K_M", False),
    # other tags, namespaces and hosts are other models
    ("llama3.2:1b", "llama3.2:latest", False),
    ("qwen2.5", "qwen2.5:0.5b", False),
    ("someone/llama3.2", "llama3.2:latest", False),
    ("other.host/library/llama3.2", "llama3.2:latest", False),
    ("hf.co/example/tiny-gguf", "hf.co/example/tiny-gguf:Q4_K_M", False),
    ("example/tiny-gguf:Q4_K_M", "hf.co/example/tiny-gguf:Q4_K_M", False),
    # two parts are namespace/model: a host there is an invalid namespace
    ("registry.ollama.ai/llama3.2", "llama3.2:latest", False),
    ("localhost:5000/model", "localhost:5000/library/model:latest", False),
    # a host with a port
    ("localhost:5000/team/model", "localhost:5000/team/model:latest", True),
    ("LOCALHOST:5000/Team/Model:Latest", "localhost:5000/team/model:latest", True),
    ("localhost:5000/team/model:v1", "localhost:5000/team/model:v1", True),
    ("team/model", "localhost:5000/team/model:latest", False),
    ("localhost:5001/team/model", "localhost:5000/team/model:latest", False),
    ("localhost/team/model", "localhost:5000/team/model:latest", False),
    # @digest is no part of a name: such a name is invalid
    (f"llama3.2@{DIGEST}", "llama3.2:latest", False),
    (f"llama3.2:latest@{DIGEST}", "llama3.2:latest", False),
    (f"hf.co/example/tiny-gguf@{DIGEST}", "hf.co/example/tiny-gguf:Q4_K_M", False),
    ("llama3.2@", "llama3.2:latest", False),
    (f"@{DIGEST}", "llama3.2:latest", False),
    # scheme:// in front of a host is dropped
    ("https://registry.ollama.ai/library/llama3.2:latest", "llama3.2:latest", True),
    ("http://registry.ollama.ai/library/llama3.2", "llama3.2:latest", True),
    ("https://hf.co/example/tiny-gguf:Q4_K_M", "hf.co/example/tiny-gguf:Q4_K_M", True),
    ("http://localhost:5000/team/model", "localhost:5000/team/model:latest", True),
    ("https:///library/llama3.2", "llama3.2:latest", True),  # empty host: the default
    # ... but only there: with fewer parts its "//" lands in a name part
    ("https://llama3.2", "llama3.2:latest", False),
    ("https://library/llama3.2", "llama3.2:latest", False),
    ("http://evil/llama3.2", "llama3.2:latest", False),
    # a separator with nothing after (or before) it
    ("llama3.2:", "llama3.2:latest", False),
    (":latest", "llama3.2:latest", False),
    ("library/", "llama3.2:latest", False),
    ("/llama3.2", "llama3.2:latest", False),
]

CASE_IDS = [f"{requested!r}~{listed!r}" for requested, listed, _ in NAME_CASES]


@pytest.mark.parametrize("requested, listed, same", NAME_CASES, ids=CASE_IDS)
def test_foreman_names_follow_ollama(requested: str, listed: str, same: bool) -> None:
    assert (canonical(requested) == canonical(listed)) is same


@pytest.mark.parametrize("requested, listed, same", NAME_CASES, ids=CASE_IDS)
def test_stand_in_resolves_as_ollama_does(requested: str, listed: str, same: bool) -> None:
    stub = StubOllama([listed])
    assert stub.resolve(requested) == (listed if same else None)


async def test_stand_in_serves_by_the_same_rules_over_http(io_loop) -> None:
    """Every row once more through the stand-in's /api/show on a real socket."""
    stub = StubOllama([])
    stub.listen()
    client = SimpleAsyncHTTPClient(force_instance=True)
    try:
        wrong = []
        for requested, listed, same in NAME_CASES:
            stub.models[:] = [listed]
            response = await client.fetch(
                stub.url + "/api/show",
                method="POST",
                body=json.dumps({"model": requested}),
                raise_error=False,
            )
            if response.code != (200 if same else 404):
                wrong.append((requested, listed, response.code, response.body[:80]))
        assert not wrong
    finally:
        client.close()
        await stub.stop()


@pytest.mark.parametrize("listed", sorted({listed for _, listed, _ in NAME_CASES}))
def test_listed_names_are_names_ollama_could_list(listed: str) -> None:
    """The table's inventory side holds only valid names, in Ollama's shortest form."""
    parsed = parse_model_name(listed)
    assert parsed.valid and parsed.shortest() == listed
    assert canonical(listed) == canonical(parsed.shortest().lower())


def test_stand_in_keeps_its_own_name_rules() -> None:
    """The stand-in must not borrow foreman's resolution, or a bug there would be mirrored."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, foreman.stub; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'foreman.names'" not in loaded and "'foreman.inventory'" not in loaded
