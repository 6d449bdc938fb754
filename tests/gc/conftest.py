"""Garbage collection against real servers (SQLite and PostgreSQL).

Servers here run with a grace period (`BERTH_GC_GRACE_PERIOD`) far longer than any test takes,
even on a loaded machine: a test makes content "old" by moving its timestamps back in the
database (`age_past_grace`), not by sleeping, and "fresh" by pushing it after that. (With a
one-second grace period and a sleep, a run that took over a second on a loaded machine
collected the "fresh" content.) `GcProject` is one fresh
project with a repository, a registry client and an API client (the administrator's access key),
and what the tests read from the metadata database and the blob directory.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from berth.metadata.tables import (
    blobs,
    manifests,
    project_settings,
    projects,
    repositories,
    repository_blobs,
    uploads,
    utcnow,
)
from berth.state import Services
from tests.oci import Blob, assert_status, blob_path, describe, digest_of, uploads_path
from tests.servers import BACKENDS, BerthServer, server_fixture

GRACE = 600  # seconds: the servers' gc_grace_period, longer than any test
RUN_TIMEOUT = 60.0


def gc_env(**extra: str) -> dict[str, str]:
    return {"BERTH_GC_GRACE_PERIOD": str(GRACE), **extra}


gc_server = server_fixture(
    "gc",
    backends=BACKENDS,
    env=gc_env(),
    doc="A registry with a 10-minute GC grace period, once per backend, shared by a module.",
)


def in_process(server: BerthServer, work: Any) -> Any:
    """One service call against the server's data (database and blob directory)."""
    return server._services(work)


def age_past_grace(server: BerthServer) -> None:
    """Make everything stored so far older than the grace period, as if it had passed: every
    push, link, blob and upload time after `GRACE` + a minute ago moves back to then (what is
    older stays as it is): past this grace period, and any shorter one a module's server has.
    Well within `upload_expiry` (a day): uploads are not abandoned by it."""
    then = utcnow() - dt.timedelta(seconds=GRACE + 60)
    stamped = (
        (blobs, blobs.c.created_at),
        (repository_blobs, repository_blobs.c.linked_at),
        (manifests, manifests.c.pushed_at),
        (uploads, uploads.c.updated_at),
    )

    async def write(services: Services) -> None:
        async with services.db.write() as conn:
            for table, column in stamped:
                await conn.execute(update(table).where(column > then).values({column.name: then}))

    in_process(server, write)


