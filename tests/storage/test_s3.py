"""The S3 driver against the blob store contract on real S3 servers (SeaweedFS, Ceph RGW), plus what
only it promises: refusing bad credentials and a missing bucket clearly, uploads in pieces of
any size, multipart commits and ranged reads."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from prometheus_client import REGISTRY

from berth.domain.errors import BlobUnknown, Unavailable
from berth.metadata.database import Database
from berth.services.blobs import SMALL_BLOB_BYTES
from berth.services.registry import Registry
from berth.storage import s3 as s3_module
from berth.storage.base import BlobStore, StoredCopy
from berth.storage.blob_cache import BlobCache
from berth.storage.s3 import S3BlobStore
from berth.storage.s3_errors import (
    PERMISSIONS_NEEDED,
    REFUSED_CREDENTIALS,
    REFUSED_LISTING,
    REFUSED_REQUEST,
    ObjectStoreError,
)
from berth.storage.s3_pieces import MIN_PART_BYTES, PIECE_BYTES
from tests.ports import free_port
from tests.rgw import CephRGW
from tests.s3 import BUCKET, READER_KEY_ID, FaultyProxy, S3TestServer, SeaweedFS
from tests.unit.storage.contract import (
    BlobStoreContract,
    MiB,
    Scratch,
    digest_of,
    listed,
    payload,
    put,
    read_all,
    write_upload,
)

pytestmark = pytest.mark.anyio


class TestS3BlobStore(BlobStoreContract):
    def make_store(self, tmp_path: Path) -> BlobStore:
        raise NotImplementedError("an S3 store needs an S3 server: see `store`")

    @pytest.fixture
    async def store(self, object_store: S3TestServer) -> AsyncIterator[BlobStore]:
        store = S3BlobStore(object_store.location())  # a prefix of its own: an empty store
        yield store
        await store.close()


@pytest.fixture
async def s3_store(object_store: S3TestServer) -> AsyncIterator[S3BlobStore]:
    store = S3BlobStore(object_store.location())
    yield store
    await store.close()


def object_keys(object_store: S3TestServer, prefix: str) -> list[str]:
    answer = object_store.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [entry["Key"] for entry in answer.get("Contents", [])]


async def upload_in_requests(store: BlobStore, chunks: list[bytes]) -> Scratch:
    """A new upload started empty (the POST), then each chunk as a PATCH of its own."""
    scratch = Scratch(store)
    await scratch.append(b"")
    for chunk in chunks:
        await scratch.append(chunk, chunk=len(chunk) or 1)
    return scratch


# ------------------------------------------------------------ refusals that say why


async def test_a_wrong_secret_is_refused_naming_the_bucket_and_endpoint(
    object_store: S3TestServer,
) -> None:
    store = S3BlobStore(object_store.location(secret_access_key="not-the-secret"))
    try:
        with pytest.raises(ObjectStoreError) as refused:
            await store.stat(digest_of(b"anything"))
    finally:
        await store.close()
    message = str(refused.value)
    assert "refused the credentials" in message
    assert BUCKET in message and object_store.endpoint in message
    assert refused.value.refusal == REFUSED_CREDENTIALS and not refused.value.passing


async def test_a_missing_bucket_is_refused_naming_it(object_store: S3TestServer) -> None:
    store = S3BlobStore(object_store.location(bucket="no-such-bucket"))
    try:
        with pytest.raises(ObjectStoreError) as refused:
            await write_upload(store, b"data")
    finally:
        await store.close()
    assert "'no-such-bucket'" in str(refused.value)
    assert "does not exist" in str(refused.value)


async def test_the_write_check_refuses_credentials_that_may_read_but_not_write(
    seaweedfs: SeaweedFS,
) -> None:
    """Credentials that may read and list the bucket pass `check` (HeadBucket); the write
    check is refused naming the bucket and the write refused (not the credentials, which the
    check accepted), and leaves nothing behind."""
    location = seaweedfs.location(access_key_id=READER_KEY_ID)
    store = S3BlobStore(location)
    try:
        await store.check()
        with pytest.raises(ObjectStoreError) as refused:
            await store.check_writable()
    finally:
        await store.close()
    message = str(refused.value)
    assert f"the bucket {BUCKET!r} at {seaweedfs.endpoint} refused PutObject of " in message
    assert f"'{location.prefix}/_write-check-" in message and "(AccessDenied)" in message
    assert "s3_access_key_id and s3_secret_access_key" in message
    assert refused.value.refusal == REFUSED_REQUEST and not refused.value.passing
    assert object_keys(seaweedfs, f"{location.prefix}/") == []


async def test_a_refused_delete_fails_the_write_check_naming_it(seaweedfs: SeaweedFS) -> None:
    """Credentials that may write but not delete (here a bucket policy denies DeleteObject)
    fail the write check at its delete, said as such: not as refused credentials, which the
    bucket's check and the write accepted, to the operator nor to a client."""
    bucket = f"berth-undeletable-{uuid.uuid4().hex[:12]}"  # of its own: it gets a policy
    seaweedfs.create_bucket(bucket)
    location = seaweedfs.location(bucket=bucket)
    seaweedfs.deny(bucket, ["s3:DeleteObject"], f"arn:aws:s3:::{bucket}/{location.prefix}/*")
    store = S3BlobStore(location)
    try:
        with pytest.raises(ObjectStoreError) as refused:
            await store.check_writable()
    finally:
        await store.close()
    message = str(refused.value)
    assert f"the bucket {bucket!r} at {seaweedfs.endpoint} refused DeleteObject of " in message
    assert f"'{location.prefix}/_write-check-" in message and "(AccessDenied)" in message
    assert refused.value.refusal == REFUSED_REQUEST and not refused.value.passing
    assert refused.value.message == (
        "the registry's storage is unavailable: the object store refused a request of the "
        "registry (the operator should check that its credentials may read, write, list and "
        "delete the objects under s3_prefix); try again later"
    )


