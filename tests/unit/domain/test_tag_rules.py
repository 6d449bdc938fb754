"""Immutable tag rules: which rule protects a tag, and which patterns are refused."""

from __future__ import annotations

import itertools

import pytest

from berth.domain.errors import InvalidValue
from berth.domain.names import is_valid_name, is_valid_tag
from berth.domain.patterns import repository_pattern_problem, tag_pattern_problem
from berth.domain.tag_rules import (
    ImmutableTagRule,
    TagImmutable,
    check_repository_pattern,
    check_tag_pattern,
    full_name,
    protecting_rule,
)

VERSIONS = ImmutableTagRule(1, "v*", None)
RELEASES_OF_APP = ImmutableTagRule(2, "release-*", "app")
WEB_IMAGES = ImmutableTagRule(3, "stable", "app/web*")


@pytest.mark.parametrize(
    ("repository", "tag", "rule"),
    [
        ("app", "v1", VERSIONS),
        ("other/x", "v1.2.3", VERSIONS),
        ("app", "1.0", None),
        ("app", "latest-v1", None),  # the whole tag is matched, not a part of it
        ("app", "V1", None),  # case-sensitive, as tags are
        ("app", "release-2024", RELEASES_OF_APP),
        ("app/api", "release-2024", RELEASES_OF_APP),  # a repository covers its images
        ("apps", "release-2024", None),
        ("application/api", "release-2024", None),
        ("app/webshop", "stable", WEB_IMAGES),
        ("app/api", "stable", None),
        ("app", "stable", None),
    ],
)
def test_the_first_matching_rule_protects(
    repository: str, tag: str, rule: ImmutableTagRule | None
) -> None:
    assert protecting_rule([VERSIONS, RELEASES_OF_APP, WEB_IMAGES], repository, tag) == rule


def test_the_first_rule_in_order_is_named() -> None:
    broad = ImmutableTagRule(7, "*", None)
    assert protecting_rule([broad, VERSIONS], "app", "v1") == broad
    assert protecting_rule([], "app", "v1") is None


def test_a_refusal_names_the_rule_and_its_scope() -> None:
    refusal = TagImmutable("v1", ImmutableTagRule(4, "v*", "app/*"), "moved to another image")
    assert refusal.message == (
        "tag v1 is immutable: rule 'v*' (repositories 'app/*'); it cannot be moved to another "
        "image; push a new tag"
    )
    assert refusal.code == "DENIED" and refusal.status == 403 and refusal.api_status == 409
    assert TagImmutable("v1", VERSIONS, "deleted").message == (
        "tag v1 is immutable: rule 'v*'; it cannot be deleted"
    )


def test_full_names() -> None:
    assert full_name("app", "") == "app"
    assert full_name("app", "web/front") == "app/web/front"


@pytest.mark.parametrize("pattern", ["v*", "release-*", "*", "v?.[0-9]*", "[!x]*", "1.0_rc"])
def test_tag_patterns_accepted(pattern: str) -> None:
    assert check_tag_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "pattern", ["", " ", "v 1", "v/1", "[v", "v]", "[]", "v!", "v:1", "x" * 129, "tag\n"]
)
def test_tag_patterns_refused(pattern: str) -> None:
    with pytest.raises(InvalidValue) as refused:
        check_tag_pattern(pattern)
    assert refused.value.field == "tag_pattern"


@pytest.mark.parametrize(
    "pattern",
    ["app", "app/*", "team-?/web", "[a-c]*", "*", "**", "*/web", "a__b", "a--b", "?", "[!x]"],
)
def test_repository_patterns_accepted(pattern: str) -> None:
    assert check_repository_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["", "App", "app name", "app:1", "a" * 256])
def test_repository_patterns_refused(pattern: str) -> None:
    with pytest.raises(InvalidValue) as refused:
        check_repository_pattern(pattern)
    assert refused.value.field == "repository_pattern"


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("../beta/app", "no repository name begins with what '.' matches"),
        ("/beta/app", "no repository name begins with what '/' matches"),
        ("*/../../*", "no repository name begins with what '*/.' matches"),
        ("app//web", "no repository name begins with what 'app//' matches"),
        ("a___b", "no repository name begins with what 'a___' matches"),
        ("a.-b", "no repository name begins with what 'a.-' matches"),
        ("[._-]*", "no repository name begins with what '[._-]' matches"),
        ("[!a-z0-9]*", "no repository name begins with what '[!a-z0-9]' matches"),
        ("app/", "no repository name ends as 'app/' does"),
        ("app*-", "no repository name ends as 'app*-' does"),
    ],
)
def test_repository_patterns_that_no_name_can_match_are_refused_saying_why(
    pattern: str, why: str
) -> None:
    with pytest.raises(InvalidValue) as refused:
        check_repository_pattern(pattern)
    assert refused.value.field == "repository_pattern"
    assert f"invalid repository pattern {pattern!r}: {why}, so it can match nothing" in str(
        refused.value
    )


@pytest.mark.parametrize("pattern", ["-rc*", ".hidden", "[.-]*", "[-]"])
def test_tag_patterns_that_no_tag_can_match_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidValue, match="no tag begins with what") as refused:
        check_tag_pattern(pattern)
    assert refused.value.field == "tag_pattern"


def test_a_pattern_without_wildcards_is_refused_exactly_when_it_is_no_name_or_tag() -> None:
    """The automata the check follows are the names' and tags' grammars: a literal pattern
    matches only itself, so it must be accepted exactly when it is a valid name (tag)."""
    for length in range(1, 6):
        for chars in itertools.product("a._-/", repeat=length):
            value = "".join(chars)
            assert (repository_pattern_problem(value) is None) is is_valid_name(value), value
        for chars in itertools.product("aZ._-", repeat=length):
            value = "".join(chars)
            assert (tag_pattern_problem(value) is None) is is_valid_tag(value), value