@dataclass
class GcProject:
    server: BerthServer
    project: str
    repository: str
    registry: httpx.Client  # /v2, Basic with the administrator's access key
    api: httpx.Client  # /api/v1, the same key

    def name(self, image: str = "", repository: str | None = None) -> str:
        """The OCI name (path style) of an image in one of the project's repositories."""
        return "/".join(p for p in (self.project, repository or self.repository, image) if p)

    def add_repository(self, name: str) -> str:
        self.server.create_repository(self.project, name)
        return name

    # ------------------------------------------------------------------ pushing and pulling

    def push_blob(self, data: bytes, image: str = "", repository: str | None = None) -> str:
        """One POST with ?digest= (the monolithic form); returns the digest."""
        digest = digest_of(data)
        response = self.registry.post(
            uploads_path(self.name(image, repository)), params={"digest": digest}, content=data
        )
        assert response.status_code == 201, describe(response)
        return digest

    def push(self, blob: Blob, image: str = "", repository: str | None = None) -> str:
        return self.push_blob(blob.data, image, repository)

    def put_manifest(
        self, manifest: Blob, reference: str | None = None, image: str = ""
    ) -> httpx.Response:
        return self.registry.put(
            f"/v2/{self.name(image)}/manifests/{reference or manifest.digest}",
            content=manifest.data,
            headers={"Content-Type": manifest.media_type},
        )

    def has_blob(self, digest: str, image: str = "", repository: str | None = None) -> bool:
        response = self.registry.head(blob_path(self.name(image, repository), digest))
        assert_status(response, 200, 404)
        return response.status_code == 200

    def blob_bytes(self, digest: str, image: str = "") -> bytes:
        response = self.registry.get(blob_path(self.name(image), digest))
        assert_status(response, 200)
        return response.content

    def has_manifest(self, reference: str, image: str = "") -> bool:
        response = self.registry.head(f"/v2/{self.name(image)}/manifests/{reference}")
        assert_status(response, 200, 404)
        return response.status_code == 200

    # ------------------------------------------------------------------ garbage collection

    def start_gc(self, **options: bool) -> httpx.Response:
        return self.api.post(f"/projects/{self.project}/gc", json=options)

    def gc(self, **options: bool) -> dict[str, Any]:
        """A run through the API, waited for; fails the test unless it succeeded."""
        started = self.start_gc(**options)
        assert started.status_code == 202, started.text
        run = self.wait_for_run(started.json()["id"])
        assert run["state"] == "succeeded", run
        return run

    def run_info(self, run_id: int) -> dict[str, Any]:
        response = self.api.get(f"/projects/{self.project}/gc/runs/{run_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_for_run(self, run_id: int, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run_info(run_id)
            if run["state"] != "running":
                return run
            assert time.monotonic() < deadline, f"run still running after {timeout}s: {run}"
            time.sleep(0.05)

    # ------------------------------------------------------------------ what is stored

    def blob_file(self, digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return self.server.data_dir / "blobs" / algorithm / hex_digest[:2] / hex_digest

    def stored(self, digest: str) -> bool:
        """Whether the blob store holds the blob: its file, or its object in the bucket."""
        env = self.server.extra_env
        if env.get("BERTH_STORAGE") != "s3":
            return self.blob_file(digest).exists()
        from tests.s3 import BUCKET  # the S3 client: imported only on S3

        algorithm, hex_digest = digest.split(":", 1)
        key = f"{env['BERTH_S3_PREFIX']}/blobs/{algorithm}/{hex_digest[:2]}/{hex_digest}"
        listing = _s3_client(
            env["BERTH_S3_ENDPOINT"],
            env["BERTH_S3_ACCESS_KEY_ID"],
            env["BERTH_S3_SECRET_ACCESS_KEY"],
        ).list_objects_v2(Bucket=BUCKET, Prefix=key)
        return bool(listing.get("KeyCount", 0))

    def blob_row(self, digest: str) -> bool:
        """Whether the metadata database has a `blobs` row for the digest."""

        async def read(services: Services) -> bool:
            async with services.db.read() as conn:
                found = await conn.execute(select(blobs.c.digest).where(blobs.c.digest == digest))
                return found.first() is not None

        return bool(in_process(self.server, read))

    def links(self, digest: str) -> int:
        """How many repositories of this project link the blob."""

        async def read(services: Services) -> int:
            async with services.db.read() as conn:
                rows = await conn.execute(
                    select(repository_blobs.c.repository_id)
                    .join(repositories, repositories.c.id == repository_blobs.c.repository_id)
                    .join(projects, projects.c.id == repositories.c.project_id)
                    .where(repository_blobs.c.digest == digest, projects.c.name == self.project)
                )
                return len(rows.all())

        return int(in_process(self.server, read))

    def settings_row(self) -> Any:
        async def read(services: Services) -> Any:
            async with services.db.read() as conn:
                return (
                    await conn.execute(
                        select(project_settings)
                        .join(projects, projects.c.id == project_settings.c.project_id)
                        .where(projects.c.name == self.project)
                    )
                ).first()

        return in_process(self.server, read)

    def age_upload(self, upload_id: str, seconds: float) -> None:
        """Make an upload look untouched for `seconds` (its last change moved back): a test
        cannot wait out `upload_expiry` (a day, a minute at least)."""

        async def write(services: Services) -> None:
            async with services.db.write() as conn:
                moved = await conn.execute(
                    update(uploads)
                    .where(uploads.c.id == upload_id)
                    .values(updated_at=utcnow() - dt.timedelta(seconds=seconds))
                )
                assert moved.rowcount == 1

        in_process(self.server, write)

    def bulk_blobs(self, count: int) -> dict[str, bytes]:
        """`count` unreferenced blobs in the repository, written straight to storage and the
        metadata (as pushes would leave them, only faster); returns their bytes by digest."""
        contents = [b"bulk %d " % i + os.urandom(16) for i in range(count)]
        found = {digest_of(data): data for data in contents}
        for digest, data in found.items():
            path = self.blob_file(digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        async def insert(services: Services) -> None:
            now = utcnow()
            async with services.db.write() as conn:
                repository_id = (
                    await conn.execute(
                        select(repositories.c.id)
                        .join(projects, projects.c.id == repositories.c.project_id)
                        .where(
                            projects.c.name == self.project,
                            repositories.c.name == self.repository,
                        )
                    )
                ).scalar_one()
                await conn.execute(
                    blobs.insert(),
                    [{"digest": d, "size": len(v), "created_at": now} for d, v in found.items()],
                )
                await conn.execute(
                    repository_blobs.insert(),
                    [
                        {"repository_id": repository_id, "digest": d, "linked_at": now}
                        for d in found
                    ],
                )

        in_process(self.server, insert)
        return found

    def close(self) -> None:
        self.registry.close()
        self.api.close()


@functools.cache
def _s3_client(endpoint: str, key_id: str, secret: str) -> Any:
    """One client per store (made once: a new one takes most of a second)."""
    from tests.s3 import SeaweedFS

    port = int(endpoint.rpartition(":")[2])
    return SeaweedFS(Path(), key_id, secret, port).client()


def new_project(server: BerthServer) -> GcProject:
    project = "gc" + uuid.uuid4().hex[:10]
    repository = "app"
    server.create_repository(project, repository, with_key=True)
    key = server.access_key(project)
    verify: Any = server.ssl_context() if server.tls else True
    return GcProject(
        server,
        project,
        repository,
        httpx.Client(base_url=server.url, timeout=60, auth=key, verify=verify),
        httpx.Client(base_url=f"{server.url}/api/v1", timeout=60, auth=key, verify=verify),
    )


@pytest.fixture
def gc_project(gc_server: BerthServer) -> Iterator[GcProject]:
    created = new_project(gc_server)
    yield created
    created.close()