async def test_a_refused_listing_names_the_request_not_the_credentials(
    seaweedfs: SeaweedFS,
) -> None:
    """Requests on the bucket rather than an object (listing its objects, its multipart
    uploads) that a bucket policy denies after the bucket's check accepted the credentials
    name the request refused."""
    bucket = f"berth-unlistable-{uuid.uuid4().hex[:12]}"  # of its own: it gets a policy
    seaweedfs.create_bucket(bucket)
    store = S3BlobStore(seaweedfs.location(bucket=bucket))
    denied: dict[str, tuple[str, Callable[[], Awaitable[object]]]] = {
        "ListMultipartUploads": (
            "s3:ListBucketMultipartUploads",
            lambda: store.abort_unfinished_commits(started_before=time.time()),
        ),
        "ListObjectsV2": ("s3:ListBucket", store.list_uploads),
    }
    try:
        await store.check()  # HeadBucket, which a policy denying s3:ListBucket refuses too
        for request, (action, listing) in denied.items():
            seaweedfs.deny(bucket, [action], f"arn:aws:s3:::{bucket}")
            with pytest.raises(ObjectStoreError) as refused:
                await listing()
            message = str(refused.value)
            assert f"the bucket {bucket!r} at {seaweedfs.endpoint} refused {request} (" in message
            assert "refused the credentials" not in message, message
            assert refused.value.refusal == REFUSED_REQUEST, message
    finally:
        await store.close()


async def bucket_check_refused(store: S3BlobStore, check: str) -> ObjectStoreError:
    """The refusal of the bucket's check made as a node's first request (`check`) or as
    /readyz's (`probe`, by a client of its own)."""
    try:
        with pytest.raises(ObjectStoreError) as refused:
            await getattr(store, check)()
    finally:
        await store.close()
    return refused.value


@pytest.mark.parametrize("check", ["check", "probe"])
async def test_a_bucket_check_refused_by_a_bucket_policy_names_the_permission_not_the_secret(
    object_store: S3TestServer, check: str
) -> None:
    """A bucket policy that denies s3:ListBucket makes the bucket's check (HeadBucket) answer
    403, as a wrong secret does, with no body to tell them apart. Said as the permission
    refused, with what Berth needs; a wrong secret on the same bucket is still said to be the
    credentials, naming the store's code for it."""
    bucket = f"berth-unlistable-{uuid.uuid4().hex[:12]}"  # of its own: it gets a policy
    object_store.create_bucket(bucket)
    object_store.deny(bucket, ["s3:ListBucket"], f"arn:aws:s3:::{bucket}")
    location = object_store.location(bucket=bucket)

    refused = await bucket_check_refused(S3BlobStore(location), check)
    message = str(refused)
    assert message.startswith(
        f"the bucket {bucket!r} at {object_store.endpoint} accepts the credentials, but the "
        "bucket policy or their permissions refuse them s3:ListBucket on the bucket "
        "(its check, HeadBucket: 403; ListObjectsV2: AccessDenied). Berth needs "
    ), message
    assert message.endswith(PERMISSIONS_NEEDED), message
    assert refused.refusal == REFUSED_LISTING and not refused.passing
    assert refused.message == (
        "the registry's storage is unavailable: the object store accepted the registry's "
        "credentials but refused it the listing of its bucket (the operator should check that "
        "the bucket policy and the credentials' permissions allow s3:ListBucket on it); try "
        "again later"
    )

    wrong = replace(location, secret_access_key="not-the-secret")
    refused = await bucket_check_refused(S3BlobStore(wrong), check)
    assert str(refused) == (
        f"the bucket {bucket!r} at {object_store.endpoint} refused the credentials "
        "(SignatureDoesNotMatch): check s3_access_key_id and s3_secret_access_key"
    )
    assert refused.refusal == REFUSED_CREDENTIALS and not refused.passing


