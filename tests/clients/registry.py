"""The registry under test as a client sees it: an address, optional credentials, image names."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx

from tests.servers import BerthServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ALL_MANIFESTS = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])


@dataclass(frozen=True)
class ImageRef:
    """`host:port/project/repository/image:tag`, the way every client names an image."""

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

    @property
    def project(self) -> str:
        return self.name.split("/")[0]

    def at(self, digest: str) -> str:
        """The reference by digest: `host:port/name@sha256:...`."""
        return f"{self.address}/{self.name}@{digest}"


@dataclass(frozen=True)
class Registry:
    """A running Berth as its clients reach it (plain HTTP on loopback), with one project and
    an access key that works in it. Every client fixture logs in (or passes them) with them.
    """

    server: BerthServer
    project: str
    username: str | None = None
    password: str | None = None

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def credentials(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return self.username, self.password

    def new_image(self, image: str, tag: str = "v1", project: str | None = None) -> ImageRef:
        """A fresh repository (in this registry's project unless given one), and `image` in it."""
        project = project or self.project
        repository = "r" + uuid.uuid4().hex[:6]
        self.server.create_repository(project, repository)
        return ImageRef(self.address, f"{project}/{repository}/{image}", tag)

    def http(self) -> httpx.Client:
        """A plain HTTP client for checking what the clients left behind (the API itself)."""
        auth = httpx.BasicAuth(*self.credentials) if self.credentials else None
        return httpx.Client(base_url=self.server.url, auth=auth, timeout=60)

    def get_manifest(self, name: str, reference: str) -> httpx.Response:
        with self.http() as client:
            response = client.get(
                f"/v2/{name}/manifests/{reference}", headers={"Accept": ALL_MANIFESTS}
            )
        response.raise_for_status()
        return response
