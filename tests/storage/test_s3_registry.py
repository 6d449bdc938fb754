"""`berth serve` with `storage = "s3"` on SeaweedFS and on Ceph RGW: a real client pushes and
pulls an image, and the bytes come back exactly, from blobs that live in the bucket."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients.commands import ContainersConfig, skopeo_round_trip
from tests.clients.layouts import layer_files, umoci_image
from tests.clients.tools import require_binary
from tests.metrics import scrape, summed
from tests.oci import (
    assert_status,
    blob_path,
    location,
    patch_upload,
    put_upload,
    start_upload,
)
from tests.s3 import (
    BUCKET,
    S3TestServer,
    SeaweedFS,
    nginx_in_front_of,
    stored_keys,
    unfinished_multipart_keys,
)
from tests.servers import (
    BerthServer,
    free_port,
    running_server,
    serve_refused,
    unstarted_environ,
)

pytestmark = pytest.mark.clients


@pytest.fixture(scope="module")
def s3_server(request: pytest.FixtureRequest, object_store: S3TestServer) -> Iterator[BerthServer]:
    with running_server(request, "s3", extra_env=object_store.settings_environ()) as server:
        yield server


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_skopeo_pushes_and_pulls_an_image_stored_in_the_bucket(
    s3_server: BerthServer, object_store: S3TestServer, tmp_path: Path
) -> None:
    require_binary("skopeo")
    require_binary("umoci")
    files = {
        "big.bin": os.urandom(9 * 1024 * 1024),  # incompressible: a layer over 5 MiB
        "hello.txt": b"stored in S3\n",
    }
    image = umoci_image(tmp_path / "layout", "v1", files)
    s3_server.create_repository("s3proj", "app")
    key_id, secret = s3_server.access_key("s3proj")
    config = ContainersConfig.create(tmp_path / "containers")
    remote = f"docker://{s3_server.address}/s3proj/app:v1"
    pulled = skopeo_round_trip(
        config, image.oci_ref, remote, f"{key_id}:{secret}", tmp_path / "pulled"
    )

    assert pulled.resolve("v1")["digest"] == image.manifest_digest
    assert pulled.manifest("v1") == image.manifest
    for digest in [image.config_digest, *image.layer_digests]:
        assert sha256(pulled.blob(digest)) == digest
    assert layer_files(pulled.blob(image.layer_digests[0])) == files

    # The blobs are objects in the bucket, and no upload is left behind.
    prefix = s3_server.extra_env["BERTH_S3_PREFIX"]
    listing = object_store.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    keys = {entry["Key"] for entry in listing.get("Contents", [])}
    for digest in [image.config_digest, *image.layer_digests]:
        hex_digest = digest.split(":", 1)[1]
        assert f"{prefix}/blobs/sha256/{hex_digest[:2]}/{hex_digest}" in keys
    assert not [key for key in keys if "/uploads/" in key]

    # A ranged GET reads just its bytes from the stored layer.
    layer = image.layout.blob(image.layer_digests[0])
    ranged = httpx.get(
        f"{s3_server.url}/v2/s3proj/app/blobs/{image.layer_digests[0]}",
        headers={"Range": "bytes=1000-5242999"},
        auth=(key_id, secret),
        follow_redirects=True,
        timeout=60,
    )
    assert ranged.status_code == 206
    assert ranged.content == layer[1000:5243000]


def test_a_chunked_upload_of_odd_sized_patches_and_ranged_reads(s3_server: BerthServer) -> None:
    s3_server.create_repository("s3proj", "chunks")
    name = "s3proj/chunks"
    chunks = [os.urandom(1024 * 1024), b"abc", os.urandom(7 * 1024 * 1024)]
    data = b"".join(chunks)
    digest = sha256(data)
    with httpx.Client(
        base_url=s3_server.url, auth=s3_server.access_key("s3proj"), timeout=60
    ) as client:
        upload = location(start_upload(client, name))
        offset = 0
        for chunk in chunks:
            patched = patch_upload(client, upload, chunk, f"{offset}-{offset + len(chunk) - 1}")
            assert_status(patched, 202)
            offset += len(chunk)
            upload = location(patched)
        assert_status(put_upload(client, upload, digest), 201)

        whole = client.get(blob_path(name, digest))
        assert whole.status_code == 200 and whole.content == data
        head = client.head(blob_path(name, digest))
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(data))
        last = client.get(blob_path(name, digest), headers={"Range": "bytes=-10"})
        assert last.status_code == 206 and last.content == data[-10:]
        assert (
            last.headers["content-range"] == f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}"
        )
        beyond = client.get(blob_path(name, digest), headers={"Range": f"bytes={len(data)}-"})
        assert beyond.status_code == 416
        assert beyond.headers["content-range"] == f"bytes */{len(data)}"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"BERTH_S3_SECRET_ACCESS_KEY": "not-the-secret"}, "refused the credentials"),
        ({"BERTH_S3_BUCKET": "no-such-bucket"}, "'no-such-bucket'"),
    ],
    ids=["wrong-secret", "missing-bucket"],
)
def test_serve_refuses_a_store_it_cannot_use_before_serving(
    seaweedfs: SeaweedFS, tmp_path: Path, changes: dict[str, str], problem: str
) -> None:
    """On SeaweedFS only: RGW's refusals are the driver's tests' (`test_s3.py`)."""
    said = serve_refused(unstarted_environ(tmp_path, {**seaweedfs.settings_environ(), **changes}))
    assert problem in said and seaweedfs.endpoint in said
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_a_blob_lost_from_the_bucket_is_unknown_to_head_and_get(
    s3_server: BerthServer, object_store: S3TestServer
) -> None:
    """A HEAD must not tell a client to skip pushing a blob the store is known to have lost:
    a GET finds the loss out, and from then on a HEAD says so too (without a GET, a HEAD
    trusts the store's answer of the last 30 seconds: `S3BlobStore.confirm_stored`)."""
    s3_server.create_repository("s3proj", "lost")
    name = "s3proj/lost"
    data = os.urandom(3 * 1024 * 1024)
    digest = sha256(data)
    with httpx.Client(
        base_url=s3_server.url, auth=s3_server.access_key("s3proj"), timeout=60
    ) as client:
        assert_status(put_upload(client, location(start_upload(client, name)), digest, data), 201)
        assert_status(client.head(blob_path(name, digest)), 200)
        hex_digest = digest.split(":", 1)[1]
        prefix = s3_server.extra_env["BERTH_S3_PREFIX"]
        object_store.client().delete_object(
            Bucket=BUCKET, Key=f"{prefix}/blobs/sha256/{hex_digest[:2]}/{hex_digest}"
        )
        missing = client.get(blob_path(name, digest))
        assert_status(missing, 404)
        assert missing.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        assert_status(client.head(blob_path(name, digest)), 404)
        # Pushing it again stores it again.
        assert_status(put_upload(client, location(start_upload(client, name)), digest, data), 201)
        assert client.get(blob_path(name, digest)).content == data


