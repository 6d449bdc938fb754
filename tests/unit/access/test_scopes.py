"""Token scopes: what a client asks for, what it is granted, what a token allows when used."""

from __future__ import annotations

import asyncio

import pytest

from berth.access.permissions import EVERY_ACTION, PULL_ONLY, PULL_PUSH
from berth.access.policy import Principal
from berth.access.scopes import (
    MAX_SCOPES_PER_REQUEST,
    Scope,
    challenge_scope,
    downscope,
    grant,
    parse_scopes,
)
from berth.domain.errors import Unsupported

ALICE = Principal(1, "alice", False, "BKALICE", 1)


def test_parse_scopes() -> None:
    parsed = parse_scopes(
        [
            "repository:demo/app:pull,push repository:demo/lib:pull",
            "registry:catalog:*",
            "repository(plugin):demo/plug:pull",
            "malformed",
            "repository::pull",
            "repository:host:5000/demo/app:pull",  # the name may hold colons
        ]
    )
    assert parsed == [
        Scope("repository", "demo/app", frozenset({"pull", "push"})),
        Scope("repository", "demo/lib", frozenset({"pull"})),
        Scope("registry", "catalog", frozenset({"*"})),
        Scope("repository", "demo/plug", frozenset({"pull"})),
        Scope("repository", "host:5000/demo/app", frozenset({"pull"})),
    ]
    assert str(parsed[0]) == "repository:demo/app:pull,push"


def test_scopes_naming_one_resource_are_merged() -> None:
    parsed = parse_scopes(
        [
            "repository:demo/app:pull repository:demo/app:pull",
            "repository:demo/app:push",
            "repository(plugin):demo/app:pull",
            "registry:catalog:*",
            "repository:demo/lib:pull",
            "registry:catalog:*",
        ]
    )
    assert parsed == [
        Scope("repository", "demo/app", frozenset({"pull", "push"})),
        Scope("registry", "catalog", frozenset({"*"})),
        Scope("repository", "demo/lib", frozenset({"pull"})),
    ]


def test_a_request_naming_too_many_scopes_is_refused() -> None:
    names = [f"repository:demo/r{n}:pull" for n in range(MAX_SCOPES_PER_REQUEST + 1)]
    assert len(parse_scopes(names[:-1])) == MAX_SCOPES_PER_REQUEST
    # Counted as named, in any number of parameters: repeats and malformed ones too.
    for over in (names, [" ".join(names)], ["repository:demo/app:pull"] * len(names)):
        with pytest.raises(Unsupported) as refused:
            parse_scopes(over)
        assert refused.value.status == 400
        assert f"at most {MAX_SCOPES_PER_REQUEST} scopes" in refused.value.message


# What the caller may do on each repository; absent: no such repository.
RIGHTS = {"demo/app": PULL_PUSH, "demo/public": PULL_ONLY, "demo/owned": EVERY_ACTION}


async def _rights(repository: str) -> frozenset[str] | None:
    return RIGHTS.get(repository)


def _grant(principal: Principal | None, *scopes: str) -> list[dict[str, object]]:
    return asyncio.run(grant(principal, parse_scopes(list(scopes)), _rights))


def test_a_grant_is_what_was_asked_for_and_may_be_done() -> None:
    assert _grant(ALICE, "repository:demo/app:pull,push,delete") == [
        {"type": "repository", "name": "demo/app", "actions": ["pull", "push"]}
    ]
    assert _grant(ALICE, "repository:demo/public:push") == []  # nothing granted: left out
    assert _grant(ALICE, "repository:demo/missing:pull") == []


def test_a_wildcard_asks_for_every_action() -> None:
    assert _grant(ALICE, "repository:demo/owned:*") == [
        {"type": "repository", "name": "demo/owned", "actions": ["delete", "pull", "push"]}
    ]


def test_the_catalog_is_granted_to_signed_in_callers_only() -> None:
    catalog = {"type": "registry", "name": "catalog", "actions": ["*"]}
    assert _grant(ALICE, "registry:catalog:*") == [catalog]
    assert _grant(None, "registry:catalog:*") == []
    assert _grant(ALICE, "registry:other:*", "plugin:demo:pull") == []  # unknown types


@pytest.mark.parametrize(
    ("current", "token", "allowed"),
    [
        (EVERY_ACTION, None, EVERY_ACTION),  # no token: what the caller may do now
        (EVERY_ACTION, {"pull"}, PULL_ONLY),  # the token grants less
        (PULL_ONLY, {"pull", "push"}, PULL_ONLY),  # demoted since the token was issued
        (PULL_PUSH, {"*"}, PULL_PUSH),
        (EVERY_ACTION, set(), frozenset()),  # a token for another repository
    ],
)
def test_a_token_is_narrowed_to_current_rights(
    current: frozenset[str], token: set[str] | None, allowed: frozenset[str]
) -> None:
    access = None if token is None else {("repository", "demo/app"): frozenset(token)}
    if token == set():
        access = {("repository", "demo/other"): frozenset({"pull"})}
    assert downscope(current, access, "demo/app") == allowed


def test_the_challenge_asks_for_the_scope_that_was_missing() -> None:
    assert challenge_scope("demo/app", frozenset({"pull"})) == "repository:demo/app:pull"
    assert challenge_scope("demo/app", frozenset({"push"})) == "repository:demo/app:pull,push"
    assert challenge_scope("demo/app", frozenset({"delete"})) == "repository:demo/app:delete"
