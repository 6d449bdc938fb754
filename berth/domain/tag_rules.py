"""Immutable tag rules: which tags of a project cannot be moved to another image or removed.

A rule has a tag pattern and an optional repository pattern (no repository pattern: every
repository of the project). Their syntax and matching are `berth.domain.patterns`', which
retention rules share.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from berth.domain.errors import Denied, InvalidValue
from berth.domain.patterns import (
    glob_matches,
    repository_matches,
    repository_pattern_problem,
    tag_pattern_problem,
)

MAX_RULES = 100  # per project


@dataclass(frozen=True, slots=True)
class ImmutableTagRule:
    id: int
    tag_pattern: str
    repository_pattern: str | None  # None: every repository of the project

    def describe(self) -> str:
        """`rule 'v*' (repositories 'app/*')`, as refusals name it (single quotes: clients that
        log with logfmt, as skopeo and podman do, print them unescaped)."""
        scope = (
            f" (repositories '{self.repository_pattern}')"
            if self.repository_pattern is not None
            else ""
        )
        return f"rule '{self.tag_pattern}'{scope}"

    def covers(self, repository: str, tag: str) -> bool:
        """Whether the rule protects `tag` of the full name `repository` (`repo` or
        `repo/image`)."""
        if not glob_matches(self.tag_pattern, tag):
            return False
        return self.repository_pattern is None or repository_matches(
            self.repository_pattern, repository
        )


class TagImmutable(Denied):
    """A change that would move or remove a tag an immutable tag rule protects. On /v2 it is
    DENIED (403), which docker, podman and skopeo print with its message; the management API
    answers 409: the request conflicts with the project's rules."""

    api_status = 409

    def __init__(self, tag: str, rule: ImmutableTagRule, change: str) -> None:
        advice = "; push a new tag" if change.startswith("moved") else ""
        super().__init__(
            f"tag {tag} is immutable: {rule.describe()}; it cannot be {change}{advice}",
            {"tag": tag, "rule": rule.id},
        )
        self.rule = rule


class TagOverwriteDisabled(Denied):
    """A change that would move or remove a tag of a repository whose tag overwrite is off:
    each of its tags is immutable, refused as a rule's are (DENIED on /v2, 409 on the API).
    Deleting the repository itself stays possible: the switch goes with it."""

    api_status = 409

    def __init__(self, tag: str, repository: str, change: str) -> None:
        advice = (
            "; push a new tag"
            if change.startswith("moved")
            else f" (turn tag overwrite on first to let it be {change})"
        )
        super().__init__(
            f"tag {tag} is immutable: tag overwrite is disabled for repository {repository}; "
            f"it cannot be {change}{advice}",
            {"tag": tag, "tag_overwrite": False},
        )


def protecting_rule(
    rules: Iterable[ImmutableTagRule], repository: str, tag: str
) -> ImmutableTagRule | None:
    """The first rule that makes `tag` of `repository` (the full name in the project:
    `repo` or `repo/image`) immutable; None when no rule does."""
    for rule in rules:
        if rule.covers(repository, tag):
            return rule
    return None


def full_name(repository: str, image: str) -> str:
    """The name in the project that repository patterns are matched against."""
    return f"{repository}/{image}" if image else repository


def check_tag_pattern(pattern: str) -> str:
    """The pattern, or InvalidValue saying what a tag pattern may be."""
    if (problem := tag_pattern_problem(pattern)) is not None:
        raise InvalidValue(problem, "tag_pattern")
    return pattern


def check_repository_pattern(pattern: str) -> str:
    if (problem := repository_pattern_problem(pattern)) is not None:
        raise InvalidValue(problem, "repository_pattern")
    return pattern
