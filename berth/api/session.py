"""The web console's sign-in: a session cookie for the management API, with CSRF protection.

`POST /session` checks a user name and password and answers with the session (and its CSRF
token) and a `berth_session` cookie (HttpOnly, SameSite=Strict, Path=/, Secure over https).
`ConsoleSessions`, a middleware in front of the API, turns that cookie into the caller (see
`deps.SESSION_SCOPE_KEY`) for requests without an `Authorization` header; for POST, PUT, PATCH
and DELETE it first requires the session's CSRF token in `X-CSRF-Token` and no cross-site
`Origin` or `Sec-Fetch-Site`, and answers 403 before the handler runs otherwise. A cross-site
POST, PUT, PATCH or DELETE is refused with any credentials, not only the cookie: a browser sends
the HTTP Basic user name and password it was given for the server with another site's form as
well. The cookie's token is never stored (its SHA-256 is) nor logged.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from berth.access.identify import SignInPath
from berth.api.bodies import RequestBody
from berth.api.deps import SESSION_SCOPE_KEY, ServicesDep, password_principal, unauthorized
from berth.api.problems import problem, responses
from berth.auth.guard import client_address
from berth.domain.errors import Denied, Unavailable
from berth.services.sessions import ConsoleSession

SESSION_COOKIE = "berth_session"
CSRF_HEADER = "X-CSRF-Token"
# The ConsoleSession of the request's cookie (for GET and DELETE /session).
SESSION_RECORD_KEY = "berth.console_session"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
logger = logging.getLogger(__name__)

router = APIRouter(prefix="/session", tags=["console session"])

# ---------------------------------------------------------------- same-site checks


def _host(scheme: str, host: str) -> str:
    """host[:port], lower case, without the scheme's default port."""
    scheme, host = scheme.lower(), host.lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and host.endswith(default):
        host = host[: -len(default)]
    return host


def cross_site_refusal(scope: Scope, headers: Headers) -> str | None:
    """Why a request is refused as cross-site (a foreign `Origin`, or `Sec-Fetch-Site:
    cross-site`); None when it is not.

    The Origin's host and port must be this server's (as the Host header names it). Its scheme
    is not compared: behind a proxy that ends TLS, the browser's https Origin reaches a server
    that itself speaks http, and the host alone already tells another site apart.
    """
    if headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        return "cross-site request refused (Sec-Fetch-Site: cross-site)"
    origin = headers.get("origin")
    if origin is None:
        return None
    own = _host(scope.get("scheme", "http"), headers.get("host", ""))
    scheme, separator, host = origin.strip().partition("://")
    if not separator or _host(scheme, host) != own:
        return f"cross-site request refused: Origin {origin[:200]!r} is not this server ({own})"
    return None


def _csrf_refusal(headers: Headers, session: ConsoleSession) -> str | None:
    sent = headers.get(CSRF_HEADER.lower())
    if sent and hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
        return None
    why = "it is missing" if not sent else "it does not match the session's"
    return (
        f"missing or wrong {CSRF_HEADER} header: {why}; requests that change something with "
        "the console's session must send its csrf_token (GET /api/v1/session) in it"
    )


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


# ---------------------------------------------------------------- the middleware


async def _refuse_write(refusal: str, scope: Scope, receive: Receive, send: Send) -> None:
    """403 before the handler runs, once the request's body is read: answered with the body
    unread, the server closed the connection, and a client that sent its next request on it
    saw it closed without an answer. The body is bounded in front of the API (berth/limits.py)."""
    more = True
    while more:
        message = await receive()
        more = message["type"] == "http.request" and message.get("more_body", False)
    await problem(403, refusal, "DENIED")(scope, receive, send)


