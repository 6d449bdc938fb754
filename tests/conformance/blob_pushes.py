"""The redesigned runner's ways to push a blob (upstream api.go), used by the blob tests and
to push data sets."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import httpx

from tests.conformance.checks import (
    CHUNK_MIN,
    check_blob_get,
    check_blob_head,
    check_digest_header,
    check_error,
    delete_blob_checked,
    verify_location,
)
from tests.oci import (
    OCTET_STREAM,
    Blob,
    assert_status,
    describe,
    location,
    patch_upload,
    put_upload,
    start_upload,
    uploads_path,
)


def check_upload_closed(
    client: httpx.Client, closed: httpx.Response, digest: str, data: bytes, bad: bool
) -> None:
    """The request that closed an upload: 201 with the digest and a Location serving the
    data; or, for a wrong digest (`bad`), 400 DIGEST_INVALID."""
    if bad:
        assert_status(closed, 400)
        check_error(closed, "DIGEST_INVALID")
        return
    assert_status(closed, 201)
    check_digest_header(closed, digest)
    verify_location(client, location(closed), data)


def push_post_put(
    client: httpx.Client, name: str, data: bytes, digest: str, bad: bool = False
) -> None:
    """POST for a session (202 + Location), PUT the body with the digest (201)."""
    started = client.post(uploads_path(name))
    assert_status(started, 202)
    done = put_upload(client, location(started), digest, data)
    check_upload_closed(client, done, digest, data, bad)


def push_post_only(
    client: httpx.Client, name: str, data: bytes, digest: str, bad: bool = False
) -> None:
    """One POST with ?digest= and the body: 201; or 202 + Location for a registry without
    single-POST uploads, after which a PUT finishes the upload."""
    response = client.post(
        uploads_path(name),
        params={"digest": digest},
        content=data,
        headers={"Content-Type": OCTET_STREAM, "Content-Length": str(len(data))},
    )
    if bad:
        assert_status(response, 400, 202)
    else:
        assert_status(response, 201, 202)
        location(response)
    if response.status_code == 202:
        warnings.warn("single-POST blob upload is not supported (202)", stacklevel=1)
        response = put_upload(client, location(response), digest, data)
        assert_status(response, 400 if bad else 201)
    if bad:
        check_error(response, "DIGEST_INVALID")
        return
    check_digest_header(response, digest)
    verify_location(client, location(response), data)


def push_chunked(
    client: httpx.Client,
    name: str,
    data: bytes,
    digest: str,
    *,
    put_last: bool = False,
    out_of_order: bool = False,
    bad: bool = False,
) -> None:
    """Upstream `BlobPatchChunked`: chunks of a third of the blob (at least CHUNK_MIN, and at
    least OCI-Chunk-Min-Length), each PATCH 202 with `Range: 0-<end>`; the closing PUT (which
    may carry the last chunk) 201. With `out_of_order`, before each chunk a wrong one (skipping
    ahead, or back to 0) is sent and must be 416, then a GET of the session must be 204 with
    `Range: 0-<end so far>` and the Location to continue at."""
    started = start_upload(client, name)
    assert_status(started, 202)
    session = location(started)
    size = len(data)
    chunk = size // 3 + 1
    minimum = started.headers.get("OCI-Chunk-Min-Length")
    if minimum:
        chunk = max(chunk, int(minimum))
    chunk = min(max(chunk, CHUNK_MIN), size)
    end = -1
    final: httpx.Response | None = None
    while end < size - 1:
        if out_of_order:
            wrong_start = end + 1 + chunk
            if wrong_start >= size:
                wrong_start = 0
            wrong_end = min(wrong_start + chunk - 1, size - 1)
            piece, span = data[wrong_start : wrong_end + 1], f"{wrong_start}-{wrong_end}"
            if put_last and wrong_end == size - 1:
                wrong = put_upload(client, session, digest, piece, {"Content-Range": span})
            else:
                wrong = patch_upload(client, session, piece, span)
            assert_status(wrong, 416)
            session = wrong.headers.get("Location") or session
            status = client.get(session)
            assert_status(status, 204)
            session = location(status)
            uploaded = status.headers.get("Range", "")
            assert uploaded.startswith("0-"), f"bad upload Range: {describe(status)}"
            upto = int(uploaded[2:])
            if end >= 0:
                assert upto == end, f"upload Range should be 0-{end}: {describe(status)}"
        start, end = end + 1, min(end + chunk, size - 1)
        piece, span = data[start : end + 1], f"{start}-{end}"
        if put_last and end == size - 1:
            final = put_upload(client, session, digest, piece, {"Content-Range": span})
        else:
            patched = patch_upload(client, session, piece, span)
            assert_status(patched, 202)
            assert patched.headers.get("Range") == f"0-{end}", describe(patched)
            session = location(patched)
    if final is None:
        final = put_upload(client, session, digest)
    check_upload_closed(client, final, digest, data, bad)


def push_stream(
    client: httpx.Client, name: str, data: bytes, digest: str, bad: bool = False
) -> None:
    """POST, one PATCH streaming the body (chunked transfer encoding, no Content-Range or
    Content-Length), PUT with the digest (201 and a Location)."""
    started = start_upload(client, name)
    assert_status(started, 202)
    patched = client.patch(
        location(started), content=iter([data]), headers={"Content-Type": OCTET_STREAM}
    )
    assert_status(patched, 202)
    done = put_upload(client, location(patched), digest)
    check_upload_closed(client, done, digest, data, bad)


# The ways to push a blob, used in turn to push data sets (upstream `TestPushBlobAny` also
# spreads its pushes over every blob API).
PUSH_MODES: list[Callable[[httpx.Client, str, bytes, str], None]] = [
    push_post_put,
    push_post_only,
    push_stream,
    push_chunked,
]


def mount(client: httpx.Client, name: str, source: str | None, blob: Blob) -> int:
    """Upstream `BlobMount`: 201, or 202 and a session the client completes with a PUT; either
    way the blob ends up served at the returned Location. Returns the POST's status."""
    params = {"mount": blob.digest}
    if source is not None:
        params["from"] = source
    response = client.post(uploads_path(name), params=params)
    assert_status(response, 201, 202)
    status = response.status_code
    if status == 202:
        response = put_upload(client, location(response), blob.digest, blob.data)
        assert_status(response, 201)
    check_digest_header(response, blob.digest)
    verify_location(client, location(response), blob.data)
    return status


def chunk_floor(client: httpx.Client, name: str) -> int:
    """The chunk size multi-chunk tests plan for: CHUNK_MIN or the registry's minimum."""
    started = start_upload(client, name)
    assert_status(started, 202)
    minimum = int(started.headers.get("OCI-Chunk-Min-Length") or 0)
    client.delete(location(started))
    return max(CHUNK_MIN, minimum)


def check_pushed_blob(client: httpx.Client, name: str, blob: Blob) -> None:
    """After a push: HEAD and GET find it, and it deletes (then HEAD is 404)."""
    check_blob_head(client, name, blob)
    check_blob_get(client, name, blob)
    delete_blob_checked(client, name, blob.digest)
