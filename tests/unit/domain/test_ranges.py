"""When a blob GET's Range is honoured (RFC 9110 13.1.5), for every way a blob is sent."""

from __future__ import annotations

import pytest

from berth.domain.errors import BlobRangeNotSatisfiable
from berth.domain.ranges import range_honoured, requested_range

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


@pytest.mark.parametrize(
    ("header", "size", "wanted"),
    [
        (None, 10, None),
        ("bytes=2-5", 10, (2, 6)),
        ("  bytes= 2-5  ", 10, (2, 6)),  # spaces nginx takes too
        ("BYTES=2-", 10, (2, 10)),
        ("bytes=-3", 10, (7, 10)),
        ("bytes=-30", 10, (0, 10)),
        ("bytes=0-" + "0" * 30 + "4", 10, (0, 5)),  # leading zeros are no large number
        ("bytes=0-1,3-4", 10, None),  # several satisfiable: the whole blob
        ("bytes=20- , 3-4", 10, (3, 5)),
        ("items=0-1", 10, None),
        ("bytes0-1", 10, None),
    ],
)
def test_the_range_a_request_gets(
    header: str | None, size: int, wanted: tuple[int, int] | None
) -> None:
    got = requested_range(header, size)
    assert (None if got is None else (got.start, got.end)) == wanted
    if got is not None:
        assert got.content_range == f"bytes {wanted[0]}-{wanted[1] - 1}/{size}"  # type: ignore[index]


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=abc", 10),
        ("bytes=", 10),
        ("bytes=1-2,", 10),
        ("bytes=1\\t-2", 10),
        ("bytes=\\t1-2", 10),  # a tab: nginx refuses it
        ("bytes=5-2", 10),
        ("bytes=0-9,5-2", 10),
        (f"bytes=0-{2**63}", 10),
        (f"bytes=0-{'9' * 5000}", 10),
        ("bytes=10-", 10),
        ("bytes=-0", 10),
        ("bytes=0-", 0),  # an empty blob has no byte to send
        ("bytes=-5", 0),
    ],
)
def test_an_invalid_or_unsatisfiable_range_is_a_416_with_the_size(header: str, size: int) -> None:
    with pytest.raises(BlobRangeNotSatisfiable) as refused:
        requested_range(header.replace("\\t", "\t"), size)
    assert refused.value.status == 416
    assert refused.value.headers == {"Content-Range": f"bytes */{size}"}
    assert len(refused.value.message) < 300  # a header of 5000 digits is not quoted whole


def test_the_largest_position_nginx_takes_is_taken() -> None:
    got = requested_range(f"bytes=3-{2**63 - 1}", 10)
    assert got is not None and (got.start, got.end, got.length) == (3, 10, 7)
