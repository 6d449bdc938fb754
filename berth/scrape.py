"""`/metrics`: who may scrape, the figures read at scrape time, and the optional listener of
its own (`metrics_listen`).

On the main address a scrape is answered to loopback clients (unless `metrics_loopback` is
off: behind a reverse proxy on the same host every client is loopback) and otherwise only to a
server administrator (Basic with an administrator's password or access key, or an API token),
since the label values name projects. `metrics_listen` serves `/metrics` alone on an address of
its own to anyone who reaches it: bind it where only the monitoring system does. Every worker
listens there (SO_REUSEPORT); whichever answers reads every worker's values.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from berth.access.identify import Surface
from berth.domain.errors import Unauthorized, Unavailable
from berth.observability import metrics
from berth.state import Services

logger = logging.getLogger("berth.metrics")

STORAGE_CACHE_SECONDS = 10.0  # the latest samples change every storage_collect_interval
# A scrape does not wait longer for the database (a host that does not answer at all would
# hold it for the driver's connect timeout, past Prometheus' scrape timeout).
DATABASE_READ_SECONDS = 5.0


class ScrapeFigures:
    """Figures read from the database at scrape time: uploads in progress (one count) and each
    project's stored bytes from its latest usage sample (read at most every 10 s).

    While the database cannot be read (unreachable, or not answering within
    DATABASE_READ_SECONDS) they are left out and `berth_database_up` is 0, as an exporter
    says its target is down: every other series is still served."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._storage: dict[str, tuple[int, Any]] = {}
        self._storage_read = -STORAGE_CACHE_SECONDS

    async def read(self) -> Collector:
        try:
            async with asyncio.timeout(DATABASE_READ_SECONDS):
                uploads = await self.services.uploads.in_progress()
                now = time.monotonic()
                if now - self._storage_read >= STORAGE_CACHE_SECONDS:
                    self._storage = await self.services.usage.latest_storage()
                    self._storage_read = now
        except (Unavailable, TimeoutError) as exc:
            logger.info("metrics: the database figures are left out: %s", exc or "timed out")
            return _Figures(None, {})
        return _Figures(uploads, dict(self._storage))


class _Figures(Collector):
    def __init__(self, uploads: int | None, storage: dict[str, tuple[int, Any]]) -> None:
        """`uploads` None: the database could not be read."""
        self.uploads = uploads
        self.storage = storage

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "berth_database_up",
            "1 when this scrape read the database's figures, 0 when it could not (they are "
            "left out)",
            value=0 if self.uploads is None else 1,
        )
        if self.uploads is None:
            return
        yield GaugeMetricFamily(
            "berth_uploads_in_progress",
            "blob uploads started and neither finished nor cancelled",
            value=self.uploads,
        )
        stored = GaugeMetricFamily(
            "berth_storage_bytes",
            "bytes each project stores, from its latest storage sample",
            labels=["project"],
        )
        sampled = GaugeMetricFamily(
            "berth_storage_sample_timestamp_seconds",
            "when each project's latest storage sample was taken",
            labels=["project"],
        )
        for project, (size, at) in sorted(self.storage.items()):
            stored.add_metric([project], size)
            sampled.add_metric([project], at.timestamp())
        yield stored
        yield sampled


async def exposition(figures: ScrapeFigures) -> bytes:
    collector = await figures.read()

    def extra(registry: CollectorRegistry) -> None:
        registry.register(collector)

    # This worker's requests and pools' connections in use go to its files here, on the loop
    # where they are kept; reading every worker's files and formatting (tens of milliseconds
    # with a few hundred series) go to a thread, so a scrape does not stall the requests this
    # worker serves.
    metrics.flush_requests()
    metrics.sample_pools()
    return await asyncio.to_thread(metrics.exposition, extra)


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


async def _refusal(services: Services, request: Request) -> Response | None:
    """None when the caller may scrape; else the answer that refuses them."""
    client = request.client.host if request.client else None
    if services.settings.metrics_loopback and _loopback(client):
        return None
    authorization = request.headers.get("authorization")
    challenge = {"WWW-Authenticate": 'Basic realm="Berth metrics"'}
    if not authorization:
        return PlainTextResponse(
            "metrics are for server administrators: sign in with an administrator's password "
            "or access key\n",
            401,
            challenge,
        )
    try:
        identified = await services.authenticator.identify(
            authorization, surface=Surface.API, client=client
        )
    except Unauthorized as exc:
        return PlainTextResponse(f"{exc.message}\n", 401, challenge)
    except Unavailable as exc:  # the database cannot be reached to check the credentials
        return PlainTextResponse(f"{exc.message}\n", exc.status, exc.headers)
    if identified.principal is None or not identified.principal.is_admin:
        return PlainTextResponse("metrics are for server administrators\n", 403)
    return None


async def metrics_endpoint(request: Request) -> Response:
    services: Services = request.app.state.services
    if not services.settings.metrics:
        return PlainTextResponse("metrics are off (the metrics setting)\n", 404)
    refusal = await _refusal(services, request)
    if refusal is not None:
        return refusal
    figures: ScrapeFigures = request.app.state.scrape_figures
    return Response(await exposition(figures), media_type=CONTENT_TYPE_PLAIN_0_0_4)


# ------------------------------------------------------------------ the listener of its own


async def _answer(
    figures: ScrapeFigures, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        method, target, *_ = head.split(b"\r\n", 1)[0].split(b" ")
        path = target.split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD") or path != b"/metrics":
            status, media, body = b"404 Not Found", b"text/plain", b"only /metrics is here\n"
        else:
            status, media = b"200 OK", CONTENT_TYPE_PLAIN_0_0_4.encode()
            body = await exposition(figures)
        writer.write(
            b"HTTP/1.1 "
            + status
            + b"\r\ncontent-type: "
            + media
            + b"\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + (b"" if method == b"HEAD" else body)
        )
        await writer.drain()
    except Exception as exc:  # a client that went away or sent nonsense
        logger.debug("metrics listener: %r", exc)
    finally:
        writer.close()


async def start_listener(figures: ScrapeFigures) -> asyncio.Server | None:
    """The `metrics_listen` server of this worker (every worker binds it, SO_REUSEPORT)."""
    settings = figures.services.settings
    address = settings.metrics_host_and_port
    if address is None or not settings.metrics:
        return None
    host, port = address

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer(figures, reader, writer)

    return await asyncio.start_server(handle, host, port, reuse_port=True)
