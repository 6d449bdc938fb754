"""API tokens: exchange an access key for a bearer token (12 hours by default)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field

from berth.access.identify import Via
from berth.api.bodies import RequestBody
from berth.api.deps import CallerDep, ServicesDep
from berth.api.problems import FieldError, responses
from berth.auth.guard import client_address
from berth.domain.errors import Denied

router = APIRouter(prefix="/auth", tags=["authentication"])


class TokenRequest(RequestBody):
    expires_in: int | None = Field(
        None,
        ge=60,
        description="lifetime in seconds; at most (and by default) the server's api_token_ttl",
    )


class IssuedToken(BaseModel):
    token: str = Field(description="send as `Authorization: Bearer {token}`")
    token_type: str = "Bearer"
    expires_in: int = Field(description="seconds until it expires")
    expires_at: dt.datetime
    access_key_id: str


@router.post(
    "/tokens",
    status_code=201,
    responses=responses(429),
    openapi_extra={"security": [{"accessKey": []}]},
)
async def issue_token(
    request: Request,
    caller: CallerDep,
    services: ServicesDep,
    body: Annotated[TokenRequest | None, Body()] = None,
) -> IssuedToken:
    """A bearer token for the access key in the Basic credentials. It carries that key's
    rights and stops working as soon as the key does (disabled, deleted, expired, or its
    user left the project)."""
    principal = caller.principal
    if caller.via is not Via.ACCESS_KEY or principal.key_id is None:
        raise Denied(
            "API tokens are issued for access keys: authenticate with an access key ID and "
            "secret access key (HTTP Basic)"
        )
    limit = services.settings.api_token_ttl
    ttl = body.expires_in if body and body.expires_in is not None else limit
    if ttl > limit:
        raise FieldError("expires_in", f"at most {limit} seconds (api_token_ttl)")
    token, expires = services.tokens.issue_api(
        user_id=principal.user_id, user=principal.user, key_id=principal.key_id, ttl_seconds=ttl
    )
    await services.identity.audit.record(
        principal.user,
        "login",
        project_id=principal.key_project_id,
        target=principal.key_id,
        detail={"via": "api token"},
        client=client_address(request),
    )
    return IssuedToken(
        token=token,
        expires_in=ttl,
        expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
        access_key_id=principal.key_id,
    )
