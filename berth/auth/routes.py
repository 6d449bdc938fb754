"""The Docker token endpoint: GET with Basic credentials, and the OAuth2 POST form."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from berth.auth.guard import (
    TOKEN_PATH,
    authenticate_basic,
    basic_credentials,
    check_login_host,
    client_address,
    service_name,
)
from berth.auth.policy import Principal
from berth.auth.tokens import InvalidToken
from berth.domain.errors import RegistryError, Unauthorized, Unsupported
from berth.domain.names import split_name
from berth.domain.scopes import Scope, parse_scopes
from berth.services.identity import NOT_A_KEY_ID, UNVERIFIED_ACTOR, has_key_id_format
from berth.state import Services

EVERY_ACTION = frozenset({"pull", "push", "delete"})
MAX_FORM_BYTES = 64 * 1024


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _grant(
    services: Services, request: Request, principal: Principal | None, scopes: list[Scope]
) -> list[dict[str, Any]]:
    """The intersection of what was asked for and what the caller may do."""
    host_project = services.host_project(request.headers.get("host"))
    access = []
    for scope in scopes:
        if scope.type == "registry" and scope.name == "catalog":
            if principal is not None:
                access.append({"type": "registry", "name": "catalog", "actions": ["*"]})
            continue
        if scope.type != "repository":
            continue
        try:
            name = split_name(scope.name, host_project)
        except RegistryError:
            continue
        project_id, repo = await services.repositories.lookup(name.project, name.repository)
        if project_id is None:
            continue
        requested = EVERY_ACTION if "*" in scope.actions else scope.actions
        granted = requested & await services.identity.actions(principal, project_id, repo)
        if granted:
            access.append({"type": "repository", "name": scope.name, "actions": sorted(granted)})
    return access


def _token_body(
    services: Services, principal: Principal | None, service: str, access: list[dict[str, Any]]
) -> dict[str, Any]:
    token, expires_in, issued_at = services.tokens.issue(
        user_id=principal.user_id if principal else 0,
        user=principal.user if principal else "anonymous",
        key_id=principal.key_id if principal else None,
        service=service,
        access=access,
    )
    return {
        "token": token,
        "access_token": token,
        "expires_in": expires_in,
        "issued_at": dt.datetime.fromtimestamp(issued_at, dt.UTC).isoformat(),
    }


async def _login(services: Services, request: Request, key_id: str, secret: str) -> Principal:
    try:
        principal = await authenticate_basic(services, request, key_id, secret)
        await check_login_host(services, request, principal)
    except Unauthorized as exc:
        well_formed = has_key_id_format(key_id)
        await services.identity.record(
            UNVERIFIED_ACTOR,
            "login.failed",
            project_id=await services.identity.key_project_id(key_id) if well_formed else None,
            target=key_id if well_formed else NOT_A_KEY_ID,
            detail={"reason": exc.message},
            client=client_address(request),
        )
        exc.headers["WWW-Authenticate"] = 'Basic realm="Berth token service"'
        raise
    await services.identity.record(
        principal.user,
        "login",
        project_id=principal.key_project_id,
        target=key_id,
        client=client_address(request),
    )
    return principal


def _check_service(request: Request, requested: str | None) -> str:
    service = service_name(request)
    if requested and requested != service:
        raise Unauthorized(f"this token service is {service!r}, not {requested!r}")
    return service


async def get_token(request: Request) -> Response:
    services = _services(request)
    params = request.query_params
    service = _check_service(request, params.get("service"))
    principal = None
    header = request.headers.get("authorization")
    if header:
        credentials = basic_credentials(header)
        if credentials is None:
            raise Unauthorized("send the access key ID and secret with HTTP Basic authentication")
        principal = await _login(services, request, *credentials)
    access = await _grant(services, request, principal, parse_scopes(params.getlist("scope")))
    body = _token_body(services, principal, service, access)
    if principal is not None and params.get("offline_token") == "true":
        body["refresh_token"] = services.tokens.issue_refresh(
            user_id=principal.user_id,
            user=principal.user,
            key_id=principal.key_id,
            service=service,
        )
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def post_token(request: Request) -> Response:
    services = _services(request)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Unsupported("token request form is too large", status=413)
    field = dict(parse_qsl(body.decode(errors="replace")))
    service = _check_service(request, field.get("service"))
    grant_type = field.get("grant_type")
    if grant_type == "password":
        principal = await _login(
            services, request, field.get("username", ""), field.get("password", "")
        )
    elif grant_type == "refresh_token":
        try:
            claims = services.tokens.verify_refresh(field.get("refresh_token", ""), service)
        except InvalidToken:
            raise Unauthorized("the refresh token is invalid or expired; log in again") from None
        key_id = claims.get("key")
        if not key_id or not await services.identity.key_is_active(key_id):
            raise Unauthorized("the access key behind this refresh token no longer works")
        principal = await services.identity.principal_for_token(
            int(claims["uid"]), str(claims["sub"]), key_id
        )
        await check_login_host(services, request, principal)
    else:
        raise Unsupported("grant_type must be password or refresh_token", status=400)
    scopes = parse_scopes([field.get("scope", "")])
    access = await _grant(services, request, principal, scopes)
    token = _token_body(services, principal, service, access)
    token["scope"] = " ".join(f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access)
    if grant_type == "refresh_token":
        token["refresh_token"] = field["refresh_token"]
    elif field.get("access_type") == "offline":
        token["refresh_token"] = services.tokens.issue_refresh(
            user_id=principal.user_id,
            user=principal.user,
            key_id=principal.key_id,
            service=service,
        )
    return JSONResponse(token, headers={"Cache-Control": "no-store"})


routes = [
    Route(TOKEN_PATH, get_token, methods=["GET"]),
    Route(TOKEN_PATH, post_token, methods=["POST"]),
]
