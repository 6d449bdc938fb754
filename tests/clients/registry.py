"""The registry under test as a client sees it: an address, TLS trust, an access key, image names.

Berth names a project two ways. Host style: the host `{project}.{region}.{domain}` is the
project and the OCI name is `repository/image`. Path style: any other host (127.0.0.1 here), and
the name starts with the project, `project/repository/image`.
"""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from tests.servers import BerthServer

DOMAIN = "kcr.test"
REGION = "kr-central-2"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ALL_MANIFESTS = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])


def project_host(project: str) -> str:
    """The host that names `project` (mapped to 127.0.0.1 in /etc/hosts for the tests)."""
    return f"{project}.{REGION}.{DOMAIN}"


@dataclass(frozen=True)
class ImageRef:
    """`host:port/name:tag`, the way every client names an image."""

    address: str
    name: str
    tag: str

    def __str__(self) -> str:
        return f"{self.address}/{self.name}:{self.tag}"

    @property
    def repository(self) -> str:
        """The reference without a tag (what `skopeo list-tags` and oras `get_tags` take)."""
        return f"{self.address}/{self.name}"

    def with_tag(self, tag: str) -> ImageRef:
        return ImageRef(self.address, self.name, tag)

    def at(self, digest: str) -> str:
        """The reference by digest: `host:port/name@sha256:...`."""
        return f"{self.address}/{self.name}@{digest}"


@dataclass(frozen=True)
class Trust:
    """The test CA, as a file and as the directory form containers/image's `--cert-dir` reads."""

    ca: Path

    @property
    def cert_dir(self) -> Path:
        """A directory holding only `ca.crt` (a stray `*.key` there would read as a client cert)."""
        return self.ca.parent

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@dataclass(frozen=True)
class Registry:
    """A running Berth as its clients reach it: over TLS, one project addressed host style (or
    path style), and an access key (ID, secret) of a user in that project."""

    server: BerthServer
    project: str
    trust: Trust
    credentials: tuple[str, str] | None = None
    host_style: bool = True

    @property
    def host(self) -> str:
        return project_host(self.project) if self.host_style else self.server.host

    @property
    def address(self) -> str:
        """host:port as clients name the registry (`docker login ADDRESS`)."""
        return f"{self.host}:{self.server.port}" if self.host_style else self.server.address

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    def path_style(self) -> Registry:
        """The same project and key, reached at `127.0.0.1:PORT/project/...`."""
        return replace(self, host_style=False)

    def signed_in_as(self, credentials: tuple[str, str] | None) -> Registry:
        return replace(self, credentials=credentials)

    def as_new_user(self, role: str) -> Registry:
        """This registry signed in as a new service account with `role` in the project."""
        user = "sa" + uuid.uuid4().hex[:10]
        self.server.create_user(user, None, service_account=True)
        self.server.add_member(self.project, user, role)
        return self.signed_in_as(self.server.access_key(self.project, user))

    @property
    def wrong_secret(self) -> tuple[str, str]:
        """This registry's access key ID with a secret that is not its own."""
        assert self.credentials
        key_id, secret = self.credentials
        return key_id, "not-" + secret

    def name(self, repository: str, image: str) -> str:
        """The OCI name of `image` in `repository` of this registry's project."""
        if self.host_style:
            return f"{repository}/{image}"
        return f"{self.project}/{repository}/{image}"

    def new_image(self, image: str, tag: str = "v1") -> ImageRef:
        """A fresh repository in this registry's project, and `image` in it."""
        repository = "r" + uuid.uuid4().hex[:6]
        self.server.create_repository(self.project, repository)
        return ImageRef(self.address, self.name(repository, image), tag)

    def http(self) -> httpx.Client:
        """An HTTP client for checking what the clients left behind (the API itself, with the
        same host, TLS trust and access key; Basic credentials go straight to /v2)."""
        auth = httpx.BasicAuth(*self.credentials) if self.credentials else None
        return httpx.Client(
            base_url=self.url, auth=auth, verify=self.trust.ssl_context(), timeout=60
        )

    def get_manifest(self, name: str, reference: str) -> httpx.Response:
        with self.http() as client:
            response = client.get(
                f"/v2/{name}/manifests/{reference}", headers={"Accept": ALL_MANIFESTS}
            )
        response.raise_for_status()
        return response