def object_key(server: BerthServer, digest: str) -> str:
    hex_digest = digest.split(":", 1)[1]
    return f"{server.extra_env['BERTH_S3_PREFIX']}/blobs/sha256/{hex_digest[:2]}/{hex_digest}"


def test_a_layer_pushed_again_is_not_stored_again(
    s3_server: BerthServer, object_store: S3TestServer
) -> None:
    """A layer pushed again, by its repository or another (a shared base layer), leaves the
    object in the bucket untouched (not copied over itself) and no piece of the upload."""
    for repository in ("again", "again-other"):
        s3_server.create_repository("s3proj", repository)
    data = os.urandom(6 * 1024 * 1024)  # one piece over S3's minimum part size
    digest = sha256(data)
    s3 = object_store.client()
    prefix = s3_server.extra_env["BERTH_S3_PREFIX"]
    with httpx.Client(
        base_url=s3_server.url, auth=s3_server.access_key("s3proj"), timeout=60
    ) as client:
        first = location(start_upload(client, "s3proj/again"))
        assert_status(put_upload(client, first, digest, data), 201)
        stored = s3.head_object(Bucket=BUCKET, Key=object_key(s3_server, digest))
        time.sleep(1.1)  # a copy made now would have a later LastModified (whole seconds)
        for name in ("s3proj/again", "s3proj/again-other"):
            assert_status(
                put_upload(client, location(start_upload(client, name)), digest, data), 201
            )
            after = s3.head_object(Bucket=BUCKET, Key=object_key(s3_server, digest))
            assert (after["LastModified"], after["ETag"]) == (
                stored["LastModified"],
                stored["ETag"],
            )
            assert client.get(blob_path(name, digest)).content == data
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/uploads/")
    assert listing.get("KeyCount", 0) == 0, listing.get("Contents")


