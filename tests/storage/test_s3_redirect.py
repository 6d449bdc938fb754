"""`blob_redirect = "presigned"` on SeaweedFS: blob GETs answer 307 to a presigned URL of the
object, which real clients follow for the right bytes (a Range too); the store refuses the URL
once expired or tampered with; the bytes are counted as outbound traffic when redirected."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from berth.storage.s3 import S3BlobStore
from berth.storage.s3_objects import S3Location
from tests.clients.commands import ContainersConfig
from tests.clients.layouts import OciLayout, umoci_image
from tests.clients.tools import require_binary, run
from tests.oci import blob_path, push_bytes
from tests.s3 import BUCKET, S3TestServer, SeaweedFS, nginx_in_front_of
from tests.servers import BerthServer, eventually, free_port, running_server
from tests.storage.test_s3_registry import sha256
from tests.usage.conftest import traffic

pytestmark = pytest.mark.clients


@pytest.fixture(scope="module")
def presigned(request: pytest.FixtureRequest, seaweedfs: SeaweedFS) -> Iterator[BerthServer]:
    env = {
        **seaweedfs.settings_environ(),
        "BERTH_BLOB_REDIRECT": "presigned",
        "BERTH_TRAFFIC_FLUSH_INTERVAL": "0.2",
    }
    with running_server(request, "presigned", "postgres", extra_env=env) as server:
        yield server


def counted_bytes(server: BerthServer, project: str, at_least: int) -> int:
    found = eventually(
        lambda: traffic(server, project, days=1)["total_bytes"], lambda n: n >= at_least
    )
    return int(found)


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_skopeo_pulls_an_image_through_presigned_redirects(
    presigned: BerthServer, tmp_path: Path
) -> None:
    require_binary("skopeo")
    require_binary("umoci")
    files = {"big.bin": os.urandom(6 * 1024 * 1024), "note.txt": b"via a presigned URL\n"}
    image = umoci_image(tmp_path / "layout", "v1", files)
    presigned.create_repository("redir", "app")
    key_id, secret = presigned.access_key("redir")
    config = ContainersConfig.create(tmp_path / "containers")
    skopeo = ["skopeo", "--policy", str(config.policy), "copy"]
    remote = f"docker://{presigned.address}/redir/app:v1"
    run([*skopeo, "--dest-tls-verify=false", f"--dest-creds={key_id}:{secret}", image.oci_ref,
         remote], config.env)  # fmt: skip
    pulled = OciLayout(tmp_path / "pulled")
    run([*skopeo, "--src-tls-verify=false", f"--src-creds={key_id}:{secret}", remote,
         f"oci:{pulled.path}:v1"], config.env)  # fmt: skip

    assert pulled.resolve("v1")["digest"] == image.manifest_digest
    blobs = [image.config_digest, *image.layer_digests]
    for digest in blobs:
        assert sha256(pulled.blob(digest)) == digest
    # Every blob byte skopeo read was counted when its redirect was issued, with the manifest.
    expected = image.manifest_descriptor["size"] + sum(len(image.layout.blob(d)) for d in blobs)
    assert counted_bytes(presigned, "redir", expected) == expected


def test_a_blob_get_redirects_to_a_url_the_store_serves_and_guards(
    presigned: BerthServer, seaweedfs: SeaweedFS
) -> None:
    presigned.create_repository("redir", "raw")
    name = "redir/raw"
    data = os.urandom(3 * 1024 * 1024 + 17)
    with httpx.Client(
        base_url=presigned.url, auth=presigned.access_key("redir"), timeout=60
    ) as client:
        digest = push_bytes(client, name, data)
        before = traffic(presigned, "redir", days=1)["total_bytes"]

        head = client.head(blob_path(name, digest))  # answered by Berth itself
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))

        redirect = client.get(blob_path(name, digest))
        assert redirect.status_code == 307, redirect.text
        url = redirect.headers["location"]
        assert url.startswith(seaweedfs.endpoint) and "X-Amz-Signature=" in url
        assert redirect.headers["docker-content-digest"] == digest

        # The client sends its Range on to the store, which answers with just those bytes.
        ranged = client.get(
            blob_path(name, digest), headers={"Range": "bytes=100-1048675"}, follow_redirects=True
        )
        assert ranged.status_code == 206 and ranged.content == data[100:1048676]
        beyond = client.get(blob_path(name, digest), headers={"Range": f"bytes={len(data)}-"})
        assert beyond.status_code == 416  # refused by Berth: nothing redirected or counted

        assert httpx.get(url, timeout=30).content == data  # no Berth credentials needed
        signature = dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]
        tampered = with_query(url, **{"X-Amz-Signature": ("0" if signature[0] != "0" else "1")
                                      + signature[1:]})  # fmt: skip
        assert httpx.get(tampered, timeout=30).status_code == 403
        longer = with_query(url, **{"X-Amz-Expires": "604800"})  # a lifetime of one's own
        assert httpx.get(longer, timeout=30).status_code == 403

        # A blob the bucket lost is BLOB_UNKNOWN from Berth, not a redirect to a 404.
        lost = push_bytes(client, name, os.urandom(1000))
        hex_digest = lost.split(":", 1)[1]
        prefix = presigned.extra_env["BERTH_S3_PREFIX"]
        seaweedfs.client().delete_object(
            Bucket=BUCKET, Key=f"{prefix}/blobs/sha256/{hex_digest[:2]}/{hex_digest}"
        )
        missing = client.get(blob_path(name, lost))
        assert missing.status_code == 404
        assert missing.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        # Nor is a client holding it told 304.
        held = client.get(blob_path(name, lost), headers={"If-None-Match": f'"{lost}"'})
        assert held.status_code == 404
        # One that storage holds is: 304, no redirect, nothing counted.
        unchanged = client.get(blob_path(name, digest), headers={"If-None-Match": f'"{digest}"'})
        assert unchanged.status_code == 304 and "location" not in unchanged.headers

    # Counted when redirected: the whole blob (though that redirect was followed only later,
    # straight to the store), and the range; the 416, the HEAD and the lost blob count nothing.
    expected = before + len(data) + 1048576
    assert counted_bytes(presigned, "redir", expected) == expected


def test_an_expired_presigned_url_is_refused_by_the_store(object_store: S3TestServer) -> None:
    data = os.urandom(4096)
    digest = sha256(data)

    async def presign() -> tuple[str, str]:
        """URLs of one stored blob: one valid for five minutes, one for a second."""
        store = S3BlobStore(object_store.location())
        try:
            upload_id = "expiry" + os.urandom(4).hex()
            writer = await store.open_upload(upload_id, 0)
            await writer.write([data])
            await writer.close()
            await store.commit_upload(upload_id, digest, writer.pieces)
            return await store.download_url(digest, 300), await store.download_url(digest, 1)
        finally:
            await store.close()

    lasting, brief = asyncio.run(presign())
    assert httpx.get(lasting, timeout=30).content == data  # the URLs are sound; only time differs
    time.sleep(2.5)
    expired = httpx.get(brief, timeout=30)
    assert expired.status_code == 403, expired.text


@pytest.fixture(scope="module")
def store_proxy(seaweedfs: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's nginx on another loopback address and port, passing every request on to the
    store with its Host header (and path) as the client sent them: the store's public address."""
    directory = tmp_path_factory.mktemp("store-proxy")
    with nginx_in_front_of(seaweedfs, directory, f"127.0.0.2:{free_port()}") as url:
        yield url


