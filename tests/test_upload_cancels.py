"""Cancelling uploads against a real server, on the filesystem and on S3: a cancel does not
wait for a request still sending the upload's bytes (a client may drip them all day), and that
request is then answered BLOB_UPLOAD_UNKNOWN, leaving nothing stored."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.api.test_uploads import stored_scratch
from tests.conftest import Repo, new_repo
from tests.oci import location, path_of, start_upload
from tests.servers import BACKENDS, BERTH, S3_BACKEND, BerthServer, server_fixture, wait_for

server = server_fixture(
    "upload-cancels",
    backends=[BACKENDS[0], S3_BACKEND],
    doc="A running registry on SQLite with blobs on the filesystem, and on PostgreSQL with S3.",
)


@pytest.fixture
def repo(server: BerthServer) -> Iterator[Repo]:
    created = new_repo(server)
    yield created
    created.client.close()


def dripping_patch(repo: Repo, sent: int = 100_000) -> tuple[str, str, socket.socket]:
    """(upload ID, its URL, the connection) of an upload whose PATCH declares far more bytes
    than its client has sent so far: the request is still receiving its body."""
    url = path_of(location(start_upload(repo.client, repo.name)))
    connection = socket.create_connection((repo.server.host, repo.server.port), timeout=30)
    connection.sendall(
        (
            f"PATCH {url} HTTP/1.1\r\nHost: {repo.server.address}\r\n"
            f"Authorization: {basic(repo)}\r\nContent-Type: application/octet-stream\r\n"
            "Content-Length: 100000000\r\n\r\n"
        ).encode()
        + b"x" * sent
    )
    time.sleep(1)  # the request has its turn on the upload and is writing
    return url.rstrip("/").rpartition("/")[2], url, connection


def basic(repo: Repo) -> str:
    user, password = repo.server.access_key(repo.project)
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def cancel(repo: Repo, how: str, upload_id: str, url: str) -> None:
    if how == "api":
        with httpx.Client(base_url=f"{repo.server.url}/api/v1", timeout=10) as api:
            answer = api.delete(
                f"/projects/{repo.project}/uploads/{upload_id}",
                auth=repo.server.access_key(repo.project),
            )
        assert answer.status_code == 204, answer.text
    elif how == "client":
        assert repo.client.delete(url, timeout=10).status_code == 204
    else:  # the CLI's own start takes a few seconds
        done = subprocess.run(
            [*BERTH, "upload", "cancel", repo.project, upload_id, "--yes"],
            env=repo.server.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("how", ["api", "client", "cli"])
def test_a_cancel_does_not_wait_for_a_patch_in_flight(repo: Repo, how: str) -> None:
    upload_id, url, connection = dripping_patch(repo)
    with connection:
        began = time.monotonic()
        cancel(repo, how, upload_id, url)
        assert time.monotonic() - began < 10
        # The request sending the bytes is stopped, told its upload is no more, while its
        # client still has most of its body to send.
        connection.sendall(b"x" * 1000)
        answer = connection.recv(4096)
    assert answer.startswith(b"HTTP/1.1 404"), answer
    assert b"BLOB_UPLOAD_UNKNOWN" in answer
    with httpx.Client(base_url=f"{repo.server.url}/api/v1", timeout=10) as api:
        listed = api.get(
            f"/projects/{repo.project}/uploads", auth=repo.server.access_key(repo.project)
        )
    assert listed.json()["total"] == 0
    wait_for(lambda: stored_scratch(repo.server, upload_id) == [], 10, "the scratch removed")


OPEN_UPLOADS = 10  # per project; half of it per user

limited = server_fixture(
    "upload-limits",
    backends=BACKENDS,
    env={"BERTH_MAX_OPEN_UPLOADS": str(OPEN_UPLOADS), "BERTH_WORKERS": "2"},
    doc="Two workers on SQLite, and on PostgreSQL, with few uploads in progress allowed.",
)


def test_concurrent_starts_stay_within_the_open_upload_limits(limited: BerthServer) -> None:
    """Two users each start many uploads at once, through two worker processes: each gets
    exactly half of max_open_uploads, the project exactly max_open_uploads, the rest 429."""
    repo = new_repo(limited)
    keys = []
    for _ in range(2):
        name = "u" + uuid.uuid4().hex[:8]
        limited.create_user(name, "a-password-for-tests")
        limited.grant(repo.project, repo.repository, name, "member")
        keys.append(limited.access_key(repo.project, name))

    def start(key: tuple[str, str]) -> int:
        with httpx.Client(base_url=limited.url, auth=key, timeout=60) as client:
            return client.post(repo.url("blobs/uploads/")).status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(start, [key for key in keys for _ in range(3 * OPEN_UPLOADS)]))
    per_user = [answers[: 3 * OPEN_UPLOADS], answers[3 * OPEN_UPLOADS :]]
    assert [statuses.count(202) for statuses in per_user] == [OPEN_UPLOADS // 2] * 2, answers
    assert set(answers) == {202, 429}
    with httpx.Client(base_url=f"{limited.url}/api/v1", timeout=10) as api:
        listed = api.get(f"/projects/{repo.project}/uploads", auth=limited.access_key(repo.project))
    assert listed.json()["total"] == OPEN_UPLOADS
    repo.client.close()


def open_uploads(server: BerthServer, project: str) -> dict[str, str]:
    """The project's uploads in progress: ID -> who started it."""
    with httpx.Client(base_url=f"{server.url}/api/v1", timeout=10) as api:
        listed = api.get(f"/projects/{project}/uploads", auth=server.access_key(project))
    return {upload["id"]: upload["started_by"] for upload in listed.json()["items"]}


