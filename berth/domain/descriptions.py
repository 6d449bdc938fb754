"""What text people type may hold: a description (of a repository, of a webhook) and a search
(of repositories, of users) refuse the same characters, in one wording, for the API, the CLI and
the console (views/repositories.js checks descriptions in the same words). No text Berth stores
may hold a lone surrogate (`lone_surrogate`, said as `NOT_TEXT`): every API request body refuses
one in any field (berth/api/bodies.py), and the CLI's texts are refused by these rules and the
webhook URL's."""

from __future__ import annotations

import unicodedata

MAX_DESCRIPTION = 100
DESCRIPTION_RULE = (
    f"a description is at most {MAX_DESCRIPTION} characters, with no line breaks or control "
    "characters"
)
SEARCH_RULE = "a search has no line breaks or control characters"
# Line and paragraph separators break a line as a newline does; the bidirectional embedding,
# override and isolate controls reorder the text shown after them (a description that reads
# as something else, "Trojan Source"). Any other text (a non-breaking space, an emoji joined
# by U+200D, a right-to-left mark in Arabic or Hebrew) is what a person may type.
_ALSO_REFUSED = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# The same characters for a JSON Schema pattern: control characters are category Cc. (Lone
# surrogates are refused too, but a pattern cannot say so: without the `u` flag it reads UTF-16
# code units, where an emoji is a pair of surrogates.)
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]*$"


NOT_TEXT = (
    "not text: it holds a lone surrogate, which is no character (half of a UTF-16 pair, such "
    "as JSON's \\ud800, escaped alone; in a command's argument, a byte that is not UTF-8)"
)


def lone_surrogate(text: str) -> str | None:
    """The first lone surrogate in `text`; None when it has none. JSON's `\\ud800` escaped alone
    and a command argument that is not UTF-8 (Python's surrogateescape) give one: no
    character, so no UTF-8 text holds it and the database refuses to store it. (A pair escaped
    in JSON is decoded as the one character it encodes.)"""
    return next((c for c in text if unicodedata.category(c) == "Cs"), None)


def _refused_character(text: str) -> str | None:
    """The first control character, line break or lone surrogate in `text`; None when it has
    none."""
    return next(
        (c for c in text if unicodedata.category(c) in ("Cc", "Cs") or c in _ALSO_REFUSED), None
    )


def _refusal(rule: str, refused: str) -> str:
    if lone_surrogate(refused):
        return f"{rule}; this one is {NOT_TEXT}"
    return f"{rule}; this one has {refused!r}"


def description_problem(description: str) -> str | None:
    """Why `description` cannot be a description, for a person; None when it can."""
    if len(description) > MAX_DESCRIPTION:
        return f"{DESCRIPTION_RULE}; this one has {len(description)} characters"
    refused = _refused_character(description)
    return None if refused is None else _refusal(DESCRIPTION_RULE, refused)


def search_problem(search: str) -> str | None:
    """Why `search` cannot be searched for, for a person; None when it can."""
    refused = _refused_character(search)
    return None if refused is None else _refusal(SEARCH_RULE, refused)
