"""Signing in with access keys: `docker login`, `skopeo login`, `podman login`.

Each client logs in to a project host over TLS with a key ID and secret, pushes and pulls with
the stored credentials, and is refused once logged out or when the secret is wrong. Every test
keeps its credentials in a file of its own, and the tests that give a wrong secret on purpose
use a key of their own: failed logins are throttled per key.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.clients.commands import Docker, Podman, Result, Skopeo
from tests.clients.conftest import Projects
from tests.clients.layouts import OciLayout, TestImage
from tests.clients.machine import DockerCertsDirs
from tests.clients.registry import Registry, Trust
from tests.clients.tools import output
from tests.servers import ADMIN_PASSWORD, free_port, running_server

pytestmark = pytest.mark.clients

# containers/image's words for a 401 to the credentials it was given.
BAD_CREDENTIALS = "invalid username/password"


def failed(result: Result) -> str:
    """What a client printed when it failed (and it must have failed)."""
    assert result.returncode != 0, output(result)
    return output(result)


def assert_asked_to_authenticate(printed: str) -> None:
    """Without credentials a client's anonymous token grants nothing on a private repository:
    Berth answers 401 UNAUTHORIZED (as Distribution does), which clients print this way."""
    assert "unauthorized: authentication required" in printed, printed


# ----------------------------------------------------------------------------- docker


@pytest.fixture
def docker_client(docker: Docker, auth_registry: Registry, tmp_path: Path) -> Docker:
    """docker with a config directory (and so credentials) of its own: nothing stored yet."""
    return docker.at(auth_registry).with_config(tmp_path / "docker-config")


def test_docker_login_with_an_access_key_succeeds_and_stores_it(
    docker_client: Docker, auth_registry: Registry, tmp_path: Path
) -> None:
    assert auth_registry.credentials
    key_id, secret = auth_registry.credentials
    address = auth_registry.address

    result = docker_client("login", address, "--username", key_id, "--password", secret)

    assert "Login Succeeded" in result.stdout
    config = json.loads((tmp_path / "docker-config" / "config.json").read_text())
    assert address in config["auths"]


def test_docker_login_with_a_wrong_secret_is_refused(
    docker_client: Docker, auth_registry: Registry, tmp_path: Path
) -> None:
    key_id, wrong = auth_registry.as_new_user("member").wrong_secret

    result = docker_client(
        "login", auth_registry.address, "--username", key_id, "--password", wrong, check=False
    )

    printed = failed(result)
    # dockerd: `Error response from daemon: Get "https://HOST/v2/": unauthorized: MESSAGE`,
    # the message being the token endpoint's answer to the wrong secret (a 401).
    assert "unauthorized: invalid access key ID or secret access key" in printed
    assert "Login Succeeded" not in printed
    config = json.loads((tmp_path / "docker-config" / "config.json").read_text())
    assert auth_registry.address not in config["auths"]


def test_docker_push_and_pull_work_after_login_and_fail_after_logout(
    docker_client: Docker, auth_registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    ref = auth_registry.new_image("login")
    docker_client.import_image(test_image, str(ref), tmp_path)
    docker_client.login()

    assert f"{ref.tag}: digest: sha256:" in output(docker_client("push", str(ref)))
    docker_client("rmi", str(ref))
    assert f"Downloaded newer image for {ref}" in docker_client("pull", str(ref)).stdout

    logged_out = docker_client("logout", auth_registry.address)
    assert f"Removing login credentials for {auth_registry.address}" in logged_out.stdout

    docker_client("tag", str(ref), str(ref.with_tag("v2")))
    push = failed(docker_client("push", str(ref.with_tag("v2")), check=False))
    docker_client("rmi", str(ref), str(ref.with_tag("v2")))
    pull = failed(docker_client("pull", str(ref), check=False))
    assert_asked_to_authenticate(push)
    assert_asked_to_authenticate(pull)


def test_docker_login_on_a_host_of_no_project_fails_at_login(
    docker_client: Docker, auth_registry: Registry, projects: Projects
) -> None:
    """`nope.{region}.{domain}` resolves (a wildcard DNS name) but names no project."""
    assert auth_registry.credentials
    key_id, secret = auth_registry.credentials
    nowhere = replace(auth_registry, project=projects.missing).address

    result = docker_client(
        "login", nowhere, "--username", key_id, "--password", secret, check=False
    )

    printed = failed(result)
    assert f"unauthorized: there is no project '{projects.missing}'" in printed, printed
    assert "check the host name" in printed


def test_docker_login_with_a_key_of_another_project_fails_at_login(
    docker_client: Docker, registry: Registry, auth_registry: Registry
) -> None:
    assert auth_registry.credentials
    key_id, secret = auth_registry.credentials  # a key of the auth project

    result = docker_client(
        "login", registry.address, "--username", key_id, "--password", secret, check=False
    )

    printed = failed(result)
    said = f"access key {key_id} belongs to project '{auth_registry.project}', not '{registry.project}'"
    assert said in printed, printed
    # The same key on its own project's host signs in.
    assert "Login Succeeded" in docker_client.login().stdout


def test_docker_login_with_a_user_password_says_to_use_an_access_key(
    docker_client: Docker, auth_registry: Registry
) -> None:
    result = docker_client(
        "login", auth_registry.address, "--username", "admin", "--password", ADMIN_PASSWORD,
        check=False,
    )  # fmt: skip

    printed = failed(result)
    assert "not with a user name and password" in printed, printed


def test_docker_push_without_a_repository_part_fails_at_once(
    docker: Docker, registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    """`docker push 127.0.0.1:PORT/hello:v1` (path style: no project and repository): docker
    retries NAME_INVALID for ~50 s; Berth's answer stops it at once with the reason."""
    path_style = registry.path_style()
    reference = f"{path_style.address}/hello{uuid.uuid4().hex[:6]}:v1"
    docker.import_image(test_image, reference, tmp_path)

    started = time.monotonic()
    printed = failed(docker("push", reference, check=False))
    took = time.monotonic() - started

    assert "needs the project first" in printed, printed
    # Far below docker's ~50 s of retries, far above what a loaded machine adds to one push.
    assert took < 20, f"docker push took {took:.1f} s: {printed}"


