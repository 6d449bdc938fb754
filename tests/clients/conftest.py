"""Fixtures for driving real registry clients against a running Berth.

Daemons (dockerd, containerd) are started once per session by the tests themselves, each in a
temporary directory with its own sockets, and stopped at the end. The registry is one `berth
serve` per test module. A missing client binary skips its tests (scripts/test-deps.sh installs
them all, so in CI everything runs).
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import oras.client
import pytest

from tests.clients.commands import ContainersConfig, Ctr, Docker, Podman, Skopeo
from tests.clients.daemons import Containerd, Dockerd
from tests.clients.layouts import TestImage, umoci_image
from tests.clients.registry import Registry
from tests.clients.tools import require_binary
from tests.servers import BerthServer


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """When a client test fails, show the end of the server's log next to the client's output."""
    report = yield
    registry = getattr(item, "funcargs", {}).get("registry")
    if report.failed and isinstance(registry, Registry):
        report.sections.append(("berth server.log (tail)", registry.server.log_tail(60)))
    return report


# ----------------------------------------------------------------------------- the registry


@pytest.fixture(scope="module")
def registry(sqlite_server: BerthServer) -> Registry:
    """The Berth under test, as clients reach it: plain HTTP on 127.0.0.1, an access key."""
    project = "clients" + uuid.uuid4().hex[:8]
    sqlite_server.create_project(project)
    return Registry(sqlite_server, project, *sqlite_server.access_key(project))


# ----------------------------------------------------------------------------- test content


@pytest.fixture(scope="session")
def test_image(tmp_path_factory: pytest.TempPathFactory) -> TestImage:
    """A one-layer linux image for this machine's architecture, built with umoci (no network)."""
    require_binary("umoci")
    files = {
        "hello.txt": f"hello from berth's client tests {uuid.uuid4()}\n".encode(),
        "etc/berth/motd": b"pushed and pulled by a real client\n",
    }
    return umoci_image(tmp_path_factory.mktemp("image") / "layout", "v1", files)


# ----------------------------------------------------------------------------- daemons


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    binary = require_binary("dockerd")
    # The CLI from the same package as the daemon (a newer docker may also be on PATH).
    cli = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else require_binary("docker")
    daemon = Dockerd(tmp_path_factory.mktemp("dockerd"), binary=binary, cli=cli)
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    binary = require_binary("containerd")
    daemon = Containerd(
        tmp_path_factory.mktemp("containerd"), binary=binary, ctr=require_binary("ctr")
    )
    daemon.start()
    yield daemon
    daemon.stop()


# ----------------------------------------------------------------------------- clients


@pytest.fixture(scope="session")
def containers_config(tmp_path_factory: pytest.TempPathFactory) -> ContainersConfig:
    return ContainersConfig.create(tmp_path_factory.mktemp("containers-config"))


@pytest.fixture(scope="session")
def podman_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("podman")


@pytest.fixture(scope="module")
def skopeo(registry: Registry, containers_config: ContainersConfig) -> Skopeo:
    return Skopeo(require_binary("skopeo"), containers_config, registry)


@pytest.fixture(scope="module")
def podman(registry: Registry, containers_config: ContainersConfig, podman_storage: Path) -> Podman:
    return Podman(require_binary("podman"), podman_storage, containers_config, registry)


@pytest.fixture(scope="module")
def docker(registry: Registry, dockerd: Dockerd) -> Docker:
    client = Docker(dockerd.cli, dockerd, registry)
    client.login()
    return client


@pytest.fixture(scope="module")
def ctr(registry: Registry, containerd: Containerd) -> Ctr:
    return Ctr(containerd.ctr, containerd, registry)


@pytest.fixture(scope="module")
def oras_client(registry: Registry) -> oras.client.OrasClient:
    """oras-py over plain HTTP (`insecure=True`), logged in once the registry has credentials."""
    client = oras.client.OrasClient(hostname=registry.address, insecure=True)
    if registry.credentials:
        username, password = registry.credentials
        client.login(username=username, password=password, hostname=registry.address)
    return client
