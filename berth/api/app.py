"""The management API: a FastAPI application mounted at /api/v1 of the server's Starlette app.

Its OpenAPI document is at /api/v1/openapi.json and its interactive documentation at
/api/v1/docs (served from this process: no CDN). Routers live one per module of this
package; a module listed in ROUTER_MODULES contributes its module-level `router` (an
`APIRouter`), and optional ones (being written alongside) are skipped while they are absent.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth import __version__
from berth.api import problems
from berth.api.bodies import JsonBodies
from berth.api.session import SESSION_COOKIE, ConsoleSessions
from berth.asgi_headers import adding_headers
from berth.config import Settings

MOUNT_PATH = "/api/v1"
# Routers in the order their endpoints appear in the document.
ROUTER_MODULES = (
    "auth",
    "session",
    "projects",
    "repositories",
    "images",
    "scans",
    "access",
    "gc",
    "retention",
    "usage",
    "users",
    "webhooks",
    "tag_rules",
    "uploads",
)
OPTIONAL_MODULES = frozenset({"gc", "usage"})
_DOCS_STATIC = Path(fastapi_offline.__file__).parent / "static"

DESCRIPTION = """\
Manage a Berth registry: projects, repositories, images and tags, access keys, members and
permissions, the audit log, garbage collection, usage and uploads in progress.

**Authentication**: HTTP Basic with an access key ID and secret access key (or a user name and
password), or `Authorization: Bearer` with a token from `POST /api/v1/auth/tokens`. The web console signs
in with `POST /api/v1/session` and then sends its session cookie; with it, POST, PUT, PATCH and
DELETE requests also need the session's `csrf_token` in the `X-CSRF-Token` header.

**Errors** are RFC 9457 problem documents (`application/problem+json`) whose `errors` list
names the request fields at fault.
"""


class PrivateAnswers:
    """Every answer of the API is private and current: no cache keeps one (some carry a secret
    shown once: a new access key's, a webhook's, a token), no page frames one (the
    interactive documentation runs requests with the browser's session), and no browser
    sniffs one into HTML (an SBOM download and many listings carry what pushes named)."""

    HEADERS = (
        (b"x-frame-options", b"DENY"),
        (b"content-security-policy", b"frame-ancestors 'none'"),
        (b"x-content-type-options", b"nosniff"),
    )
    NO_STORE = (b"cache-control", b"no-store")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The documentation's scripts and styles change only with the version: cacheable.
        static = scope["path"].startswith((f"{MOUNT_PATH}/docs/static/", "/docs/static/"))
        defaults = () if static else (self.NO_STORE,)
        await self.app(scope, receive, adding_headers(send, self.HEADERS, defaults))


class HeadAsGet:
    """HEAD is answered as GET without the body, as HTTP asks of a resource that takes GET
    (FastAPI's routes, unlike Starlette's, take only the methods they name)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        scope["method"] = "GET"  # in place: the request's log line and metrics name its route
        await self.app(scope, receive, without_body)


def _named_in_scope(route: BaseRoute, app: ASGIApp) -> ASGIApp:
    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = route
        await app(scope, receive, send)

    return answer


def name_plain_routes(api: FastAPI) -> None:
    """Put the API's plain Starlette routes (the OpenAPI document, the documentation's files)
    in the request's scope, as FastAPI's router does its own: the request metrics and log
    lines name a request by the route that answered it, and would say `unmatched`."""
    for route in api.routes:
        if isinstance(route, (Route, Mount)) and not isinstance(route, APIRoute):
            route.app = _named_in_scope(route, route.app)


def routers() -> list[APIRouter]:
    found = []
    for name in ROUTER_MODULES:
        qualified = f"berth.api.{name}"
        try:
            module = importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            if name in OPTIONAL_MODULES and exc.name == qualified:
                continue
            raise
        found.append(module.router)
    return found


def _with_settings(schema: dict[str, Any], api: FastAPI) -> dict[str, Any]:
    """State the bounds that are the server's settings (the document is built once the
    server runs; the defaults without one)."""
    services = getattr(api.state, "services", None)
    settings = services.settings if services is not None else Settings()
    traffic = schema["paths"]["/projects/{project}/traffic"]["get"]
    [days] = [p for p in traffic["parameters"] if p["name"] == "days"]
    days["schema"]["maximum"] = settings.traffic_retention_days
    expires_in = schema["components"]["schemas"]["TokenRequest"]["properties"]["expires_in"]
    for alternative in expires_in.get("anyOf", [expires_in]):
        if alternative.get("type") == "integer":
            alternative["maximum"] = settings.api_token_ttl
    return schema


def create_api() -> FastAPI:
    api = FastAPI(
        title="Berth management API",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        responses=problems.responses(401, 403, 422),
    )
    problems.install(api)
    api.add_middleware(JsonBodies)
    api.add_middleware(ConsoleSessions)
    api.add_middleware(PrivateAnswers)
    api.add_middleware(HeadAsGet)
    for router in routers():
        api.include_router(router)

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title,
                version=api.version,
                description=api.description,
                routes=api.routes,
                servers=[{"url": MOUNT_PATH}],
            )
            schema["components"] = schema.get("components") or {}
            schema["components"]["securitySchemes"] = {
                "accessKey": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "access key ID and secret access key (or user and password)",
                },
                "apiToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "a token from POST /api/v1/auth/tokens",
                },
                "consoleSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": "the web console's session (POST /api/v1/session); POST, "
                    "PUT, PATCH and DELETE also need its csrf_token in the X-CSRF-Token header",
                },
            }
            schema["security"] = [{"accessKey": []}, {"apiToken": []}, {"consoleSession": []}]
            api.openapi_schema = problems.document_problems(_with_settings(schema, api))
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    api.mount("/docs/static", StaticFiles(directory=_DOCS_STATIC), name="docs-static")

    @api.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title="Berth management API",
            swagger_js_url=f"{root}/docs/static/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/static/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/static/favicon.png",
        )

    name_plain_routes(api)
    return api
