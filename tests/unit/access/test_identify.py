"""identify(): every credential kind → a principal, against a real SQLite database."""

from __future__ import annotations

import base64
from functools import partial

import pytest

from berth.access.identify import Identified, SignInPath, Surface, Via
from berth.access.policy import Principal
from berth.domain.errors import TooManyRequests, Unauthorized
from berth.state import Services
from tests.unit.access.conftest import CLIENT, PASSWORD, SERVICE, World


def basic(name: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()


def identify(
    world: World,
    header: str | None,
    surface: Surface = Surface.REGISTRY,
    session: Principal | None = None,
) -> Identified:
    async def work(services: Services) -> Identified:
        return await services.authenticator.identify(
            header, surface=surface, client=CLIENT, service=SERVICE, session=session
        )

    return world.run(work)


def refused(world: World, header: str, surface: Surface = Surface.REGISTRY) -> str:
    with pytest.raises(Unauthorized) as refusal:
        identify(world, header, surface)
    return refusal.value.message


def test_no_credentials_is_anonymous(world: World) -> None:
    assert identify(world, None) == Identified(None, Via.ANONYMOUS)
    assert identify(world, None, Surface.API) == Identified(None, Via.ANONYMOUS)


def test_an_access_key(world: World) -> None:
    for surface in Surface:
        caller = identify(world, basic(world.key_id, world.secret), surface)
        assert caller.via is Via.ACCESS_KEY
        assert caller.principal is not None
        assert (caller.principal.user, caller.principal.key_id) == ("alice", world.key_id)
        assert caller.principal.key_project_id is not None


def test_a_wrong_secret(world: World) -> None:
    assert refused(world, basic(world.key_id, "wrong")) == (
        "invalid access key ID or secret access key"
    )


def test_a_password_on_the_api(world: World) -> None:
    caller = identify(world, basic("alice", PASSWORD), Surface.API)
    assert caller.via is Via.PASSWORD
    assert caller.principal is not None
    assert caller.principal == Principal(caller.principal.user_id, "alice", False, None, None)
    assert refused(world, basic("alice", "not-it"), Surface.API) == "invalid user name or password"


def test_a_password_on_the_registry_is_told_to_use_an_access_key(world: World) -> None:
    assert refused(world, basic("alice", PASSWORD)).startswith(
        "invalid access key ID or secret access key: registry clients"
    )


def test_an_unsupported_header(world: World) -> None:
    assert refused(world, "Digest abc") == "unsupported Authorization header; use Basic or Bearer"
    assert refused(world, "Digest abc", Surface.API).startswith(
        "unsupported Authorization header: use Basic"
    )


def _principal(world: World) -> Principal:
    caller = identify(world, basic(world.key_id, world.secret))
    assert caller.principal is not None
    return caller.principal


def test_a_registry_token(world: World) -> None:
    principal = _principal(world)

    async def issue(services: Services) -> str:
        token, _ttl, _at = services.tokens.issue(
            user_id=principal.user_id,
            user="alice",
            key_id=world.key_id,
            service=SERVICE,
            access=[{"type": "repository", "name": "demo/app", "actions": ["pull"]}],
        )
        return token

    token = world.run(issue)
    caller = identify(world, f"Bearer {token}")
    assert caller.via is Via.REGISTRY_TOKEN
    assert caller.principal == principal
    assert caller.token is not None
    assert caller.token.access == {("repository", "demo/app"): frozenset({"pull"})}
    # A registry token is not an API token, nor good for another service.
    assert refused(world, f"Bearer {token}", Surface.API).startswith("the API token is invalid")
    assert refused(world, "Bearer not-a-token") == "the token is invalid or expired; log in again"


def test_an_anonymous_registry_token(world: World) -> None:
    async def issue(services: Services) -> str:
        return services.tokens.issue(
            user_id=0, user="anonymous", key_id=None, service=SERVICE, access=[]
        )[0]

    caller = identify(world, f"Bearer {world.run(issue)}")
    assert (caller.principal, caller.via) == (None, Via.REGISTRY_TOKEN)


def test_an_api_token(world: World) -> None:
    principal = _principal(world)

    async def issue(services: Services) -> str:
        return services.tokens.issue_api(
            user_id=principal.user_id, user="alice", key_id=world.key_id, ttl_seconds=600
        )[0]

    caller = identify(world, f"Bearer {world.run(issue)}", Surface.API)
    assert (caller.principal, caller.via) == (principal, Via.API_TOKEN)


def test_a_refresh_token(world: World) -> None:
    principal = _principal(world)

    async def exchange(services: Services) -> Principal:
        refresh = services.tokens.issue_refresh(
            user_id=principal.user_id, user="alice", key_id=world.key_id, service=SERVICE
        )
        return await services.authenticator.refresh(refresh, SERVICE)

    assert world.run(exchange) == principal

    async def wrong_service(services: Services) -> Principal:
        refresh = services.tokens.issue_refresh(
            user_id=principal.user_id, user="alice", key_id=world.key_id, service="elsewhere"
        )
        return await services.authenticator.refresh(refresh, SERVICE)

    with pytest.raises(Unauthorized, match="the refresh token is invalid or expired"):
        world.run(wrong_service)


def test_a_console_session(world: World) -> None:
    session = Principal(1, "alice", False, None, None)
    assert identify(world, None, Surface.API, session) == Identified(session, Via.SESSION)
    # The registry knows no sessions; credentials in the header win over the cookie.
    assert identify(world, None, Surface.REGISTRY, session).principal is None
    assert identify(world, basic("alice", PASSWORD), Surface.API, session).via is Via.PASSWORD


def test_tokens_stop_working_with_their_key(world: World) -> None:
    principal = _principal(world)

    async def disable_then_use(services: Services) -> None:
        token = services.tokens.issue(
            user_id=principal.user_id,
            user="alice",
            key_id=world.other_key_id,
            service=SERVICE,
            access=[],
        )[0]
        await services.identity.keys.set_key_disabled(world.other_key_id, True, actor="test")
        await services.authenticator.identify(
            f"Bearer {token}", surface=Surface.REGISTRY, client=CLIENT, service=SERVICE
        )

    with pytest.raises(Unauthorized, match="the access key behind this token no longer works"):
        world.run(disable_then_use)


def test_failed_logins_are_throttled(world: World) -> None:
    # An address of its own: the counts are in the database, shared with the tests above.
    guesser = "192.0.2.70"

    async def guess(services: Services) -> None:
        login = partial(services.authenticator.login_key, through=SignInPath.TOKEN_ENDPOINT)
        for _ in range(3):
            with pytest.raises(Unauthorized):
                await login(world.key_id, "guess", guesser)
        with pytest.raises(TooManyRequests, match="too many failed logins for this access key"):
            await login(world.key_id, world.secret, guesser)
        # Another address is not locked out.
        await login(world.key_id, world.secret, "192.0.2.8")

    world.run(guess)
