"""Metrics and request logs against a real `berth serve` with two worker processes (so a scrape
must sum what both counted) and JSON logs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gc.conftest import GcProject, gc_env, new_project
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
