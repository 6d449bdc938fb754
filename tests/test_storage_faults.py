"""Storage faults: damaged blobs and manifests, a full disk, a locked database, uploads that lose
their scratch file, and scratch files no upload names."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import mmap
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.services.readiness import STORE_CACHE_SECONDS
from tests.conftest import MIB, Repo, new_repo, pushed_image
from tests.oci import (
    OCI_MANIFEST,
    Blob,
    digest_of,
    error_code,
    push_bytes,
    put_manifest,
    random_image,
)
from tests.servers import (
    ADMIN_PASSWORD,
    BERTH,
    BerthServer,
    PostgresCluster,
    answers_reads_and_a_sign_in,
    server_fixture,
)

ACCEPT = {"Accept": OCI_MANIFEST}


def blob_file(server: BerthServer, digest: str) -> Path:
    algorithm, hex_digest = digest.split(":", 1)
    return server.data_dir / "blobs" / algorithm / hex_digest[:2] / hex_digest


def damage(path: Path) -> None:
    """Flip one byte in the middle: the size stays, only the digest tells."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def scratch_files(server: BerthServer) -> list[str]:
    uploads = server.data_dir / "blobs" / "_uploads"
    return sorted(p.name for p in uploads.iterdir() if p.is_file())


def storage_check(server: BerthServer) -> tuple[int, dict[str, Any]]:
    result = server.cli("storage", "check", "--json", check=False)
    return result.returncode, json.loads(result.stdout)


# ---------------------------------------------------------------- damaged content


def test_a_damaged_small_blob_is_never_served_and_a_push_repairs_it(repo: Repo) -> None:
    data = os.urandom(64 * 1024)
    digest = push_bytes(repo.client, repo.name, data)
    damage(blob_file(repo.server, digest))

    response = repo.client.get(repo.url(f"blobs/{digest}"))
    assert response.status_code == 404 and error_code(response) == "BLOB_UNKNOWN"
    message = response.json()["errors"][0]["message"]
    assert "damaged in storage" in message and "push it again" in message, message
    # Set aside: clients now see it missing (so they upload it again).
    assert repo.client.head(repo.url(f"blobs/{digest}")).status_code == 404

    push_bytes(repo.client, repo.name, data)  # what a client does after a HEAD of 404
    assert repo.client.get(repo.url(f"blobs/{digest}")).content == data


def test_a_large_blob_damaged_in_place_is_the_checks_to_set_aside_then_a_push_repairs_it(
    repo: Repo,
) -> None:
    """Large blobs are not hashed on each download, nor on a push of a blob the registry has
    (a file of the right size is taken as stored): the storage check finds the damage and
    sets the file aside, and the next push stores the right bytes."""
    data = os.urandom(3 * MIB)
    digest = push_bytes(repo.client, repo.name, data)
    damage(blob_file(repo.server, digest))
    push_bytes(repo.client, repo.name, data)
    assert blob_file(repo.server, digest).read_bytes() != data
    code, report = storage_check(repo.server)
    assert code == 1 and digest in report["damaged"], report
    push_bytes(repo.client, repo.name, data)
    assert blob_file(repo.server, digest).read_bytes() == data
    assert repo.client.get(repo.url(f"blobs/{digest}")).content == data


def test_a_layer_pushed_again_is_not_stored_again(repo: Repo) -> None:
    """A layer pushed again, by its repository or another (a shared base layer), leaves the
    stored file as it is (the same file, not rewritten) and its scratch file gone."""
    data = os.urandom(3 * MIB)
    digest = push_bytes(repo.client, repo.name, data)
    before = os.stat(blob_file(repo.server, digest))
    other = new_repo(repo.server)
    with other.client:
        for pusher in (repo, other):
            assert push_bytes(pusher.client, pusher.name, data) == digest
            after = os.stat(blob_file(repo.server, digest))
            assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
            assert pusher.client.get(pusher.url(f"blobs/{digest}")).content == data
    assert scratch_files(repo.server) == []


@pytest.mark.parametrize("loss", ["deleted", "cut-short"])
def test_a_blob_lost_on_disk_is_stored_again_by_a_push(repo: Repo, loss: str) -> None:
    """A push of a blob whose file went behind the registry's back (no pull found it out
    first) stores it again: a push stays the way to repair a lost blob."""
    data = os.urandom(2 * MIB)
    digest = push_bytes(repo.client, repo.name, data)
    path = blob_file(repo.server, digest)
    if loss == "deleted":
        path.unlink()
    else:
        path.write_bytes(data[:MIB])
    push_bytes(repo.client, repo.name, data)
    assert path.read_bytes() == data
    assert repo.client.get(repo.url(f"blobs/{digest}")).content == data
    assert scratch_files(repo.server) == []


