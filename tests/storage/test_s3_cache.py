"""The node-local blob cache (`s3_cache_dir`) of `berth serve` on SeaweedFS: a full pull keeps a
copy, which later pulls (and ranges) are sent from, even with the store gone; only whole,
matching copies become visible; the bound evicts the least recently used; garbage collection
removes the copy; every pull is still counted as outbound traffic."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.metrics import Samples, scrape, summed, value
from tests.oci import assert_status, blob_path, location, put_upload, start_upload
from tests.s3 import BUCKET, SeaweedFS
from tests.servers import (
    BerthServer,
    PostgresCluster,
    eventually,
    running_server,
    serve_refused,
    unstarted_environ,
)
from tests.usage.conftest import traffic

MiB = 1024 * 1024
CACHE_SIZE = 10 * MiB


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def cache_environ(cache: Path, size: int = CACHE_SIZE) -> dict[str, str]:
    return {
        "BERTH_S3_CACHE_DIR": str(cache),
        "BERTH_S3_CACHE_SIZE": str(size),
        "BERTH_TRAFFIC_FLUSH_INTERVAL": "0.2",
        "BERTH_GC_GRACE_PERIOD": "0",
        "BERTH_WORKERS": "2",  # two processes share the directory
    }


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("s3-cache") / "cache"


@pytest.fixture(scope="module")
def cached(
    request: pytest.FixtureRequest, seaweedfs: SeaweedFS, cache_dir: Path
) -> Iterator[BerthServer]:
    env = {**seaweedfs.settings_environ(), **cache_environ(cache_dir)}
    with running_server(request, "s3-cache", extra_env=env) as server:
        yield server


def copy_of(cache: Path, digest: str) -> Path:
    return cache / "blobs" / digest.replace(":", "-")


def part_files(cache: Path) -> list[str]:
    return [name for name in os.listdir(cache / "tmp") if name.endswith(".part")]


def settled(cache: Path) -> None:
    """Wait for the copies being written to be kept or dropped: a client has its response
    once it has Content-Length bytes, a moment before the server renames the copy."""
    eventually(lambda: part_files(cache), lambda parts: not parts)
    assert part_files(cache) == []


def kept(cache: Path, digest: str) -> bytes | None:
    settled(cache)
    path = copy_of(cache, digest)
    return path.read_bytes() if path.exists() else None


def push(client: httpx.Client, name: str, data: bytes) -> str:
    digest = sha256(data)
    assert_status(put_upload(client, location(start_upload(client, name)), digest, data), 201)
    return digest


def counted(server: BerthServer, project: str, expected: int) -> int:
    found = eventually(
        lambda: traffic(server, project, days=1)["total_bytes"], lambda n: n >= expected
    )
    return int(found)


def object_key(server: BerthServer, digest: str) -> str:
    hex_digest = digest.split(":", 1)[1]
    return f"{server.extra_env['BERTH_S3_PREFIX']}/blobs/sha256/{hex_digest[:2]}/{hex_digest}"


def test_a_pulled_blob_is_sent_from_the_node_cache_while_the_store_is_down(
    request: pytest.FixtureRequest, own_seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    (cache / "tmp").mkdir(parents=True)
    crashed = cache / "tmp" / f"sha256-{'ab' * 32}.k3j4.part"  # a fill a crash cut short
    crashed.write_bytes(b"partial")
    env = {
        **own_seaweedfs.settings_environ(),
        **cache_environ(cache),
        "BERTH_S3_ATTEMPTS": "1",  # a quick 503 once the store is down
    }
    with running_server(request, "s3-cache-down", extra_env=env) as server:
        assert not crashed.exists()  # removed when the server started
        server.create_repository("cache", "app")
        big, small = os.urandom(3 * MiB + 5), os.urandom(4096)
        with httpx.Client(
            base_url=server.url, auth=server.access_key("cache"), timeout=60
        ) as client:
            digests = [push(client, "cache/app", data) for data in (big, small)]
            uncached = push(client, "cache/app", os.urandom(4096))  # never pulled: no copy
            for data, digest in zip((big, small), digests, strict=True):
                first = client.get(blob_path("cache/app", digest))
                assert first.status_code == 200 and first.content == data
                assert kept(cache, digest) == data
            own_seaweedfs.kill()

            # A client holding a blob this node has a copy of is told 304 without the store
            # (the copy was whole when kept, as a GET sent from it would be); without a copy
            # the store is asked, down: 503.
            for digest in digests:
                held = {"If-None-Match": f'"{digest}"'}
                for method in ("GET", "HEAD"):
                    answer = client.request(method, blob_path("cache/app", digest), headers=held)
                    assert answer.status_code == 304, (method, answer.status_code, answer.text)
                    assert answer.headers["docker-content-digest"] == digest
            held = {"If-None-Match": f'"{uncached}"'}
            assert client.get(blob_path("cache/app", uncached), headers=held).status_code == 503

            for data, digest in zip((big, small), digests, strict=True):
                again = client.get(blob_path("cache/app", digest))
                assert again.status_code == 200 and again.content == data
                assert again.headers["docker-content-digest"] == digest
            ranged = client.get(
                blob_path("cache/app", digests[0]), headers={"Range": "bytes=1000-2000999"}
            )
            assert ranged.status_code == 206 and ranged.content == big[1000:2001000]
            assert ranged.headers["content-range"] == f"bytes 1000-2000999/{len(big)}"
            # A HEAD still asks the store (whether to push concerns every node): down, 503.
            assert client.head(blob_path("cache/app", digests[0])).status_code == 503
            # The copy answers only for blobs of the repository: the metadata decides.
            server.create_repository("cache", "other")
            held = {"If-None-Match": f'"{digests[0]}"'}
            for headers in ({}, held):
                other = client.get(blob_path("cache/other", digests[0]), headers=headers)
                assert other.status_code == 404
                assert other.json()["errors"][0]["code"] == "BLOB_UNKNOWN"

        # Both pulls of each blob, and the range, were counted as sent (a 304 sends nothing;
        # nor is it a use of the copy).
        expected = 2 * (len(big) + len(small)) + 2_000_000
        assert counted(server, "cache", expected) == expected
        scraped = scrape(server)  # loopback: no sign-in
        assert value(scraped, "berth_s3_cache_pulls_total", result="hit") == 3
        assert value(scraped, "berth_s3_cache_pulls_total", result="miss") == 2
        assert value(scraped, "berth_s3_cache_kept_bytes_total") == len(big) + len(small)
        # The store's requests are counted too (the workers' files summed): the two misses'
        # reads (ranged GETs, so 206), and the requests that found the store gone (HeadObject,
        # or HeadBucket from a worker that had not used the store yet: no answer, or a
        # stopping gateway's error status).
        requests = "berth_s3_requests_total"
        assert value(scraped, requests, operation="GetObject", status="206") == 2
        failed = summed(scraped, requests, lambda labels: not labels["status"].startswith("2"))
        assert failed >= 1, scraped


def test_a_range_from_the_cached_copy_keeps_to_if_range(
    cached: BerthServer, cache_dir: Path
) -> None:
    """A Range sent from the node's copy follows If-Range as a stream from the store does:
    not the blob's ETag, the whole blob (counted whole); the ETag, the range."""
    cached.create_repository("ranges", "app")
    data = os.urandom(200_000)
    with httpx.Client(base_url=cached.url, auth=cached.access_key("ranges"), timeout=60) as client:
        digest = push(client, "ranges/app", data)
        assert client.get(blob_path("ranges/app", digest)).content == data
        assert kept(cache_dir, digest) == data  # what follows is sent from the copy
        asked = {"Range": "bytes=5-9", "If-Range": "Wed, 21 Oct 2015 07:28:00 GMT"}
        whole = client.get(blob_path("ranges/app", digest), headers=asked)
        assert whole.status_code == 200 and whole.content == data
        asked["If-Range"] = f'"{digest}"'
        ranged = client.get(blob_path("ranges/app", digest), headers=asked)
        assert ranged.status_code == 206 and ranged.content == data[5:10]
    expected = 2 * len(data) + 5  # the first pull, the whole blob, the range
    assert counted(cached, "ranges", expected) == expected


