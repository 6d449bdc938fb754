"""Credentials → principal, for every credential kind and every surface.

The registry (`/v2`, the token endpoint) takes an access key (HTTP Basic) or a registry token
(Bearer); the management API takes an access key or a user's password (Basic), an API token
(Bearer) or the console's session. Refresh tokens are exchanged at the token endpoint. Wrong
credentials are UNAUTHORIZED (never silently anonymous); the surface adds its challenge.
Failed logins are throttled per key (or user) and client address, and audited here, whichever
surface they came through.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from berth.access.credentials import (
    NOT_A_KEY,
    Credentials,
    KeyNotUsable,
    has_key_id_format,
    may_be_key_id,
)
from berth.access.policy import Principal
from berth.access.throttle import LoginThrottle
from berth.access.tokens import InvalidToken, TokenClaims, Tokens
from berth.domain.errors import Unauthorized
from berth.observability import metrics

# What the audit log names instead of a failed login's key ID when that value cannot be one
# (a secret pasted into the ID field must not be stored), instead of a user name no user has
# (it may be a password typed into the user field), and as the actor of any failed login (an
# unverified name is nobody).
NOT_A_KEY_ID = "(not a key ID)"
NOT_A_USER = "(no such user)"
UNVERIFIED_ACTOR = "(unverified)"


class AuditRecorder(Protocol):
    """Where failed logins are recorded (the audit log, which lives above this layer)."""

    async def record(self, actor: str, action: str, **fields: Any) -> None: ...


class Surface(StrEnum):
    REGISTRY = "registry"  # /v2 and the token endpoint
    API = "api"  # the management API


class Via(StrEnum):
    """How a caller authenticated."""

    ANONYMOUS = "anonymous"
    ACCESS_KEY = "access_key"
    PASSWORD = "password"
    REGISTRY_TOKEN = "registry_token"
    API_TOKEN = "api_token"
    SESSION = "session"


class SignInPath(StrEnum):
    """Where a sign-in was attempted: what a failed one's audit entry says (`through`)."""

    TOKEN_ENDPOINT = "/auth/token"
    REGISTRY_BASIC = "/v2 Basic"
    API_BASIC = "/api/v1 Basic"
    CONSOLE = "console sign-in"
    PASSWORD_CHANGE = "password change"  # the current password, asked before a new one


_BASIC_PATH = {Surface.REGISTRY: SignInPath.REGISTRY_BASIC, Surface.API: SignInPath.API_BASIC}

# What each surface tells a client whose Authorization header it does not understand.
_UNSUPPORTED = {
    Surface.REGISTRY: "unsupported Authorization header; use Basic or Bearer",
    Surface.API: "unsupported Authorization header: use Basic (access key ID and secret, or "
    "user and password) or Bearer (an API token)",
}


@dataclass(frozen=True, slots=True)
class Identified:
    """Who is calling (None: anonymous) and how; `token` is set for registry-token callers,
    whose rights are what the token grants."""

    principal: Principal | None
    via: Via
    token: TokenClaims | None = None


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(name, secret) from an `Authorization: Basic` header; None for any other header."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, secret = decoded.partition(":")
    return (user, secret) if sep else None


def is_key_id_sign_in(name: str) -> bool:
    """Whether a Basic sign-in on the API is an access key's: key IDs are upper case, user
    names never are. Not a shape check: `login_key` refuses what cannot be a key ID."""
    return name != name.lower()


