"""Metrics and request logs against a real `berth serve` with two worker processes (so a scrape
must sum what both counted) and JSON logs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from berth.observability.metrics import FLUSH_SECONDS
from tests.gc.conftest import GcProject, gc_env, new_project
from tests.metrics import Samples, parse
from tests.servers import BerthServer, running_server


@pytest.fixture(scope="package")
def observed(request: pytest.FixtureRequest) -> Iterator[BerthServer]:
    """Two workers, JSON logs, a 1-second GC grace period."""
    env = gc_env(BERTH_WORKERS="2", BERTH_LOG_FORMAT="json")
    with running_server(request, "observed", extra_env=env) as server:
        yield server


@pytest.fixture
def project(observed: BerthServer) -> Iterator[GcProject]:
    made = new_project(observed)
    yield made
    made.close()


def scrape(server: BerthServer, **options: Any) -> Samples:
    """Every sample of /metrics by (name, labels), once every worker has written what it
    counted (each adds requests up in memory and writes them every FLUSH_SECONDS)."""
    time.sleep(FLUSH_SECONDS + 0.3)
    response = httpx.get(f"{server.url}/metrics", timeout=30, **options)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)
