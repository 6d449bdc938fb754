"""When a blob GET's Range is honoured: one rule for every way a blob is sent (streamed by
Berth from a file, from the object store or from a node's cached copy; by nginx after an
X-Accel-Redirect; by the object store after a presigned redirect)."""

from __future__ import annotations


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