@pytest.fixture
def ipv6_berth(
    request: pytest.FixtureRequest, server_tls: tuple[Path, Path, Path], trust: Trust
) -> Iterator[Registry]:
    """A second Berth on [::1] with the same certificate, and a project with an access key."""
    _, certificate, key = server_tls
    with running_server(
        request, "berth-ipv6", host="::1", port=free_port("::1"), tls=(certificate, key)
    ) as server:
        server.create_project("ipv6")
        yield Registry(server, "ipv6", trust, server.access_key("ipv6"), host_style=False)


def test_docker_verifies_the_certificate_of_a_registry_on_ipv6_loopback(
    docker: Docker, ipv6_berth: Registry, docker_certs: DockerCertsDirs, tmp_path: Path
) -> None:
    """dockerd skips certificate checks for 127.0.0.0/8 only: on [::1] an unknown CA fails the
    login, and the CA in /etc/docker/certs.d/[::1]:PORT/ makes it succeed."""
    client = docker.at(ipv6_berth).with_config(tmp_path / "docker-config")
    assert ipv6_berth.address.startswith("[::1]:")

    untrusted = failed(client.login(check=False))
    assert "x509: certificate signed by unknown authority" in untrusted

    docker_certs.trust(ipv6_berth.address, ipv6_berth.trust.ca)
    try:
        assert "Login Succeeded" in client.login().stdout
    finally:
        docker_certs.untrust(ipv6_berth.address)


# ----------------------------------------------------------------------------- skopeo, podman


def test_skopeo_login_then_copy_with_the_auth_file_until_logout(
    skopeo: Skopeo, auth_registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    assert auth_registry.credentials
    key_id, secret = auth_registry.credentials
    address, cert_dir = auth_registry.address, auth_registry.trust.cert_dir
    auth_file = tmp_path / "auth.json"
    ref = auth_registry.new_image("skopeo-login")
    with_login: list[str | Path] = ["--authfile", auth_file, "--cert-dir", cert_dir]

    logged_in = skopeo("login", *with_login, "--username", key_id, "--password", secret, address)
    assert "Login Succeeded!" in logged_in.stdout

    skopeo(
        "copy", "--dest-authfile", auth_file, "--dest-cert-dir", cert_dir,
        test_image.oci_ref, f"docker://{ref}",
    )  # fmt: skip
    pulled = OciLayout(tmp_path / "pulled")
    skopeo(
        "copy", "--src-authfile", auth_file, "--src-cert-dir", cert_dir,
        f"docker://{ref}", f"oci:{pulled.path}:{ref.tag}",
    )  # fmt: skip
    assert pulled.resolve(ref.tag)["digest"] == test_image.manifest_digest

    skopeo("logout", "--authfile", auth_file, address)
    refused = failed(skopeo("inspect", *with_login, f"docker://{ref}", check=False))
    assert_asked_to_authenticate(refused)


def test_skopeo_login_with_a_wrong_secret_is_refused(
    skopeo: Skopeo, auth_registry: Registry, tmp_path: Path
) -> None:
    key_id, wrong = auth_registry.as_new_user("member").wrong_secret
    auth_file = tmp_path / "auth.json"

    result = skopeo(
        "login", "--authfile", auth_file, "--cert-dir", auth_registry.trust.cert_dir,
        "--username", key_id, "--password", wrong, auth_registry.address, check=False,
    )  # fmt: skip

    assert BAD_CREDENTIALS in failed(result)
    assert not auth_file.exists() or auth_registry.address not in auth_file.read_text()


def test_podman_login_then_push_and_pull_until_logout(
    podman: Podman, auth_registry: Registry, test_image: TestImage, tmp_path: Path
) -> None:
    assert auth_registry.credentials
    key_id, secret = auth_registry.credentials
    address, cert_dir = auth_registry.address, auth_registry.trust.cert_dir
    auth_file = tmp_path / "auth.json"
    with_login: list[str | Path] = ["--authfile", auth_file, "--cert-dir", cert_dir]
    ref = auth_registry.new_image("podman-login")
    image_id = podman("pull", "--quiet", test_image.oci_ref).stdout.strip()
    podman("tag", image_id, str(ref))

    logged_in = podman("login", *with_login, "--username", key_id, "--password", secret, address)
    assert "Login Succeeded!" in logged_in.stdout

    assert "Writing manifest to image destination" in output(podman("push", *with_login, str(ref)))
    podman("rmi", "--force", str(ref), image_id)
    podman("pull", *with_login, str(ref))
    podman("rmi", "--force", str(ref))

    podman("logout", "--authfile", auth_file, address)
    refused = failed(podman("pull", *with_login, str(ref), check=False))
    assert_asked_to_authenticate(refused)


def test_podman_login_with_a_wrong_secret_is_refused(
    podman: Podman, auth_registry: Registry, tmp_path: Path
) -> None:
    key_id, wrong = auth_registry.as_new_user("member").wrong_secret
    auth_file = tmp_path / "auth.json"

    result = podman(
        "login", "--authfile", auth_file, "--cert-dir", auth_registry.trust.cert_dir,
        "--username", key_id, "--password", wrong, auth_registry.address, check=False,
    )  # fmt: skip

    assert BAD_CREDENTIALS in failed(result)
    assert not auth_file.exists() or auth_registry.address not in auth_file.read_text()
