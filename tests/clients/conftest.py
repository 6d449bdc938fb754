"""Fixtures for driving real registry clients against a running Berth, the way users reach it.

One `berth serve` for the session, with authentication on, over TLS (a certificate from a CA the
tests make), and with project hosts: `BERTH_DOMAIN=kcr.test`, `BERTH_REGION=kr-central-2`, so
`{project}.kr-central-2.kcr.test:PORT/repository/image` names an image. Those hosts go into
/etc/hosts (127.0.0.1) before dockerd and containerd start; every client trusts the CA and signs
in with an access key. Path style (`127.0.0.1:PORT/project/repository/image`) works on the same
server, with the same key.

Daemons (dockerd, containerd) are started once per session by the tests themselves, each in a
temporary directory with its own sockets, and stopped at the end; /etc/hosts lines and
/etc/docker/certs.d entries are removed. A missing client binary skips its tests
(scripts/test-deps.sh installs them all, so in CI everything runs).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import oras.client
import pytest
from cri_api.v1 import api_pb2_grpc

from tests.clients.commands import ContainersConfig, Ctr, Docker, Podman, Skopeo
from tests.clients.cri import CriImages
from tests.clients.daemons import Containerd, Dockerd, running_dockerd
from tests.clients.layouts import TestImage, umoci_image
from tests.clients.machine import DockerCertsDirs, HostsEntries
from tests.clients.registry import DOMAIN, REGION, Registry, Trust, project_host
from tests.clients.tools import require_binary
from tests.servers import BerthServer, running_server
from tests.tls import make_ca_and_cert


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """When a client test fails, show the end of the server's log next to the client's output."""
    report = yield
    if report.failed:
        arguments = getattr(item, "funcargs", {}).values()
        servers = {id(a.server): a.server for a in arguments if isinstance(a, Registry)}
        servers.update({id(a): a for a in arguments if isinstance(a, BerthServer)})
        for server in servers.values():
            report.sections.append((f"berth {server.url} server.log (tail)", server.log_tail(60)))
    return report


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Projects:
    """The session's projects, named before anything starts: their hosts go into /etc/hosts
    before the daemons first read it."""

    main: str  # the round trips of every client, as the administrator
    auth: str  # logins, logouts, wrong secrets and pull secrets
    missing: str  # never created: its host resolves, and names no project

    @property
    def all(self) -> list[str]:
        return [self.main, self.auth]

    @property
    def hosts(self) -> list[str]:
        """Every project name whose host the clients resolve."""
        return [*self.all, self.missing]


@pytest.fixture(scope="session")
def projects() -> Projects:
    suffix = uuid.uuid4().hex[:8]
    return Projects(main=f"clients{suffix}", auth=f"auth{suffix}", missing=f"nope{suffix}")


@pytest.fixture(scope="session")
def project_hosts(projects: Projects) -> Iterator[HostsEntries]:
    """`127.0.0.1 {project}.kr-central-2.kcr.test ...` in /etc/hosts for the session."""
    entries = HostsEntries([project_host(p) for p in projects.hosts])
    entries.add()
    yield entries
    entries.remove()


@pytest.fixture(scope="session")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA, certificate, key): the certificate names every project host (one wildcard), the
    loopback names and addresses."""
    hosts = [f"*.{REGION}.{DOMAIN}", "localhost", "127.0.0.1", "::1"]
    return make_ca_and_cert(tmp_path_factory.mktemp("tls"), hosts)


