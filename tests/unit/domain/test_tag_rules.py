"""Immutable tag rules: which rule protects a tag, and which patterns are refused."""

from __future__ import annotations

import pytest

from berth.domain.errors import InvalidValue
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


@pytest.mark.parametrize("pattern", ["app", "app/*", "team-?/web", "[a-c]*"])
def test_repository_patterns_accepted(pattern: str) -> None:
    assert check_repository_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["", "App", "app name", "app:1", "a" * 256])
def test_repository_patterns_refused(pattern: str) -> None:
    with pytest.raises(InvalidValue) as refused:
        check_repository_pattern(pattern)
    assert refused.value.field == "repository_pattern"