def test_presigned_urls_name_the_public_endpoint_and_work_there(
    request: pytest.FixtureRequest, seaweedfs: SeaweedFS, store_proxy: str
) -> None:
    """Nodes reach the store on one address and clients on another (nginx in front of it):
    with s3_public_endpoint the 307 names the public address, and a client following it gets
    the blob byte-exact. SigV4 signs the host, so a URL signed for the internal address (what
    Berth gives without the setting) is refused at the public one."""
    env = {
        **seaweedfs.settings_environ(),
        "BERTH_BLOB_REDIRECT": "presigned",
        "BERTH_S3_PUBLIC_ENDPOINT": store_proxy,
    }
    with running_server(request, "public-endpoint", extra_env=env) as server:
        server.create_repository("pub", "app")
        name = "pub/app"
        data = os.urandom(2 * 1024 * 1024 + 5)
        with httpx.Client(base_url=server.url, auth=server.access_key("pub"), timeout=60) as client:
            digest = push_bytes(client, name, data)
            redirect = client.get(blob_path(name, digest))
            assert redirect.status_code == 307, redirect.text
            url = redirect.headers["location"]
            assert url.startswith(f"{store_proxy}/{BUCKET}/"), url
            assert dict(parse_qsl(urlsplit(url).query))["X-Amz-SignedHeaders"] == "host"
            pulled = client.get(blob_path(name, digest), follow_redirects=True)
            assert pulled.status_code == 200 and pulled.content == data
            ranged = client.get(
                blob_path(name, digest), headers={"Range": "bytes=7-70"}, follow_redirects=True
            )
            assert ranged.status_code == 206 and ranged.content == data[7:71]

            # The same blob's URL signed for the internal address, sent to the public one.
            internal = S3BlobStore(server_location(server, seaweedfs))
            internal_url = asyncio.run(presign_once(internal, digest))
            assert internal_url.startswith(seaweedfs.endpoint)
            assert httpx.get(internal_url, timeout=30).content == data  # sound where it points
            moved = store_proxy + internal_url[len(seaweedfs.endpoint) :]
            refused = httpx.get(moved, timeout=30)
            assert refused.status_code == 403 and b"SignatureDoesNotMatch" in refused.content