def test_a_truncated_large_blob_is_never_served(repo: Repo) -> None:
    data = os.urandom(2 * MIB)
    digest = push_bytes(repo.client, repo.name, data)
    path = blob_file(repo.server, digest)
    path.write_bytes(data[: MIB // 2])
    response = repo.client.get(repo.url(f"blobs/{digest}"))
    assert response.status_code == 404 and error_code(response) == "BLOB_UNKNOWN"
    assert not path.exists()


def test_a_conditional_pull_of_a_blob_storage_lost_is_not_304(repo: Repo) -> None:
    """A client holding a blob is told 304 only while storage holds it too: once the file is
    gone (or cut short), If-None-Match gets BLOB_UNKNOWN, as a HEAD does, so the client does
    not take the registry to hold it still."""
    held, truncated = os.urandom(2 * MIB), os.urandom(2 * MIB)
    for data in (held, truncated):
        digest = push_bytes(repo.client, repo.name, data)
        etag = {"If-None-Match": f'"{digest}"'}
        assert repo.client.get(repo.url(f"blobs/{digest}"), headers=etag).status_code == 304
        if data is held:
            blob_file(repo.server, digest).unlink()
        else:
            blob_file(repo.server, digest).write_bytes(data[:MIB])
        for method in ("GET", "HEAD"):
            response = repo.client.request(method, repo.url(f"blobs/{digest}"), headers=etag)
            assert response.status_code == 404, (method, response.status_code)
        response = repo.client.get(repo.url(f"blobs/{digest}"), headers=etag)
        assert error_code(response) == "BLOB_UNKNOWN"
        push_bytes(repo.client, repo.name, data)  # repaired: held again (and the store clean)
        assert repo.client.get(repo.url(f"blobs/{digest}"), headers=etag).status_code == 304


def test_storage_check_sets_damaged_blobs_aside_until_pushed_again(server: BerthServer) -> None:
    repo = new_repo(server)
    body = random_image(repo.client, repo.name)
    large = os.urandom(2 * MIB)  # beyond what a download verifies
    large_digest = push_bytes(repo.client, repo.name, large)
    document = json.loads(body)
    document["layers"].append(Blob(large).descriptor())
    body = json.dumps(document).encode()
    assert put_manifest(repo.client, repo.name, "v1", body).status_code == 201
    damage(blob_file(server, large_digest))

    code, report = storage_check(server)
    assert code == 1 and report["damaged"] == [large_digest], report
    # Set aside: the blob is missing, so a client uploads it again, even by mount.
    assert repo.client.head(repo.url(f"blobs/{large_digest}")).status_code == 404
    other = new_repo(server)
    mounted = other.client.post(
        other.url("blobs/uploads/"), params={"mount": large_digest, "from": repo.name}
    )
    assert mounted.status_code == 202
    printed = server.cli("storage", "check", check=False)
    assert printed.returncode == 1 and f"missing: {large_digest}" in printed.stdout

    push_bytes(repo.client, repo.name, large)
    assert repo.client.get(repo.url(f"blobs/{large_digest}")).content == large
    _code, report = storage_check(server)
    assert large_digest not in [*report["missing"], *report["damaged"]], report


def test_a_damaged_manifest_is_never_served_and_a_push_repairs_it(
    sqlite_server: BerthServer,
) -> None:
    repo = new_repo(sqlite_server)
    body = random_image(repo.client, repo.name)
    assert put_manifest(repo.client, repo.name, "v1", body).status_code == 201
    with sqlite3.connect(sqlite_server.data_dir / "berth.db") as db:
        db.execute(
            "UPDATE manifests SET content = ? WHERE digest = ?",
            (body.replace(b'"schemaVersion"', b'"schemaVersioN"'), digest_of(body)),
        )
    response = repo.client.get(repo.url("manifests/v1"), headers=ACCEPT)
    assert response.status_code == 404 and "damaged" in response.text
    assert put_manifest(repo.client, repo.name, "v1", body).status_code == 201
    assert repo.client.get(repo.url("manifests/v1"), headers=ACCEPT).content == body


# ---------------------------------------------------------------- uploads and scratch files


def test_a_commit_whose_scratch_file_is_gone_is_a_retryable_upload_error(repo: Repo) -> None:
    data = os.urandom(100_000)
    for with_body in (False, True):
        location = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
        patched = repo.client.patch(location, content=data[:50_000])
        assert patched.status_code == 202
        upload_id = location.rsplit("/", 1)[1]
        # What garbage collection does to an upload it found abandoned.
        (repo.server.data_dir / "blobs" / "_uploads" / upload_id).unlink()
        rest = data[50_000:] if with_body else b""
        response = repo.client.put(location, params={"digest": digest_of(data)}, content=rest)
        assert response.status_code == 404, response.text
        assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"
        assert "start the upload again" in response.text
        assert repo.client.head(repo.url(f"blobs/{digest_of(data)}")).status_code == 404
        assert repo.client.get(location).status_code == 404
    push_bytes(repo.client, repo.name, data)  # the client's retry
    assert repo.client.get(repo.url(f"blobs/{digest_of(data)}")).content == data


def test_an_upload_whose_uploads_directory_is_gone_ends_at_its_next_request(
    tmp_path: Path,
) -> None:
    """The blob directory's `_uploads` gone (removed by hand, a shared mount's directory
    lost): every upload's data is gone with it, so the first PATCH, whose lock file cannot be
    made there, ends the upload with BLOB_UPLOAD_UNKNOWN (clients start a new one), though it
    never got the upload's turn."""
    server = BerthServer(tmp_path / "data")
    try:
        repo = new_repo(server.start())
        location = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
        uploads = server.data_dir / "blobs" / "_uploads"
        uploads.rename(uploads.with_name("_uploads.gone"))
        response = repo.client.patch(location, content=b"some bytes")
        assert response.status_code == 404, response.text
        assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"
        assert "start the upload again" in response.text
        assert repo.client.get(location).status_code == 404
    finally:
        server.stop()


def test_a_new_upload_recreates_a_removed_uploads_directory(tmp_path: Path) -> None:
    """The blob directory's `_uploads` removed (an operator cleaning up, a tmp cleaner): the
    next push starts an upload as if it had never gone, without a restart."""
    server = BerthServer(tmp_path / "data")
    try:
        repo = new_repo(server.start())
        shutil.rmtree(server.data_dir / "blobs" / "_uploads")
        data = os.urandom(100_000)
        started = repo.client.post(repo.url("blobs/uploads/"))
        assert started.status_code == 202, started.text
        patched = repo.client.patch(started.headers["Location"], content=data)
        assert patched.status_code == 202, patched.text
        done = repo.client.put(patched.headers["Location"], params={"digest": digest_of(data)})
        assert done.status_code == 201, done.text
        pulled = repo.client.get(repo.url(f"blobs/{digest_of(data)}"))
        assert pulled.status_code == 200 and digest_of(pulled.content) == digest_of(data)
    finally:
        server.stop()


def test_readyz_makes_a_removed_uploads_directory_again_and_stays_ready(tmp_path: Path) -> None:
    """The blob directory's `_uploads` removed: /readyz still answers ready, and the directory
    is there again. A balancer following /readyz would otherwise send the node no upload to
    make it again, and keep it out until a restart."""
    server = BerthServer(tmp_path / "data")
    try:
        server.start()
        uploads = server.data_dir / "blobs" / "_uploads"
        shutil.rmtree(uploads)
        time.sleep(STORE_CACHE_SECONDS + 0.5)  # the store's last answer is no longer kept
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200, ready.text
        assert uploads.is_dir()
    finally:
        server.stop()


def test_readyz_is_not_ready_while_the_blob_mount_is_gone(tmp_path: Path) -> None:
    """A blob mount gone leaves the empty directory it was mounted on: the node answers not
    ready and makes nothing there (a push's files would be hidden once the mount is back),
    and is ready again once the mount is back."""
    server = BerthServer(tmp_path / "data")
    try:
        server.start()
        blobs = server.data_dir / "blobs"
        mounted = blobs.rename(blobs.with_name("blobs.mounted"))
        blobs.mkdir()
        readyz = f"{server.url}/readyz"
        assert until(lambda: httpx.get(readyz).status_code == 503, STORE_CACHE_SECONDS + 5)
        assert list(blobs.iterdir()) == []
        blobs.rmdir()
        mounted.rename(blobs)
        assert until(lambda: httpx.get(readyz).status_code == 200, STORE_CACHE_SECONDS + 5)
    finally:
        server.stop()


def test_an_unmounted_blob_directory_takes_no_upload_until_it_is_mounted_again(
    tmp_path: Path,
) -> None:
    """The blob directory a mount point, with an `_uploads` under it from before it was
    first mounted: once it is unmounted, the node answers not ready and stores no upload
    there (its files would be hidden once the disk is mounted again); mounted again, it is
    ready and takes pushes."""
    data_dir, disk = tmp_path / "data", tmp_path / "disk"
    blobs = data_dir / "blobs"
    (blobs / "_uploads").mkdir(parents=True)  # made before the disk was mounted there
    disk.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)])
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    server = BerthServer(data_dir)
    try:
        subprocess.run(["mount", "--bind", str(disk), str(blobs)], check=True)
        server.start()
        repo = new_repo(server)
        readyz = f"{server.url}/readyz"
        assert httpx.get(readyz).status_code == 200
        subprocess.run(["umount", "-l", str(blobs)], check=True)
        assert until(lambda: httpx.get(readyz).status_code == 503, STORE_CACHE_SECONDS + 5)
        started = repo.client.post(repo.url("blobs/uploads/"))
        if started.status_code == 202:
            sent = repo.client.patch(started.headers["Location"], content=b"some bytes")
            assert sent.status_code >= 400, sent.text
        assert [p.name for p in (blobs / "_uploads").iterdir()] == []

        subprocess.run(["mount", "--bind", str(disk), str(blobs)], check=True)
        assert until(lambda: httpx.get(readyz).status_code == 200, STORE_CACHE_SECONDS + 5)
        pushed_image(server)
    finally:
        server.stop()
        for mounted in (blobs, disk):
            while (
                subprocess.run(["umount", "-l", str(mounted)], capture_output=True).returncode == 0
            ):
                pass  # each mount made on it


