"""A server's data on SQLite in a temporary directory, for in-process access tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest

from berth.config import Settings
from berth.metadata.migrate import upgrade
from berth.state import Services

T = TypeVar("T")
PASSWORD = "correct-horse-battery"
SERVICE = "registry.test"
CLIENT = "192.0.2.7"


@dataclass
class World:
    """A server's data with projects `demo` and `other`, each with a repository `app`:
    `alice`, a member of `demo` with an access key there, and a reader of `other` with a key
    there too."""

    settings: Settings
    key_id: str
    secret: str
    other_key_id: str

    def run(self, work: Callable[[Services], Awaitable[T]]) -> T:
        async def run() -> T:
            services = Services.build(self.settings)
            try:
                return await work(services)
            finally:
                await services.close()

        return asyncio.run(run())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("identify"), login_failures_per_key=3)
    upgrade(settings.resolved_database_url)

    async def populate(services: Services) -> tuple[str, str, str]:
        for project in ("demo", "other"):
            await services.repositories.create_project(project, actor="test")
            await services.repositories.create(project, "app", actor="test")
        await services.identity.users.create_user("alice", PASSWORD, actor="test")
        await services.identity.members.add_member("demo", "alice", "member", actor="test")
        await services.identity.members.add_member("other", "alice", "reader", actor="test")
        key = await services.identity.keys.create_key("alice", "demo", actor="test")
        other = await services.identity.keys.create_key("alice", "other", actor="test")
        return key.key_id, key.secret, other.key_id

    world = World(settings, "", "", "")
    world.key_id, world.secret, world.other_key_id = world.run(populate)
    yield world