def server_location(server: BerthServer, seaweedfs: SeaweedFS) -> S3Location:
    """The store as the server's settings name it, without s3_public_endpoint."""
    return seaweedfs.location(server.extra_env["BERTH_S3_PREFIX"])


async def presign_once(store: S3BlobStore, digest: str) -> str:
    try:
        return await store.download_url(digest, 300)
    finally:
        await store.close()


def test_a_ranged_redirect_serves_only_that_range(presigned: BerthServer) -> None:
    """A redirect counted as a range is signed for that Range: the URL fetched without it (or
    with another) is refused by the store, not the whole blob for the range's count. An
    If-Range (the store's ETag is not the digest: even one naming the blob) makes it a redirect
    to the whole blob, counted whole."""
    presigned.create_repository("redir", "ranged")
    name = "redir/ranged"
    data = os.urandom(1024 * 1024)
    with httpx.Client(
        base_url=presigned.url, auth=presigned.access_key("redir"), timeout=60
    ) as client:
        digest = push_bytes(client, name, data)
        before = traffic(presigned, "redir", days=1)["total_bytes"]
        redirect = client.get(blob_path(name, digest), headers={"Range": "bytes=0-0"})
        assert redirect.status_code == 307
        url = redirect.headers["location"]
        assert httpx.get(url, timeout=30).status_code == 403
        assert httpx.get(url, headers={"Range": "bytes=0-1048575"}, timeout=30).status_code == 403
        one = httpx.get(url, headers={"Range": "bytes=0-0"}, timeout=30)
        assert one.status_code == 206 and one.content == data[:1]

        other = client.get(
            blob_path(name, digest), headers={"Range": "bytes=0-0", "If-Range": f'"{digest}"'}
        )
        assert other.status_code == 307
        assert httpx.get(other.headers["location"], timeout=30).content == data
    expected = before + 1 + len(data)
    assert counted_bytes(presigned, "redir", expected) == expected