def test_storage_check_removes_scratch_files_no_upload_names(repo: Repo) -> None:
    uploads = repo.server.data_dir / "blobs" / "_uploads"
    hour_ago = time.time() - 7200
    orphan, fresh, crashed = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    (uploads / orphan).write_bytes(b"left by a crash")
    (uploads / fresh).write_bytes(b"an upload starting now")
    # The temporary files of a commit or a copy that a crash interrupted.
    temporary = [f"{orphan}.commit.0123456789abcdef", f"{crashed}.copy", f"{crashed}.commit.01"]
    for name in [orphan, *temporary]:
        (uploads / name).write_bytes(b"left by a crash")
        os.utime(uploads / name, (hour_ago, hour_ago))
    live = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
    live_id = live.rsplit("/", 1)[1]
    assert repo.client.patch(live, content=b"some bytes").status_code == 202
    os.utime(uploads / live_id, (hour_ago, hour_ago))  # old, but its upload still names it
    (uploads / f"{live_id}.copy").write_bytes(b"some")
    os.utime(uploads / f"{live_id}.copy", (hour_ago, hour_ago))

    _code, report = storage_check(repo.server)
    assert report["orphan_uploads_removed"] >= 2, report
    remaining = scratch_files(repo.server)
    assert orphan not in remaining and fresh in remaining and live_id in remaining
    assert not set(temporary) & set(remaining), remaining
    assert f"{live_id}.copy" in remaining  # its upload goes on: it goes with the upload
    finished = repo.client.put(live, params={"digest": digest_of(b"some bytes")})
    assert finished.status_code == 201
    assert f"{live_id}.copy" not in scratch_files(repo.server)
    (uploads / fresh).unlink()


racing_server = server_fixture("race", env={"BERTH_GC_GRACE_PERIOD": "0"})
RACES_MET = 20  # uploads collected in flight before the race is called met


