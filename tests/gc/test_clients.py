"""docker and podman show why a push is refused while garbage collection holds the project's
write restriction. The restriction is held deterministically for the length of a push by
setting `project_settings.gc_restricted_by` directly, as a run does."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.metadata.tables import project_settings, projects
from berth.state import Services
from tests.clients.commands import ContainersConfig, Docker, Podman
from tests.clients.daemons import Dockerd
from tests.clients.layouts import TestImage, umoci_image
from tests.clients.machine import DockerCertsDirs
from tests.clients.registry import Registry, Trust
from tests.clients.tools import output, require_binary
from tests.gc.conftest import in_process
from tests.servers import BerthServer
from tests.tls import make_ca_and_cert

pytestmark = pytest.mark.clients

GC_TEXT = "garbage collection in progress"
FAKE_RUN = 2_000_000_000


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry over TLS on 127.0.0.1 (path style), one project, the admin's access key."""
    _ca, cert, key = make_ca_and_cert(tmp_path_factory.mktemp("tls"), ["127.0.0.1"])
    server = BerthServer(tmp_path_factory.mktemp("gc-clients"), tls=(cert, key)).start()
    # The CA alone in a directory: containers/image reads any *.key beside it as a client key.
    trust = Trust(tmp_path_factory.mktemp("trust") / "ca.crt")
    shutil.copyfile(cert.parent / "ca.crt", trust.ca)
    project = "gcclients"
    server.create_project(project)
    try:
        yield Registry(server, project, trust, server.access_key(project), host_style=False)
    finally:
        server.stop()


@contextlib.contextmanager
def restricted(registry: Registry) -> Iterator[None]:
    """The project under garbage collection's write restriction, as a run holds it."""

    def hold(run: int | None) -> None:
        async def write(services: Services) -> None:
            async with services.db.write() as conn:
                project_id = (
                    await conn.execute(
                        projects.select()
                        .with_only_columns(projects.c.id)
                        .where(projects.c.name == registry.project)
                    )
                ).scalar_one()
                await conn.execute(
                    services.db.upsert(
                        project_settings, ["project_id"], {"gc_restricted_by": run}
                    ).values(project_id=project_id, gc_restricted_by=run)
                )

        in_process(registry.server, write)

    hold(FAKE_RUN)
    try:
        yield
    finally:
        hold(None)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> TestImage:
    require_binary("umoci")
    files = {"gc.txt": b"pushed while garbage collection runs\n"}
    return umoci_image(tmp_path_factory.mktemp("image") / "layout", "v1", files)


@pytest.fixture(scope="module")
def docker(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    binary = require_binary("dockerd")
    cli = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else require_binary("docker")
    daemon = Dockerd(tmp_path_factory.mktemp("dockerd"), binary=binary, cli=cli)
    certs = DockerCertsDirs()
    try:
        certs.trust(registry.address, registry.trust.ca)
        daemon.start()
        client = Docker(cli, daemon, registry)
        client.login()
        yield client
    finally:
        daemon.stop()
        certs.remove_all()


def test_docker_push_shows_that_garbage_collection_is_in_progress(
    docker: Docker, registry: Registry, image: TestImage, tmp_path: Path
) -> None:
    ref = registry.new_image("docker")
    docker.import_image(image, str(ref), tmp_path)

    with restricted(registry):
        refused = docker("push", str(ref), check=False)

    assert refused.returncode != 0
    assert GC_TEXT in output(refused), output(refused)
    pushed = docker("push", str(ref))
    assert "digest: sha256:" in output(pushed)


def test_podman_push_shows_that_garbage_collection_is_in_progress(
    registry: Registry, image: TestImage, tmp_path_factory: pytest.TempPathFactory
) -> None:
    podman = Podman(
        require_binary("podman"),
        tmp_path_factory.mktemp("podman"),
        ContainersConfig.create(tmp_path_factory.mktemp("containers")),
        registry,
    )
    ref = registry.new_image("podman")
    image_id = podman("pull", "--quiet", image.oci_ref).stdout.strip()
    podman("tag", image_id, str(ref))

    with restricted(registry):
        refused = podman("push", *_remote(registry), str(ref), check=False)

    assert refused.returncode != 0
    assert GC_TEXT in output(refused), output(refused)
    pushed = podman("push", *_remote(registry), str(ref))
    assert pushed.returncode == 0
    # A pull works while the restriction holds.
    with restricted(registry):
        podman("rmi", "--force", str(ref))
        podman("pull", *_remote(registry), str(ref))


def _remote(registry: Registry) -> list[str]:
    assert registry.credentials
    return [f"--cert-dir={registry.trust.cert_dir}", f"--creds={':'.join(registry.credentials)}"]