async def test_a_bucket_check_refused_for_want_of_a_condition_says_so(
    seaweedfs: SeaweedFS,
) -> None:
    """s3:ListBucket allowed only under s3_prefix (denied on any other s3:prefix, and so
    without one): HeadBucket, which names no prefix, is refused while Berth's listings under
    the prefix are answered. Said as such, on SeaweedFS (RGW answers such a HeadBucket)."""
    bucket = f"berth-prefix-only-{uuid.uuid4().hex[:12]}"
    seaweedfs.create_bucket(bucket)
    location = seaweedfs.location(bucket=bucket)
    outside_prefix = {"StringNotLike": {"s3:prefix": [f"{location.prefix}/*"]}}
    seaweedfs.deny(bucket, ["s3:ListBucket"], f"arn:aws:s3:::{bucket}", outside_prefix)

    refused = await bucket_check_refused(S3BlobStore(location), "check")
    message = str(refused)
    assert message.startswith(
        f"the bucket {bucket!r} at {seaweedfs.endpoint} refused its check (HeadBucket: 403) "
        "but answered a listing under s3_prefix (ListObjectsV2): it accepts the credentials, "
        "and the bucket policy or their permissions allow s3:ListBucket only on a condition "
        "(such as on s3:prefix) that HeadBucket, which asks for the whole bucket, does not "
        "meet: allow it without one. Berth needs "
    ), message
    assert refused.refusal == REFUSED_LISTING


async def test_the_write_check_leaves_no_object_behind(object_store: S3TestServer) -> None:
    location = object_store.location()
    store = S3BlobStore(location)
    try:
        await store.check_writable()
        await store.check_writable()
    finally:
        await store.close()
    assert object_keys(object_store, f"{location.prefix}/") == []


async def test_an_unreachable_endpoint_is_an_error_naming_it(seaweedfs: SeaweedFS) -> None:
    endpoint = "http://127.0.0.1:9"  # discard: nothing listens there
    store = S3BlobStore(seaweedfs.location(endpoint=endpoint, attempts=2))
    try:
        with pytest.raises(ObjectStoreError, match=endpoint) as refused:
            await store.stat(digest_of(b"anything"))
    finally:
        await store.close()
    # Mid-request, a client is told to come back, not where the store lives.
    error = refused.value
    assert isinstance(error, Unavailable)
    assert (error.status, error.headers["Retry-After"]) == (503, "5")
    assert "127.0.0.1:9" not in json.dumps(error.body())


async def test_a_ca_bundle_in_the_environment_does_not_matter_over_plain_http(
    seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """AWS_CA_BUNDLE (set on many machines, for Go clients) only concerns HTTPS."""
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "no-such-bundle.pem"))
    store = S3BlobStore(seaweedfs.location())
    try:
        digest = await put(store, b"over plain http")
        assert await read_all(store, digest) == b"over plain http"
    finally:
        await store.close()


# ------------------------------------------------------------ uploads in pieces


async def test_pieces_of_odd_sizes_from_separate_requests_commit_to_the_right_bytes(
    s3_store: S3BlobStore,
) -> None:
    """Each PATCH may land on another node: every one stands alone in the bucket, and S3's
    5 MiB minimum part size never shows to a client sending chunks of any size."""
    chunks = [payload(MiB, seed=1), b"abc", payload(7 * MiB, seed=2), b"z", payload(5, seed=3)]
    data = b"".join(chunks)
    scratch = await upload_in_requests(s3_store, chunks)
    digest = digest_of(data)
    await scratch.commit(digest)
    assert await s3_store.stat(digest) == len(data)
    assert await read_all(s3_store, digest) == data


