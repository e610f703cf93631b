"""Who a request is: the client its token stands for, and the log line that names it."""

from __future__ import annotations

import hmac
import logging

import pytest

import foreman.auth
from foreman.auth import TokenSet
from foreman.clients import Client, token_hash_name
from tests.helpers import bearer

ALICE = Client("alice", 2.0)
TOKENS = ["alice-token", "bare-token", "third-token"]

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


# --- TokenSet.identify ----------------------------------------------------------------


def test_identify_gives_the_client_a_token_stands_for() -> None:
    tokens = TokenSet(TOKENS, {"alice-token": ALICE})
    assert tokens.identify("Bearer alice-token") == ALICE
    # The scheme in any case; a token without fields is named by its hash, weight 1.
    assert tokens.identify("bearer bare-token") == Client(token_hash_name("bare-token"), 1.0)
    assert tokens.identify("  BEARER   third-token ") == Client(token_hash_name("third-token"))
    assert tokens.accepts("Bearer alice-token") and tokens.enabled


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Bearer wrong", "Bearer alice-toke", "Bearer alice-tokenX",
     "Basic alice-token", "Token alice-token", "alice-token", "Bearer alice-token bare-token"],
)
def test_identify_refuses_a_wrong_token_or_scheme(header) -> None:
    tokens = TokenSet(TOKENS, {"alice-token": ALICE})
    assert tokens.identify(header) is None
    assert not tokens.accepts(header)


def test_without_tokens_nobody_is_identified_and_everybody_accepted() -> None:
    tokens = TokenSet([])
    assert not tokens.enabled
    assert tokens.identify("Bearer anything") is None
    assert tokens.accepts(None) and tokens.accepts("Bearer anything")


@pytest.mark.parametrize("header", ["Bearer alice-token", "Bearer third-token", "Bearer wrong", "Basic alice-token", None])
def test_every_token_is_compared_whichever_matches(monkeypatch, header) -> None:
    # The constant-time path: each token is compared, with hmac.compare_digest,
    # whether the first, the last or none matches, and whatever the scheme.
    compared: list[bytes] = []
    real = hmac.compare_digest

    def counting(offered: bytes, token: bytes) -> bool:
        compared.append(token)
        return real(offered, token)

    monkeypatch.setattr(foreman.auth.hmac, "compare_digest", counting)
    TokenSet(TOKENS, {"alice-token": ALICE}).identify(header)
    assert compared == [t.encode() for t in TOKENS]


def test_replace_changes_the_tokens_and_their_clients_together() -> None:
    tokens = TokenSet(TOKENS, {"alice-token": ALICE})
    tokens.replace(["alice-token", "new-token"], {"new-token": Client("newcomer", 0.5)})
    assert tokens.identify("Bearer alice-token") == Client(token_hash_name("alice-token"))
    assert tokens.identify("Bearer new-token") == Client("newcomer", 0.5)
    assert tokens.identify("Bearer bare-token") is None


# --- through a running foreman ---------------------------------------------------------


def access_records(caplog, path: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "foreman.access" and r.path == path]


async def test_the_log_names_a_client_by_its_name_never_its_token(start_foreman, stub, tmp_path, caplog) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice-secret-token name=alice weight=2\nbare-secret-token\n")
    admins = tmp_path / "admins"
    admins.write_text("root-secret-token name=root\n")
    front = start_foreman(FOREMAN_TOKENS_FILE=str(tokens), FOREMAN_ADMIN_TOKENS_FILE=str(admins))
    await front.ready()
    # The foreman's own token sets know each client's name and weight.
    assert front.foreman.tokens.identify("Bearer alice-secret-token") == Client("alice", 2.0)
    assert front.foreman.admins.identify("Bearer root-secret-token") == Client("root", 1.0)
    with caplog.at_level(logging.INFO, logger="foreman.access"):
        for token in ("alice-secret-token", "bare-secret-token", "root-secret-token"):
            response = await front.fetch("/api/chat", method="POST", body=CHAT, headers=bearer(token))
            assert response.code == 200, token
        pull = await front.fetch("/api/pull", method="POST", body={"model": "x", "stream": False},
                                 headers=bearer("root-secret-token"))
        assert pull.code == 200
    chats = access_records(caplog, "/api/chat")
    assert [r.client for r in chats] == ["alice", token_hash_name("bare-secret-token"), "root"]
    assert " client=alice " in chats[0].getMessage()
    assert f" client={token_hash_name('bare-secret-token')} " in chats[1].getMessage()
    assert [r.client for r in access_records(caplog, "/api/pull")] == ["root"]
    assert "secret-token" not in caplog.text


async def test_without_auth_a_client_is_its_address(foreman, stub, caplog) -> None:
    await foreman.ready()
    with caplog.at_level(logging.INFO, logger="foreman.access"):
        assert (await foreman.fetch("/api/chat", method="POST", body=CHAT, headers=bearer("whatever"))).code == 200
    assert [r.client for r in access_records(caplog, "/api/chat")] == ["127.0.0.1"]