class Authenticator:
    def __init__(
        self,
        credentials: Credentials,
        tokens: Tokens,
        throttle: LoginThrottle,
        audit: AuditRecorder,
    ) -> None:
        self.credentials = credentials
        self.tokens = tokens
        self.throttle = throttle
        self.audit = audit

    async def identify(
        self,
        authorization: str | None,
        *,
        surface: Surface,
        client: str | None,
        service: str = "",
        session: Principal | None = None,
    ) -> Identified:
        """The caller of a request from its Authorization header (`service`: the registry
        token audience); without one, the console's `session` (API only) or anonymous."""
        if not authorization:
            if session is not None and surface is Surface.API:
                return Identified(session, Via.SESSION)
            return Identified(None, Via.ANONYMOUS)
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            if surface is Surface.API:
                return await self._api_token(value.strip())
            return await self._registry_token(value.strip(), service)
        credentials = basic_credentials(authorization)
        if credentials is None:
            raise Unauthorized(_UNSUPPORTED[surface])
        name, secret = credentials
        through = _BASIC_PATH[surface]
        if surface is Surface.API and not is_key_id_sign_in(name):
            principal = await self.login_password(name, secret, client, through)
            return Identified(principal, Via.PASSWORD)
        return Identified(await self.login_key(name, secret, client, through), Via.ACCESS_KEY)

    async def login_key(
        self, key_id: str, secret: str, client: str | None, through: SignInPath
    ) -> Principal:
        """Check an access key, throttling failures per key and per client address and
        auditing them (not those the throttle refuses)."""
        if not may_be_key_id(key_id):
            # No key has this ID: refused at once, remembering nothing (not even in the
            # throttle), so a stream of made-up IDs costs no memory.
            self.throttle.check(None, client)
            metrics.login_failed("access_key")
            await self.record_failed_key_login(key_id, NOT_A_KEY, client, through)
            raise Unauthorized(NOT_A_KEY)
        self.throttle.check(key_id, client)
        try:
            return await self.credentials.authenticate_key(key_id, secret)
        except KeyNotUsable as exc:
            await self.record_failed_key_login(key_id, exc.message, client, through)
            raise
        except Unauthorized as exc:
            await self.throttle.failed(key_id, client)
            metrics.login_failed("access_key")
            await self.record_failed_key_login(key_id, exc.message, client, through)
            raise

    async def record_failed_key_login(
        self, key_id: str, reason: str, client: str | None, through: SignInPath
    ) -> None:
        """Audit a refused access-key sign-in: in the key's project when the key exists, naming
        the key only when the ID has a key ID's form."""
        well_formed = has_key_id_format(key_id)
        await self.audit.record(
            UNVERIFIED_ACTOR,
            "login.failed",
            project_id=await self.credentials.key_project_id(key_id) if well_formed else None,
            target=key_id if well_formed else NOT_A_KEY_ID,
            detail={"reason": reason, "through": through.value},
            client=client,
        )

    async def login_password(
        self, user: str, password: str, client: str | None, through: SignInPath
    ) -> Principal:
        """The user with this name and password (401 when wrong, 429 while throttled); a
        wrong one is audited, naming the user only when there is one by that name."""
        self.throttle.check(user, client, user=True)
        principal = await self.credentials.verify_password(user, password)
        if principal is None:
            await self.throttle.failed(user, client)
            metrics.login_failed("password")
            reason = "invalid user name or password"
            known = await self.credentials.user_exists(user)
            await self.audit.record(
                UNVERIFIED_ACTOR,
                "login.failed",
                target=user if known else NOT_A_USER,
                detail={"reason": reason, "through": through.value},
                client=client,
            )
            raise Unauthorized(reason)
        return principal

    async def refresh(self, token: str, service: str) -> Principal:
        """The principal a refresh token was issued to, while its access key still works."""
        try:
            claims = self.tokens.verify_refresh(token, service)
        except InvalidToken:
            raise Unauthorized("the refresh token is invalid or expired; log in again") from None
        key_id = claims.get("key")
        principal = None
        if key_id:
            principal = await self.credentials.token_principal(
                int(claims["uid"]), str(claims["sub"]), str(key_id)
            )
        if principal is None:
            raise Unauthorized("the access key behind this refresh token no longer works")
        return principal

    async def _registry_token(self, token: str, service: str) -> Identified:
        try:
            claims = self.tokens.verify(token, service)
        except InvalidToken:
            raise Unauthorized("the token is invalid or expired; log in again") from None
        if claims.key_id is None:
            return Identified(None, Via.REGISTRY_TOKEN, claims)  # anonymous: public pulls only
        principal = await self.credentials.token_principal(
            claims.user_id, claims.user, claims.key_id
        )
        if principal is None:
            raise Unauthorized("the access key behind this token no longer works")
        return Identified(principal, Via.REGISTRY_TOKEN, claims)

    async def _api_token(self, token: str) -> Identified:
        try:
            claims = self.tokens.verify_api(token)
        except InvalidToken:
            raise Unauthorized(
                "the API token is invalid or expired; request a new one (POST /api/v1/auth/tokens)"
            ) from None
        key_id = str(claims["key"])
        principal = await self.credentials.token_principal(
            int(claims["uid"]), str(claims["sub"]), key_id
        )
        if principal is None:
            raise Unauthorized(
                f"access key {key_id}, which this token was issued for, no longer works"
            )
        return Identified(principal, Via.API_TOKEN)