async def test_a_multipart_commit_copies_large_pieces_and_streams_small_ones(
    s3_store: S3BlobStore, object_store: S3TestServer
) -> None:
    # Two pieces over 5 MiB (copied server-side), then small ones gathered into a part.
    chunks = [payload(PIECE_BYTES, seed=4), payload(6 * MiB + 1, seed=5)]
    chunks += [payload(MiB + n, seed=6 + n) for n in range(4)]
    data = b"".join(chunks)
    scratch = await upload_in_requests(s3_store, chunks)
    digest = digest_of(data)
    await scratch.commit(digest)
    assert await read_all(s3_store, digest) == data
    head = object_store.client().head_object(Bucket=BUCKET, Key=s3_store._blob_key(digest))
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # copy, copy, then the small ones together


async def test_a_long_patch_is_one_object_written_in_bounded_parts(
    s3_store: S3BlobStore, object_store: S3TestServer
) -> None:
    """A PATCH longer than a part is one piece (a multipart upload of its own key, so the
    memory it holds is one part, and an upload sent in one PATCH, as docker, podman and
    skopeo send a layer, is committed by one server-side copy of one object)."""
    data = payload(2 * PIECE_BYTES + 3, seed=20)
    scratch = await write_upload(s3_store, data, chunk=4 * MiB)
    keys = object_keys(object_store, s3_store._upload_prefix(scratch.id))
    assert len(keys) == len(scratch.pieces) == 1
    piece = object_store.client().head_object(Bucket=BUCKET, Key=keys[0])
    assert piece["ContentLength"] == len(data)
    assert piece["ETag"].strip('"').endswith("-3")  # written in three parts
    assert await scratch.read() == data
    assert await scratch.read(PIECE_BYTES + 1) == data[: PIECE_BYTES + 1]
    digest = digest_of(data)
    await scratch.commit(digest)
    assert await read_all(s3_store, digest) == data
    # One CopyObject of the piece: the blob is that object (a multipart commit of one part
    # copied would be a new object, its ETag ending in -1).
    blob = object_store.client().head_object(Bucket=BUCKET, Key=s3_store._blob_key(digest))
    assert blob["ETag"] == piece["ETag"]


async def test_a_piece_larger_than_one_copy_takes_is_committed_in_slices(
    s3_store: S3BlobStore, object_store: S3TestServer
) -> None:
    """S3 copies at most 5 GiB per CopyObject or UploadPartCopy: a longer piece is copied in
    ranged slices (the limit lowered here so that the slices are a few MiB)."""
    s3_store.max_copy_bytes = 12 * MiB
    data = payload(PIECE_BYTES + 9 * MiB + 5, seed=24)
    small = payload(MiB, seed=25)
    scratch = await write_upload(s3_store, data, chunk=4 * MiB)
    await scratch.append(small)
    digest = digest_of(data + small)
    await scratch.commit(digest)
    assert await read_all(s3_store, digest) == data + small
    head = object_store.client().head_object(Bucket=BUCKET, Key=s3_store._blob_key(digest))
    assert head["ContentLength"] == len(data) + len(small)
    # Three ranged copies of 8 to 9 MiB, then the small piece sent as the last part.
    assert head["ETag"].strip('"').endswith("-4")


async def test_a_long_patch_after_a_short_one_is_copied_but_for_what_tops_up_a_part(
    s3_store: S3BlobStore, object_store: S3TestServer
) -> None:
    """A 1 MiB chunk, then the rest of the layer in one PATCH: the first part is the chunk
    and the first 4 MiB of the long piece (read and sent again: S3's parts but the last are
    5 MiB or more), the second a ranged copy of the rest of it."""
    chunks = [payload(MiB, seed=27), payload(PIECE_BYTES + 3 * MiB, seed=28)]
    scratch = await upload_in_requests(s3_store, chunks)
    digest = digest_of(b"".join(chunks))
    await scratch.commit(digest)
    assert await read_all(s3_store, digest) == b"".join(chunks)
    head = object_store.client().head_object(Bucket=BUCKET, Key=s3_store._blob_key(digest))
    assert head["ETag"].strip('"').endswith("-2")


