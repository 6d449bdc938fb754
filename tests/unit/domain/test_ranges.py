"""When a blob GET's Range is honoured (RFC 9110 13.1.5), for every way a blob is sent."""

from __future__ import annotations

import pytest

from berth.domain.ranges import range_honoured

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("if_range", "sender", "honoured"),
    [
        (None, DIGEST, True),  # no If-Range: the Range as asked
        (None, None, True),
        (f'"{DIGEST}"', DIGEST, True),  # the sender's strong ETag
        (f' "{DIGEST}" ', DIGEST, True),
        (f'W/"{DIGEST}"', DIGEST, False),  # a weak tag never matches
        (DIGEST, DIGEST, False),  # not an entity tag (no quotes)
        ('"another"', DIGEST, False),
        ("Wed, 21 Oct 2015 07:28:00 GMT", DIGEST, False),  # a date cannot validate a blob
        (f'"{DIGEST}"', None, False),  # an object store's ETag is its own
    ],
)
def test_a_range_is_honoured_only_without_if_range_or_with_the_senders_etag(
    if_range: str | None, sender: str | None, honoured: bool
) -> None:
    assert range_honoured(if_range, sender) is honoured
