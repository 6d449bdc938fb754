"""Crashes and restarts: nothing half-written is ever visible, and clients can carry on."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.oci import digest_of, error_code, put_manifest, random_image
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