async def test_a_patch_cut_short_leaves_no_piece_and_no_multipart_upload(
    s3_store: S3BlobStore, object_store: S3TestServer
) -> None:
    scratch = Scratch(s3_store)
    writer = await s3_store.open_upload(scratch.id, 0)
    for _ in range(3):
        await writer.write([payload(8 * MiB, seed=26)])
    await writer.abort()  # the body broke off after two parts
    assert writer.pieces == []
    prefix = s3_store._upload_prefix(scratch.id)
    assert object_keys(object_store, prefix) == []
    listing = object_store.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    assert listing.get("Uploads", []) == []


async def test_a_late_piece_of_an_abandoned_patch_never_joins_the_blob(
    s3_store: S3BlobStore, object_store: S3TestServer
) -> None:
    """A node died mid-PATCH and its piece reached S3 after the client's retry of the same
    chunk at the same offset (on another node) had been acknowledged: the retry's bytes are
    committed, and the late piece is only something to clean up."""
    first, chunk = payload(MiB, seed=22), payload(2 * MiB, seed=23)
    scratch = await write_upload(s3_store, first)
    at_offset = scratch.offset
    await scratch.append(chunk)  # the retry, acknowledged
    late = Scratch(s3_store, scratch.id, at_offset)
    await late.append(b"X" * len(chunk), acknowledged=False)  # lands last
    keys = object_keys(object_store, s3_store._upload_prefix(scratch.id))
    assert len(keys) == 3  # never the same key twice
    await scratch.commit(digest_of(first + chunk))
    assert await read_all(s3_store, digest_of(first + chunk)) == first + chunk
    await s3_store.delete_upload(scratch.id)
    assert object_keys(object_store, s3_store._upload_prefix(scratch.id)) == []


async def test_blobs_sit_under_the_prefix_by_algorithm_and_hex(
    s3_store: S3BlobStore, object_store: S3TestServer
) -> None:
    digest = await put(s3_store, b"layer")
    hex_digest = digest.split(":", 1)[1]
    prefix = s3_store.location.prefix
    assert object_keys(object_store, prefix + "/") == [
        f"{prefix}/blobs/sha256/{hex_digest[:2]}/{hex_digest}"
    ]


async def test_an_install_sharing_the_bucket_under_its_uploads_area_is_not_taken_for_uploads(
    object_store: S3TestServer,
) -> None:
    """Two installs in one bucket, one's s3_prefix inside the other's uploads area (`P` and
    `P/uploads/teamb`): the first lists only its own uploads, so neither its storage check nor
    its hourly abandoned-uploads job removes the second's blobs as scratch no upload names."""
    outer = S3BlobStore(object_store.location())
    inner = S3BlobStore(object_store.location(f"{outer.location.prefix}/uploads/teamb"))
    try:
        digest = await put(inner, b"the other install's layer")
        scratch = await write_upload(outer, b"an upload of this install")
        assert [found for found, _ in await outer.list_uploads()] == [scratch.id]
        assert [found async for found in inner.iter_digests()] == [digest]
        # A commit the other install has in progress is not taken for one a dead node of
        # this install left: only this install's own unfinished commit is aborted.
        client = object_store.client()
        theirs = f"{inner.location.prefix}/blobs/sha256/ab/{'ab' * 32}"
        ours = f"{outer.location.prefix}/blobs/sha256/cd/{'cd' * 32}"
        for key in (theirs, ours):
            client.create_multipart_upload(Bucket=BUCKET, Key=key)
        assert await outer.abort_unfinished_commits(time.time() + 60) == 1
        left = client.list_multipart_uploads(Bucket=BUCKET, Prefix=outer.location.prefix)
        assert [entry["Key"] for entry in left.get("Uploads", [])] == [theirs]
    finally:
        await outer.close()
        await inner.close()


async def test_a_damaged_blob_is_kept_aside(
    s3_store: S3BlobStore, object_store: S3TestServer
) -> None:
    digest = await put(s3_store, b"bytes that rotted")
    await s3_store.quarantine(digest)
    kept = f"{s3_store.location.prefix}/_damaged/{digest.replace(':', '-')}"
    answer = object_store.client().get_object(Bucket=BUCKET, Key=kept)
    assert answer["Body"].read() == b"bytes that rotted"


class ReplacedAfterTheCheck(S3BlobStore):
    """The narrowest moment of the race made certain: the blob is pushed again (a good copy
    stored in the damaged one's place) just after quarantine's check of its ETag."""

    good = payload(30_000, seed=31)
    quarantining = False

    async def stored_copy(self, digest: str) -> StoredCopy | None:
        copy = await super().stored_copy(digest)
        if self.quarantining:
            self.quarantining = False
            await put(self, self.good)
        return copy

    async def quarantine(self, digest: str, version: str | None = None) -> None:
        self.quarantining = True
        await super().quarantine(digest, version)


