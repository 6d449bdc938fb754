"""Role lookups feed the policy: what a user may do on a repository, read from the database."""

from __future__ import annotations

from berth.access.permissions import EVERY_ACTION, NO_ACTION, PULL_ONLY
from berth.access.policy import Principal
from berth.state import Services
from tests.unit.access.conftest import World


def test_actions_follow_the_roles_in_the_database(world: World) -> None:
    async def check(services: Services) -> None:
        roles = services.identity.roles
        demo_id, demo_app = await services.repositories.lookup("demo", "app")
        other_id, other_app = await services.repositories.lookup("other", "app")
        assert demo_id is not None and other_id is not None
        alice = await services.identity.credentials.key_record(world.key_id)
        assert alice is not None
        password = Principal(alice.user_id, "alice", False, None, None)
        demo_key = Principal(alice.user_id, "alice", False, world.key_id, demo_id)

        assert await roles.actions(password, demo_id, demo_app) == EVERY_ACTION
        assert await roles.actions(password, other_id, other_app) == PULL_ONLY
        assert await roles.actions(demo_key, other_id, other_app) == NO_ACTION
        assert await roles.actions(None, demo_id, demo_app) == NO_ACTION
        assert await roles.sees_project(demo_key, demo_id)
        assert not await roles.sees_project(demo_key, other_id)
        assert await roles.describe(password, other_id, "other", "app", other_app) == (
            "reader in project 'other'"
        )

    world.run(check)


def test_a_role_change_applies_once_the_cache_is_dropped(world: World) -> None:
    async def check(services: Services) -> None:
        roles = services.identity.roles
        other_id, other_app = await services.repositories.lookup("other", "app")
        assert other_id is not None
        record = await services.identity.credentials.key_record(world.key_id)
        assert record is not None
        alice = Principal(record.user_id, "alice", False, None, None)
        assert await roles.actions(alice, other_id, other_app) == PULL_ONLY
        await services.identity.members.add_member("other", "alice", "member", actor="test")
        assert await roles.actions(alice, other_id, other_app) == EVERY_ACTION
        await services.identity.members.add_member("other", "alice", "reader", actor="test")

    world.run(check)