def test_pushes_racing_garbage_collection_get_no_server_error(racing_server: BerthServer) -> None:
    """GC removes uploads in flight that look untouched for longer than upload_expiry (each
    is aged so as soon as it starts): their commits must answer an error the client retries,
    never a 500."""
    repo = new_repo(racing_server)
    database = sqlite3.connect(racing_server.data_dir / "berth.db", check_same_thread=False)
    ageing = threading.Lock()

    def age(upload_id: str) -> None:
        with ageing, database:
            database.execute(
                "UPDATE uploads SET updated_at = '2000-01-01 00:00:00.000000' WHERE id = ?",
                (upload_id,),
            )

    stop = time.monotonic() + 8
    statuses: list[int] = []
    lost: list[str] = []  # the codes of the commits and chunks that met a collected upload

    def racing() -> bool:
        """Until the race was met RACES_MET times (8 s at most): what it was to prove."""
        return time.monotonic() < stop and lost.count("BLOB_UPLOAD_UNKNOWN") < RACES_MET

    def push() -> None:
        with httpx.Client(base_url=racing_server.url, auth=repo.client.auth, timeout=30) as c:
            while racing():
                data = os.urandom(20_000)
                started = c.post(repo.url("blobs/uploads/"))
                statuses.append(started.status_code)
                if started.status_code != 202:
                    continue
                location = started.headers["Location"]
                age(started.headers["Docker-Upload-UUID"])
                for response in (
                    c.patch(location, content=data),
                    c.put(location, params={"digest": digest_of(data)}),
                ):
                    statuses.append(response.status_code)
                    if response.status_code == 404:
                        lost.append(error_code(response))

    def collect() -> None:
        with httpx.Client(base_url=racing_server.url, auth=repo.client.auth, timeout=30) as c:
            while racing():
                c.post(f"/api/v1/projects/{repo.project}/gc", json={"delete_untagged": True})
                time.sleep(0.05)

    threads = [threading.Thread(target=push) for _ in range(3)] + [threading.Thread(target=collect)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    database.close()
    assert statuses and all(s < 500 for s in statuses), sorted(set(statuses))
    # The race was met: some uploads were collected while in flight.
    assert "BLOB_UPLOAD_UNKNOWN" in lost, (sorted(set(statuses)), lost)


# ---------------------------------------------------------------- a full disk, a locked database


@pytest.fixture(scope="module")
def small_disk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthServer]:
    """A server whose blob store is a real 8 MiB filesystem (tmpfs)."""
    data_dir = tmp_path_factory.mktemp("full")
    blobs = data_dir / "blobs"
    blobs.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(blobs)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    server = BerthServer(data_dir)
    try:
        yield server.start()
    finally:
        server.stop()
        subprocess.run(["umount", "-l", str(blobs)], check=False)


@pytest.fixture(scope="module")
def large_sector_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthServer]:
    """A server whose blob store is an XFS on a device of 16 KiB sectors (a loop device): it
    opens files with O_DIRECT but refuses a direct write aligned to 4 KiB only (EINVAL), as
    some disks do, past what `DirectWriter` aligns to."""
    data_dir = tmp_path_factory.mktemp("large-sectors")
    blobs = data_dir / "blobs"
    blobs.mkdir()
    image = data_dir.with_name(f"{data_dir.name}.img")
    with image.open("wb") as sparse:
        sparse.truncate(300 * MIB)
    attached = subprocess.run(
        ["losetup", "--find", "--show", "--sector-size", "16384", str(image)],
        capture_output=True,
        text=True,
    )
    if attached.returncode != 0:
        pytest.skip(f"no loop device of 16 KiB sectors here: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        for command in (
            ["mkfs.xfs", "-q", "-b", "size=16384", "-s", "size=16384", device],
            ["mount", device, str(blobs)],
        ):
            made = subprocess.run(command, capture_output=True, text=True)
            if made.returncode != 0:
                pytest.skip(f"{command[0]}: {made.stderr.strip()}")
        server = BerthServer(data_dir)
        try:
            yield server.start()
        finally:
            server.stop()
            subprocess.run(["umount", "-l", str(blobs)], check=False)
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)
        image.unlink()


def _direct_write_of_4_kib_refused(directory: Path) -> bool:
    probe = directory / f"probe-{uuid.uuid4().hex}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    block = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
    try:
        os.pwrite(fd, block, 0)
    except OSError as error:
        return error.errno == errno.EINVAL
    finally:
        os.close(fd)
        block.close()
        probe.unlink()
    return False


def test_a_disk_refusing_direct_writes_stores_pushes_exactly(
    large_sector_server: BerthServer,
) -> None:
    """On a disk that refuses the direct writes large chunks get, the chunks are written the
    ordinary way instead: each is acknowledged at exactly its length, the blob is stored and
    served byte for byte, and no scratch file is left."""
    assert _direct_write_of_4_kib_refused(large_sector_server.data_dir / "blobs")
    repo = new_repo(large_sector_server)
    # Each chunk at least DIRECT_WRITE_MIN, none of its direct part a multiple of 16 KiB.
    chunks = [os.urandom(MIB + 4096 + 100), os.urandom(2 * MIB + 5)]
    data = b"".join(chunks)
    location = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
    sent = 0
    for chunk in chunks:
        answer = repo.client.patch(
            location,
            content=chunk,
            headers={"Content-Range": f"{sent}-{sent + len(chunk) - 1}"},
        )
        assert answer.status_code == 202, answer.text
        sent += len(chunk)
        assert answer.headers["Range"] == f"0-{sent - 1}"
        location = answer.headers["Location"]
    digest = digest_of(data)
    done = repo.client.put(location, params={"digest": digest})
    assert done.status_code == 201, done.text
    assert repo.client.get(repo.url(f"blobs/{digest}")).content == data
    assert blob_file(large_sector_server, digest).read_bytes() == data
    assert scratch_files(large_sector_server) == []
    other = os.urandom(3 * MIB + 7)  # one monolithic push, one batch
    assert push_bytes(repo.client, repo.name, other) == digest_of(other)
    assert repo.client.get(repo.url(f"blobs/{digest_of(other)}")).content == other