async def test_a_good_copy_stored_after_the_etag_check_stays_where_if_match_is_honoured(
    seaweedfs: SeaweedFS,
) -> None:
    """SeaweedFS (as AWS S3) refuses the conditional copy of an object replaced since: the
    good copy is not set aside. (Ceph RGW ignores If-Match: the check before is all it has.)"""
    store = ReplacedAfterTheCheck(seaweedfs.location())
    try:
        digest = digest_of(store.good)
        damaged = await write_upload(store, bytes(len(store.good)))
        await damaged.commit(digest)
        read = await store.stored_copy(digest)
        assert read is not None
        await store.quarantine(digest, read.version)
        assert await read_all(store, digest) == store.good
        assert object_keys(seaweedfs, f"{store.location.prefix}/_damaged/") == []
    finally:
        await store.close()


class PushedAgainWhilePulled(S3BlobStore):
    """A blob's damaged copy is pulled while the blob is pushed again: the good copy is
    stored between the pull's GET and its setting aside of what it read."""

    good = b""

    async def quarantine(self, digest: str, version: str | None = None) -> None:
        await put(self, self.good)
        await super().quarantine(digest, version)


@pytest.mark.parametrize(
    ("size", "cached"),
    [
        # Read whole and hashed before a byte is sent: the pull is refused.
        pytest.param(4096, False, id="small-without-cache"),
        # Sent through the node cache before its hash is known: the pull's end sets it aside.
        pytest.param(3 * MiB, True, id="large-through-cache"),
    ],
)
async def test_a_pull_that_found_a_blob_damaged_leaves_the_good_copy_pushed_meanwhile(
    object_store: S3TestServer, tmp_path: Path, size: int, cached: bool
) -> None:
    cache = BlobCache(tmp_path / "cache", 64 * MiB) if cached else None
    store = PushedAgainWhilePulled(object_store.location(), cache)
    store.good = payload(size, seed=32)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")  # blob_stream reads none
    try:
        digest = digest_of(store.good)
        damaged = await write_upload(store, bytes(size))  # its size, other bytes
        await damaged.commit(digest)
        registry = Registry(db, store)
        if cached:
            chunks = await registry.blob_stream(digest, size, 0, size)
            sent = b"".join([chunk async for chunk in chunks])
            assert sent == bytes(size)  # sent before the hash could tell
        else:
            with pytest.raises(BlobUnknown, match="damaged in storage"):
                await registry.blob_stream(digest, size, 0, size)
        assert await read_all(store, digest) == store.good
        assert object_keys(object_store, f"{store.location.prefix}/_damaged/") == []
    finally:
        await store.close()
        await db.dispose()


async def pulled(registry: Registry, digest: str, size: int, start: int, end: int) -> bytes:
    return b"".join([chunk async for chunk in await registry.blob_stream(digest, size, start, end)])


async def test_a_small_blob_found_whole_is_sent_again_without_asking_the_store(
    object_store: S3TestServer, tmp_path: Path
) -> None:
    """Every pull of an image fetches its config: once a worker found a small blob whole, it
    sends it again (and any range of it) from memory, not from the store; a larger blob is
    read from the store every time."""
    store = S3BlobStore(object_store.location())
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")  # blob_stream reads none
    try:
        config = payload(4096, seed=60)
        layer = payload(SMALL_BLOB_BYTES + 1, seed=61)
        config_digest, layer_digest = await put(store, config), await put(store, layer)
        registry = Registry(db, store)
        before = s3_reads()
        assert await pulled(registry, config_digest, len(config), 0, len(config)) == config
        assert s3_reads() - before == 1
        assert await pulled(registry, config_digest, len(config), 0, len(config)) == config
        assert await pulled(registry, config_digest, len(config), 100, 300) == config[100:300]
        asked = s3_requests("HeadObject", "200")
        await registry.ensure_held(config_digest, len(config))  # a 304 needs no request either
        assert s3_requests("HeadObject", "200") == asked
        assert s3_reads() - before == 1
        assert await pulled(registry, layer_digest, len(layer), 0, len(layer)) == layer
        assert await pulled(registry, layer_digest, len(layer), 0, len(layer)) == layer
        assert s3_reads() - before == 3
    finally:
        await store.close()
        await db.dispose()


