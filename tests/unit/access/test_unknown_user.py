"""A missing user is NOT_FOUND naming them, whichever identity service looks them up
(`metadata/lookups.require_user_row`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from berth.domain.errors import NotFound
from berth.state import Services
from tests.unit.access.conftest import World

ASKS: dict[str, Callable[[Services], Awaitable[Any]]] = {
    "create a key": lambda s: s.identity.keys.create_key("nobody", "demo", actor="test"),
    "set a password": lambda s: s.identity.users.set_password(
        "nobody", "long-enough-password", actor="test"
    ),
    "delete a user": lambda s: s.identity.users.delete_user("nobody", actor="admin"),
    "add a member": lambda s: s.identity.members.add_member(
        "demo", "nobody", "reader", actor="test"
    ),
}


@pytest.mark.parametrize("ask", ASKS.values(), ids=ASKS.keys())
def test_an_unknown_user_is_not_found(world: World, ask: Callable[[Services], Any]) -> None:
    async def work(services: Services) -> None:
        with pytest.raises(NotFound, match="user 'nobody' does not exist"):
            await ask(services)

    world.run(work)


def test_a_known_user_is_found(world: World) -> None:
    async def work(services: Services) -> None:
        await services.identity.users.set_password("alice", "another-long-password", actor="test")

    world.run(work)
