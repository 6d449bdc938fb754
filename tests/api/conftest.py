"""The management API over HTTP against a running server (SQLite and PostgreSQL).

`Team` is one fresh project with a user per role, each with an access key and an API client:
the server administrator, a project admin, member and reader, an outsider with a repository
role, a service account (an acme member) and a stranger with no role at all.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from berth.state import Services
from tests.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    Blob,
    image_config,
    image_manifest,
    push_blob,
    push_manifest,
)
from tests.servers import BerthServer
from tests.unit.services.test_scanning_layers import vulnerable_app_layers

PASSWORD = "correct-horse-battery-staple"
PROBLEM = "application/problem+json"
Credentials = tuple[str, str]
T = TypeVar("T")
ACTORS = ("admin", "project-admin", "member", "reader", "outsider", "robot", "stranger")
WITH_PASSWORD = ("member", "stranger")
_people: dict[Path, dict[str, str]] = {}


def api(server: BerthServer, auth: Any = None, **options: Any) -> httpx.Client:
    return httpx.Client(base_url=f"{server.url}/api/v1", timeout=60, auth=auth, **options)


@dataclass
class Team:
    server: BerthServer
    project: str
    repository: str  # a repository made with the project (the outsider has a role on it)
    users: dict[str, str]  # actor -> user name
    keys: dict[str, Credentials]  # actor -> access key in the project
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    def __getitem__(self, actor: str) -> httpx.Client:
        if actor not in self.clients:
            self.clients[actor] = api(self.server, self.keys[actor])
        return self.clients[actor]

    @property
    def admin(self) -> httpx.Client:
        return self["admin"]

    def url(self, path: str = "") -> str:
        return f"/projects/{self.project}{path}"

    def repo_url(self, path: str = "", repository: str | None = None) -> str:
        return self.url(f"/repositories/{repository or self.repository}{path}")

    def registry(self, actor: str = "admin") -> httpx.Client:
        """A /v2 client with the actor's access key (Basic)."""
        return httpx.Client(base_url=self.server.url, timeout=60, auth=self.keys[actor])

    def oci_name(self, image: str = "", repository: str | None = None) -> str:
        return "/".join(p for p in (self.project, repository or self.repository, image) if p)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def services(server: BerthServer, work: Callable[[Services], Any]) -> Any:
    return server._services(work)


def new_team(server: BerthServer) -> Team:
    """A fresh project (with repository `app`) and its people, made in one go."""
    suffix = uuid.uuid4().hex[:8]
    project, repository, other = f"p{suffix}", "app", f"q{suffix}"
    users = {actor: f"{actor}-{suffix}" for actor in ACTORS if actor != "admin"}
    users["admin"] = "admin"
    roles = {"project-admin": "admin", "member": "member", "reader": "reader", "robot": "member"}
    # People who sign in with a password exist once per server (hashing one takes a while);
    # the others need only keys, so they are service accounts.
    people = _people.setdefault(server.data_dir, {})
    new_people = not people
    for actor in WITH_PASSWORD:
        users[actor] = people.setdefault(actor, f"{actor}-{suffix}")

    async def populate(s: Services) -> dict[str, Credentials]:
        await s.repositories.create_project(project, actor="test")
        await s.repositories.create_project(other, actor="test")
        await s.repositories.create(project, repository, actor="test")
        for actor, name in users.items():
            if actor == "admin":
                continue
            if actor in WITH_PASSWORD:
                if new_people:
                    await s.identity.users.create_user(name, PASSWORD, actor="test")
            else:
                await s.identity.users.create_user(name, None, service_account=True, actor="test")
            if actor in roles:
                await s.identity.members.add_member(project, name, roles[actor], actor="test")
        await s.identity.members.grant(
            project, repository, users["outsider"], "member", actor="test"
        )
        # The stranger has no role here: their key is for a project of their own.
        await s.identity.members.add_member(other, users["stranger"], "admin", actor="test")
        keys = {}
        for actor, name in users.items():
            created = await s.identity.keys.create_key(
                name, other if actor == "stranger" else project, actor="test"
            )
            keys[actor] = (created.key_id, created.secret)
        return keys

    return Team(server, project, repository, users, services(server, populate))


