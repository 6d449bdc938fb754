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


def is_digest(reference: str) -> bool:
    return ":" in reference


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
