"""Content changes audit themselves: the service that deletes an image, a tag, a blob or a
repository, restores a tag or changes a repository's settings writes the audit entry in the
change's own transaction, so every surface (/v2, API, CLI) audits alike and a refused change
leaves none. In-process, on SQLite, in milliseconds."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from berth.domain.digests import digest_bytes
from berth.domain.errors import Conflict, ManifestUnknown, NameUnknown
from berth.domain.references import RepositoryRef
from berth.metadata.database import Database
from berth.metadata.tables import audit_log, blobs, repository_blobs
from berth.services.records import plain
from berth.services.registry import Registry
from berth.services.repositories import Repositories
from berth.services.repository_listings import ProjectEntry
from berth.storage.filesystem import FilesystemBlobStore
from tests.services.conftest import run_on_database

CLIENT = "192.0.2.7"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Scene:
    db: Database
    repositories: Repositories
    registry: Registry
    repo: RepositoryRef  # acme/app, empty
    since: int  # the last audit entry of the setting up (app's creation)

    async def audit(self) -> list[tuple[str, str, str, str | None, Any]]:
        """(action, target, actor, client, detail) of every entry since the setting up, oldest
        first."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(audit_log).where(audit_log.c.id > self.since).order_by(audit_log.c.id)
            )
            return [
                (r.action, r.target, r.actor, r.client, json.loads(r.detail) if r.detail else None)
                for r in rows
            ]

    async def blob(self, content: bytes) -> str:
        """A blob of the repository (its row and link: what an upload leaves); pushed again,
        the same row and link."""
        digest = digest_bytes(content)
        size = len(content)
        async with self.db.write() as conn:
            await conn.execute(
                self.db.upsert(blobs, ["digest"], {"size": size}).values(digest=digest, size=size)
            )
            await conn.execute(
                self.db.upsert(
                    repository_blobs, ["repository_id", "digest"], {"digest": digest}
                ).values(repository_id=self.repo.id, digest=digest)
            )
        return digest

    async def push_image(self, tag: str, image: str = "") -> tuple[str, str]:
        """An image tagged `tag`: (manifest digest, layer digest)."""
        config_content = b'{"architecture": "amd64", "os": "linux"}'
        config = await self.blob(config_content)
        layer = await self.blob(b"layer of " + tag.encode())

        def descriptor(media_type: str, digest: str, size: int) -> dict[str, Any]:
            return {"mediaType": media_type, "digest": digest, "size": size}

        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor(
                    "application/vnd.oci.image.config.v1+json", config, len(config_content)
                ),
                "layers": [
                    descriptor(
                        "application/vnd.oci.image.layer.v1.tar",
                        layer,
                        len(b"layer of " + tag.encode()),
                    )
                ],
            }
        ).encode()
        pushed = await self.registry.put_manifest(
            self.repo, image, tag, manifest, OCI_MANIFEST, actor="pusher"
        )
        return pushed.digest, layer


def run(tmp_path: Path, scenario: Callable[[Scene], Awaitable[None]]) -> None:
    """Run `scenario` with project acme holding an empty repository app."""

    async def in_scene(db: Database) -> None:
        repositories = Repositories(db)
        await repositories.create_project("acme", actor="test")
        await repositories.create("acme", "app", actor="test")
        _, repo = await repositories.lookup("acme", "app")
        assert repo is not None
        registry = Registry(db, FilesystemBlobStore(tmp_path / "blobs"))
        async with db.read() as conn:
            since = (await conn.execute(select(func.max(audit_log.c.id)))).scalar() or 0
        await scenario(Scene(db, repositories, registry, repo, since))

    run_on_database(tmp_path, in_scene)


def test_deletes_and_a_restore_are_audited_with_who_and_from_where(tmp_path: Path) -> None:
    async def scenario(scene: Scene) -> None:
        manifest, layer = await scene.push_image("v1")
        assert await scene.audit() == []  # a push is in the image history, not the audit log

        await scene.registry.delete_manifest(scene.repo, "", "v1", actor="alice", client=CLIENT)
        await scene.registry.restore_tag(scene.repo, "", "v1", actor="bob", client=None)
        await scene.registry.delete_manifest(scene.repo, "", manifest, actor="alice", client=CLIENT)
        await scene.registry.delete_blob(scene.repo, "", layer, actor="carol", client=CLIENT)

        assert await scene.audit() == [
            ("tag.delete", "app:v1", "alice", CLIENT, None),
            ("tag.restore", "app:v1", "bob", None, None),
            ("image.delete", f"app@{manifest}", "alice", CLIENT, None),
            ("blob.delete", f"app@{layer}", "carol", CLIENT, None),
        ]

    run(tmp_path, scenario)


def test_creating_a_repository_is_audited_by_the_service_and_a_refused_one_is_not(
    tmp_path: Path,
) -> None:
    async def scenario(scene: Scene) -> None:
        await scene.repositories.create("acme", "web", public=True, actor="alice", client=CLIENT)
        with pytest.raises(Conflict):  # exists already
            await scene.repositories.create("acme", "web", actor="alice", client=CLIENT)
        assert await scene.audit() == [
            ("repository.create", "web", "alice", CLIENT, {"visibility": "public"})
        ]

    run(tmp_path, scenario)


def test_a_refused_content_change_leaves_no_audit_entry(tmp_path: Path) -> None:
    async def scenario(scene: Scene) -> None:
        manifest, layer = await scene.push_image("v1")
        with pytest.raises(Conflict):  # the image uses it
            await scene.registry.delete_blob(scene.repo, "", layer, actor="alice", client=CLIENT)
        with pytest.raises(ManifestUnknown):
            await scene.registry.delete_manifest(scene.repo, "", "v2", actor="alice", client=CLIENT)
        with pytest.raises(Conflict):  # only a removed tag can be restored
            await scene.registry.restore_tag(scene.repo, "", "v1", actor="alice", client=CLIENT)
        assert await scene.audit() == []
        assert manifest

    run(tmp_path, scenario)


def test_repository_changes_are_audited_with_the_settings_given(tmp_path: Path) -> None:
    async def scenario(scene: Scene) -> None:
        repositories = scene.repositories
        updated = await repositories.update(
            "acme", "app", public=True, description="web", actor="alice", client=CLIENT
        )
        assert updated.visibility == "public" and updated.description == "web"
        await repositories.update("acme", "app", actor="alice", client=CLIENT)  # nothing given
        await repositories.delete("acme", "app", actor="bob", client=None)
        with pytest.raises(NameUnknown):
            await repositories.delete("acme", "app", actor="bob", client=None)

        assert await scene.audit() == [
            (
                "repository.update",
                "app",
                "alice",
                CLIENT,
                {"visibility": "public", "description": "web"},
            ),
            ("repository.delete", "app", "bob", None, None),
        ]

    run(tmp_path, scenario)


def test_records_print_as_the_json_they_always_were() -> None:
    created = dt.datetime(2026, 12, 1, 10, 30, tzinfo=dt.UTC)
    assert plain([ProjectEntry("acme", created)]) == [
        {"name": "acme", "created_at": "2026-12-01T10:30:00+00:00"}
    ]
