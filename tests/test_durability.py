"""Crashes and restarts: nothing half-written is ever visible, and clients can carry on."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from berth.metadata.tables import blobs
from berth.state import Services
from tests.oci import digest_of, error_code, push_bytes, put_manifest, random_image
from tests.servers import BACKENDS, BerthServer, running_server


@pytest.fixture(params=BACKENDS)
def restartable(request: pytest.FixtureRequest) -> Iterator[BerthServer]:
    with running_server(request, "restartable", request.param) as server:
        server.create_repository("crash", "repo")
        yield server


def client_for(server: BerthServer, timeout: float) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=timeout, auth=server.access_key("crash"))


def visible_blobs(server: BerthServer) -> list[Path]:
    return [
        p
        for p in (server.data_dir / "blobs").rglob("*")
        if p.is_file() and "_uploads" not in p.parts
    ]


@pytest.mark.parametrize("how", ["restart", "sigkill"])
def test_chunked_upload_continues_after_the_server_restarts(
    restartable: BerthServer, how: str
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    first, second = data[: 2 * 1024 * 1024], data[2 * 1024 * 1024 :]
    with client_for(restartable, 60) as client:
        location = client.post("/v2/crash/repo/blobs/uploads/").headers["Location"]
        response = client.patch(
            location, content=first, headers={"Content-Range": f"0-{len(first) - 1}"}
        )
        assert response.status_code == 202
    restartable.kill() if how == "sigkill" else restartable.stop()
    restartable.start()
    with client_for(restartable, 60) as client:
        status = client.get(location)
        assert status.headers["Range"] == f"0-{len(first) - 1}"
        end = len(data) - 1
        response = client.patch(
            location, content=second, headers={"Content-Range": f"{len(first)}-{end}"}
        )
        assert response.status_code == 202
        done = client.put(location, params={"digest": digest_of(data)})
        assert done.status_code == 201, done.text
        pulled = client.get(f"/v2/crash/repo/blobs/{digest_of(data)}").content
        assert hashlib.sha256(pulled).digest() == hashlib.sha256(data).digest()


def test_sigkill_mid_push_leaves_the_registry_consistent(restartable: BerthServer) -> None:
    data = os.urandom(64 * 1024 * 1024)
    digest = digest_of(data)
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        for offset in range(0, len(data), 1024 * 1024):
            yield data[offset : offset + 1024 * 1024]
            if offset >= 24 * 1024 * 1024:
                sent.set()
                time.sleep(0.05)

    errors: list[BaseException] = []

    def push() -> None:
        try:
            with client_for(restartable, 60) as client:
                client.post(
                    "/v2/crash/repo/blobs/uploads/", params={"digest": digest}, content=slow_body()
                )
        except BaseException as exc:
            errors.append(exc)

    pusher = threading.Thread(target=push)
    pusher.start()
    assert sent.wait(60)
    restartable.kill()
    pusher.join(60)
    assert errors, "the push cannot have succeeded: the server was killed mid-body"

    before_restart = visible_blobs(restartable)
    restartable.start()
    with client_for(restartable, 120) as client:
        assert client.head(f"/v2/crash/repo/blobs/{digest}").status_code == 404
        assert before_restart == [] and visible_blobs(restartable) == []
        # The client's retry: a fresh upload goes through and the content is exact.
        retry = client.post(
            "/v2/crash/repo/blobs/uploads/", params={"digest": digest}, content=data
        )
        assert retry.status_code == 201, retry.text
        pulled = client.get(f"/v2/crash/repo/blobs/{digest}").content
        assert hashlib.sha256(pulled).hexdigest() == digest.split(":")[1]
        body = random_image(client, "crash/repo")
        assert put_manifest(client, "crash/repo", "after-crash", body).status_code == 201


def test_sigkill_between_pushes_keeps_every_acknowledged_manifest(restartable: BerthServer) -> None:
    with client_for(restartable, 60) as client:
        pushed = {}
        for tag in ("a", "b", "c"):
            body = random_image(client, "crash/repo")
            assert put_manifest(client, "crash/repo", tag, body).status_code == 201
            pushed[tag] = body
    restartable.kill()
    restartable.start()
    with client_for(restartable, 60) as client:
        for tag, body in pushed.items():
            assert client.get(f"/v2/crash/repo/manifests/{tag}").content == body
        missing = client.get("/v2/crash/repo/manifests/zzz")
        assert error_code(missing) == "MANIFEST_UNKNOWN"


def test_a_push_killed_between_recording_its_blob_and_storing_it_leaves_the_check_healthy(
    restartable: BerthServer,
) -> None:
    """A push holds its blob's row before it stores the object and links it: killed in
    between (the store's commit of a large upload takes seconds on S3), it leaves a row no
    repository links and no object. No pull needs it and garbage collection deletes the row;
    `berth storage check` reported it missing (exit 1) after every such crash. A blob a
    repository links and the store lost is still reported."""
    with client_for(restartable, 60) as client:
        body = random_image(client, "crash/repo")
        assert put_manifest(client, "crash/repo", "kept", body).status_code == 201
        lost = os.urandom(4096)
        push_bytes(client, "crash/repo", lost)
    restartable.kill()
    unstored = os.urandom(8 * 1024 * 1024)

    async def held_by_a_killed_push(services: Services) -> None:
        async with services.db.write() as conn:
            await conn.execute(
                blobs.insert().values(
                    digest=digest_of(unstored),
                    size=len(unstored),
                    created_at=services.db.clock(),
                    token=os.urandom(16).hex(),
                )
            )

    restartable._services(held_by_a_killed_push)
    restartable.start()
    checked = restartable.cli("storage", "check", "--json", check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["missing"] == []
    with client_for(restartable, 60) as client:
        # The client's retry stores it, and the check then hashes it.
        assert push_bytes(client, "crash/repo", unstored) == digest_of(unstored)
        assert client.get(f"/v2/crash/repo/blobs/{digest_of(unstored)}").content == unstored
        hexdigest = digest_of(lost).split(":")[1]
        (restartable.data_dir / "blobs" / "sha256" / hexdigest[:2] / hexdigest).unlink()
    checked = restartable.cli("storage", "check", "--json", check=False)
    assert checked.returncode == 1
    assert json.loads(checked.stdout)["missing"] == [digest_of(lost)]
