"""The object store going away in the middle of a push (SeaweedFS SIGKILLed while a layer is
sent in chunks), its bucket deleted and the registry's credentials revoked while it serves: the
client is told clearly to come back later (and, when the store refused the registry, why and
what its operator should check), /readyz says the same, nothing of the blob is visible
anywhere, and once the store is back the same push carries on and the blob pulls exactly.

One store and one server for the module: each test leaves the store up and as it found it."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.metrics import Samples, scrape, summed
from tests.oci import (
    assert_status,
    blob_path,
    error_codes,
    location,
    patch_upload,
    start_upload,
)
from tests.s3 import (
    BUCKET,
    SeaweedFS,
    seaweedfs_server,
    stored_sizes,
    unfinished_objects,
)
from tests.servers import BerthServer, running_server

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def module_seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this module's own: its tests kill it, delete its bucket, change its keys."""
    with seaweedfs_server(tmp_path_factory.mktemp("s3-outage") / "seaweedfs") as store:
        yield store


@pytest.fixture
def own_seaweedfs(module_seaweedfs: SeaweedFS) -> SeaweedFS:
    """The module's store, up (a test that failed while it was down leaves it down)."""
    if module_seaweedfs.process is None or module_seaweedfs.process.poll() is not None:
        module_seaweedfs.start()
    return module_seaweedfs


@pytest.fixture(scope="module")
def outage_server(
    request: pytest.FixtureRequest, module_seaweedfs: SeaweedFS
) -> Iterator[BerthServer]:
    # Two tries of each S3 request: the 503 comes in a second or two, not after ~15 s of
    # backing off per request (the default's six tries).
    env = {**module_seaweedfs.settings_environ(), "BERTH_S3_ATTEMPTS": "2"}
    with running_server(request, "s3-outage", extra_env=env) as server:
        yield server


class KillHalfWay:
    """A PATCH body that SIGKILLs the object store once half of it has been sent."""

    def __init__(self, chunk: bytes, store: SeaweedFS) -> None:
        self.chunk = chunk
        self.store = store

    def __iter__(self) -> Iterator[bytes]:
        half = len(self.chunk) // 2
        yield self.chunk[:half]
        self.store.kill()
        yield self.chunk[half:]


