"""Every request counted, timed and logged, with a request ID.

`RequestObserver` is the outermost middleware, but for `berth.access.forwarded`'s when proxies are
trusted (pure ASGI, so a pull pays a few microseconds):
it takes the client's `X-Request-ID` when it is a sane token, else makes one and sends it back
as `X-Request-ID`. The error renderers (the registry's OCI errors, the API's problems, the
limits' refusals) put it into their JSON bodies as a top-level `request_id` member that clients
ignore and people can quote (`with_request_id`): this layer reads no response body.
When the response is done it reports the request to the metrics and writes one log line: the
caller (access key ID or user name, never a secret) and project that the surfaces noted in the
scope (`note`), the route template (never the raw path in metrics), status, bytes and duration.
"""

from __future__ import annotations

import os
import re
import time
from contextvars import ContextVar
from typing import Any

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.observability import logs, metrics

REQUEST_ID = "berth.request_id"
CALLER = "berth.caller"
PROJECT = "berth.project"
HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:@+=-]{1,128}")
# The ID of the request this task (or a thread it handed work to) is answering: the error
# renderers are called far from the scope.
_current_id: ContextVar[str | None] = ContextVar("berth.request_id", default=None)


def note(scope: Scope, *, caller: str | None = None, project: str | None = None) -> None:
    """Say who is calling and which project the request is about, for its log line."""
    if caller is not None:
        scope[CALLER] = caller
    if project is not None:
        scope[PROJECT] = project


def request_id(scope: Scope) -> str | None:
    value = scope.get(REQUEST_ID)
    return value if isinstance(value, str) else None


def with_request_id(document: dict[str, Any]) -> dict[str, Any]:
    """An error document with the ID of the request being answered (as is outside one)."""
    rid = _current_id.get()
    if rid is not None:
        document["request_id"] = rid
    return document


def route_template(scope: Scope) -> str:
    """The template of the route that answered (`/v2/{name:path}/manifests/{reference}`),
    with the prefix of the mount it is in; `unmatched` for paths no route matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if route is None or path is None:
        return metrics.UNMATCHED
    if isinstance(route, Mount) and route.routes:
        return metrics.UNMATCHED  # a mount of routes none of which matched
    root: str = scope.get("root_path", "")
    app_root = scope.get("app_root_path", "")
    if app_root and root.startswith(app_root):
        root = root[len(app_root) :]
    if isinstance(route, Mount):
        # A mount of files (the console's, the API documentation's): the root path is the
        # mount's own prefix by now.
        return f"{root}/{{path:path}}"
    return f"{root}{path}"


def _incoming_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == HEADER:
            if _SANE_ID.fullmatch(value):
                return str(value.decode())
            break
    return os.urandom(16).hex()


class RequestObserver:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = _incoming_id(scope)
        scope[REQUEST_ID] = rid
        current = _current_id.set(rid)
        rid_header = rid.encode()
        status = 0
        sent = 0
        received = 0
        start_headers: list[tuple[bytes, bytes]] = []

        async def observed_send(message: Message) -> None:
            nonlocal status, sent, start_headers
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                # A new list: a response object may be sent again (its list is its own).
                start_headers = [*message.get("headers", ()), (HEADER, rid_header)]
                message["headers"] = start_headers
            elif kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.pathsend":
                sent += _content_length(start_headers)
            await send(message)

        app_receive = receive
        if scope["method"] not in ("GET", "HEAD"):

            async def counted_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                return message

            app_receive = counted_receive
        try:
            await self.app(scope, app_receive, observed_send)
        except BaseException:
            if status == 0:
                status = 500
            raise
        finally:
            _current_id.reset(current)
            seconds = time.perf_counter() - started
            path: str = scope["path"]
            surface = metrics.surface_of(path)
            route = route_template(scope)
            metrics.request_done(surface, route, scope["method"], status, seconds, received, sent)
            if logs.access.enabled:
                _log(scope, rid, surface, route, status, received, sent, seconds)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The length of a file handed to the server (ASGI pathsend): its Content-Length."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def _log(
    scope: Scope,
    rid: str,
    surface: str,
    route: str,
    status: int,
    received: int,
    sent: int,
    seconds: float,
) -> None:
    client = scope.get("client")
    logs.access.write(
        {
            "request_id": rid,
            "method": scope["method"],
            "path": scope["path"],
            "route": route,
            "surface": surface,
            "status": status,
            "received_bytes": received,
            "sent_bytes": sent,
            "duration_ms": round(seconds * 1000, 3),
            "caller": scope.get(CALLER),
            "project": scope.get(PROJECT),
            "client": client[0] if client else None,
        }
    )
