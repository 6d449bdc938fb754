"""Digest grammar and hashing (sha256 and sha512)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from berth.domain.errors import DigestInvalid

_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"(sha256|sha512):([a-f0-9]+)")
# The same grammar as one regular expression, for schemas (the API's paths and queries).
DIGEST_PATTERN = (
    "^(?:"
    + "|".join(f"{name}:[a-f0-9]{{{length}}}" for name, length in _HEX_LENGTHS.items())
    + ")$"
)
DIGEST_RULE = "sha256:<64 lowercase hex digits> or sha512:<128 lowercase hex digits>"


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> Any:
        return hashlib.new(self.algorithm)


def parse_digest(value: str) -> Digest:
    """Parse and validate a digest; anything but lowercase sha256/sha512 hex is refused.

    Strict validation is also what keeps a digest safe to use as a storage path.
    """
    match = _DIGEST_RE.fullmatch(value)
    if match is None or len(match.group(2)) != _HEX_LENGTHS[match.group(1)]:
        raise DigestInvalid(
            f"invalid digest {value!r}: expected {DIGEST_RULE}",
            {"digest": value},
        )
    return Digest(match.group(1), match.group(2))


# The fewest hex digits a digest may be named by: as many as listings show.
SHORTEST_DIGEST_START = 12
_START_RE = re.compile(r"(?:(sha256|sha512):)?([a-f0-9]+)")


def digest_starts(value: str) -> list[str]:
    """The starts a stored digest has that `value` names as a user copies it from a listing:
    `sha256:` (or `sha512:`) and at least 12 of its hex digits, or those digits alone (what
    `berth image list` shows), which may begin a digest of either algorithm. Empty for
    anything else."""
    match = _START_RE.fullmatch(value)
    if match is None or len(hex_digits := match.group(2)) < SHORTEST_DIGEST_START:
        return []
    algorithms = [match.group(1)] if match.group(1) else list(_HEX_LENGTHS)
    return [f"{a}:{hex_digits}" for a in algorithms if len(hex_digits) <= _HEX_LENGTHS[a]]


def is_digest(reference: str) -> bool:
    return ":" in reference


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
