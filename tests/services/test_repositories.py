"""Resolving a repository by name: found repositories are reused for up to
REPOSITORY_CACHE_SECONDS (a settings change made elsewhere, by another node or the CLI, shows
after that), a missing one is never remembered, and a change made here shows at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from berth.metadata.database import Database
from berth.services.repositories import REPOSITORY_CACHE_SECONDS, Repositories
from tests.services.conftest import run_on_database


def test_a_change_made_elsewhere_shows_once_the_cached_repository_is_stale(
    tmp_path: Path,
) -> None:
    async def scenario(db: Database) -> None:
        here, elsewhere = Repositories(db), Repositories(db)
        await here.create_project("acme", actor="test")
        assert await here.lookup("acme", "app") == (1, None)
        await elsewhere.create("acme", "app", actor="test")
        _, found = await here.lookup("acme", "app")  # an absence was not remembered
        assert found is not None and not found.public

        await elsewhere.update("acme", "app", public=True, actor="alice", client=None)
        _, cached = await here.lookup("acme", "app")
        assert cached is not None and not cached.public
        await asyncio.sleep(REPOSITORY_CACHE_SECONDS + 0.1)
        _, fresh = await here.lookup("acme", "app")
        assert fresh is not None and fresh.public

    run_on_database(tmp_path, scenario)


def test_a_change_made_here_shows_at_once(tmp_path: Path) -> None:
    async def scenario(db: Database) -> None:
        repositories = Repositories(db)
        await repositories.create_project("acme", actor="test")
        await repositories.create("acme", "app", actor="test")
        await repositories.lookup("acme", "app")
        await repositories.update("acme", "app", tag_overwrite=False, actor="alice", client=None)
        _, found = await repositories.lookup("acme", "app")
        assert found is not None and not found.tag_overwrite

        await repositories.delete("acme", "app", actor="alice", client=None)
        assert await repositories.lookup("acme", "app") == (1, None)

    run_on_database(tmp_path, scenario)