async def test_delete_many_deletes_more_than_one_batch(s3_store: S3BlobStore) -> None:
    digests = [await put(s3_store, f"blob {n}".encode()) for n in range(20)]
    absent = [digest_of(uuid.uuid4().bytes) for _ in range(1500)]  # over 1,000 keys
    await s3_store.delete_many([*absent, *digests])
    assert await listed(s3_store) == set()


# ------------------------------------------------------------ ranged reads


async def test_ranged_reads_of_a_large_blob(s3_store: S3BlobStore) -> None:
    data = payload(MIN_PART_BYTES * 2 + 99, seed=30)
    digest = await put(s3_store, data)
    for start, end in [(0, 10), (MIN_PART_BYTES - 3, MIN_PART_BYTES + 3), (len(data) - 1, None)]:
        assert await read_all(s3_store, digest, start, end) == data[start:end]
    assert await read_all(s3_store, digest, len(data) + 10, None) == b""
    with pytest.raises(FileNotFoundError):
        await read_all(s3_store, digest_of(b"absent"), 5, 10)


# ------------------------------------------------------------ presigned URLs


async def test_a_presigned_url_serves_the_blob_and_a_range_and_nothing_else(
    s3_store: S3BlobStore, object_store: S3TestServer
) -> None:
    data = payload(MiB + 7, seed=50)
    digest = await put(s3_store, data)
    other = await put(s3_store, b"another blob")
    url = await s3_store.download_url(digest, 300)
    assert url.startswith(object_store.endpoint) and "X-Amz-Signature=" in url
    async with httpx.AsyncClient(timeout=30) as client:
        whole = await client.get(url)
        assert whole.status_code == 200 and whole.content == data
        ranged = await client.get(url, headers={"Range": "bytes=10-1048585"})
        assert ranged.status_code == 206 and ranged.content == data[10 : 1048585 + 1]
        # The signature covers the key and itself: neither can be changed.
        elsewhere = url.replace(digest.split(":")[1], other.split(":")[1])
        assert (await client.get(elsewhere)).status_code == 403
        tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert (await client.get(tampered)).status_code == 403


# ------------------------------------------------------------ Ceph RGW over HTTPS


@pytest.mark.ceph_rgw
async def test_rgw_over_https_takes_uploads_from_the_driver_though_it_refuses_checksum_trailers(
    rgw: CephRGW, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore (1.36 on) sends a checksum by default with each upload over HTTPS, as a
    trailer of an aws-chunked body; Ceph 16's RGW refuses that (MissingContentLength). The
    driver asks for checksums only where S3 requires them (SHA-256 guards every blob), which
    RGW takes: a multipart commit, reads and batch deletes all work over HTTPS."""
    monkeypatch.setenv("AWS_CA_BUNDLE", str(rgw.ca_bundle))
    monkeypatch.delenv("AWS_REQUEST_CHECKSUM_CALCULATION", raising=False)
    # botocore's stubs type a client as BaseClient, without the S3 methods (as tests/s3.py's).
    default_client: Any = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=rgw.https_endpoint,
        region_name="us-east-1",
        aws_access_key_id=rgw.access_key_id,
        aws_secret_access_key=rgw.secret_access_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    with pytest.raises(ClientError, match="MissingContentLength"):  # the quirk itself
        default_client.put_object(Bucket=BUCKET, Key="checksum-trailer", Body=b"x")

    store = S3BlobStore(rgw.location(endpoint=rgw.https_endpoint))
    try:
        chunks = [payload(PIECE_BYTES, seed=60), payload(MiB, seed=61), payload(5 * MiB, seed=62)]
        data = b"".join(chunks)
        scratch = await upload_in_requests(store, chunks)
        digest = digest_of(data)
        await scratch.commit(digest)
        assert await read_all(store, digest, 3, None) == data[3:]
        small = await put(store, b"one piece, one PUT")
        await store.delete_many([digest, small, digest_of(b"absent")])
        assert await listed(store) == set()
    finally:
        await store.close()


# ------------------------------------------------------------ retries


@pytest.mark.parametrize(
    ("slow_down", "drop"), [(3, 0), (0, 3)], ids=["503-slow-down", "connection-dropped"]
)
async def test_throttling_and_dropped_connections_are_retried(
    seaweedfs: SeaweedFS, slow_down: int, drop: int
) -> None:
    retried_before = s3_retries()
    async with FaultyProxy(seaweedfs.s3_port, slow_down=slow_down, drop=drop) as proxy:
        store = S3BlobStore(seaweedfs.location(endpoint=proxy.endpoint))
        try:
            data = payload(100_000, seed=40)
            digest = await put(store, data)
            assert await read_all(store, digest) == data
        finally:
            await store.close()
    assert proxy.failed == slow_down + drop  # every fault was met, and retried past
    # ... and the client's retries counted in the metrics: every 503, and at least one of the
    # dropped connections (aiohttp itself sends a request again once on a kept-alive
    # connection found closed, which botocore does not see).
    retried = s3_retries() - retried_before
    assert retried == slow_down if slow_down else 1 <= retried <= drop


def s3_retries() -> float:
    """berth_s3_retries_total summed over operations, in this process."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == "berth_s3_retries_total"
    )


