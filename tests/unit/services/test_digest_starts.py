"""A manifest named by the start of its digest (`resolve_digest`), against a real SQLite
database: two digests sharing their first 12 hex digits cannot be made by pushing, so these
rows are written with the digests a collision would have."""

from __future__ import annotations

import asyncio

import pytest

from berth.domain.errors import InvalidValue, ManifestUnknown
from berth.metadata.database import Database
from berth.metadata.tables import manifests
from berth.services.digest_starts import resolve_digest
from tests.retention_seed import repository_ref

SHARED = "0123456789ab"


def test_a_start_several_digests_have_is_refused_naming_them(database_url: str) -> None:
    async def scenario() -> None:
        db = Database(database_url)
        try:
            repo = await repository_ref(db, "p", "app")
            digests = [f"sha256:{SHARED}{tail * 52}" for tail in "cde"]
            async with db.write() as conn:
                for image, digest in [("", digests[0]), ("", digests[1]), ("tool", digests[2])]:
                    await conn.execute(
                        manifests.insert().values(
                            repository_id=repo.id,
                            image=image,
                            digest=digest,
                            media_type="application/vnd.oci.image.manifest.v1+json",
                            size=2,
                            content=b"{}",
                        )
                    )

            with pytest.raises(InvalidValue) as ambiguous:
                await resolve_digest(db, repo, "", SHARED)
            assert str(ambiguous.value) == (
                f"{SHARED} starts the digests of several manifests of repository p/app "
                f"({digests[0]}, {digests[1]}): give more of the digest"
            )
            # One more digit, or the image, tells them apart.
            assert await resolve_digest(db, repo, "", f"sha256:{SHARED}d") == digests[1]
            assert await resolve_digest(db, repo, "tool", SHARED) == digests[2]
            with pytest.raises(ManifestUnknown):
                await resolve_digest(db, repo, "tool", f"{SHARED}c")
        finally:
            await db.dispose()

    asyncio.run(scenario())
