"""Digest parsing (`berth.domain.digests`)."""

from __future__ import annotations

import pytest

from berth.domain.digests import parse_digest
from berth.domain.errors import DigestInvalid


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "md5:" + "a" * 32,
        "sha256:../../etc/passwd",
        "sha512:" + "a" * 64,
        "sha256:" + "a" * 64 + "/x",
    ],
)
def test_bad_digests_are_refused(digest: str) -> None:
    with pytest.raises(DigestInvalid):
        parse_digest(digest)


def test_sha512_digest_is_accepted() -> None:
    assert parse_digest("sha512:" + "b" * 128).algorithm == "sha512"
