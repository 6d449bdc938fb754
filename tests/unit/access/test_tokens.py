"""Registry tokens: issued, verified (and remembered) only for their service and lifetime."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.access.keyring import Keyring
from berth.access.tokens import InvalidToken, Tokens

ACCESS = [{"type": "repository", "name": "demo/app", "actions": ["pull", "push"]}]


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    keyring = Keyring(tmp_path / "signing.pem", tmp_path / "secret.key")
    return Tokens(keyring, ttl_seconds=300, refresh_ttl_seconds=600)


def _issue(tokens: Tokens, service: str = "registry.test") -> str:
    return tokens.issue(user_id=1, user="alice", key_id="BKA", service=service, access=ACCESS)[0]


def test_a_token_carries_what_it_grants(tokens: Tokens) -> None:
    token = _issue(tokens)
    claims = tokens.verify(token, "registry.test")
    assert (claims.user, claims.key_id) == ("alice", "BKA")
    assert claims.access == {("repository", "demo/app"): frozenset({"pull", "push"})}
    assert tokens.verify(token, "registry.test") == claims  # again (remembered)


def test_a_remembered_token_is_still_refused_for_another_service(tokens: Tokens) -> None:
    token = _issue(tokens)
    tokens.verify(token, "registry.test")
    with pytest.raises(InvalidToken):
        tokens.verify(token, "other.test")


def test_an_expired_token_is_refused(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "signing.pem", tmp_path / "secret.key")
    expired = Tokens(keyring, ttl_seconds=-10, refresh_ttl_seconds=600)
    with pytest.raises(InvalidToken):
        expired.verify(_issue(expired), "registry.test")


def test_other_kinds_of_token_are_not_registry_tokens(tokens: Tokens) -> None:
    refresh = tokens.issue_refresh(user_id=1, user="alice", key_id="BKA", service="registry.test")
    api = tokens.issue_api(user_id=1, user="alice", key_id="BKA", ttl_seconds=60)[0]
    for token in (refresh, api):
        with pytest.raises(InvalidToken):
            tokens.verify(token, "registry.test")