@pytest.mark.parametrize("mode", ["monolithic", "chunked"])
def test_a_full_disk_refuses_the_push_clearly_and_keeps_nothing(
    small_disk_server: BerthServer, mode: str
) -> None:
    repo = new_repo(small_disk_server)
    data = os.urandom(12 * MIB)
    digest = digest_of(data)
    if mode == "monolithic":
        response = repo.client.post(
            repo.url("blobs/uploads/"), params={"digest": digest}, content=data
        )
    else:
        location = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
        response = repo.client.patch(location, content=data)
        assert repo.client.get(location).status_code == 404  # discarded: its space is back
    assert response.status_code == 507, response.text
    assert error_code(response) == "STORAGE_FULL"
    assert "storage is full" in response.json()["errors"][0]["message"]
    assert scratch_files(small_disk_server) == []
    assert repo.client.head(repo.url(f"blobs/{digest}")).status_code == 404
    # The space is free again: a push that fits succeeds.
    assert push_bytes(repo.client, repo.name, os.urandom(MIB))


STORAGE_FULL_UPLOAD_KEPT = (
    "the registry's storage is full: nothing was stored and the upload is kept; send the "
    "request again once space has been freed"
)


def test_an_upload_begun_before_the_disk_filled_up_is_kept_for_its_client(
    tmp_path: Path,
) -> None:
    """A chunked push begun before the blob disk filled up: its first PATCH, whose lock file
    cannot be made (here no inode is left: tmpfs makes an empty file on a disk with no block
    left), is refused with STORAGE_FULL and the upload kept (on a blob directory several
    nodes share, another node's request may hold its turn); once space is freed, the client
    sends the request again on the same upload."""
    blobs = tmp_path / "data" / "blobs"
    blobs.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=256", "tmpfs", str(blobs)]
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    server = BerthServer(tmp_path / "data")
    try:
        repo = new_repo(server.start())
        begun = repo.client.post(repo.url("blobs/uploads/")).headers["Location"]
        filler = blobs / "filler"
        filler.mkdir()
        with contextlib.suppress(OSError):  # ENOSPC: every inode taken
            for number in range(1000):
                (filler / str(number)).touch()
        refused = repo.client.patch(begun, content=b"some bytes")
        assert refused.status_code == 507, refused.text
        assert error_code(refused) == "STORAGE_FULL"
        assert refused.json()["errors"][0]["message"] == STORAGE_FULL_UPLOAD_KEPT
        assert repo.client.get(begun).status_code == 204  # kept, with nothing of the refused

        shutil.rmtree(filler)
        again = repo.client.patch(begun, content=b"some bytes")
        assert again.status_code == 202, again.text
        done = repo.client.put(
            again.headers["Location"], params={"digest": digest_of(b"some bytes")}
        )
        assert done.status_code == 201, done.text
        assert repo.client.get(repo.url(f"blobs/{digest_of(b'some bytes')}")).content == (
            b"some bytes"
        )
    finally:
        server.stop()
        subprocess.run(["umount", "-l", str(blobs)], check=False)


def fill(path: Path) -> None:
    """Append to `path` until its disk is full."""
    with open(path, "ab", buffering=0) as filler:
        for size in (MIB, 4096, 1):
            with contextlib.suppress(OSError):  # ENOSPC
                while True:
                    filler.write(b"\0" * size)


