"""The patterns of a project's rules: one syntax and one matcher for immutable tag rules and
retention rules alike.

A pattern is a glob: `*` any run of characters (slashes too), `?` one character, `[abc]` /
`[a-c]` one of, `[!abc]` none of; everything else stands for itself, case-sensitively (as names
and tags are). A tag pattern is matched against the whole tag. A repository pattern is matched
against the repository and against the full name in the project (`repository/image`), so `app`
covers the repository app and every image in it, and `app/web*` only those images.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

MAX_TAG_PATTERN = 128  # a tag is at most 128 characters
MAX_REPOSITORY_PATTERN = 255  # as a name

# What may stand outside and inside a `[...]` class: the characters of a tag (or a name).
_TAG_CHARS = "A-Za-z0-9_.-"
_NAME_CHARS = "a-z0-9_./-"
_CLASS_RE = re.compile(r"\[!?([^\[\]]+)\]")

TAG_PATTERN_SYNTAX = "letters, digits, '_', '.', '-' and the wildcards *, ?, [...]"
REPOSITORY_PATTERN_SYNTAX = (
    "lowercase letters, digits, '_', '.', '-', '/' and the wildcards *, ?, [...]"
)


def glob_matches(pattern: str, value: str) -> bool:
    """Whether the whole `value` matches `pattern`. fnmatch compiles each `*` so that a match
    takes time linear in the value for each part of the pattern (a plain `.*` regex backtracks
    through every way of splitting the value among the stars), and the patterns are a project
    admin's to choose; it caches what it compiled."""
    return fnmatchcase(value, pattern)


def repository_matches(pattern: str, name: str) -> bool:
    """Whether a repository pattern covers `name`, the full name in the project (`repository`
    or `repository/image`): matched against the name and against its repository."""
    return glob_matches(pattern, name) or glob_matches(pattern, name.split("/", 1)[0])


def tag_pattern_problem(pattern: str) -> str | None:
    """What is wrong with a tag pattern, said for a person; None when it is one."""
    return _problem(pattern, "tag pattern", _TAG_CHARS, MAX_TAG_PATTERN, TAG_PATTERN_SYNTAX)


def repository_pattern_problem(pattern: str) -> str | None:
    """What is wrong with a repository pattern, said for a person; None when it is one."""
    return _problem(
        pattern,
        "repository pattern",
        _NAME_CHARS,
        MAX_REPOSITORY_PATTERN,
        REPOSITORY_PATTERN_SYNTAX,
    )


def _problem(pattern: str, what: str, allowed: str, most: int, syntax: str) -> str | None:
    if not pattern.strip():
        return f"a {what} cannot be empty"
    if len(pattern) > most:
        return f"a {what} has at most {most} characters"
    classes_ok = all(re.fullmatch(f"[{allowed}]+", found) for found in _CLASS_RE.findall(pattern))
    outside = _CLASS_RE.sub("", pattern)
    if not classes_ok or re.fullmatch(f"[*?{allowed}]*", outside) is None:
        if "[" in outside or "]" in outside:
            syntax += " (each '[' needs its ']' around at least one character)"
        return f"invalid {what} {pattern!r}: use {syntax}"
    return None
