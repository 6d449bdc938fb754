"""Fixtures for usage tests: a registry whose metering flushes fast and whose storage
collection runs every second, with two worker processes (so the job lease is exercised)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from berth.services.records import plain
from tests.servers import BACKENDS, S3_BACKEND, BerthServer, eventually, server_fixture

T = TypeVar("T")

FLUSH_SECONDS = 0.3
COLLECT_SECONDS = 1
PRICE_PER_GB = 0.5
FREE_GB = 1.0
CURRENCY = "EUR"

METERED_ENV = {
    "BERTH_WORKERS": "2",
    "BERTH_TRAFFIC_FLUSH_INTERVAL": str(FLUSH_SECONDS),
    "BERTH_STORAGE_COLLECT_INTERVAL": str(COLLECT_SECONDS),
    # The schedule's sample of a second ago may predate a test's push: collections here measure.
    "BERTH_STORAGE_COLLECT_MIN_INTERVAL": "0",
    "BERTH_TRAFFIC_PRICE_PER_GB": str(PRICE_PER_GB),
    "BERTH_TRAFFIC_FREE_GB": str(FREE_GB),
    "BERTH_CURRENCY": CURRENCY,
}


def start_all_workers(server: BerthServer) -> BerthServer:
    """Start the server and wait until every worker has started: granian does not stop while
    a worker is still starting (a SIGTERM then waits for the kill timeout)."""
    server.start()
    workers = int(server.extra_env.get("BERTH_WORKERS", "1"))

    def started() -> int:
        log = server.log_tail(400).rpartition("Starting granian")[2]
        return log.count("Started worker-")

    eventually(started, lambda count: count >= workers, timeout=30)
    return server


metered = server_fixture(
    "usage",
    backends=[*BACKENDS, S3_BACKEND],
    scope="package",
    env=METERED_ENV,
    start=start_all_workers,
    doc="Fast metering and storage collection, two workers; once per backend (and on S3).",
)


@dataclass
class Project:
    """A fresh project with repositories, and a registry client (the admin's access key)."""

    server: BerthServer
    name: str
    client: httpx.Client

    def repository(self, name: str | None = None) -> str:
        """Create a repository; returns its name."""
        repository = name or "r" + uuid.uuid4().hex[:6]
        self.server.create_repository(self.name, repository)
        return repository

    def api(self, method: str, path: str, **params: Any) -> Any:
        """A management API call about this project (`path` after /projects/{project}/)."""
        response = self.client.request(
            method, f"/api/v1/projects/{self.name}/{path}", params=params
        )
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def traffic(self, **params: Any) -> dict[str, Any]:
        found: dict[str, Any] = self.api("GET", "traffic", **params)
        return found


def new_project(server: BerthServer) -> Project:
    name = "u" + uuid.uuid4().hex[:10]
    server.create_project(name, with_key=True)
    client = httpx.Client(base_url=server.url, timeout=60, auth=server.access_key(name))
    return Project(server, name, client)


def traffic(server: BerthServer, project: str, **options: Any) -> dict[str, Any]:
    """The traffic figures as the usage service reads them from the server's database (also
    while the server is stopped)."""
    found: dict[str, Any] = plain(server._services(lambda s: s.usage.traffic(project, **options)))
    return found