def test_a_full_data_disk_keeps_the_server_serving_pulls(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The whole data directory on a small disk that fills up: pushes are refused, and the
    workers live on and serve pulls. The workers' metric files are memory-mapped: on the data
    disk, a worker writing a page the disk could not back was killed (SIGBUS), then each one
    started after it, and the server exited (every 2 s again under systemd)."""
    data_dir = tmp_path_factory.mktemp("fulldata")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(data_dir)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    server = BerthServer(data_dir, workers=2)
    try:
        server.start()
        repo = new_repo(server)
        kept = os.urandom(MIB)
        digest = push_bytes(repo.client, repo.name, kept)
        fill(data_dir / "filler")
        for _ in range(5):  # new requests, new metric series, new pages of their files
            refused = repo.client.post(repo.url("blobs/uploads/"))
            assert refused.status_code == 507, refused.text
            assert repo.client.get(repo.url("tags/list")).status_code == 200
        time.sleep(2)  # a worker killed is replaced in about a second, the server exits
        assert server.process is not None and server.process.poll() is None
        pulled = repo.client.get(repo.url(f"blobs/{digest}"))
        assert (pulled.status_code, pulled.content == kept) == (200, True)
        (data_dir / "filler").unlink()
        assert push_bytes(repo.client, repo.name, os.urandom(MIB))
    finally:
        server.stop()
        subprocess.run(["umount", "-l", str(data_dir)], check=False)


@contextlib.contextmanager
def small_disk(tmp_path_factory: pytest.TempPathFactory, name: str, size: str) -> Iterator[Path]:
    """A directory that is a whole tmpfs of `size` of its own (skipped without root)."""
    directory = tmp_path_factory.mktemp(name)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)]
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def said_in_one_line(result: subprocess.CompletedProcess[str], status: int, database: Path) -> None:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    said = result.stderr.strip()
    assert said.startswith(f"error: no space left on the disk holding the database {database} "), (
        said
    )
    assert "Free space on that disk" in said and "\n" not in said, said
    assert "Traceback" not in result.stdout + result.stderr


def test_a_node_on_a_full_data_disk_says_so_in_one_line_and_starts_once_there_is_room(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """SQLite in WAL mode cannot open its database without room for the -wal and -shm files
    beside it. `berth serve` says so on one line and exits 75, which systemd restarts (a
    full disk passes once space is freed; 2 would stop the restarts); `berth init` and the
    admin verbs say the same and exit 1. Once there is room the node starts as it was."""
    with small_disk(tmp_path_factory, "fullstart", "16m") as data_dir:
        server = BerthServer(data_dir, log_file=data_dir.with_name(f"{data_dir.name}.log"))
        server.cli("init")
        server.cli("project", "create", "kept")
        fill(data_dir / "filler")
        database = data_dir / "berth.db"
        serving = subprocess.run(
            [*BERTH, "serve"], env=server.env, capture_output=True, text=True, timeout=120
        )
        said_in_one_line(serving, 75, database)
        assert "exiting with status 75" in serving.stderr
        said_in_one_line(server.cli("init", check=False), 1, database)
        said_in_one_line(server.cli("project", "list", check=False), 1, database)

        (data_dir / "filler").unlink()
        try:
            server.start()
            listed = httpx.get(
                f"{server.url}/api/v1/projects", auth=("admin", ADMIN_PASSWORD), timeout=30
            )
            assert [p["name"] for p in listed.json()] == ["kept"], listed.text
        finally:
            server.stop()


def storage_collected(data_dir: Path) -> bool:
    """Whether the scheduled storage collection has finished a run: released by its
    holder, next due an interval on (while it runs, its hold ends within a minute)."""
    lease = job_lease(data_dir, "storage-collect")
    return (
        lease is not None
        and lease[0] != ""
        and lease[1] > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    )


def test_a_full_data_disk_answers_the_consoles_reads(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """With the data disk full, what the console's pages read answers 200: a project's
    summary and storage (whose first storage sample, measured for the read, cannot be
    recorded: shown, and said once in the log), its repositories, images, tags and the rest."""
    with small_disk(tmp_path_factory, "fullreads", "48m") as data_dir:
        log = data_dir.with_name(f"{data_dir.name}.log")
        server = BerthServer(data_dir, log_file=log)
        try:
            server.start()
            # The scheduled storage collection runs once at a first start; had it sampled the
            # project between its creation and the push, the summary would show that sample.
            assert until(lambda: storage_collected(data_dir), 30), server.log_tail()
            repo = new_repo(server)
            body = random_image(repo.client, repo.name)
            assert put_manifest(repo.client, repo.name, "v1", body).status_code == 201
            digest = digest_of(body)
            empty = new_repo(server)
            signed_in = httpx.post(
                f"{server.url}/api/v1/session", json={"user": "admin", "password": ADMIN_PASSWORD}
            )
            assert signed_in.status_code == 201, signed_in.text
            console = httpx.Client(
                base_url=f"{server.url}/api/v1", cookies=signed_in.cookies, timeout=30
            )
            fill(data_dir / "filler")
            assert repo.client.post(repo.url("blobs/uploads/")).status_code == 507

            for project, repository in ((repo.project, repo.repository), (empty.project, None)):
                base = f"/projects/{project}"
                summary = console.get(f"{base}/summary")
                assert summary.status_code == 200, summary.text
                figures = summary.json()
                assert figures["repositories"]["stored"] == 1
                assert (figures["images"]["stored"], figures["storage"]["bytes"] > 0) == (
                    (1, True) if repository else (0, False)
                ), figures
                storage = console.get(f"{base}/storage", params={"days": 30})
                assert storage.status_code == 200, storage.text
                assert storage.json()["last"]["bytes"] == figures["storage"]["bytes"]
            base = f"/projects/{repo.project}"
            here = f"{base}/repositories/{repo.repository}"
            for path in (
                "/session",
                "/projects",
                "/account/repository-roles",
                "/users",
                "/audit",
                base,
                f"{base}/traffic",
                f"{base}/gc/runs",
                f"{base}/members",
                f"{base}/audit",
                f"{base}/keys",
                f"{base}/webhooks",
                f"{base}/retention",
                f"{base}/retention/runs",
                f"{base}/immutable-tag-rules",
                f"{base}/pull-policy",
                f"{base}/repositories",
                here,
                f"{here}/images",
                f"{here}/images/{digest}",
                f"{here}/tags",
                f"{here}/history",
                f"{here}/grants",
            ):
                answer = console.get(path)
                assert answer.status_code == 200, (path, answer.status_code, answer.text)
            said = log.read_text()
            unrecorded = [line for line in said.splitlines() if "not recorded" in line]
            assert len(unrecorded) == 1 and "[WARNING]" in unrecorded[0], unrecorded
            # What the background writes could not store (the audit entries of the sign-in,
            # a job's lease): a warning line each, no traceback.
            assert "Traceback" not in said, said

            (data_dir / "filler").unlink()  # room again: the read records its sample
            assert console.get(f"{base}/summary").status_code == 200
            samples = console.get(f"{base}/storage").json()["samples"]
            assert len(samples) == 1, samples
        finally:
            server.stop()


def test_signing_in_to_the_console_on_a_full_data_disk(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """With the data disk full a user signs in to the console and looks at their registry:
    the session, which the database has no room to record, is carried by its cookie (signed,
    for at most an hour), the bookkeeping (purging expired sessions, the previous session,
    the audit entry) is skipped, and the log says so once. Signing out ends it in the
    browser; a password change ends it on the server. Once there is room, sessions are
    recorded again."""
    with small_disk(tmp_path_factory, "fullsignin", "48m") as data_dir:
        log = data_dir.with_name(f"{data_dir.name}.log")
        server = BerthServer(data_dir, log_file=log)
        credentials = {"user": "admin", "password": ADMIN_PASSWORD}
        try:
            server.start()
            repo = new_repo(server)
            body = random_image(repo.client, repo.name)
            assert put_manifest(repo.client, repo.name, "v1", body).status_code == 201
            earlier = httpx.post(f"{server.url}/api/v1/session", json=credentials)
            with sqlite3.connect(data_dir / "berth.db") as db:  # its last use to record again
                db.execute("UPDATE console_sessions SET last_seen_at = '2000-01-01 00:00:00'")
            fill(data_dir / "filler")
            assert repo.client.post(repo.url("blobs/uploads/")).status_code == 507
            for _ in range(2):  # a session signed in before: its last use is not recorded
                seen = httpx.get(f"{server.url}/api/v1/projects", cookies=earlier.cookies)
                assert seen.status_code == 200, seen.text
            wrong = httpx.post(
                f"{server.url}/api/v1/session", json={**credentials, "password": "not-it"}
            )
            assert wrong.status_code == 507, wrong.text  # its failure cannot be counted

            with httpx.Client(base_url=f"{server.url}/api/v1", timeout=30) as console:
                for _ in range(2):  # the second signs the first session out of the browser
                    signed_in = console.post("/session", json=credentials)
                    assert signed_in.status_code == 201, signed_in.text
                session = signed_in.json()
                assert session["user"] == "admin" and session["server_admin"] is True
                expires = dt.datetime.fromisoformat(session["expires_at"])
                left = expires - dt.datetime.now(dt.UTC)
                assert dt.timedelta(minutes=55) < left <= dt.timedelta(hours=1), left
                assert console.get("/session").json()["user"] == "admin"
                projects = console.get("/projects")
                assert repo.project in [p["name"] for p in projects.json()], projects.text
                images = console.get(
                    f"/projects/{repo.project}/repositories/{repo.repository}/images"
                )
                assert images.status_code == 200, images.text
                cookie = console.cookies["berth_session"]
                signed_out = console.delete(
                    "/session", headers={"X-CSRF-Token": session["csrf_token"]}
                )
                assert signed_out.status_code == 204, signed_out.text
                assert console.get("/session").status_code == 401

            said = log.read_text()
            assert "Traceback" not in said, said
            noted = [line for line in said.splitlines() if "console sign-ins get a session" in line]
            assert len(noted) == 1 and "[WARNING]" in noted[0], noted
            assert "the database's disk is full" in noted[0]

            (data_dir / "filler").unlink()
            api = f"{server.url}/api/v1"
            kept = {"berth_session": cookie}  # a copy kept of the cookie signed out
            assert httpx.get(f"{api}/session", cookies=kept).status_code == 200
            new_password = "changed-pass-1234"
            server.cli("user", "set-password", "admin", "--password-stdin", input=new_password)
            assert httpx.get(f"{api}/session", cookies=kept).status_code == 401
            credentials["password"] = new_password
            recorded = httpx.post(f"{api}/session", json=credentials)
            assert recorded.status_code == 201, recorded.text
            assert "." not in recorded.cookies["berth_session"]  # a recorded session's token
            expires = dt.datetime.fromisoformat(recorded.json()["expires_at"])
            assert expires - dt.datetime.now(dt.UTC) > dt.timedelta(hours=2)
        finally:
            server.stop()


def test_stopping_on_a_full_data_disk_says_what_was_not_saved_in_a_line_each(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """SIGTERM with the data disk full: the traffic counts and pull times a stopping server
    writes last cannot be saved. Each is one warning line saying how much was lost and why,
    not a traceback, and the server stops as it should."""
    with small_disk(tmp_path_factory, "fullstop", "48m") as data_dir:
        log = data_dir.with_name(f"{data_dir.name}.log")
        server = BerthServer(data_dir, log_file=log)
        try:
            repo, data, digest, body = pushed_image(server.start())
            fill(data_dir / "filler")
            for _ in range(3):  # counted in memory, flushed every few seconds
                assert repo.client.get(repo.url(f"blobs/{digest}")).content == data
            assert repo.client.get(repo.url("manifests/v1"), headers=ACCEPT).status_code == 200
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=30) == 0
        finally:
            server.stop()
        said = log.read_text()
        assert "Traceback" not in said, said
        full = "the database's disk is full; nothing was stored"
        traffic = [line for line in said.splitlines() if "outbound traffic counts of" in line]
        assert len(traffic) == 1 and "[WARNING]" in traffic[0], traffic
        sent = 3 * MIB + len(body)  # three pulls of the layer, one of the manifest
        assert (
            f"of {sent} bytes (4 requests) could not be written at shutdown: {full}" in (traffic[0])
        )
        pulls = [line for line in said.splitlines() if "last pull times" in line]
        assert len(pulls) == 1 and "[WARNING]" in pulls[0], pulls
        assert f"last pull times of 1 images not recorded at shutdown: {full}" in pulls[0]


@contextlib.contextmanager
def postgres_on_small_disk(size: str) -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of its own whose data directory is a whole tmpfs of `size`
    (skipped without PostgreSQL, or where mount is refused)."""
    if not PostgresCluster.available():
        pytest.skip("PostgreSQL not installed")
    cluster = PostgresCluster()
    cluster.data.mkdir()
    owner = f"uid={pwd.getpwnam('postgres').pw_uid},mode=0700"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},{owner}", "tmpfs", str(cluster.data)]
    )
    if mounted.returncode != 0:
        cluster.stop()
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        subprocess.run(["umount", "-l", str(cluster.data)], check=False)
        shutil.rmtree(cluster.base, ignore_errors=True)


