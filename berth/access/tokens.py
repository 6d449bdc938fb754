"""Signed JWTs for the Docker token flow (ES256), and their verification.

A verified token is cached by its string until it expires (its `exp`): the signature check is the costly part, and a token's
claims cannot change.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from berth.access.expiring import ExpiringCache
from berth.access.keyring import Keyring
from berth.observability import metrics

ISSUER = "berth"
ALGORITHM = "ES256"
# Management API tokens (POST /api/v1/auth/tokens): their own audience and type, so that one
# is never taken for a registry token or the other way round.
API_AUDIENCE = "berth-api"
API_TOKEN_TYPE = "api"
# Console sessions the database had no room to record (berth.services.sessions): their own
# audience and type, never taken for a registry or API token.
CONSOLE_AUDIENCE = "berth-console"
CONSOLE_SESSION_TYPE = "console-session"
MAX_CACHED_TOKENS = 10_000


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: int
    user: str
    key_id: str | None
    service: str
    expires_at: float
    access: dict[tuple[str, str], frozenset[str]]  # (type, name) -> actions


class InvalidToken(Exception):
    pass


class Tokens:
    def __init__(self, keyring: Keyring, ttl_seconds: int, refresh_ttl_seconds: int) -> None:
        self.keyring = keyring
        self.ttl = ttl_seconds
        self.refresh_ttl = refresh_ttl_seconds
        self._verified: ExpiringCache[str, TokenClaims] = ExpiringCache(
            MAX_CACHED_TOKENS, timer=time.time
        )

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(
            claims,
            self.keyring.signing_key,
            algorithm=ALGORITHM,
            headers={"kid": self.keyring.key_id},
        )

    def issue(
        self,
        *,
        user_id: int,
        user: str,
        key_id: str | None,
        service: str,
        access: list[dict[str, Any]],
    ) -> tuple[str, int, float]:
        """An access token; returns (token, lifetime in seconds, issued-at)."""
        now = time.time()
        token = self._sign(
            {
                "iss": ISSUER,
                "sub": user,
                "aud": service,
                "iat": int(now),
                "nbf": int(now) - 5,
                "exp": int(now) + self.ttl,
                "jti": uuid.uuid4().hex,
                "uid": user_id,
                "key": key_id,
                "access": access,
            }
        )
        metrics.token_issued("registry")
        return token, self.ttl, now

    def issue_refresh(self, *, user_id: int, user: str, key_id: str | None, service: str) -> str:
        now = int(time.time())
        metrics.token_issued("refresh")
        return self._sign(
            {
                "iss": ISSUER,
                "sub": user,
                "aud": service,
                "iat": now,
                "exp": now + self.refresh_ttl,
                "jti": uuid.uuid4().hex,
                "typ": "refresh",
                "uid": user_id,
                "key": key_id,
            }
        )

    def _decode(self, token: str, service: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.keyring.public_key,
                algorithms=[ALGORITHM],  # fixed: `alg: none` or an HMAC confusion never verifies
                audience=service,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "aud", "iss", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        return claims

    def verify(self, token: str, service: str) -> TokenClaims:
        cached = self._verified.get(token)
        if cached is not None and cached.service == service:
            return cached
        claims = self._decode(token, service)
        if claims.get("typ") == "refresh":
            raise InvalidToken("a refresh token is not an access token")
        if claims.get("typ") in (API_TOKEN_TYPE, CONSOLE_SESSION_TYPE):
            raise InvalidToken("a management API token or console session is not a registry token")
        access: dict[tuple[str, str], frozenset[str]] = {}
        for entry in claims.get("access") or []:
            if isinstance(entry, dict):
                key = (str(entry.get("type")), str(entry.get("name")))
                access[key] = access.get(key, frozenset()) | frozenset(entry.get("actions") or [])
        verified = TokenClaims(
            int(claims["uid"]),
            str(claims["sub"]),
            claims.get("key"),
            service,
            float(claims["exp"]),
            access,
        )
        self._verified.put(token, verified, verified.expires_at)
        return verified

    def issue_api(
        self, *, user_id: int, user: str, key_id: str, ttl_seconds: int
    ) -> tuple[str, int]:
        """A management API token for an access key; returns (token, expiry as a Unix time).
        It works while the key does (checked on every request)."""
        issued = self._issue(
            API_AUDIENCE, API_TOKEN_TYPE, ttl_seconds, {"sub": user, "uid": user_id, "key": key_id}
        )
        metrics.token_issued("api")
        return issued

    def _issue(
        self, audience: str, token_type: str, ttl_seconds: int, claims: dict[str, Any]
    ) -> tuple[str, int]:
        """A token of `audience` and `token_type` with `claims`, for `ttl_seconds` from now:
        (token, expiry as a Unix time)."""
        now = int(time.time())
        expires = now + ttl_seconds
        token = self._sign(
            {
                **claims,
                "iss": ISSUER,
                "aud": audience,
                "iat": now,
                "nbf": now - 5,
                "exp": expires,
                "jti": uuid.uuid4().hex,
                "typ": token_type,
            }
        )
        return token, expires

    def verify_api(self, token: str) -> dict[str, Any]:
        """The claims of a valid management API token (InvalidToken otherwise)."""
        claims = self._decode(token, API_AUDIENCE)
        if claims.get("typ") != API_TOKEN_TYPE or not claims.get("key"):
            raise InvalidToken("not a management API token")
        return claims

    def issue_console_session(self, claims: dict[str, Any], ttl_seconds: int) -> tuple[str, int]:
        """A console session carried whole by its cookie, with `claims` (the user's): returns
        (token, expiry as a Unix time)."""
        return self._issue(CONSOLE_AUDIENCE, CONSOLE_SESSION_TYPE, ttl_seconds, claims)

    def verify_console_session(self, token: str) -> dict[str, Any]:
        """The claims of a valid console session token (InvalidToken otherwise)."""
        claims = self._decode(token, CONSOLE_AUDIENCE)
        if claims.get("typ") != CONSOLE_SESSION_TYPE:
            raise InvalidToken("not a console session")
        return claims

    def verify_refresh(self, token: str, service: str) -> dict[str, Any]:
        claims = self._decode(token, service)
        if claims.get("typ") != "refresh":
            raise InvalidToken("not a refresh token")
        return claims