def test_a_blob_larger_than_the_bound_is_streamed_and_not_kept(
    cached: BerthServer, cache_dir: Path
) -> None:
    cached.create_repository("cache", "large")
    data = os.urandom(CACHE_SIZE + MiB)
    with httpx.Client(base_url=cached.url, auth=cached.access_key("cache"), timeout=60) as client:
        digest = push(client, "cache/large", data)
        assert client.get(blob_path("cache/large", digest)).content == data
    assert kept(cache_dir, digest) is None


def hang_up_after(server: BerthServer, path: str, auth: tuple[str, str], read: int) -> None:
    """GET `path` on a socket with a small receive buffer, read `read` bytes, and close it:
    a client gone mid-download, long before the server could have sent everything."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect((server.host, server.port))
        sock.sendall(server.request_head("GET", path, auth))
        received = 0
        while received < read:
            chunk = sock.recv(64 * 1024)
            assert chunk, "the server closed the connection"
            received += len(chunk)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_a_client_gone_mid_pull_leaves_no_copy_and_a_full_pull_keeps_one(
    request: pytest.FixtureRequest, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    env = {**seaweedfs.settings_environ(), **cache_environ(cache, 256 * MiB)}
    with running_server(request, "s3-cache-gone", extra_env=env) as server:
        server.create_repository("cache", "gone")
        data = os.urandom(32 * MiB)  # twice what the hung-up pull may be counted for
        auth = server.access_key("cache")
        with httpx.Client(base_url=server.url, auth=auth, timeout=60) as client:
            digest = push(client, "cache/gone", data)
            hang_up_after(server, blob_path("cache/gone", digest), auth, MiB)
            # The server finds the client gone and drops what it wrote.
            settled(cache)
            assert not copy_of(cache, digest).exists()

            whole = client.get(blob_path("cache/gone", digest))
            assert whole.content == data
            assert kept(cache, digest) == data
        # The hung-up pull stopped reading: counted are the bytes sent before it ended, not
        # the 32 MiB the store would have streamed on.
        total = counted(server, "cache", len(data) + MiB)
        assert len(data) + MiB <= total < len(data) + 16 * MiB


def test_concurrent_first_pulls_of_one_blob_make_one_whole_copy(
    cached: BerthServer, cache_dir: Path
) -> None:
    cached.create_repository("cache", "crowd")
    data = os.urandom(5 * MiB)
    auth = cached.access_key("cache")
    with httpx.Client(base_url=cached.url, auth=auth, timeout=60) as client:
        digest = push(client, "cache/crowd", data)
    results: list[bytes] = []

    def pull() -> None:
        with httpx.Client(base_url=cached.url, auth=auth, timeout=60) as client:
            results.append(client.get(blob_path("cache/crowd", digest)).content)

    threads = [threading.Thread(target=pull) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [data] * 6
    assert kept(cache_dir, digest) == data
    assert part_files(cache_dir) == []


@pytest.mark.parametrize("size", [4096, 3 * MiB], ids=["verified-small", "streamed-large"])
def test_a_blob_damaged_in_the_bucket_never_becomes_a_copy(
    cached: BerthServer, seaweedfs: SeaweedFS, cache_dir: Path, size: int
) -> None:
    repository = f"damaged{size}"
    cached.create_repository("cache", repository)
    name = f"cache/{repository}"
    data = os.urandom(size)
    with httpx.Client(base_url=cached.url, auth=cached.access_key("cache"), timeout=60) as client:
        digest = push(client, name, data)
        seaweedfs.client().put_object(
            Bucket=BUCKET, Key=object_key(cached, digest), Body=bytes(size)
        )  # same size, other bytes
        damaged = client.get(blob_path(name, digest))
        if size <= MiB:
            # Small blobs are hashed before they are sent, as without a cache: set aside.
            assert_status(damaged, 404)
            assert "set aside" in damaged.json()["errors"][0]["message"]
        else:
            # Large ones are streamed before their hash is known, and set aside after it.
            assert damaged.status_code == 200 and damaged.content == bytes(size)
            eventually(lambda: client.get(blob_path(name, digest)).status_code, lambda s: s == 404)
        assert kept(cache_dir, digest) is None
        # Once the bucket holds the right bytes again, a pull keeps a copy of them.
        seaweedfs.client().put_object(Bucket=BUCKET, Key=object_key(cached, digest), Body=data)
        assert client.get(blob_path(name, digest)).content == data
        assert kept(cache_dir, digest) == data


def test_a_large_blob_found_damaged_by_a_pull_is_set_aside_for_the_next(
    cached: BerthServer, seaweedfs: SeaweedFS, cache_dir: Path
) -> None:
    """A large blob is streamed before its hash is known, so the pull that finds its object
    damaged sends the damaged bytes (the client sees the digest mismatch); it is set aside
    then, so the next pull is refused with BLOB_UNKNOWN instead, the storage check names it
    missing, and pushing it again repairs it."""
    cached.create_repository("cache", "rotten")
    name = "cache/rotten"
    data = os.urandom(3 * MiB)
    damaged_bytes = bytearray(data)
    damaged_bytes[len(data) // 2] ^= 0xFF  # one byte flipped: the size stays
    s3 = seaweedfs.client()
    with httpx.Client(base_url=cached.url, auth=cached.access_key("cache"), timeout=60) as client:
        digest = push(client, name, data)
        s3.put_object(Bucket=BUCKET, Key=object_key(cached, digest), Body=bytes(damaged_bytes))
        first = client.get(blob_path(name, digest))
        assert first.status_code == 200 and first.content == damaged_bytes
        assert sha256(first.content) != first.headers["docker-content-digest"]
        assert kept(cache_dir, digest) is None

        def refused() -> httpx.Response:
            return client.get(blob_path(name, digest))

        # Set aside once the pull ended (a moment after the client had its bytes).
        again = eventually(refused, lambda response: response.status_code == 404)
        assert_status(again, 404)
        assert again.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        assert "missing from storage; push it again" in again.json()["errors"][0]["message"]
        assert_status(client.head(blob_path(name, digest)), 404)
        hex_digest = digest.split(":", 1)[1]
        aside = f"{cached.extra_env['BERTH_S3_PREFIX']}/_damaged/sha256-{hex_digest}"
        assert s3.get_object(Bucket=BUCKET, Key=aside)["Body"].read() == damaged_bytes

        checked = cached.cli("storage", "check", "cache", "--json", check=False)
        assert checked.returncode == 1, checked.stdout + checked.stderr
        assert digest in json.loads(checked.stdout)["missing"]

        assert_status(put_upload(client, location(start_upload(client, name)), digest, data), 201)
        assert client.get(blob_path(name, digest)).content == data
        assert kept(cache_dir, digest) == data


def test_pulls_past_the_bound_evict_the_least_recently_used_copy(
    cached: BerthServer, cache_dir: Path
) -> None:
    cached.create_repository("cache", "bound")
    blobs = [os.urandom(3 * MiB) for _ in range(4)]
    with httpx.Client(base_url=cached.url, auth=cached.access_key("cache"), timeout=60) as client:
        # Other tests' copies go first: an empty cache to start from.
        for path in (cache_dir / "blobs").iterdir():
            path.unlink()
        digests = [push(client, "cache/bound", data) for data in blobs]
        for age, digest, data in zip((900, 600, 300), digests[:3], blobs[:3], strict=True):
            assert client.get(blob_path("cache/bound", digest)).content == data
            assert kept(cache_dir, digest) == data
            # As if pulled `age` seconds ago (past the grace that spares copies in use).
            then = time.time() - age
            os.utime(copy_of(cache_dir, digest), (then, then))
        # A pull of the oldest makes it the most recently used.
        assert client.get(blob_path("cache/bound", digests[0])).content == blobs[0]
        # A fourth copy takes the cache past its 10 MiB: the least recently used goes.
        assert client.get(blob_path("cache/bound", digests[3])).content == blobs[3]
        eventually(lambda: copy_of(cache_dir, digests[1]).exists(), lambda there: not there)
        assert not copy_of(cache_dir, digests[1]).exists()
        assert all(copy_of(cache_dir, digests[i]).exists() for i in (0, 2, 3))
        assert sum(p.stat().st_size for p in (cache_dir / "blobs").iterdir()) <= CACHE_SIZE
        # The evicted blob is streamed from the store again, and kept again.
        assert client.get(blob_path("cache/bound", digests[1])).content == blobs[1]


def test_garbage_collection_removes_the_cached_copy(cached: BerthServer, cache_dir: Path) -> None:
    cached.create_repository("cache", "collected")
    data = os.urandom(2 * MiB)
    auth = cached.access_key("cache")
    with httpx.Client(base_url=cached.url, auth=auth, timeout=60) as client:
        digest = push(client, "cache/collected", data)
        assert client.get(blob_path("cache/collected", digest)).content == data
        assert kept(cache_dir, digest) == data
        assert_status(client.delete(blob_path("cache/collected", digest)), 202)
        started = client.post("/api/v1/projects/cache/gc", json={})
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]
        run = eventually(
            lambda: client.get(f"/api/v1/projects/cache/gc/runs/{run_id}").json(),
            lambda run: run["state"] != "running",
            timeout=60,
        )
        assert run["state"] == "succeeded", run
        assert not copy_of(cache_dir, digest).exists()


def requests_to_the_store(scraped: Samples) -> float:
    return summed(scraped, "berth_s3_requests_total", lambda _labels: True)


def test_a_blob_set_aside_by_one_node_is_no_longer_sent_from_another_nodes_copy(
    seaweedfs: SeaweedFS, postgres: PostgresCluster | None, tmp_path: Path
) -> None:
    """Two nodes on one database and bucket, each with its own cache and a copy of a blob.
    Pulled again, each sends its copy without asking the bucket. Once the storage check
    (run on the first node) sets the blob aside as damaged, the second node, whose copy the
    check cannot remove, answers as a HEAD does within the documented 30 s: the whole blob,
    a range and a conditional GET are BLOB_UNKNOWN there too, and its copy is gone."""
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database()
    shared = {
        **seaweedfs.settings_environ(),
        "BERTH_SINGLE_NODE": "false",
        "BERTH_WORKERS": "1",  # one process per node: its requests to the store counted alone
    }
    caches = [tmp_path / "cache1", tmp_path / "cache2"]
    first, second = (
        BerthServer(
            tmp_path / f"node{number}",
            url,
            extra_env={
                **cache_environ(cache),
                **shared,
                "BERTH_NODE_NAME": f"node{number}",
            },
        )
        for number, cache in enumerate(caches, start=1)
    )
    try:
        first.start()
        shutil.copytree(first.data_dir / "keys", second.data_dir / "keys")
        second.start()
        first.create_repository("shared", "app")
        name = "shared/app"
        data = os.urandom(3 * MiB)
        auth = first.access_key("shared")
        with (
            httpx.Client(base_url=first.url, auth=auth, timeout=60) as one,
            httpx.Client(base_url=second.url, auth=auth, timeout=60) as two,
        ):
            digest = push(one, name, data)
            for client, cache in zip((one, two), caches, strict=True):
                assert client.get(blob_path(name, digest)).content == data
                assert kept(cache, digest) == data
            pulled_at = time.monotonic()  # the second node's copy found the blob in the bucket

            # A copy pulled again costs no request to the bucket.
            before = scrape(second)
            for _ in range(3):
                assert two.get(blob_path(name, digest)).content == data
            after = scrape(second)
            assert value(after, "berth_s3_cache_pulls_total", result="hit") == 3
            assert requests_to_the_store(after) == requests_to_the_store(before)

            damaged = bytearray(data)
            damaged[MiB] ^= 0xFF  # one byte flipped: the size stays
            seaweedfs.client().put_object(
                Bucket=BUCKET, Key=object_key(first, digest), Body=bytes(damaged)
            )
            checked = first.cli("storage", "check", "shared", "--json", check=False)
            assert checked.returncode == 1, checked.stdout + checked.stderr
            assert json.loads(checked.stdout)["damaged"] == [digest]
            assert_status(one.head(blob_path(name, digest)), 404)
            assert_status(one.get(blob_path(name, digest)), 404)
            assert kept(caches[1], digest) == data  # the second node's copy: out of reach

            refused = eventually(
                lambda: two.get(blob_path(name, digest)),
                lambda answer: answer.status_code != 200,
                timeout=45,
            )
            assert_status(refused, 404)
            assert time.monotonic() - pulled_at < 40  # 30 s, and the time a poll takes
            assert refused.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
            ranged = two.get(blob_path(name, digest), headers={"Range": "bytes=0-99"})
            held = two.get(blob_path(name, digest), headers={"If-None-Match": f'"{digest}"'})
            for answer in (ranged, held, two.head(blob_path(name, digest))):
                assert_status(answer, 404)
            assert kept(caches[1], digest) is None
    finally:
        second.stop()
        first.stop()


def test_serve_refuses_a_cache_directory_it_cannot_make(
    seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    (tmp_path / "taken").write_bytes(b"a file where the directory should be")
    settings = {
        **seaweedfs.settings_environ(),
        "BERTH_S3_CACHE_DIR": str(tmp_path / "taken" / "cache"),
    }
    said = serve_refused(unstarted_environ(tmp_path, settings))
    assert f"cannot use s3_cache_dir {tmp_path / 'taken' / 'cache'}" in said