def until_refused(attempt: Any, tries: int = 300) -> httpx.Response:
    """The first answer of `attempt(n)` that is not a success: PostgreSQL fills free room in
    the pages its tables have before it needs a page the disk cannot give."""
    for n in range(tries):
        answer: httpx.Response = attempt(n)
        if answer.status_code >= 300:
            return answer
    raise AssertionError(f"still stored after {tries} tries on a full disk")


def test_a_full_postgresql_disk_refuses_writes_in_a_line_and_serves_reads(
    tmp_path: Path,
) -> None:
    """Scale-out mode with PostgreSQL's data directory on a disk that fills up (the blobs on
    another): what PostgreSQL cannot store (SQLSTATE 53100) is refused as 507 STORAGE_FULL in
    the OCI error format, and nothing of it shows (no blob without its row, no manifest or
    tag); pulls, the API's reads, a console sign-in and /readyz answer as before; the log
    says what the background writes could not store in a warning line each; once there is
    room again, pushes succeed without a restart."""
    with postgres_on_small_disk("96m") as cluster:
        log = tmp_path / "server.log"
        server = BerthServer(tmp_path / "data", cluster.create_database(), log_file=log)
        try:
            repo, layer, digest, body = pushed_image(server.start())
            fill(cluster.data / "filler")

            blobs: list[bytes] = []

            def push_blob(_n: int) -> httpx.Response:
                blobs.append(os.urandom(4096))
                return repo.client.post(
                    repo.url("blobs/uploads/"), params={"digest": digest_of(blobs[-1])},
                    content=blobs[-1],
                )  # fmt: skip

            refused = until_refused(push_blob)
            assert refused.status_code == 507 and error_code(refused) == "STORAGE_FULL"
            assert refused.json()["errors"][0]["message"] == (
                "the database's disk is full; nothing was stored"
            )
            unrecorded = digest_of(blobs[-1])
            assert repo.client.head(repo.url(f"blobs/{unrecorded}")).status_code == 404

            manifests: list[bytes] = []

            def push_manifest(n: int) -> httpx.Response:
                document = {**json.loads(body), "annotations": {"n": str(n)}}
                manifests.append(json.dumps(document).encode())
                return put_manifest(repo.client, repo.name, f"full{n}", manifests[-1])

            refused = until_refused(push_manifest)
            assert refused.status_code == 507 and error_code(refused) == "STORAGE_FULL"
            tag = f"full{len(manifests) - 1}"
            assert tag not in repo.client.get(repo.url("tags/list")).json()["tags"]
            for reference in (tag, digest_of(manifests[-1])):
                answer = repo.client.get(repo.url(f"manifests/{reference}"), headers=ACCEPT)
                assert answer.status_code == 404, (reference, answer.text)

            pulled = repo.client.get(repo.url(f"blobs/{digest}"))
            assert (pulled.status_code, pulled.content == layer) == (200, True)
            manifest = repo.client.get(repo.url("manifests/v1"), headers=ACCEPT)
            assert (manifest.status_code, manifest.content) == (200, body)
            assert httpx.get(f"{server.url}/readyz").status_code == 200
            cookies = answers_reads_and_a_sign_in(server, repo.project)
            projects = httpx.get(f"{server.url}/api/v1/projects", cookies=cookies)
            assert repo.project in [p["name"] for p in projects.json()], projects.text
            # The pull times' and traffic counts' flushes (every 5 s) are refused.
            flushes = ("could not record last pull times", "could not write outbound traffic")
            assert until(lambda: all(words in log.read_text() for words in flushes), 30), (
                log.read_text()
            )

            (cluster.data / "filler").unlink()
            assert push_bytes(repo.client, repo.name, blobs[-1]) == unrecorded
            assert put_manifest(repo.client, repo.name, tag, manifests[-1]).status_code == 201
            assert repo.client.get(repo.url(f"manifests/{tag}"), headers=ACCEPT).status_code == 200
        finally:
            server.stop()
        said = log.read_text()
        assert "Traceback" not in said, said
        refusals = [line for line in said.splitlines() if "disk is full" in line]
        assert refusals and all("[WARNING]" in line for line in refusals), refusals
        assert any("could not write outbound traffic counts" in line for line in refusals)


