"""The ASGI application: the registry API, the management API, the console and operational
endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from berth.access.forwarded import ForwardedClient
from berth.api.app import MOUNT_PATH, create_api
from berth.api.problems import problem
from berth.asgi_headers import adding_headers
from berth.auth.routes import routes as auth_routes
from berth.config import Settings
from berth.config_loading import load_settings
from berth.console.routes import routes as console_routes
from berth.domain.errors import HostInvalid, RegistryError, Unsupported
from berth.domain.names import normalized_host
from berth.jobs.orphans import when_orphaned
from berth.limits import ANSWERED, RequestLimits
from berth.observability import logs, metrics
from berth.observability.requests import RequestObserver
from berth.registry.fastpath import PullFastPath
from berth.registry.routes import error_response, get_blob, get_manifest
from berth.registry.routes import routes as registry_routes
from berth.scrape import ScrapeFigures, metrics_endpoint, start_listener
from berth.state import Services

logger = logging.getLogger("berth.server")

API_VERSION_HEADER = (b"docker-distribution-api-version", b"registry/2.0")
# /v2 serves back what clients pushed (blobs, manifests): a browser must not sniff it into HTML.
NOSNIFF_HEADER = (b"x-content-type-options", b"nosniff")


class RegistryHeaders:
    """Adds `Docker-Distribution-API-Version` and `X-Content-Type-Options: nosniff` to every /v2
    response, and `X-Berth-Node` (which node answered, behind a load balancer) to every
    response when the node has a name (pure ASGI, the header lists made once: cheap)."""

    def __init__(self, app: ASGIApp, node: str = "") -> None:
        self.app = app
        self.node_header = [(b"x-berth-node", node.encode())] if node else []
        self.registry_headers = [*self.node_header, API_VERSION_HEADER, NOSNIFF_HEADER]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = self.registry_headers if scope["path"].startswith("/v2") else self.node_header
        if not added:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, adding_headers(send, added))


# Paths whose answer does not depend on the host addressed: a request to one without a Host
# header is answered (load balancers' health checks, HTTP/1.0 probes and kubelet often send
# none; granian hands such a request on with an empty Host).
HOST_INDEPENDENT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class HostCheck:
    """Refuses a request whose Host header is not a host name or address (with an optional
    port) before anything uses it (token realm and service, project routing, links), and
    hands the rest on with the host in lowercase: host names are case-insensitive. A request
    without a Host (an empty one) to a path of HOST_INDEPENDENT_PATHS is handed on without one.
    With
    `trust_forwarded_proto`, the scheme is the one a proxy in front names in
    X-Forwarded-Proto (TLS ends there), so the token realm sends clients back over HTTPS."""

    def __init__(self, app: ASGIApp, trust_forwarded_proto: bool = False) -> None:
        self.app = app
        self.trust_forwarded_proto = trust_forwarded_proto

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        if self.trust_forwarded_proto:
            _take_forwarded_proto(scope, headers)
        hosts = [value for name, value in headers if name == b"host"]
        if hosts == [b""] and scope["path"] in HOST_INDEPENDENT_PATHS:
            scope["headers"] = [(name, value) for name, value in headers if name != b"host"]
            hosts = []
        if not hosts:
            await self.app(scope, receive, send)
            return
        host = normalized_host(hosts[0].decode("latin-1")) if len(hosts) == 1 else None
        if host is None:
            await _bad_host(scope)(scope, receive, send)
            return
        if host.encode() != hosts[0]:
            # In place, not on a copy: the middleware outside reads flags the app sets in the
            # scope (limits.ANSWERED).
            scope["headers"] = [
                (name, host.encode() if name == b"host" else value) for name, value in headers
            ]
        await self.app(scope, receive, send)


def _take_forwarded_proto(scope: Scope, headers: list[tuple[bytes, bytes]]) -> None:
    for name, value in headers:
        if name == b"x-forwarded-proto":
            proto = value.split(b",", 1)[0].strip().lower()
            if proto in (b"http", b"https"):
                scope["scheme"] = proto.decode()
            return


def _bad_host(scope: Scope) -> Response:
    message = (
        "the Host header must be one host name or IP address, with an optional port "
        "(e.g. demo.kr-central-2.kcr.dev or 127.0.0.1:5000)"
    )
    path: str = scope.get("path", "")
    if path.startswith(("/v2", "/auth")):
        return error_response(HostInvalid(message))
    if path.startswith(MOUNT_PATH):
        return problem(400, message, HostInvalid.code)
    return PlainTextResponse(message + "\n", status_code=400)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    """503 while the database or the blob store cannot be reached, or the node is stopping
    (`drain_on_sigterm`): take the node out."""
    if request.app.state.draining:
        return PlainTextResponse("not ready: stopping (shutdown_drain)\n", status_code=503)
    services: Services = request.app.state.services
    problems = await services.readiness.problems()
    if problems:
        return PlainTextResponse(f"not ready: {'; '.join(problems)}\n", status_code=503)
    return PlainTextResponse("ready")


# A refused upload's unread body is drained up to this much and for this long, so the client
# (still sending) reads the error instead of a broken connection; past either, the connection
# is closed: a client trickling a body that is refused anyway does not hold it.
DRAIN_LIMIT = 256 * 1024 * 1024
DRAIN_SECONDS = 5.0


async def _registry_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    if request.method in ("PUT", "PATCH", "POST"):
        request.scope[ANSWERED] = True
        with contextlib.suppress(Exception):  # consumed already, or the client went away
            drained = 0
            async with asyncio.timeout(DRAIN_SECONDS):
                async for chunk in request.stream():
                    drained += len(chunk)
                    if drained > DRAIN_LIMIT:
                        break
    return error_response(exc)


async def _unrouted(request: Request, exc: Exception) -> Response:
    """A path no route took, in the format of the surface it is under. Starlette's `path`
    convertor (the API's mount, `/v2/{name:path}`) matches `.*`, which stops at a newline: a
    path with `%0A` in it passes them all by and would get the router's plain-text 404."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if path == MOUNT_PATH or path.startswith(f"{MOUNT_PATH}/"):
        return problem(404, f"no API endpoint at {path}", "NOT_FOUND")
    if path == "/v2" or path.startswith("/v2/"):
        return await _registry_error(
            request, Unsupported(f"no registry endpoint at {path}", status=404)
        )
    return PlainTextResponse(exc.detail, exc.status_code, headers=exc.headers)


def drain_on_sigterm(app: Starlette, seconds: float) -> None:
    """On SIGTERM, keep serving for `seconds` with /readyz answering 503 (`app.state.draining`),
    then stop as granian stops on SIGINT: no new connections, the requests in progress
    finished, the idle keep-alive connections closed. A balancer's health check takes the node
    out during the drain, so it sends nothing on a connection the node is about to close (a
    PATCH or PUT sent just then would fail: not retried, as its body is not kept).

    granian's worker stops on SIGTERM and SIGINT through the event loop's signal handlers, set
    before the app's lifespan starts: this replaces SIGTERM's, and SIGINT keeps granian's."""
    if seconds <= 0:
        return
    loop = asyncio.get_running_loop()

    def stop() -> None:
        logger.info("stopping: the drain (shutdown_drain) is over")
        os.kill(os.getpid(), signal.SIGINT)

    def on_sigterm() -> None:
        if app.state.draining:
            return  # the supervisor passes systemd's SIGTERM on: a second one
        app.state.draining = True
        logger.info(
            "SIGTERM: /readyz answers 503 for %g s (shutdown_drain) while requests are still "
            "served, then this worker stops",
            seconds,
        )
        loop.call_later(seconds, stop)

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (ValueError, RuntimeError):  # not the main thread (an app served in a test's thread)
        logger.debug("no drain on SIGTERM: the app does not run in the main thread")


# How often a worker checks that the process that started it still runs, and how long it
# gives its own graceful stop once that one is gone before it exits anyway.
ORPHAN_STOP_SECONDS = 30.0


def stop_when_orphaned() -> threading.Event:
    """Stop this worker when its parent (granian's main process, or berth.supervisor's) dies:
    killed with SIGKILL (runit, supervisord, `kill -9`), it cannot stop its workers, which
    would keep serving on the port, so that the next `berth serve` is refused ("address ...
    already in use"). The worker sends itself SIGINT: granian's graceful stop (the requests in
    progress finished) and the lifespan's shutdown, without the drain (shutdown_drain), which
    would only keep the port from the node that replaces this one; past ORPHAN_STOP_SECONDS it
    exits at once. Set the returned event to stop watching."""

    def stop(parent: int) -> None:
        logger.warning(
            "the server's main process (pid %d) is gone: this worker stops (within %g s)",
            parent,
            ORPHAN_STOP_SECONDS,
        )
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(ORPHAN_STOP_SECONDS)  # a daemon thread: gone with the process once stopped
        logger.error("this worker did not stop within %g s: it exits now", ORPHAN_STOP_SECONDS)
        os._exit(1)

    return when_orphaned(stop, "berth-orphan-watch")


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    logs.configure(settings.log_format, settings.log_level, settings.node_name)
    metrics.set_enabled(settings.metrics)
    api = create_api()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics.forget_dead_processes()  # a worker restarted: its predecessor's gauges go
        metrics.start_known_series(
            s3_cache=settings.storage == "s3" and settings.s3_cache_dir is not None
        )
        services = Services.build(settings, serving=True)
        services.start()
        app.state.services = services
        api.state.services = services
        app.state.scrape_figures = figures = ScrapeFigures(services)
        listener = await start_listener(figures)
        drain_on_sigterm(app, settings.shutdown_drain)
        orphan_watch = stop_when_orphaned()
        flushing = [
            asyncio.create_task(metrics.flush_periodically()),
            asyncio.create_task(logs.flush_periodically()),
        ]
        try:
            yield
        finally:
            orphan_watch.set()
            for task in flushing:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if listener is not None:
                listener.close()
            await services.close()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            *auth_routes,
            *registry_routes,
            Mount(MOUNT_PATH, app=api),  # after /v2: the registry's hot path is matched first
            *console_routes(),
        ],
        exception_handlers={RegistryError: _registry_error, 404: _unrouted},
        lifespan=lifespan,
    )
    app.state.draining = False
    if settings.pull_fast_path:
        # Innermost: pulls skip only Starlette's exception middleware and router.
        app.add_middleware(
            PullFastPath,
            routes=registry_routes,
            handlers=(get_blob, get_manifest),
            error_response=error_response,
        )
    app.add_middleware(RegistryHeaders, node=settings.node_name)
    app.add_middleware(HostCheck, trust_forwarded_proto=settings.trust_forwarded_proto)
    # Added last, so it runs first: bodies are bounded before any route or authentication.
    app.add_middleware(
        RequestLimits,
        body_read_timeout=settings.body_read_timeout,
        max_requests_per_client=settings.max_requests_per_client,
    )
    # Outermost: every answer, refusals of the limits included, is counted, logged and given
    # its request ID.
    app.add_middleware(RequestObserver)
    if settings.trusted_proxies:
        # Before everything that reads the client's address (logs and limits included).
        app.add_middleware(ForwardedClient, proxies=settings.trusted_proxy_networks)
    return app
