"""The Docker token endpoint: GET with Basic credentials, and the OAuth2 POST form."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from berth.access.identify import SignInPath, basic_credentials
from berth.access.policy import Principal
from berth.access.scopes import Scope, grant, parse_scopes, scope_string
from berth.auth.guard import (
    TOKEN_PATH,
    check_login_host,
    client_address,
    note_principal,
    service_name,
)
from berth.domain.errors import RegistryError, Unauthorized, Unsupported
from berth.domain.names import split_name
from berth.state import Services

MAX_FORM_BYTES = 64 * 1024


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _grant(
    services: Services, request: Request, principal: Principal | None, scopes: list[Scope]
) -> list[dict[str, Any]]:
    """The intersection of what was asked for and what the caller may do."""
    host_project = services.host_project(request.headers.get("host"))

    async def actions_on(repository: str) -> frozenset[str] | None:
        try:
            name = split_name(repository, host_project)
        except RegistryError:
            return None
        project_id, repo = await services.repositories.lookup(name.project, name.repository)
        if project_id is None:
            return None
        return await services.identity.roles.actions(principal, project_id, repo)

    return await grant(principal, scopes, actions_on)


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
    client = client_address(request)
    try:
        principal = await services.authenticator.login_key(
            key_id, secret, client, SignInPath.TOKEN_ENDPOINT
        )
        try:
            await check_login_host(services, request, principal)
        except Unauthorized as exc:
            # The key is right but not for this host: login_key could not know that.
            await services.authenticator.record_failed_key_login(
                key_id, exc.message, client, SignInPath.TOKEN_ENDPOINT
            )
            raise
    except Unauthorized as exc:
        exc.headers["WWW-Authenticate"] = 'Basic realm="Berth token service"'
        raise
    note_principal(request, principal)
    await services.identity.audit.record(
        principal.user,
        "login",
        project_id=principal.key_project_id,
        target=key_id,
        client=client,
    )
    return principal


def _refresh_token(services: Services, principal: Principal, service: str) -> str:
    """A refresh token for the signed-in principal (the clients' "offline" token)."""
    return services.tokens.issue_refresh(
        user_id=principal.user_id, user=principal.user, key_id=principal.key_id, service=service
    )


def _check_service(request: Request, requested: str | None) -> str:
    service = service_name(request)
    if requested and requested != service:
        raise Unauthorized(f"this token service is {service!r}, not {requested!r}")
    return service


async def get_token(request: Request) -> Response:
    services = _services(request)
    params = request.query_params
    service = _check_service(request, params.get("service"))
    scopes = parse_scopes(params.getlist("scope"))  # refused before a password is checked
    principal = None
    header = request.headers.get("authorization")
    if header:
        credentials = basic_credentials(header)
        if credentials is None:
            raise Unauthorized("send the access key ID and secret with HTTP Basic authentication")
        principal = await _login(services, request, *credentials)
    access = await _grant(services, request, principal, scopes)
    body = _token_body(services, principal, service, access)
    if principal is not None and params.get("offline_token") == "true":
        body["refresh_token"] = _refresh_token(services, principal, service)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def post_token(request: Request) -> Response:
    services = _services(request)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Unsupported("token request form is too large", status=413)
    field = dict(parse_qsl(body.decode(errors="replace")))
    service = _check_service(request, field.get("service"))
    grant_type = field.get("grant_type")
    scopes = parse_scopes([field.get("scope", "")])  # refused before a password is checked
    if grant_type == "password":
        principal = await _login(
            services, request, field.get("username", ""), field.get("password", "")
        )
    elif grant_type == "refresh_token":
        principal = await services.authenticator.refresh(field.get("refresh_token", ""), service)
        await check_login_host(services, request, principal)
    else:
        raise Unsupported("grant_type must be password or refresh_token", status=400)
    access = await _grant(services, request, principal, scopes)
    token = _token_body(services, principal, service, access)
    token["scope"] = scope_string(access)
    if grant_type == "refresh_token":
        token["refresh_token"] = field["refresh_token"]
    elif field.get("access_type") == "offline":
        token["refresh_token"] = _refresh_token(services, principal, service)
    return JSONResponse(token, headers={"Cache-Control": "no-store"})


routes = [
    Route(TOKEN_PATH, get_token, methods=["GET"]),
    Route(TOKEN_PATH, post_token, methods=["POST"]),
]
