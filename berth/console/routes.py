"""Serving the console: its files under /console, and `/` sending browsers there.

The console is a single page whose screens are addressed by the URL fragment
(`/console/#/projects/acme/repositories`), so the server only serves files. Every response
carries a strict Content-Security-Policy: the page loads nothing from elsewhere, runs no
inline script and cannot be framed.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from berth.asgi_headers import adding_headers

STATIC_DIR = Path(__file__).parent / "static"
PATH = "/console"

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    # Files change with the server version: revalidate (ETag) rather than serve a stale page.
    (b"cache-control", b"no-cache"),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, adding_headers(send, SECURITY_HEADERS))


async def root(request: Request) -> Response:
    """`/` of any host of the server, a project's registry host included, opens the console
    (on the same host: its certificate is the one the browser already trusts)."""
    return RedirectResponse(f"{PATH}/", status_code=302)


async def console_without_slash(request: Request) -> Response:
    """`/console` to `/console/`, by a relative address: Starlette's own redirect names the
    request's Host, which a client (or whoever poisons a shared cache) chooses."""
    return RedirectResponse(f"{PATH}/", status_code=307)


def routes() -> list[BaseRoute]:
    return [
        Route("/", root, methods=["GET", "HEAD"]),
        Route(PATH, console_without_slash, methods=["GET", "HEAD"]),
        Mount(PATH, app=SecurityHeaders(StaticFiles(directory=STATIC_DIR, html=True))),
    ]
