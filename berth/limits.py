"""Request limits in front of every route: how large a body may be, how long a client may take
to send it, and how many requests one client address may have in flight.

They act before routing and authentication, so an anonymous client cannot make the server
buffer a large body or hold its connections with a body it trickles. Bodies of the registry's
upload routes are streamed to disk by the routes themselves (which also bound manifests); every
other body is a small form or JSON document and is refused past `SMALL_BODY_LIMIT`.

A client that goes away mid-request is expected (docker cancels pushes, networks drop): it is
logged as one short line, not as a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.api.problems import PROBLEM_TYPE, problem_body
from berth.domain.errors import RegistryError, RequestTimeout, SizeInvalid, TooManyRequests
from berth.observability.requests import with_request_id

logger = logging.getLogger("berth.requests")

# A token form, a console sign-in or a management API document is a few kB.
SMALL_BODY_LIMIT = 64 * 1024
REGISTRY_PREFIX = "/v2/"
# Set in the scope by a route that has answered already and only drains the body it refuses:
# a body timeout then ends the drain without replacing that answer.
ANSWERED = "berth.answered"
API_PREFIX = "/api/v1"
TRANSPORT_CLOSED = "ASGI transport closed"


def body_limit(path: str) -> int | None:
    """The largest body a request to `path` may carry; None where the route bounds it."""
    return None if path.startswith(REGISTRY_PREFIX) else SMALL_BODY_LIMIT


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


def _may_carry_body(scope: Scope) -> bool:
    """Whether a request may carry a body that some route reads: any method but GET and HEAD.
    (Headers cannot tell: an HTTP/2 body needs neither Content-Length nor Transfer-Encoding.)"""
    return scope["method"] not in ("GET", "HEAD")


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _refusal_messages(scope: Scope, refusal: RegistryError) -> list[Message]:
    """The refusal in the format of the surface asked: an RFC 9457 problem on the management
    API, an OCI error everywhere else (the registry and its token endpoint). These answers are
    sent before routing, so not through the API's or the registry's error handlers, but the
    documents are theirs."""
    path: str = scope["path"]
    if path.startswith(API_PREFIX):
        document = problem_body(refusal.status, refusal.message, refusal.code)
        media_type = PROBLEM_TYPE.encode()
    else:
        document = refusal.body()
        media_type = b"application/json"
    body = json.dumps(with_request_id(document)).encode()
    headers = [
        (b"content-type", media_type),
        (b"content-length", str(len(body)).encode()),
    ]
    if scope.get("http_version", "1.1").startswith("1"):
        # The rest of the body is not read: the connection cannot carry another request.
        # (HTTP/2 forbids the header: the stream alone ends.)
        headers.append((b"connection", b"close"))
    headers.extend(
        (name.lower().encode(), value.encode()) for name, value in refusal.headers.items()
    )
    return [
        {"type": "http.response.start", "status": refusal.status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


class RequestLimits:
    """Pure ASGI middleware enforcing body size, body read time and requests per address."""

    def __init__(
        self, app: ASGIApp, *, body_read_timeout: float, max_requests_per_client: int
    ) -> None:
        self.app = app
        self.body_read_timeout = body_read_timeout
        self.max_requests_per_client = max_requests_per_client
        self._in_flight: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        client = _client(scope)
        limit = body_limit(path)
        declared = _declared_length(scope)
        if limit is not None and declared is not None and declared > limit:
            await self._refuse(send, scope, _too_large(limit))
            return
        in_flight = self._in_flight.get(client, 0)
        if self.max_requests_per_client and in_flight >= self.max_requests_per_client:
            refusal = TooManyRequests(
                f"too many requests in progress from {client} (at most "
                f"{self.max_requests_per_client} at once); try again when some have finished",
            )
            refusal.headers["Retry-After"] = "1"
            await self._refuse(send, scope, refusal)
            return
        self._in_flight[client] = in_flight + 1
        try:
            if _may_carry_body(scope):
                await self._guarded(scope, receive, send, path, client, limit)
            else:
                # No body any route reads (every pull): nothing to wrap on the hot path.
                await self._unguarded(scope, receive, send, client)
        finally:
            remaining = self._in_flight[client] - 1
            if remaining:
                self._in_flight[client] = remaining
            else:
                del self._in_flight[client]

    async def _unguarded(self, scope: Scope, receive: Receive, send: Send, client: str) -> None:
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            _log_disconnect(scope, client)
        except Exception as exc:
            if not _transport_closed(exc):
                raise
            _log_disconnect(scope, client)

    async def _guarded(
        self, scope: Scope, receive: Receive, send: Send, path: str, client: str, limit: int | None
    ) -> None:
        refusal: RegistryError | None = None
        body_done = False
        received = 0
        started = False
        # A small body must arrive whole within the timeout; an upload may take as long as it
        # needs but may not pause longer than the timeout between two chunks.
        deadline = time.monotonic() + self.body_read_timeout if limit is not None else None

        async def guarded_receive() -> Message:
            nonlocal refusal, body_done, received
            if refusal is not None:
                return {"type": "http.disconnect"}
            if body_done:  # the app waits for the client to go away: no deadline
                return await receive()
            wait = self.body_read_timeout
            if deadline is not None:
                wait = max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(wait):
                    message = await receive()
            except TimeoutError:
                refusal = RequestTimeout(
                    f"the request body did not arrive within {self.body_read_timeout:g} seconds",
                )
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit is not None and received > limit:
                    refusal = _too_large(limit)
                    return {"type": "http.disconnect"}
                body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refusal is not None and not started and not scope.get(ANSWERED):
                return  # the refusal is answered below, not the app's reaction to it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except ClientDisconnect:
            if refusal is None:
                _log_disconnect(scope, client)
                # The body ended before its Content-Length: a client that only closed its
                # sending side still reads the answer (else granian's plain-text 500).
                refusal = SizeInvalid(
                    f"the request body ended after {received} bytes, before the end its "
                    "Content-Length (or chunked encoding) announced; nothing of it was stored"
                )
        except Exception as exc:
            if refusal is not None:  # the app's reaction to the refusal; the refusal answers
                logger.debug("after refusing %s %s: %r", scope["method"], path, exc)
            elif _transport_closed(exc):
                _log_disconnect(scope, client)
            else:
                raise
        if refusal is not None and not started:
            await self._refuse(send, scope, refusal)

    @staticmethod
    async def _refuse(
        send: Callable[[Message], Awaitable[None]],
        scope: Scope,
        refusal: RegistryError,
    ) -> None:
        try:
            for message in _refusal_messages(scope, refusal):
                await send(message)
        except (OSError, RuntimeError) as exc:  # the client is gone already
            if isinstance(exc, RuntimeError) and not _transport_closed(exc):
                raise


def _too_large(limit: int) -> RegistryError:
    return SizeInvalid(
        f"the request body is larger than this endpoint takes ({limit} bytes)", status=413
    )


def _transport_closed(exc: BaseException) -> bool:
    """granian's error for a response sent to a client that has gone away."""
    return isinstance(exc, RuntimeError) and str(exc) == TRANSPORT_CLOSED


def _log_disconnect(scope: Scope, client: str) -> None:
    logger.warning("client %s went away during %s %s", client, scope["method"], scope["path"])
