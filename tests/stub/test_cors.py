"""The stand-in answers CORS as Ollama does: preflights, echoed origins, 403 for others."""

import pytest

from foreman.stub.cors import ALLOWED_HEADERS, ALLOWED_METHODS, MAX_AGE

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}


@pytest.mark.parametrize("path", ["/api/chat", "/api/tags", "/v1/chat/completions", "/no/such/route"])
async def test_a_preflight_from_an_allowed_origin_gets_204_and_the_policy(stub, http, path) -> None:
    stub.token = "secret"  # a preflight carries no token, and needs none
    origin = "http://localhost:3000"
    answer = await http.fetch(
        stub.url + path, method="OPTIONS", headers={"Origin": origin, **PREFLIGHT}, raise_error=False
    )
    assert answer.code == 204, answer.body
    assert answer.body == b""
    assert answer.headers["Access-Control-Allow-Origin"] == origin
    assert answer.headers["Access-Control-Allow-Methods"] == ALLOWED_METHODS
    assert answer.headers["Access-Control-Allow-Headers"] == ALLOWED_HEADERS
    assert answer.headers["Access-Control-Max-Age"] == MAX_AGE
    assert "Origin" in answer.headers.get_list("Vary")


async def test_an_origin_not_allowed_gets_a_bare_403_on_any_method(stub, http) -> None:
    for method, body in (("OPTIONS", None), ("GET", None), ("POST", b"{}")):
        answer = await http.fetch(
            stub.url + "/api/tags", method=method, body=body, raise_error=False,
            headers={"Origin": "https://evil.example", **PREFLIGHT},
            allow_nonstandard_methods=True,
        )
        assert answer.code == 403 and answer.body == b"", method
        assert "Access-Control-Allow-Origin" not in answer.headers


async def test_an_ordinary_request_from_an_allowed_origin_gets_it_echoed(stub, http) -> None:
    answer = await http.fetch(stub.url + "/api/tags", headers={"Origin": "app://obsidian.md"})
    assert answer.code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == "app://obsidian.md"
    assert answer.headers["Vary"] == "Origin"
    # No Origin: not a CORS request, nothing added.
    plain = await http.fetch(stub.url + "/api/tags")
    assert "Access-Control-Allow-Origin" not in plain.headers


async def test_origins_knob_as_ollama_origins(stub, http) -> None:
    stub.origins = (*stub.origins, "https://*.example.com")
    allowed = await http.fetch(stub.url + "/api/tags", headers={"Origin": "https://app.example.com"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    stub.origins = ("*",)
    anyone = await http.fetch(
        stub.url + "/api/chat", method="OPTIONS", headers={"Origin": "https://x.test", **PREFLIGHT},
        raise_error=False,
    )
    assert anyone.code == 204 and anyone.headers["Access-Control-Allow-Origin"] == "*"


async def test_options_without_origin_is_still_gins_404(stub, http) -> None:
    answer = await http.fetch(stub.url + "/api/tags", method="OPTIONS", raise_error=False)
    assert answer.code == 404 and answer.body == b"404 page not found"