def s3_reads() -> float:
    """GetObject requests answered, whole or ranged (200, 206), in this process."""
    return s3_requests("GetObject", "200") + s3_requests("GetObject", "206")


def s3_requests(operation: str, status: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "berth_s3_requests_total", {"operation": operation, "status": status}
        )
        or 0.0
    )


async def test_requests_to_the_store_are_counted_by_operation_and_status(
    s3_store: S3BlobStore,
) -> None:
    digest = await put(s3_store, b"a counted blob")
    absent = digest_of(b"never pushed")
    found, missing = s3_requests("HeadObject", "200"), s3_requests("HeadObject", "404")
    read = s3_requests("GetObject", "200")
    timed = REGISTRY.get_sample_value(
        "berth_s3_request_duration_seconds_count", {"operation": "GetObject"}
    )
    assert await s3_store.stat(digest) == len(b"a counted blob")
    assert await s3_store.stat(absent) is None
    assert await read_all(s3_store, digest) == b"a counted blob"
    assert s3_requests("HeadObject", "200") - found == 1
    assert s3_requests("HeadObject", "404") - missing == 1
    assert s3_requests("GetObject", "200") - read == 1
    assert (
        REGISTRY.get_sample_value(
            "berth_s3_request_duration_seconds_count", {"operation": "GetObject"}
        )
        == (timed or 0) + 1
    )


async def test_a_store_that_never_answers_is_counted_without_a_status(
    seaweedfs: SeaweedFS,
) -> None:
    with socket.socket() as unused:  # a port nothing listens on: every connection refused
        unused.bind(("127.0.0.1", free_port()))
        endpoint = f"http://127.0.0.1:{unused.getsockname()[1]}"
        store = S3BlobStore(replace(seaweedfs.location(endpoint=endpoint), attempts=2))
        unanswered, retried = s3_requests("HeadBucket", "none"), s3_retries()
        try:
            with pytest.raises(ObjectStoreError):
                await store.check()
        finally:
            await store.close()
    assert s3_requests("HeadBucket", "none") - unanswered == 1
    assert s3_retries() - retried == 1  # the second of its two attempts


# ------------------------------------------------------------ presence without a request


async def test_a_blob_found_stored_is_not_asked_for_again_for_a_while(
    s3_store: S3BlobStore, object_store: S3TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A HEAD or a presigned redirect of a blob found in the store moments ago costs no
    request to the store; this node's own removal forgets it at once, and after
    CONFIRMED_SECONDS the store is asked again."""
    data = b"a layer found just now"
    digest = await put(s3_store, data)
    assert not await s3_store.confirm_stored(digest, len(data) + 1)  # the recorded size, or not
    assert await s3_store.confirm_stored(digest, len(data))
    object_store.client().delete_object(Bucket=BUCKET, Key=s3_store._blob_key(digest))
    assert await s3_store.confirm_stored(digest, len(data))  # no request: gone unnoticed
    monkeypatch.setattr(s3_module, "CONFIRMED_SECONDS", 0.0)
    assert not await s3_store.confirm_stored(digest, len(data))  # asked again: gone

    monkeypatch.undo()
    again = await put(s3_store, data)
    assert await s3_store.confirm_stored(again, len(data))
    await s3_store.delete(again)
    assert not await s3_store.confirm_stored(again, len(data))
    kept = await put(s3_store, data)
    assert await s3_store.confirm_stored(kept, len(data))
    await s3_store.quarantine(kept)
    assert not await s3_store.confirm_stored(kept, len(data))