def test_a_database_locked_elsewhere_answers_503_with_retry_after(
    sqlite_server: BerthServer,
) -> None:
    repo = new_repo(sqlite_server)
    holder = sqlite3.connect(sqlite_server.data_dir / "berth.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        started = time.monotonic()
        response = repo.client.post(repo.url("blobs/uploads/"))
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"].isdigit()
    assert error_code(response) == "UNAVAILABLE"
    assert waited < 12, waited
    assert scratch_files(sqlite_server) == []  # nothing half-written
    assert repo.client.post(repo.url("blobs/uploads/")).status_code == 202


# ---------------------------------------------------------------- the scheduled jobs


def until(check: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def job_lease(data_dir: Path, job: str) -> tuple[str, dt.datetime] | None:
    """Who last ran the scheduled job ('' for nobody yet), and when it is next due."""
    with sqlite3.connect(data_dir / "berth.db") as db:
        found = db.execute(
            "SELECT holder, expires_at FROM job_leases WHERE name = ?", (job,)
        ).fetchone()
    if found is None:
        return None
    due = dt.datetime.fromisoformat(found[1])
    return found[0], due if due.tzinfo else due.replace(tzinfo=dt.UTC)


def test_the_scheduled_jobs_remove_orphaned_scratch_files_and_set_damaged_blobs_aside(
    tmp_path: Path,
) -> None:
    uploads = tmp_path / "blobs" / "_uploads"
    uploads.mkdir(parents=True)
    orphan = uploads / uuid.uuid4().hex
    orphan.write_bytes(b"left by a crash before its upload row")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    server = BerthServer(tmp_path).start()
    try:
        assert until(lambda: not orphan.exists(), 15), "the abandoned-uploads job did not run"
        # The scrub hashes every blob: a first start does not run it at once.
        assert until(lambda: job_lease(tmp_path, "storage-scrub") is not None, 15)
        holder, due = job_lease(tmp_path, "storage-scrub") or ("?", None)
        assert holder == "" and due is not None
        assert due > dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)
        repo = new_repo(server)
        data = os.urandom(2 * MIB)
        digest = push_bytes(repo.client, repo.name, data)
        damage(blob_file(server, digest))
        server.stop()
        with sqlite3.connect(tmp_path / "berth.db") as db:  # the scrub is due again
            db.execute(
                "UPDATE job_leases SET expires_at = '2000-01-01 00:00:00' "
                "WHERE name = 'storage-scrub'"
            )
        server.start()
        assert until(lambda: not blob_file(server, digest).exists(), 15), server.log_tail()
        assert (tmp_path / "blobs" / "_damaged" / digest.replace(":", "-")).exists()
        assert repo.client.head(repo.url(f"blobs/{digest}")).status_code == 404
    finally:
        server.stop()