def test_a_blob_deleted_from_the_bucket_is_stored_again_by_a_push(
    s3_server: BerthServer, object_store: S3TestServer
) -> None:
    """Pushed again right after its object went behind the registry's back (a HEAD had just
    found it, no pull found the loss out): the push asks the bucket, and stores it again."""
    s3_server.create_repository("s3proj", "relost")
    name = "s3proj/relost"
    data = os.urandom(6 * 1024 * 1024)
    digest = sha256(data)
    s3 = object_store.client()
    with httpx.Client(
        base_url=s3_server.url, auth=s3_server.access_key("s3proj"), timeout=60
    ) as client:
        assert_status(put_upload(client, location(start_upload(client, name)), digest, data), 201)
        assert_status(client.head(blob_path(name, digest)), 200)
        s3.delete_object(Bucket=BUCKET, Key=object_key(s3_server, digest))
        assert_status(put_upload(client, location(start_upload(client, name)), digest, data), 201)
        stored = s3.head_object(Bucket=BUCKET, Key=object_key(s3_server, digest))
        assert stored["ContentLength"] == len(data)
        pulled = client.get(blob_path(name, digest))
        assert pulled.status_code == 200 and pulled.content == data


@pytest.mark.parametrize("size", [4096, 512 * 1024], ids=["hashed-inline", "hashed-in-a-thread"])
def test_a_small_blob_damaged_in_the_bucket_is_set_aside_not_served(
    s3_server: BerthServer, object_store: S3TestServer, size: int
) -> None:
    """A small blob read whole from the bucket is hashed first: damaged bytes of the right
    size are refused (BLOB_UNKNOWN), the object is set aside, and pushing it again repairs it."""
    s3_server.create_repository("s3proj", f"damaged{size}")
    name = f"s3proj/damaged{size}"
    data = os.urandom(size)
    digest = sha256(data)
    hex_digest = digest.split(":", 1)[1]
    prefix = s3_server.extra_env["BERTH_S3_PREFIX"]
    key = f"{prefix}/blobs/sha256/{hex_digest[:2]}/{hex_digest}"
    s3 = object_store.client()
    with httpx.Client(
        base_url=s3_server.url, auth=s3_server.access_key("s3proj"), timeout=60
    ) as client:
        assert_status(put_upload(client, location(start_upload(client, name)), digest, data), 201)
        s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(len(data)))  # same size, other bytes
        damaged = client.get(blob_path(name, digest))
        assert_status(damaged, 404)
        assert damaged.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        assert "set aside" in damaged.json()["errors"][0]["message"]
        assert_status(client.head(blob_path(name, digest)), 404)  # no longer in the bucket
        assert_status(put_upload(client, location(start_upload(client, name)), digest, data), 201)
        assert client.get(blob_path(name, digest)).content == data


def test_a_small_blob_kept_in_memory_is_unknown_once_unlinked(s3_server: BerthServer) -> None:
    """The server's worker reads a small blob (an image's config, fetched by every pull) from
    the bucket once and sends it from memory after; the database still decides who may pull
    it: unlinked from its repository, it is unknown at once."""
    s3_server.create_repository("s3proj", "kept")
    name = "s3proj/kept"
    data = os.urandom(2048)
    digest = sha256(data)
    with httpx.Client(
        base_url=s3_server.url, auth=s3_server.access_key("s3proj"), timeout=60
    ) as client:
        assert_status(put_upload(client, location(start_upload(client, name)), digest, data), 201)
        reads = store_reads(s3_server)
        for _ in range(6):
            pulled = client.get(blob_path(name, digest))
            assert pulled.status_code == 200 and pulled.content == data
        assert s3_server.workers == 1
        assert store_reads(s3_server) - reads == 1
        assert_status(client.delete(blob_path(name, digest)), 202)
        for _ in range(6):
            refused = client.get(blob_path(name, digest))
            assert_status(refused, 404)
            assert refused.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def store_reads(server: BerthServer) -> float:
    """GetObject requests the server made (its /metrics, loopback: no sign-in), whole or
    ranged."""
    return summed(
        scrape(server),
        "berth_s3_requests_total",
        lambda labels: labels["operation"] == "GetObject" and labels["status"] in ("200", "206"),
    )


