"""A SHA-256 saved mid-stream and picked up elsewhere gives hashlib's digest."""

from __future__ import annotations

import hashlib
import os

import pytest

from berth.domain.hash_state import STATE_TAG, resumable_sha256


def test_openssl_sha256_is_resumable_here() -> None:
    # Every machine Berth runs on has OpenSSL (hashlib needs it): the fallback is for oddities.
    assert resumable_sha256 is not None


@pytest.mark.parametrize("cuts", [[0], [1], [63, 64, 65], [1000, 70_001, 70_002], [5, 5]])
def test_a_state_saved_at_any_offset_resumes_to_hashlibs_digest(cuts: list[int]) -> None:
    assert resumable_sha256 is not None
    data = os.urandom(100_000)
    hasher, done = resumable_sha256(), 0
    for cut in [*cuts, len(data)]:
        hasher.update(data[done:cut])
        done = cut
        hasher = resumable_sha256.from_state(hasher.state())  # another node picks it up
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert hasher.copy().hexdigest() == hasher.hexdigest()  # a digest does not end it


def test_a_digest_midway_leaves_the_state_going_on() -> None:
    assert resumable_sha256 is not None
    hasher = resumable_sha256()
    hasher.update(b"abc")
    assert hasher.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    hasher.update(memoryview(b"def"))
    assert hasher.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()


@pytest.mark.parametrize(
    "state", [b"", b"garbage", STATE_TAG + b"\0" * 10, STATE_TAG + b"\xff" * 108]
)
def test_anything_but_a_saved_state_is_refused(state: bytes) -> None:
    assert resumable_sha256 is not None
    with pytest.raises(ValueError, match="not a saved SHA-256 state"):
        resumable_sha256.from_state(state)
