"""What a refused client is told."""

from __future__ import annotations

from berth.access.permissions import EVERY_ACTION, PULL_ONLY
from berth.access.policy import Principal
from berth.access.refusals import Realm, refusal

REALM = Realm("https", "registry.example:5000")
SCOPE = "repository:demo/app:pull,push"
PUSH = frozenset({"push"})


def test_the_challenge_names_the_token_endpoint_and_service() -> None:
    assert REALM.challenge(SCOPE) == (
        'Bearer realm="https://registry.example:5000/auth/token",'
        'service="registry.example:5000",scope="repository:demo/app:pull,push"'
    )
    assert Realm("http", None).challenge() == (
        'Bearer realm="http://localhost/auth/token",service="berth"'
    )


def test_an_anonymous_caller_is_asked_to_authenticate() -> None:
    error = refusal(REALM, None, False, SCOPE, PUSH, PULL_ONLY)
    assert error.status == 401
    assert error.message == "authentication required to push demo/app"
    assert 'scope="repository:demo/app:pull,push"' in error.headers["WWW-Authenticate"]


def test_a_token_that_does_not_grant_it_asks_for_a_new_token() -> None:
    alice = Principal(1, "alice", False, "BKA", 1)
    error = refusal(REALM, alice, True, SCOPE, PUSH, EVERY_ACTION, 1)
    assert error.status == 401
    assert error.headers["WWW-Authenticate"].endswith(',error="insufficient_scope"')


def test_a_reader_is_told_their_role() -> None:
    reader = Principal(1, "rita", False, "BKR", 1)
    error = refusal(
        REALM, reader, False, SCOPE, PUSH, PULL_ONLY, 1, None, "reader in project 'demo'"
    )
    assert error.status == 403
    assert error.message == (
        "user 'rita' may not push to demo/app: their role reader in project 'demo' may only "
        "pull; ask a project admin for a role that may push"
    )


def test_a_key_of_another_project_is_told_so() -> None:
    visitor = Principal(1, "vic", False, "BKV", 2)
    error = refusal(REALM, visitor, False, SCOPE, PUSH, frozenset(), 1, "other")
    assert error.message == (
        "user 'vic' may not push to demo/app: access key BKV works only in project 'other'; "
        "create an access key for this project"
    )


def test_no_role_at_all() -> None:
    stranger = Principal(1, "sam", False, None, None)
    error = refusal(
        REALM, stranger, False, "repository:demo/app:delete", frozenset({"delete"}), frozenset(), 1
    )
    assert error.status == 403
    assert (
        error.message == "user 'sam' may not delete from demo/app; ask a project admin for a role"
    )
