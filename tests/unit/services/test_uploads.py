"""Parsing an upload chunk's Content-Range (`PATCH /v2/.../blobs/uploads/ID`)."""

from __future__ import annotations

import pytest

from berth.domain.errors import BlobUploadInvalid
from berth.services.uploads.bodies import parse_content_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0-99", (0, 99)),  # the distribution spec's form
        ("100-199", (100, 199)),
        ("bytes=0-99", (0, 99)),  # what some clients send, as for a Range
        ("bytes 0-99/100", (0, 99)),  # the RFC 9110 Content-Range form
        ("0-99/*", (0, 99)),
        (" 5-5 ", (5, 5)),  # one byte; surrounding blanks ignored
        ("0-" + "9" * 20, (0, int("9" * 20))),  # no size limit here: the upload checks it
    ],
)
def test_a_content_range_gives_its_first_and_last_byte(
    header: str, expected: tuple[int, int]
) -> None:
    assert parse_content_range(header) == expected


@pytest.mark.parametrize(
    "header",
    ["", "99-0", "0-", "-5", "abc", "0-99/abc", "bytes=0-99,200-299", "bytes:0-99", "0 - 99"],
)
def test_a_malformed_or_inverted_content_range_is_refused(header: str) -> None:
    with pytest.raises(BlobUploadInvalid, match="invalid Content-Range"):
        parse_content_range(header)