def uploads_of(repo: Repo, role: str, count: int, *, member: bool = False) -> tuple[str, list[str]]:
    """(user name, IDs of `count` uploads they started, one chunk each) of a new user with
    `role` on the repository (on the project, when `member`)."""
    user = "u" + uuid.uuid4().hex[:8]
    repo.server.create_user(user, "a-password-for-tests")
    if member:
        repo.server.add_member(repo.project, user, role)
    else:
        repo.server.grant(repo.project, repo.repository, user, role)
    started = []
    with httpx.Client(
        base_url=repo.server.url, auth=repo.server.access_key(repo.project, user)
    ) as client:
        for _ in range(count):
            url = location(start_upload(client, repo.name))
            assert client.patch(url, content=b"x" * 1000).status_code == 202
            started.append(path_of(url).rstrip("/").rpartition("/")[2])
    return user, started


def test_uploads_end_with_their_users_push_access(repo: Repo) -> None:
    """Revoking a user's role on a repository, or removing them from the project, cancels
    their uploads in progress there (nobody may go on with them, and they held the project's
    max_open_uploads); a user who may still push keeps theirs."""
    granted, granted_uploads = uploads_of(repo, "member", 2)
    member, member_uploads = uploads_of(repo, "member", 1, member=True)
    both, both_uploads = uploads_of(repo, "member", 1)
    repo.server.add_member(repo.project, both, "reader")
    assert len(open_uploads(repo.server, repo.project)) == 4

    repo.server.cli("repo", "revoke", repo.name, granted, "--yes")
    assert sorted(open_uploads(repo.server, repo.project)) == sorted(member_uploads + both_uploads)
    for upload_id in granted_uploads:
        assert stored_scratch(repo.server, upload_id) == []
    (revoked, *_) = repo.server.cli_items("audit", repo.project)
    assert revoked["action"] == "repository.revoke"
    assert revoked["detail"] == {"uploads_cancelled": 2}

    repo.server.cli("member", "remove", repo.project, member, "--yes")
    # Still a member of the repository: may go on pushing there.
    repo.server.cli("member", "remove", repo.project, both, "--yes")
    assert list(open_uploads(repo.server, repo.project)) == both_uploads
    assert stored_scratch(repo.server, member_uploads[0]) == []