class ConsoleSessions:
    """Authenticates API requests by the console's session cookie (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        if scope["method"] in UNSAFE_METHODS:
            # Whatever would authenticate it: a browser also sends the user name and password
            # it was given for this server (HTTP Basic, which the API offers a browser that
            # opens it) with another site's form, as it sends the cookie.
            refusal = cross_site_refusal(scope, connection.headers)
            if refusal:
                await _refuse_write(refusal, scope, receive, send)
                return
        token = connection.cookies.get(SESSION_COOKIE)
        services = getattr(scope["app"].state, "services", None)
        if (
            not token
            or services is None
            or "authorization" in connection.headers  # credentials win over the cookie
            or (scope["method"] == "POST" and _route_path(scope) == "/session")  # signing in
        ):
            await self.app(scope, receive, send)
            return
        try:
            session = await services.sessions.lookup(token)
        except Unavailable as exc:  # the database cannot be reached: try again shortly
            refused = problem(exc.status, exc.message, exc.code, headers=exc.headers)
            await refused(scope, receive, send)
            return
        except Exception:
            logger.exception("could not look up a console session")
            failed = problem(500, "the server failed to handle this request", "INTERNAL_ERROR")
            await failed(scope, receive, send)
            return
        if session is None:  # unknown or expired: not signed in
            await self.app(scope, receive, send)
            return
        if scope["method"] in UNSAFE_METHODS:
            refusal = _csrf_refusal(connection.headers, session)
            if refusal:
                await _refuse_write(refusal, scope, receive, send)
                return
        scope[SESSION_SCOPE_KEY] = session.principal
        scope[SESSION_RECORD_KEY] = session
        await self.app(scope, receive, send)


# ---------------------------------------------------------------- the routes


class Credentials(RequestBody):
    user: str = Field(min_length=1, max_length=64, description="user name")
    password: str = Field(min_length=1, max_length=1024)


class SessionInfo(BaseModel):
    """The signed-in console session."""

    user: str
    server_admin: bool = Field(description="the user administers the whole server")
    csrf_token: str = Field(
        description=f"send as the `{CSRF_HEADER}` header of every POST, PUT, PATCH and DELETE"
    )
    expires_at: dt.datetime


def _info(session: ConsoleSession) -> SessionInfo:
    return SessionInfo(
        user=session.user,
        server_admin=session.is_admin,
        csrf_token=session.csrf_token,
        expires_at=session.expires_at,
    )


def _cookie(request: Request, value: str, max_age: int) -> str:
    cookie = f"{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}"
    return cookie + "; Secure" if request.url.scheme == "https" else cookie


def _current(request: Request) -> ConsoleSession:
    session = request.scope.get(SESSION_RECORD_KEY)
    if not isinstance(session, ConsoleSession):
        raise unauthorized(
            request, "not signed in to the console (or the session ended): POST /session"
        )
    return session


async def same_site(request: Request) -> None:
    """Refuses login CSRF (before the body is parsed)."""
    refusal = cross_site_refusal(request.scope, request.headers)
    if refusal:
        raise Denied(refusal)


SessionDep = Annotated[ConsoleSession, Depends(_current)]
CONSOLE_SECURITY: dict[str, Any] = {"security": [{"consoleSession": []}]}


@router.post(
    "",
    status_code=201,
    dependencies=[Depends(same_site)],
    responses=responses(429),
    openapi_extra={"security": []},
)
async def sign_in(
    request: Request, response: Response, body: Credentials, services: ServicesDep
) -> SessionInfo:
    """Sign in to the console with a user name and password: sets the session cookie."""
    principal = await password_principal(
        services, request, body.user, body.password, SignInPath.CONSOLE
    )
    token, session = await services.sessions.sign_in(principal, request.cookies.get(SESSION_COOKIE))
    await services.identity.audit.record(
        principal.user, "login", detail={"via": "console"}, client=client_address(request)
    )
    response.headers.append("set-cookie", _cookie(request, token, services.settings.session_ttl))
    response.headers["cache-control"] = "no-store"
    return _info(session)


@router.get("", openapi_extra=CONSOLE_SECURITY)
async def current_session(session: SessionDep, response: Response) -> SessionInfo:
    """The console session of the request's cookie (401 when there is none)."""
    response.headers["cache-control"] = "no-store"
    return _info(session)


@router.delete("", status_code=204, response_class=Response, openapi_extra=CONSOLE_SECURITY)
async def sign_out(request: Request, session: SessionDep, services: ServicesDep) -> Response:
    """Sign out: ends the session and clears its cookie."""
    await services.sessions.delete(session.id)
    answer = Response(status_code=204)
    answer.headers.append("set-cookie", _cookie(request, "", 0))
    return answer