@pytest.fixture(scope="session")
def trust(server_tls: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Trust:
    """The test CA, alone in a directory of its own (what `--cert-dir` takes)."""
    ca = tmp_path_factory.mktemp("trust") / "ca.crt"
    shutil.copyfile(server_tls[0], ca)
    return Trust(ca)


@pytest.fixture(scope="session")
def berth(
    request: pytest.FixtureRequest,
    server_tls: tuple[Path, Path, Path],
    projects: Projects,
    project_hosts: HostsEntries,
) -> Iterator[BerthServer]:
    """`berth serve` over TLS on 127.0.0.1, answering for `*.kr-central-2.kcr.test`."""
    _, certificate, key = server_tls
    with running_server(
        request,
        "berth",
        tls=(certificate, key),
        extra_env={"BERTH_DOMAIN": DOMAIN, "BERTH_REGION": REGION},
    ) as server:
        for project in projects.all:
            server.create_project(project)
        yield server


@pytest.fixture(scope="session")
def registry(berth: BerthServer, projects: Projects, trust: Trust) -> Registry:
    """The main project, host style, with an access key of the administrator."""
    return Registry(berth, projects.main, trust, berth.access_key(projects.main))


@pytest.fixture(params=[True, False], ids=["host-style", "path-style"])
def any_registry(request: pytest.FixtureRequest, registry: Registry) -> Registry:
    """The main project, once host style and once path style (`127.0.0.1:PORT/{project}/...`,
    the same access key)."""
    return registry if request.param else registry.path_style()


@pytest.fixture(scope="session")
def auth_registry(berth: BerthServer, projects: Projects, trust: Trust) -> Registry:
    """The project of the login tests, host style, with an administrator's access key."""
    return Registry(berth, projects.auth, trust, berth.access_key(projects.auth))


@pytest.fixture(scope="session")
def registry_addresses(berth: BerthServer, projects: Projects) -> list[str]:
    """Every `host:port` the session's clients use to reach Berth."""
    return [f"{project_host(p)}:{berth.port}" for p in projects.hosts] + [berth.address]


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
def docker_certs(registry_addresses: list[str], trust: Trust) -> Iterator[DockerCertsDirs]:
    """/etc/docker/certs.d/ADDRESS/ca.crt for every address of the session, removed after."""
    certs = DockerCertsDirs()
    try:
        for address in registry_addresses:
            certs.trust(address, trust.ca)
        yield certs
    finally:
        certs.remove_all()


@pytest.fixture(scope="session")
def dockerd(
    tmp_path_factory: pytest.TempPathFactory, project_hosts: HostsEntries
) -> Iterator[Dockerd]:
    with running_dockerd(tmp_path_factory.mktemp("dockerd")) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def containerd(
    tmp_path_factory: pytest.TempPathFactory,
    project_hosts: HostsEntries,
    registry_addresses: list[str],
    trust: Trust,
) -> Iterator[Containerd]:
    """containerd with a hosts.toml (HTTPS, the test CA) for every address of the session."""
    binary = require_binary("containerd")
    daemon = Containerd(
        tmp_path_factory.mktemp("containerd"), binary=binary, ctr=require_binary("ctr")
    )
    for address in registry_addresses:
        daemon.trust(address, trust.ca)
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


@pytest.fixture(scope="session")
def skopeo(registry: Registry, containers_config: ContainersConfig) -> Skopeo:
    return Skopeo(require_binary("skopeo"), containers_config, registry)


@pytest.fixture(scope="session")
def podman(registry: Registry, containers_config: ContainersConfig, podman_storage: Path) -> Podman:
    return Podman(require_binary("podman"), podman_storage, containers_config, registry)


@pytest.fixture(scope="session")
def docker(registry: Registry, dockerd: Dockerd, docker_certs: DockerCertsDirs) -> Docker:
    """docker, logged in to the main project's host and to the path-style address."""
    client = Docker(dockerd.cli, dockerd, registry)
    client.login()
    client.at(registry.path_style()).login()
    return client


@pytest.fixture(scope="session")
def ctr(registry: Registry, containerd: Containerd) -> Ctr:
    return Ctr(containerd.ctr, containerd, registry)


@pytest.fixture(scope="session")
def cri(containerd: Containerd) -> Iterator[CriImages]:
    """containerd's CRI ImageService (containerd's hosts.toml files trust the test CA)."""
    if not containerd.cri_enabled():
        pytest.fail(f"containerd's CRI plugin is not running:\n{containerd.tail()}")
    with grpc.insecure_channel(f"unix://{containerd.socket}") as channel:
        yield CriImages(api_pb2_grpc.ImageServiceStub(channel))  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def oras_client(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> oras.client.OrasClient:
    """oras-py trusting the test CA, logged in with the access key.

    Its Basic backend: Berth takes Basic credentials on /v2 as well as tokens. oras-py 0.2.43's
    token backend cannot push (oras-project/oras-py#187): it keeps the pull-only token its first
    HEAD earned, and on the 401 `insufficient_scope` that follows, sends it again.
    """
    client = oras.client.OrasClient(
        hostname=registry.address, tls_verify=str(registry.trust.ca), auth_backend="basic"
    )
    assert registry.credentials
    username, password = registry.credentials
    config = tmp_path_factory.mktemp("oras") / "config.json"  # not ~/.docker/config.json
    client.login(username, password, hostname=registry.address, config_path=str(config))
    return client
