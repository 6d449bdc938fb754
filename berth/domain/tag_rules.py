"""Immutable tag rules: which tags of a project cannot be moved to another image or removed.

A rule has a tag pattern and an optional repository pattern, both globs (`*` any run of
characters, `?` one character, `[abc]` / `[!abc]` one of / none of). The tag pattern is matched
against the whole tag; the repository pattern against the repository and against the full name
in the project (`repository/image`), so `app` covers the repository app and every image in it,
and `app/web*` only those images. Matching is case-sensitive, as names and tags are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from berth.domain.errors import Denied, InvalidValue

MAX_TAG_PATTERN = 128  # a tag is at most 128 characters
MAX_REPOSITORY_PATTERN = 255  # as a name
MAX_RULES = 100  # per project

# What may stand outside and inside a `[...]` class: the characters of a tag (or a name).
_TAG_CHARS = "A-Za-z0-9_.-"
_NAME_CHARS = "a-z0-9_./-"
_CLASS_RE = re.compile(r"\[!?([^\[\]]+)\]")


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
        if not fnmatchcase(tag, self.tag_pattern):
            return False
        if self.repository_pattern is None:
            return True
        first = repository.split("/", 1)[0]
        return fnmatchcase(repository, self.repository_pattern) or fnmatchcase(
            first, self.repository_pattern
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
    return _check(
        pattern,
        "tag_pattern",
        _TAG_CHARS,
        MAX_TAG_PATTERN,
        "letters, digits, '_', '.', '-' and the wildcards *, ?, [...]",
    )


def check_repository_pattern(pattern: str) -> str:
    return _check(
        pattern,
        "repository_pattern",
        _NAME_CHARS,
        MAX_REPOSITORY_PATTERN,
        "lowercase letters, digits, '_', '.', '-', '/' and the wildcards *, ?, [...]",
    )


def _check(pattern: str, field: str, allowed: str, most: int, chars: str) -> str:
    what = field.replace("_", " ")
    if not pattern.strip():
        raise InvalidValue(f"a {what} cannot be empty", field)
    if len(pattern) > most:
        raise InvalidValue(f"a {what} has at most {most} characters", field)
    classes_ok = all(re.fullmatch(f"[{allowed}]+", found) for found in _CLASS_RE.findall(pattern))
    outside = _CLASS_RE.sub("", pattern)
    if not classes_ok or re.fullmatch(f"[*?{allowed}]*", outside) is None:
        if "[" in outside or "]" in outside:
            chars += " (each '[' needs its ']' around at least one character)"
        raise InvalidValue(f"invalid {what} {pattern!r}: use {chars}", field)
    return pattern