def moved_where(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much `name` grew, summed over its series that carry `labels`."""

    def carries(labelled: dict[str, str]) -> bool:
        return labels.items() <= labelled.items()

    return summed(after, name, carries) - summed(before, name, carries)


def assert_unavailable(response: httpx.Response, store: SeaweedFS) -> None:
    """503 UNAVAILABLE with Retry-After, in the OCI error format, naming no internal address."""
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    (error,) = response.json()["errors"]
    assert error["code"] == "UNAVAILABLE"
    assert "storage is unavailable" in error["message"]
    address = store.endpoint.split("//")[1]
    assert address not in response.text and address not in str(response.headers)
    assert "127.0.0.1" not in response.text


def test_the_store_killed_mid_push_is_a_clear_503_and_the_same_push_succeeds_after(
    outage_server: BerthServer, own_seaweedfs: SeaweedFS
) -> None:
    server = outage_server
    server.create_repository("outage", "app")
    name = "outage/app"
    data = os.urandom(14 * MiB + 321)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    chunk_size = 6 * MiB
    with httpx.Client(base_url=server.url, auth=server.access_key("outage"), timeout=120) as client:
        upload = location(start_upload(client, name))
        first = data[:chunk_size]
        patched = patch_upload(client, upload, first, f"0-{chunk_size - 1}")
        assert_status(patched, 202)
        upload = location(patched)
        other = location(start_upload(client, name))
        other = location(patch_upload(client, other, b"not the layer", "0-12"))

        second = data[chunk_size : 2 * chunk_size]
        started = time.monotonic()
        failed = client.patch(
            upload,
            content=KillHalfWay(second, own_seaweedfs),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{chunk_size}-{2 * chunk_size - 1}",
            },
        )
        assert time.monotonic() - started < 10
        assert_unavailable(failed, own_seaweedfs)
        # The rest of the push (the last chunk with the final PUT) meets the same answer, and
        # so does a blob pushed whole; nothing of either shows anywhere.
        started = time.monotonic()
        last = client.put(
            upload,
            params={"digest": digest},
            content=data[chunk_size:],
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{chunk_size}-{len(data) - 1}",
            },
        )
        assert time.monotonic() - started < 10
        assert_unavailable(last, own_seaweedfs)
        small = os.urandom(1000)
        small_digest = "sha256:" + hashlib.sha256(small).hexdigest()
        whole = client.post(
            f"/v2/{name}/blobs/uploads/", params={"digest": small_digest}, content=small
        )
        assert_unavailable(whole, own_seaweedfs)
        assert_status(client.head(blob_path(name, small_digest)), 404)
        # A wrong digest is still told as such (and ends that upload), store or no store.
        wrong = client.put(other, params={"digest": digest})
        assert_status(wrong, 400)
        assert error_codes(wrong) == ["DIGEST_INVALID"]
        assert_status(client.get(other), 404)
        assert_status(client.head(blob_path(name, digest)), 404)
        assert_status(client.get(blob_path(name, digest)), 404)
        usage = client.post("/api/v1/projects/outage/storage/collect")
        assert_status(usage, 201)
        assert (usage.json()["bytes"], usage.json()["blobs"]) == (0, 0)
        images = client.get("/api/v1/projects/outage/repositories/app/images")
        assert_status(images, 200)
        assert images.json()["items"] == []

        own_seaweedfs.start()
        # The client asks where its upload stands, and sends the rest from there.
        status = client.get(upload)
        assert_status(status, 204)
        assert status.headers["range"] == f"0-{chunk_size - 1}"
        offset = chunk_size
        upload = location(status)
        while offset < len(data):
            chunk = data[offset : offset + chunk_size]
            patched = patch_upload(client, upload, chunk, f"{offset}-{offset + len(chunk) - 1}")
            assert_status(patched, 202)
            upload = location(patched)
            offset += len(chunk)
        closed = client.put(upload, params={"digest": digest})
        assert_status(closed, 201)
        assert closed.headers["docker-content-digest"] == digest
        pulled = client.get(blob_path(name, digest))
        assert_status(pulled, 200)
        assert pulled.content == data


def assert_refused(response: httpx.Response, store: SeaweedFS, *check: str) -> None:
    """503 UNAVAILABLE saying the store refused the registry and which settings to check,
    naming neither the store's address nor its bucket."""
    assert_unavailable(response, store)
    message = response.json()["errors"][0]["message"]
    assert all(words in message for words in check), message
    assert BUCKET not in response.text


def becomes_ready(server: BerthServer, ready: bool, timeout: float = 30) -> str:
    """/readyz once it is (or is not) ready: the store's answer is kept a few seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(f"{server.url}/readyz", timeout=30)
        if (answer.status_code == 200) == ready or time.monotonic() > deadline:
            assert answer.status_code == (200 if ready else 503), answer.text
            return answer.text
        time.sleep(0.2)


def delete_bucket(store: SeaweedFS) -> None:
    client = store.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for entry in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=entry["Key"])
    client.delete_bucket(Bucket=BUCKET)


def restart_with_secret(store: SeaweedFS, secret: str) -> None:
    """The store's identities file changed and the store restarted with it."""
    store.kill()
    store.secret_access_key = secret
    store.start()


def test_a_deleted_bucket_and_revoked_credentials_are_clear_503s_and_pushes_succeed_after(
    outage_server: BerthServer, own_seaweedfs: SeaweedFS
) -> None:
    server, store = outage_server, own_seaweedfs
    server.create_repository("refused", "app")
    name = "refused/app"
    kept = os.urandom(1000)
    kept_digest = "sha256:" + hashlib.sha256(kept).hexdigest()
    granted = store.secret_access_key
    # Per fault: break the store, mend it, what the refusals and /readyz must name.
    faults: dict[str, tuple[Callable[[], object], Callable[[], object], tuple[str, ...]]] = {
        "bucket": (
            lambda: delete_bucket(store),
            lambda: store.create_bucket(BUCKET),
            ("no bucket", "s3_bucket"),
        ),
        "credentials": (
            lambda: restart_with_secret(store, "revoked-" + os.urandom(8).hex()),
            lambda: restart_with_secret(store, granted),
            ("refused its credentials", "s3_access_key_id", "s3_secret_access_key"),
        ),
    }
    with httpx.Client(base_url=server.url, auth=server.access_key("refused"), timeout=60) as client:
        for fault, (break_store, mend_store, check) in faults.items():
            # A blob stored before the fault, to pull while it lasts.
            stored = client.post(
                f"/v2/{name}/blobs/uploads/", params={"digest": kept_digest}, content=kept
            )
            assert_status(stored, 201)
            data = os.urandom(2 * MiB + len(fault))
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            upload = location(start_upload(client, name))
            break_store()

            refused = patch_upload(client, upload, data, f"0-{len(data) - 1}")
            assert_refused(refused, store, *check)
            whole = client.post(
                f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data
            )
            assert_refused(whole, store, *check)
            assert_refused(client.get(blob_path(name, kept_digest)), store, *check)
            assert_status(client.head(blob_path(name, digest)), 404)
            not_ready = becomes_ready(server, False)
            assert all(words in not_ready for words in check), not_ready
            assert store.endpoint.split("//")[1] not in not_ready and BUCKET not in not_ready

            mend_store()
            becomes_ready(server, True)
            # The same push: where the upload stands (nothing taken), then the blob.
            status = client.get(upload)
            assert_status(status, 204)
            assert status.headers["range"] == "0-0"
            pushed = client.put(
                location(status),
                params={"digest": digest},
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert_status(pushed, 201)
            assert client.get(blob_path(name, digest)).content == data
            if fault == "credentials":
                assert client.get(blob_path(name, kept_digest)).content == kept


# ---------------------------------------------------------------- a PATCH that fails midway

PIECE = 16 * MiB  # berth.storage.s3_pieces.PIECE_BYTES: what a PATCH sends as one part


def upload_id_of(upload: str) -> str:
    return upload.rstrip("/").rsplit("/", 1)[1]


def pieces_of(server: BerthServer, upload: str) -> list[tuple[int, int]]:
    """(start, size) of every piece of the upload at `upload` (its URL) in the bucket: a
    PATCH's bytes, PUT whole (`{start}-{size}-{token}`) or in parts (`{start}-m{token}`)."""
    sizes = stored_sizes(server.extra_env, "uploads")
    pieces = []
    for key, size in sizes.items():
        if f"/uploads/{upload_id_of(upload)}/" in key:
            start, *_ = key.rsplit("/", 1)[1].split("-")
            pieces.append((int(start), size))
    return sorted(pieces)


def parts_in_flight(server: BerthServer, upload: str) -> list[int]:
    """How many parts each piece of the upload begun in parts and not completed holds."""
    unfinished = unfinished_objects(server.extra_env, "uploads")
    return [parts for key, parts in unfinished.items() if f"/{upload_id_of(upload)}/" in key]


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        time.sleep(0.1)


def finish_from_acknowledged_offset(
    server: BerthServer,
    client: httpx.Client,
    name: str,
    upload: str,
    data: bytes,
    acknowledged: int,
) -> None:
    """What a client does after a failed chunk: ask where the upload stands, send the rest
    from there (the bucket then holds that upload's two recorded pieces and nothing else),
    close it; the blob then pulls byte-exact and no piece is left."""
    status = client.get(upload)
    assert_status(status, 204)
    assert status.headers["range"] == f"0-{acknowledged - 1}"
    rest = patch_upload(
        client, location(status), data[acknowledged:], f"{acknowledged}-{len(data) - 1}"
    )
    assert_status(rest, 202)
    assert pieces_of(server, upload) == [
        (0, acknowledged),
        (acknowledged, len(data) - acknowledged),
    ]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    closed = client.put(location(rest), params={"digest": digest})
    assert_status(closed, 201)
    assert client.get(blob_path(name, digest)).content == data
    assert pieces_of(server, upload) == []


def test_a_client_gone_mid_patch_leaves_no_piece_and_its_upload_goes_on(
    outage_server: BerthServer, own_seaweedfs: SeaweedFS
) -> None:
    """The client drops the connection after a part of its chunk was stored and more was
    buffered: the buffered bytes are not stored, the part is dropped (no piece of the chunk
    ever visible), and the client goes on from the offset it was last told."""
    server = outage_server
    server.create_repository("gone", "app")
    name = "gone/app"
    first = MiB
    data = os.urandom(first + 3 * MiB)
    with httpx.Client(base_url=server.url, auth=server.access_key("gone"), timeout=120) as client:
        upload = location(start_upload(client, name))
        upload = location(patch_upload(client, upload, data[:first], f"0-{first - 1}"))
        assert pieces_of(server, upload) == [(0, first)]

        declared = PIECE + 8 * MiB
        with socket.create_connection((server.host, server.port)) as connection:
            connection.sendall(
                server.request_head(
                    "PATCH",
                    upload,
                    server.access_key("gone"),
                    Content_Type="application/octet-stream",
                    Content_Range=f"{first}-{first + declared - 1}",
                    Content_Length=declared,
                )
            )
            # A part stored, and a few MiB more on their way into the next one.
            connection.sendall(os.urandom(PIECE + 5 * MiB))
            wait_until(lambda: parts_in_flight(server, upload) == [1], "a part stored")
            assert pieces_of(server, upload) == [(0, first)]
        # The next request on the upload waits for the broken one to have ended.
        finish_from_acknowledged_offset(server, client, name, upload, data, first)
        assert parts_in_flight(server, upload) == []
    assert "went away during PATCH" in server.log_tail(200)


def test_the_store_killed_mid_patch_is_a_503_and_no_piece_of_the_chunk_stays(
    outage_server: BerthServer, own_seaweedfs: SeaweedFS
) -> None:
    """SeaweedFS SIGKILLed after a part of a chunk was stored: the client is told UNAVAILABLE
    (as for any store outage); the unfinished piece, which could not be dropped with the store
    gone, is never visible nor read (the abandoned-uploads job aborts it after
    `upload_expiry`); the upload goes on from its offset."""
    server, store = outage_server, own_seaweedfs
    server.create_repository("killed", "app")
    name = "killed/app"
    first = MiB
    data = os.urandom(first + 2 * MiB)
    with httpx.Client(base_url=server.url, auth=server.access_key("killed"), timeout=120) as client:
        upload = location(start_upload(client, name))
        upload = location(patch_upload(client, upload, data[:first], f"0-{first - 1}"))

        def chunk() -> Iterator[bytes]:
            for _ in range(PIECE // MiB + 5):
                yield os.urandom(MiB)
            wait_until(lambda: parts_in_flight(server, upload) == [1], "a part stored")
            store.kill()
            yield os.urandom(MiB)

        sent = PIECE + 6 * MiB
        started = time.monotonic()
        failed = client.patch(
            upload,
            content=chunk(),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{first}-{first + sent - 1}",
            },
        )
        assert_unavailable(failed, store)
        assert time.monotonic() - started < 30

        store.start()
        assert pieces_of(server, upload) == [(0, first)]
        assert parts_in_flight(server, upload) == [1]
        finish_from_acknowledged_offset(server, client, name, upload, data, first)
        assert parts_in_flight(server, upload) == [1]


def test_a_patch_with_the_store_down_gives_up_after_one_retry_budget(
    request: pytest.FixtureRequest, own_seaweedfs: SeaweedFS
) -> None:
    """With the default `s3_attempts` (6 tries, about 15 s of backing off), a chunk PATCHed
    while the store is down is answered 503 once its write has spent its tries: the piece it
    could not write is not also tried away before the client hears (about 15 s more), and
    the upload goes on from its offset once the store is back."""
    env = {**own_seaweedfs.settings_environ(), "BERTH_WORKERS": "1"}
    with running_server(request, "s3-down-patch", extra_env=env) as server:
        server.create_repository("down", "app")
        name = "down/app"
        data = os.urandom(2 * MiB)
        with httpx.Client(
            base_url=server.url, auth=server.access_key("down"), timeout=120
        ) as client:
            upload = location(start_upload(client, name))
            upload = location(patch_upload(client, upload, data[:MiB], f"0-{MiB - 1}"))
            before = scrape(server)
            own_seaweedfs.kill()
            failed = patch_upload(client, upload, data[MiB:], f"{MiB}-{2 * MiB - 1}")
            after = scrape(server)
            assert_unavailable(failed, own_seaweedfs)
            # One budget: the piece's write, tried six times (five retries), unanswered. Its
            # cleanup, another budget, comes after the answer. (Counted, not timed: the
            # client's backoff is randomised, so one budget may take longer than two.)
            unanswered = moved_where(before, after, "berth_s3_requests_total", status="none")
            assert unanswered == 1
            assert moved_where(before, after, "berth_s3_retries_total") == 5

            own_seaweedfs.start()
            finish_from_acknowledged_offset(server, client, name, upload, data, MiB)
