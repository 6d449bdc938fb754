"""Pulls without the router: a manifest or blob GET or HEAD goes straight to its handler.

Pulls are nearly all of a registry's requests, and for a cached manifest the handler's own
work is smaller than Starlette's around it (matching the path against the route list, the
exception middleware, the request/response wrapper). `PullFastPath` sits inside the pure-ASGI
middleware (request observer, limits, Host check, registry headers: they run for a pull as for
any request) and in front of Starlette's exception middleware and router. A GET or HEAD whose
path matches the registry's own blob or manifest route (the same `Route` objects, tried in the
router's order) is handed to that route's handler; the route is put in the scope as the router
does, so metrics and access log lines name the same route template. A registry error is
answered as the app's handler for it answers a GET. Every other request goes on to the router.

`pull_fast_path = false` turns it off (every request then goes through the router; the answers
are the same, tests/test_pull_fast_path.py checks that they are).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from berth.domain.errors import RegistryError

Handler = Callable[[Request], Awaitable[Callable[[Scope, Receive, Send], Awaitable[None]]]]
PULL_METHODS = frozenset({"GET", "HEAD"})
REGISTRY_PREFIX = "/v2/"


class PullFastPath:
    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        handlers: Sequence[Callable[..., object]],
        error_response: Callable[[RegistryError], Response],
    ) -> None:
        self.app = app
        # The pull routes in the router's order: which of them matches a path is what the
        # router would pick (no route before them answers under /v2/).
        self.routes = [
            route
            for route in routes
            if isinstance(route, Route)
            and route.endpoint in handlers
            and route.methods is not None
            and route.methods >= PULL_METHODS
        ]
        self.error_response = error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in PULL_METHODS
            or scope.get("root_path")  # mounted under a prefix: the router knows how to strip it
        ):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(REGISTRY_PREFIX):
            for route in self.routes:
                match = route.path_regex.match(path)
                if match is not None:
                    await self._answer(route, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(
        self, route: Route, params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = params
        handler: Handler = route.endpoint
        try:
            response = await handler(Request(scope, receive, send))
        except RegistryError as exc:
            response = self.error_response(exc)
        try:
            await response(scope, receive, send)
        except RegistryError as exc:  # raised before the response started (a blob gone since)
            await self.error_response(exc)(scope, receive, send)