def test_admins_cancel_a_users_uploads_or_all(repo: Repo) -> None:
    first, first_uploads = uploads_of(repo, "member", 2)
    second, second_uploads = uploads_of(repo, "member", 1)
    assert repo.server.cli("upload", "cancel", repo.project, check=False).returncode == 2

    cancelled = repo.server.cli_json("upload", "cancel", repo.project, "--user", first, "--yes")
    assert cancelled == {"cancelled": 2}
    assert list(open_uploads(repo.server, repo.project)) == second_uploads
    assert stored_scratch(repo.server, first_uploads[0]) == []
    (entry, *_) = repo.server.cli_items("audit", repo.project)
    assert entry["action"] == "upload.cancel"
    assert entry["detail"] == {"started_by": first, "uploads": 2}

    with httpx.Client(base_url=f"{repo.server.url}/api/v1", timeout=10) as api:
        auth = repo.server.access_key(repo.project)
        url = f"/projects/{repo.project}/uploads"
        assert api.delete(url, auth=auth).status_code == 422
        assert api.delete(url, params={"started_by": "nobody"}, auth=auth).status_code == 404
        answer = api.delete(url, params={"all": "true"}, auth=auth)
        assert answer.status_code == 200 and answer.json() == {"cancelled": 1}
    assert open_uploads(repo.server, repo.project) == {}
    assert stored_scratch(repo.server, second_uploads[0]) == []
    del second

    uploads_of(repo, "member", 1)
    said = repo.server.cli("upload", "cancel", repo.project, "--all", "--yes").stdout
    assert " ".join(said.split()) == f"Cancelled 1 upload in progress in {repo.project}"
    assert open_uploads(repo.server, repo.project) == {}


def test_bytes_of_a_patch_still_arriving_are_shown_as_stored(repo: Repo) -> None:
    """Only a PATCH's end acknowledges its bytes (`bytes_received`, the upload's Range), but
    an admin sees what the store holds meanwhile (on S3, pieces of 16 MiB as they are sent)."""
    upload_id, url, connection = dripping_patch(repo, 40 * 1024 * 1024)
    with connection:

        def shown() -> dict[str, Any]:
            with httpx.Client(base_url=f"{repo.server.url}/api/v1", timeout=10) as api:
                auth = repo.server.access_key(repo.project)
                found = api.get(f"/projects/{repo.project}/uploads/{upload_id}", auth=auth)
            return dict(found.json())

        wait_for(lambda: shown()["bytes_stored"] >= 32 * 1024 * 1024, 30, "the bytes stored")
        assert shown()["bytes_received"] == 0
        table = repo.server.cli("upload", "list", repo.project).stdout
        assert "stored" in table.partition("\nCancel the one")[0], table
        (listed,) = repo.server.cli_items("upload", "list", repo.project)
        assert listed["bytes_received"] == 0 and listed["bytes_stored"] >= 32 * 1024 * 1024
        assert repo.client.delete(url).status_code == 204


def test_a_body_cut_short_is_answered_with_an_oci_error(repo: Repo) -> None:
    """A client that closes its sending side before its Content-Length is told why (not
    granian's plain-text 500); nothing of the chunk is stored, and sending it again works."""
    url = path_of(location(start_upload(repo.client, repo.name)))
    with socket.create_connection((repo.server.host, repo.server.port), timeout=30) as sent:
        sent.sendall(
            (
                f"PATCH {url} HTTP/1.1\r\nHost: {repo.server.address}\r\n"
                f"Authorization: {basic(repo)}\r\nContent-Length: 100000\r\n\r\n"
            ).encode()
            + b"x" * 1000
        )
        sent.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sent.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    (error,) = json.loads(body)["errors"]
    assert error["code"] == "SIZE_INVALID" and "after 1000 bytes" in error["message"]
    assert repo.client.get(url).headers["Range"] == "0-0"
    assert repo.client.patch(url, content=b"x" * 1000).status_code == 202
