"""Upstream's redesigned TestBlobAPIs: every way to push a blob, mounts, range reads,
well-known blobs and bad digests, with sha256 and sha512."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import pytest

from tests.conformance.blob_pushes import (
    check_pushed_blob,
    chunk_floor,
    mount,
    push_chunked,
    push_post_only,
    push_post_put,
    push_stream,
)
from tests.conformance.checks import (
    check_error,
    delete_blob_checked,
)
from tests.oci import (
    EMPTY_JSON,
    Blob,
    assert_status,
    blob_path,
    describe,
    location,
    random_blob,
    uploads_path,
)

if TYPE_CHECKING:
    from tests.conftest import Repo


ALGORITHMS = ["sha256", "sha512"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
class TestBlobAPIs:
    def test_get_missing_blob(self, repo: Repo, algorithm: str) -> None:
        missing = random_blob(512, algorithm=algorithm)
        assert_status(repo.client.get(blob_path(repo.name, missing.digest)), 404)

    def test_post_only(self, repo: Repo, algorithm: str) -> None:
        blob = random_blob(512, algorithm=algorithm)
        push_post_only(repo.client, repo.name, blob.data, blob.digest)
        check_pushed_blob(repo.client, repo.name, blob)

    def test_post_put(self, repo: Repo, algorithm: str) -> None:
        blob = random_blob(512, algorithm=algorithm)
        push_post_put(repo.client, repo.name, blob.data, blob.digest)
        check_pushed_blob(repo.client, repo.name, blob)

    def test_stream(self, repo: Repo, algorithm: str) -> None:
        blob = random_blob(512, algorithm=algorithm)
        push_stream(repo.client, repo.name, blob.data, blob.digest)
        check_pushed_blob(repo.client, repo.name, blob)

    def test_chunked_single(self, repo: Repo, algorithm: str) -> None:
        blob = random_blob(512, algorithm=algorithm)
        push_chunked(repo.client, repo.name, blob.data, blob.digest)
        check_pushed_blob(repo.client, repo.name, blob)

    @pytest.mark.parametrize(
        ("put_last", "out_of_order"),
        [(False, False), (True, False), (False, True), (True, True)],
        ids=["multi", "multi-put-last-chunk", "out-of-order", "out-of-order-put-last-chunk"],
    )
    def test_chunked(self, repo: Repo, algorithm: str, put_last: bool, out_of_order: bool) -> None:
        """Three chunks, the last PATCHed or sent with the closing PUT; with out-of-order
        chunks refused (416) and recovered from with GET of the session."""
        size = chunk_floor(repo.client, repo.name) * 3 - 5
        blob = random_blob(size, algorithm=algorithm)
        push_chunked(
            repo.client,
            repo.name,
            blob.data,
            blob.digest,
            put_last=put_last,
            out_of_order=out_of_order,
        )
        check_pushed_blob(repo.client, repo.name, blob)

    def test_cancel_upload(self, repo: Repo, algorithm: str) -> None:
        """DELETE of an upload session is 204 (upstream, spec version "dev").

        spec: the cancelled session is then unknown (404)."""
        started = repo.client.post(uploads_path(repo.name))
        assert_status(started, 202)
        session = location(started)
        cancelled = repo.client.delete(session, headers={"Content-Length": "0"})
        assert_status(cancelled, 204)
        gone = repo.client.get(session)
        assert_status(gone, 404)
        check_error(gone, "BLOB_UPLOAD_UNKNOWN")

    def test_mount(self, repo: Repo, algorithm: str, other: str) -> None:
        """Push to the other repository, mount it from there (`mount`+`from`)."""
        blob = random_blob(512, algorithm=algorithm)
        push_post_put(repo.client, other, blob.data, blob.digest)
        mount(repo.client, repo.name, other, blob)
        check_pushed_blob(repo.client, repo.name, blob)
        delete_blob_checked(repo.client, other, blob.digest)

    def test_mount_anonymous(self, repo: Repo, algorithm: str, other: str) -> None:
        """Push to the other repository, mount it without `from`: 201 (automatic mount) or
        202 and a normal upload (warning)."""
        blob = random_blob(512, algorithm=algorithm)
        push_post_put(repo.client, other, blob.data, blob.digest)
        if mount(repo.client, repo.name, None, blob) == 202:
            warnings.warn("blob mount without `from` is not supported (202)", stacklevel=1)
        check_pushed_blob(repo.client, repo.name, blob)
        delete_blob_checked(repo.client, other, blob.digest)

    def test_mount_missing(self, repo: Repo, algorithm: str, other: str) -> None:
        """Mounting from a repository that does not have the blob must not succeed: 202 and
        an upload session (which a PUT completes)."""
        blob = random_blob(512, algorithm=algorithm)
        assert mount(repo.client, repo.name, other, blob) == 202, "mount of a missing blob"
        check_pushed_blob(repo.client, repo.name, blob)

    def test_range_requests(self, repo: Repo, algorithm: str) -> None:
        """GET with Range: 206 with the bytes, Content-Length and Content-Range (total length or
        `*`); unsatisfiable ranges 416. A 200 with the whole blob fails (no Range support)."""
        size = 2048
        blob = random_blob(size, algorithm=algorithm)
        push_post_put(repo.client, repo.name, blob.data, blob.digest)
        cases: list[tuple[str, int, int]] = [
            ("bytes=500-1499", 500, 1499),
            ("bytes=500-", 500, size - 1),
            ("bytes=-500", size - 500, size - 1),
            ("bytes=2000-5000", 2000, size - 1),
        ]
        for header, first, last in cases:
            response = repo.client.get(blob_path(repo.name, blob.digest), headers={"Range": header})
            assert response.status_code != 200, f"Range ignored: {describe(response)}"
            assert_status(response, 206)
            assert response.content == blob.data[first : last + 1], header
            assert response.headers.get("Content-Length") == str(last - first + 1), header
            assert response.headers.get("Content-Range") in (
                f"bytes {first}-{last}/{size}",
                f"bytes {first}-{last}/*",
            ), describe(response)
        for header in ("bytes=500-0", "bytes=5000-10000"):
            response = repo.client.get(blob_path(repo.name, blob.digest), headers={"Range": header})
            assert_status(response, 416)
        delete_blob_checked(repo.client, repo.name, blob.digest)

    @pytest.mark.parametrize("content", [b"", EMPTY_JSON], ids=["empty", "empty-json"])
    def test_well_known_blob(self, repo: Repo, algorithm: str, content: bytes) -> None:
        """The zero-byte blob and `{}` push, HEAD (Content-Length 0 or 2), GET and delete."""
        blob = Blob(content, algorithm=algorithm)
        push_post_put(repo.client, repo.name, blob.data, blob.digest)
        check_pushed_blob(repo.client, repo.name, blob)

    @pytest.mark.parametrize(
        "mode", ["post-only", "post-put", "chunked", "chunked-put-last-chunk", "stream"]
    )
    def test_bad_digest(self, repo: Repo, algorithm: str, mode: str) -> None:
        """Content that does not match the digest given is refused with 400 (DIGEST_INVALID)
        however it is uploaded.

        spec: nothing is then stored under that digest."""
        client = repo.client
        blob = random_blob(chunk_floor(client, repo.name) * 3 - 5, algorithm=algorithm)
        corrupted = blob.data + b"oh no"
        if mode == "post-only":
            push_post_only(client, repo.name, corrupted, blob.digest, bad=True)
        elif mode == "post-put":
            push_post_put(client, repo.name, corrupted, blob.digest, bad=True)
        elif mode == "stream":
            push_stream(client, repo.name, corrupted, blob.digest, bad=True)
        else:
            put_last = mode == "chunked-put-last-chunk"
            push_chunked(client, repo.name, corrupted, blob.digest, put_last=put_last, bad=True)
        assert_status(client.head(blob_path(repo.name, blob.digest)), 404)