@pytest.fixture
def team(server: BerthServer) -> Iterator[Team]:
    """A fresh team for a test that changes things."""
    created = new_team(server)
    yield created
    created.close()


@pytest.fixture(scope="module")
def shared_team(server: BerthServer) -> Iterator[Team]:
    """One team for a module's tests that only read or are refused."""
    created = new_team(server)
    yield created
    created.close()


def assert_problem(
    response: httpx.Response, status: int, *, fields: tuple[str, ...] = (), code: str | None = None
) -> dict[str, Any]:
    """An RFC 9457 problem with this status (and these fields named, this code)."""
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: expected {status}, got "
        f"{response.status_code} {response.text[:500]}"
    )
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "errors"} <= set(body), body
    assert body["status"] == status and body["detail"], body
    named = {error["field"] for error in body["errors"]}
    for name in fields:
        assert name in named, f"field {name!r} not named in {body}"
    if code is not None:
        assert body["code"] == code, body
    if status == 401:
        assert "WWW-Authenticate" in response.headers
    return body


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: expected {status}, got "
        f"{response.status_code} {response.text[:500]}"
    )
    return response.json() if response.content else None


def until(check: Callable[[], T], timeout: float = 5.0) -> T:
    """`check()` once it is truthy (audit entries are written a few times a second)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


# ---------------------------------------------------------------- content


def push_image(
    client: httpx.Client,
    name: str,
    tag: str | None,
    *,
    architecture: str = "amd64",
    layer_size: int = 1000,
    subject: Blob | None = None,
    artifact_type: str | None = None,
) -> Blob:
    """Push a fresh one-layer image under `tag` (or only by digest); returns its manifest."""
    config = Blob(
        f'{{"architecture":"{architecture}","os":"linux","n":"{uuid.uuid4().hex}"}}'.encode(),
        OCI_CONFIG,
    )
    layer = Blob(uuid.uuid4().bytes * (layer_size // 16), OCI_LAYER)
    push_blob(client, name, config)
    push_blob(client, name, layer)
    manifest = image_manifest(
        config.descriptor(),
        [layer.descriptor()],
        subject=subject.descriptor() if subject else None,
        artifact_type=artifact_type,
    )
    push_manifest(client, name, tag or manifest.digest, manifest)
    return manifest


def blob_total(manifest: Blob) -> int:
    """Bytes of a pushed image manifest and its blobs."""
    document = json.loads(manifest.data)
    blobs = [document["config"], *document["layers"]]
    sizes: list[int] = [b["size"] for b in blobs]
    return manifest.size + sum(sizes)


def push_layers(team: Team, repository: str, layers: list[Blob], tag: str) -> Blob:
    """Push an image of `layers` to `repository` as a member, under `tag`; its manifest."""
    registry, name = team.registry("member"), team.oci_name(repository=repository)
    config = image_config(author=f"{team.project}/{repository}")
    for blob in (config, *layers):
        push_blob(registry, name, blob)
    manifest = image_manifest(config.descriptor(), [b.descriptor() for b in layers])
    push_manifest(registry, name, tag, manifest)
    return manifest


@pytest.fixture(scope="module")
def app_layers(tmp_path_factory: pytest.TempPathFactory) -> list[Blob]:
    """The layers of the image the scan tests push: requests 2.30.0, ms 0.7.0 and mixin-deep
    1.3.1 on a Debian 12 base, each affected by a genuine record in tests/fixtures/osv."""
    site = tmp_path_factory.mktemp("site") / "old"
    return [Blob(data, OCI_LAYER_GZIP) for data in vulnerable_app_layers(site)]
