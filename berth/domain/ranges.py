"""A blob GET's or HEAD's Range: which bytes it gets, one rule for every way a blob is sent
(streamed by Berth from a file, from the object store or from a node's cached copy; by nginx
after an X-Accel-Redirect; by the object store after a presigned redirect).

Berth decides every answer before it hands the sending over, so the rule is one that nginx's
own (with `max_ranges 1`, deploy/nginx-accel.conf) agrees with wherever Berth lets it send:
- a Range in another unit than `bytes` is ignored (RFC 9110 14.2 says a server must): 200;
- a `bytes=` value that is no byte range set, holds an inverted range (`5-2`, invalid by
  14.1.1) or a number past 2**63 - 1 is refused with 416, as Distribution and nginx refuse
  them and the OCI conformance suite expects of `bytes=500-0`;
- of the ranges the blob can satisfy, none is a 416, one a 206 of it, and several the whole
  blob, 200: 14.2 lets a server ignore a Range, which S3 does for several ranges, and no
  registry client asks for more than one (a multipart answer would be a second body format
  to serve from every store, for nobody)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from berth.domain.errors import BlobRangeNotSatisfiable

_UNIT = "bytes="
# One range-spec of a byte range set: `first-[last]` or `-suffix`, with the spaces around the
# commas that nginx accepts too (RFC 9110's OWS; a tab, which nginx refuses, is refused here).
_RANGE_SPEC_RE = re.compile(r" *(?:(\d+)-(\d*)|-(\d+)) *")
_LARGEST = 2**63 - 1  # the largest position nginx (an off_t) and Distribution accept


@dataclass(frozen=True)
class ByteRange:
    """The bytes [start, end) of a blob of `size` bytes that a Range asks for."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end - 1}/{self.size}"


def requested_range(header: str | None, size: int) -> ByteRange | None:
    """The one range of a blob of `size` bytes that the Range `header` gets, or None when the
    whole blob is sent (no Range, another unit, several satisfiable ranges). Raises
    BlobRangeNotSatisfiable (416) for a byte range set that cannot be parsed, holds an
    inverted range, or asks for no byte of the blob."""
    if header is None:
        return None
    header = header.strip()
    if header[: len(_UNIT)].lower() != _UNIT:
        return None
    satisfiable: list[ByteRange] = []
    for spec in header[len(_UNIT) :].split(","):
        match = _RANGE_SPEC_RE.fullmatch(spec)
        if match is None:
            raise _invalid(header, size)
        first, last, suffix = match.groups()
        if suffix is not None:
            length = _number(suffix, header, size)
            if length and size:
                satisfiable.append(ByteRange(max(size - length, 0), size, size))
            continue
        start = _number(first, header, size)
        if last and _number(last, header, size) < start:
            raise _invalid(header, size)
        if start < size:
            end = min(_number(last, header, size) + 1, size) if last else size
            satisfiable.append(ByteRange(start, end, size))
    if not satisfiable:
        raise BlobRangeNotSatisfiable(
            f"the Range {_shown(header)} asks for no byte of the blob ({size} bytes)", size
        )
    return satisfiable[0] if len(satisfiable) == 1 else None


def _number(digits: str, header: str, size: int) -> int:
    # Compared by length first: int() refuses more than 4300 digits (a 500 for a header).
    significant = digits.lstrip("0")
    if len(significant) > len(str(_LARGEST)) or int(significant or "0") > _LARGEST:
        raise _invalid(header, size)
    return int(significant or "0")


def _invalid(header: str, size: int) -> BlobRangeNotSatisfiable:
    return BlobRangeNotSatisfiable(
        f"invalid Range {_shown(header)}: expected bytes=<first>-[<last>] or bytes=-<length>, "
        f"<first> <= <last> <= {_LARGEST}, ranges separated by commas",
        size,
    )


def _shown(header: str) -> str:
    """The header as an error message quotes it: a header of thousands of digits is cut."""
    return repr(header if len(header) <= 80 else header[:77] + "...")


def range_honoured(if_range: str | None, sender_etag_digest: str | None) -> bool:
    """Whether a Range with this If-Range gets the range (206) rather than the whole blob (200),
    as RFC 9110 13.1.5 says: always without an If-Range; with one, only when it is the strong
    ETag of what sends the bytes, `"<sender_etag_digest>"` (Berth's and nginx's ETag of a blob
    is its digest). A weak tag never matches, and neither does a date: a blob has a strong
    ETag, so a date cannot validate it. `sender_etag_digest` None: the sender's ETag is its
    own (an object store's), so no If-Range is known to match and the whole blob is assumed."""
    if if_range is None:
        return True
    return sender_etag_digest is not None and if_range.strip() == f'"{sender_etag_digest}"'
