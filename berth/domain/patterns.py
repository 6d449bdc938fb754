"""The patterns of a project's rules: one syntax and one matcher for immutable tag rules and
retention rules alike.

A pattern is a glob: `*` any run of characters (slashes too), `?` one character, `[abc]` /
`[a-c]` one of, `[!abc]` none of; everything else stands for itself, case-sensitively (as names
and tags are). A tag pattern is matched against the whole tag. A repository pattern is matched
against the repository and against the full name in the project (`repository/image`), so `app`
covers the repository app and every image in it, and `app/web*` only those images.

A pattern that no valid name (or tag) can match is refused: a rule for `../beta/app` or
`/app` would be saved and silently protect or keep nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
TAG_RULE = "a tag starts with a letter, a digit or '_', then letters, digits, '_', '.' and '-'"
NAME_RULE = (
    "a name is lowercase letters and digits with '.', '_', '__' or '-' between them, in parts "
    "joined by '/'"
)


@dataclass(frozen=True, slots=True)
class _Grammar:
    """A grammar of `berth.domain.names` as a finite automaton over kinds of characters (every
    ASCII letter and digit is `a`, see `_kind`; each other character is its own kind):
    `moves[state]` maps a kind to the next state; a value is whole in an `accepting` state."""

    alphabet: str  # every character a value may hold
    moves: Mapping[str, Mapping[str, str]]
    accepting: frozenset[str]
    what: str  # "repository name", for a person


def _kind(char: str) -> str:
    return "a" if char.isascii() and char.isalnum() else char


_LOWER_AND_DIGITS = "abcdefghijklmnopqrstuvwxyz0123456789"

# NAME_RE: components of alphanumerics with one '.', one or two '_' or any run of '-'
# between them, joined by single '/'.
_NAMES = _Grammar(
    alphabet=_LOWER_AND_DIGITS + "._-/",
    moves={
        "start": {"a": "alnum"},
        "alnum": {"a": "alnum", ".": "separated", "_": "underscore", "-": "dash", "/": "start"},
        "separated": {"a": "alnum"},
        "underscore": {"a": "alnum", "_": "separated"},
        "dash": {"a": "alnum", "-": "dash"},
    },
    accepting=frozenset({"alnum"}),
    what="repository name",
)

# TAG_RE: a letter, digit or '_' first; then letters, digits, '_', '.' and '-'. (A tag
# pattern is at most as long as a tag, so no pattern needs a tag longer than one can be.)
_TAGS = _Grammar(
    alphabet=_LOWER_AND_DIGITS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ_.-",
    moves={
        "start": {"a": "tag", "_": "tag"},
        "tag": {"a": "tag", "_": "tag", ".": "tag", "-": "tag"},
    },
    accepting=frozenset({"tag"}),
    what="tag",
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
    return _problem(
        pattern, "tag pattern", _TAG_CHARS, MAX_TAG_PATTERN, TAG_PATTERN_SYNTAX, _TAGS, TAG_RULE
    )


def repository_pattern_problem(pattern: str) -> str | None:
    """What is wrong with a repository pattern, said for a person; None when it is one."""
    return _problem(
        pattern,
        "repository pattern",
        _NAME_CHARS,
        MAX_REPOSITORY_PATTERN,
        REPOSITORY_PATTERN_SYNTAX,
        _NAMES,
        NAME_RULE,
    )


def _problem(
    pattern: str,
    what: str,
    allowed: str,
    most: int,
    syntax: str,
    grammar: _Grammar,
    rule: str,
) -> str | None:
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
    if (why := _unmatched(pattern, grammar)) is not None:
        return f"invalid {what} {pattern!r}: {why}, so it can match nothing ({rule})"
    return None


def _unmatched(pattern: str, grammar: _Grammar) -> str | None:
    """Why no value of `grammar` matches `pattern` (well-formed), for a person; None when some
    value does. Follows the automaton through the pattern: the states after each step are
    those some value matching the pattern so far can reach, so an empty set means no value
    begins that way (every state can still end a value)."""
    states = {"start"}
    for end, kinds in _steps(pattern, grammar.alphabet):
        if kinds is None:  # `*`: any run of characters, so whatever can follow
            states = _reachable(states, grammar)
        else:
            states = {
                grammar.moves[state][kind]
                for state in states
                for kind in kinds
                if kind in grammar.moves[state]
            }
        if not states:
            return f"no {grammar.what} begins with what {pattern[:end]!r} matches"
    if states.isdisjoint(grammar.accepting):
        return f"no {grammar.what} ends as {pattern!r} does"
    return None


def _steps(pattern: str, alphabet: str) -> Iterator[tuple[int, frozenset[str] | None]]:
    """The pattern's steps, each with where it ends in the pattern: the kinds of character
    (`_kind`) of `alphabet` one character matching it may be, or None for `*`. A `[...]`
    class is asked of fnmatch itself, so ranges and `!` mean here what they do in matching."""
    at = 0
    while at < len(pattern):
        char = pattern[at]
        found = _CLASS_RE.match(pattern, at) if char == "[" else None
        if found is not None:
            at = found.end()
            chars = [c for c in alphabet if fnmatchcase(c, found.group())]
        else:
            at += 1
            if char == "*":
                yield at, None
                continue
            chars = list(alphabet) if char == "?" else [char] if char in alphabet else []
        yield at, frozenset(_kind(c) for c in chars)


def _reachable(states: set[str], grammar: _Grammar) -> set[str]:
    """`states` and every state a run of characters leads to from them."""
    found = set(states)
    waiting = list(states)
    while waiting:
        for following in grammar.moves[waiting.pop()].values():
            if following not in found:
                found.add(following)
                waiting.append(following)
    return found
