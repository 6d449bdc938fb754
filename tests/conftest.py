"""Fixtures: a real `berth serve` per test module, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest

# pytest-xdist's workers start with COLUMNS=80, which Rich would fix as the CLI consoles' width
# when berth.cli is first imported; without it they read COLUMNS per call, as a terminal's CLI
# does (the in-process CLI tests set it wide).
os.environ.pop("COLUMNS", None)

from tests.oci import push_bytes, put_manifest, random_image
from tests.servers import BACKENDS, BerthServer, PostgresCluster, server_fixture

if TYPE_CHECKING:
    from tests.rgw import CephRGW
    from tests.s3 import SeaweedFS


@pytest.hookimpl(tryfirst=True)  # the groups in place before xdist reads them
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """For `make test`'s workers (pytest-xdist, `--dist loadgroup`): a module's tests run in one
    worker, so its module-scoped servers start once; and every test under tests/clients/ runs in
    the same worker, since their session fixtures are machine-wide (dockerd, containerd, the
    project hosts in /etc/hosts, /etc/docker/certs.d)."""
    for item in items:
        module = item.nodeid.split("::")[0]
        group = "clients" if module.startswith("tests/clients/") else module
        if item.get_closest_marker("ceph_rgw"):
            group = "ceph-rgw"  # one worker, so the session's Ceph cluster starts once
        item.add_marker(pytest.mark.xdist_group(group))
        if os.environ.get("PYTEST_XDIST_WORKER") and hasattr(item, "_id"):
            # xdist passes the group to its scheduler as a suffix of the test's ID, which it
            # writes into `_nodeid`; pytest 9.2 keeps the ID in `_id` (a NodeId), so without
            # this every test is scheduled on its own (pytest-xdist issue #1386) and a
            # module's servers start once per worker.
            from _pytest.nodeid import NodeId

            item._id = NodeId.parse(f"{item.nodeid}@{group}")


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server for the session (`tests/s3.py`): started by the first test on
    `storage = "s3"`; each user takes a prefix of its own."""
    from tests.s3 import seaweedfs_server  # imports the S3 client: only when needed

    with seaweedfs_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephRGW]:
    """A Ceph RGW S3 server for the session (`tests/rgw.py`), the second store the S3 tests
    run on (mark its tests `ceph_rgw`, as `object_store` in tests/storage/conftest.py does)."""
    from tests.rgw import available, rgw_server

    if not available():
        pytest.skip("Ceph RGW is not installed (scripts/test-deps.sh installs it)")
    with rgw_server(tmp_path_factory.mktemp("ceph-rgw")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster | None]:
    if not PostgresCluster.available():
        if os.environ.get("BERTH_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL 15 is not installed (make test installs it)")
        yield None
        return
    cluster = PostgresCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of this test's own, for tests that stop it under a server (the
    session's is shared)."""
    if not PostgresCluster.available():
        pytest.skip("PostgreSQL not installed")
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


server = server_fixture(
    backends=BACKENDS,
    doc="A running registry, once on SQLite and once on PostgreSQL, shared by a test module.",
)
sqlite_server = server_fixture(
    doc="A running registry on the embedded defaults, for tests where the backend is not the point."
)


@dataclass
class Repo:
    """A fresh project and repository on a server, and an HTTP client for it (path style)
    that authenticates with an access key of the server's administrator in that project."""

    server: BerthServer
    project: str
    repository: str
    client: httpx.Client

    @property
    def name(self) -> str:
        """The OCI name a path-style client uses: project/repository."""
        return f"{self.project}/{self.repository}"

    def url(self, path: str) -> str:
        return f"/v2/{self.name}/{path}"


def new_repo(server: BerthServer, **options: Any) -> Repo:
    project = "p" + uuid.uuid4().hex[:10]
    repository = "r" + uuid.uuid4().hex[:6]
    server.create_repository(project, repository, with_key=True, **options)
    client = httpx.Client(
        base_url=server.url, timeout=60, verify=False, auth=server.access_key(project)
    )
    return Repo(server, project, repository, client)


MIB = 1024 * 1024


def pushed_image(server: BerthServer) -> tuple[Repo, bytes, str, bytes]:
    """A new repository of `server` holding a 1 MiB blob (its bytes and digest) and an image
    tagged v1 (its manifest)."""
    repo = new_repo(server)
    data = os.urandom(MIB)
    digest = push_bytes(repo.client, repo.name, data)
    body = random_image(repo.client, repo.name)
    assert put_manifest(repo.client, repo.name, "v1", body).status_code == 201
    return repo, data, digest, body


@pytest.fixture
def repo(server: BerthServer) -> Iterator[Repo]:
    created = new_repo(server)
    yield created
    created.client.close()