def store_requests(access_log: Path, after: str = "", quiet: float = 1.0) -> list[str]:
    """The requests the store was sent through the logging proxy, as nginx logged them (once
    it is answered), when one containing `after` is logged and none has come for `quiet`
    seconds since."""
    deadline = time.monotonic() + 60
    logged: list[str] = []
    while time.monotonic() < deadline:
        now = access_log.read_text().splitlines() if access_log.exists() else []
        if now == logged and any(after in line for line in now):
            break
        logged = now
        time.sleep(quiet)
    return logged


def test_an_upload_costs_the_store_no_request_before_its_first_byte(
    request: pytest.FixtureRequest, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    """Bodiless POSTs (what anyone with push rights can send in numbers) make no object and
    no request to the store: the store is reached through nginx, whose access log shows none.
    The uploads still work from there: an empty blob, a chunked one, a cancel."""
    with nginx_in_front_of(seaweedfs, tmp_path, f"127.0.0.1:{free_port()}") as store_url:
        env = {**seaweedfs.settings_environ(), "BERTH_S3_ENDPOINT": store_url}
        with running_server(request, "s3-posts", extra_env=env) as server:
            server.create_repository("posts", "app")
            auth = server.access_key("posts")
            with httpx.Client(base_url=server.url, auth=auth, timeout=60) as client:
                # Once the node's start-up work is done: the abandoned-uploads job runs at
                # start, and its last request lists the unfinished multipart uploads.
                before = store_requests(tmp_path / "access.log", after="?uploads&prefix=")
                started = [start_upload(client, "posts/app") for _ in range(20)]
                assert [answer.status_code for answer in started] == [202] * 20
                assert store_requests(tmp_path / "access.log") == before
                urls = [location(answer) for answer in started]

                empty = put_upload(client, urls[0], sha256(b""))
                assert_status(empty, 201)
                assert client.get(blob_path("posts/app", sha256(b""))).content == b""
                data = os.urandom(300_000)
                assert_status(patch_upload(client, urls[1], data[:1000], "0-999"), 202)
                rest = put_upload(client, urls[1], sha256(data), data[1000:])
                assert_status(rest, 201)
                assert client.get(blob_path("posts/app", sha256(data))).content == data
                assert_status(client.delete(urls[2]), 204)
                assert client.get(urls[2]).status_code == 404


MiB = 1024 * 1024


def test_a_large_blob_pushed_in_one_put_goes_straight_to_its_key(
    request: pytest.FixtureRequest, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    """A push whose digest comes with its whole body (a POST, then one PUT, as containerd
    and BuildKit push) is written as the parts of a multipart upload of the blob's own key
    and completed there: no upload pieces, no server-side copy, as nginx's log of the
    store's requests shows. A chunked push of the same size still goes by pieces."""
    with nginx_in_front_of(seaweedfs, tmp_path, f"127.0.0.1:{free_port()}") as store_url:
        env = {**seaweedfs.settings_environ(), "BERTH_S3_ENDPOINT": store_url}
        with running_server(request, "s3-one-put", extra_env=env) as server:
            server.create_repository("oneput", "app")
            with httpx.Client(
                base_url=server.url, auth=server.access_key("oneput"), timeout=120
            ) as client:
                before = store_requests(tmp_path / "access.log", after="?uploads&prefix=")
                data = os.urandom(40 * MiB)  # parts of 16, 16 and 8 MiB
                digest = sha256(data)
                url = location(start_upload(client, "oneput/app"))
                assert_status(put_upload(client, url, digest, data), 201)
                sent = store_requests(tmp_path / "access.log")[len(before) :]
                assert client.get(blob_path("oneput/app", digest)).content == data

                key = f"/blobs/sha256/{digest[7:9]}/{digest[7:]}"
                assert not [line for line in sent if "/uploads/" in line], sent
                to_key = [line.split('"')[1] for line in sent if key in line]
                assert [request.split()[0] for request in to_key] == [
                    "POST",  # CreateMultipartUpload
                    "PUT",
                    "PUT",
                    "PUT",
                    "POST",  # CompleteMultipartUpload
                ], to_key
                assert all("partNumber=" in request for request in to_key[1:4])

                chunked = os.urandom(20 * MiB)
                url = location(start_upload(client, "oneput/app"))
                assert_status(patch_upload(client, url, chunked), 202)
                assert_status(put_upload(client, url, sha256(chunked)), 201)
                assert client.get(blob_path("oneput/app", sha256(chunked))).content == chunked
                later = store_requests(tmp_path / "access.log")[len(before) + len(sent) :]
                assert [line for line in later if "/uploads/" in line], later  # by pieces


def test_a_large_one_put_push_with_a_wrong_digest_leaves_nothing_in_the_store(
    s3_server: BerthServer,
) -> None:
    s3_server.create_repository("oneput-bad", "app")
    environ = s3_server.extra_env
    data = os.urandom(20 * MiB)
    claimed = sha256(b"something else")
    with httpx.Client(
        base_url=s3_server.url, auth=s3_server.access_key("oneput-bad"), timeout=120
    ) as client:
        url = location(start_upload(client, "oneput-bad/app"))
        answer = put_upload(client, url, claimed, data)
        assert_status(answer, 400)
        assert answer.json()["errors"][0]["code"] == "DIGEST_INVALID"
        assert client.get(url).status_code == 404  # the upload is discarded
        for digest in (claimed, sha256(data)):
            assert_status(client.head(blob_path("oneput-bad/app", digest)), 404)
    assert not [key for key in stored_keys(environ, "blobs") if sha256(data)[7:] in key]
    assert unfinished_multipart_keys(environ) == []


def test_a_large_one_put_push_of_a_stored_blob_keeps_it(s3_server: BerthServer) -> None:
    """The same layer pushed again in one PUT (another repository): the blob stays as it
    was, its second upload is dropped, and both repositories pull it."""
    for repository in ("first", "second"):
        s3_server.create_repository("oneput-again", repository)
    data = os.urandom(17 * MiB)
    digest = sha256(data)
    with httpx.Client(
        base_url=s3_server.url, auth=s3_server.access_key("oneput-again"), timeout=120
    ) as client:
        for name in ("oneput-again/first", "oneput-again/second"):
            assert_status(
                put_upload(client, location(start_upload(client, name)), digest, data), 201
            )
        for name in ("oneput-again/first", "oneput-again/second"):
            assert client.get(blob_path(name, digest)).content == data
    assert unfinished_multipart_keys(s3_server.extra_env) == []


def test_a_large_one_put_push_cut_short_leaves_nothing_in_the_store(s3_server: BerthServer) -> None:
    """A client gone after 18 of 24 MiB (one part stored already): no blob appears, the
    multipart upload is aborted, and the same push sent whole then succeeds."""
    s3_server.create_repository("oneput-cut", "app")
    environ = s3_server.extra_env
    data = os.urandom(24 * MiB)
    digest = sha256(data)
    with httpx.Client(
        base_url=s3_server.url, auth=s3_server.access_key("oneput-cut"), timeout=120
    ) as client:
        url = location(start_upload(client, "oneput-cut/app"))
        with socket.create_connection((s3_server.host, s3_server.port)) as raw:
            raw.sendall(
                s3_server.request_head(
                    "PUT",
                    f"{url}{'&' if '?' in url else '?'}digest={digest}",
                    s3_server.access_key("oneput-cut"),
                    Content_Type="application/octet-stream",
                    Content_Length=len(data),
                )
            )
            raw.sendall(data[: 18 * MiB])
            time.sleep(1)  # the first part on its way to the store
        deadline = time.monotonic() + 30
        while unfinished_multipart_keys(environ):
            assert time.monotonic() < deadline, unfinished_multipart_keys(environ)
            time.sleep(0.2)
        assert_status(client.head(blob_path("oneput-cut/app", digest)), 404)
        assert_status(
            put_upload(client, location(start_upload(client, "oneput-cut/app")), digest, data), 201
        )
        assert client.get(blob_path("oneput-cut/app", digest)).content == data
