"""Storage collections on demand: any reader may ask, so a burst of them measures at most once
every `storage_collect_min_interval` seconds, and each answer is measured after it was asked
for (a collection right after a push counts it). On a real server."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor

from tests.oci import push_bytes
from tests.servers import BerthServer, server_fixture
from tests.usage.conftest import Project, new_project

MIN_INTERVAL = 3

limited = server_fixture(
    "collect-on-demand",
    env={"BERTH_STORAGE_COLLECT_MIN_INTERVAL": str(MIN_INTERVAL)},
    doc="Collections on demand at most one measurement every few seconds.",
)


def burst(project: Project, seconds: float) -> list[str]:
    """Collections from four callers at once for `seconds`; each one's collected_at."""

    def collect_until(deadline: float) -> list[str]:
        seen = []
        while time.monotonic() < deadline:
            seen.append(project.api("POST", "storage/collect")["collected_at"])
        return seen

    deadline = time.monotonic() + seconds
    with ThreadPoolExecutor(4) as callers:
        found = list(callers.map(collect_until, [deadline] * 4))
    return [at for seen in found for at in seen]


def test_a_burst_of_collections_measures_once_an_interval_and_each_sees_its_push(
    limited: BerthServer,
) -> None:
    """A collection right after a push counts it, even just after another sample (the
    schedule's first, taken as the server starts): it waits for its measurement."""
    project = new_project(limited)
    name = f"{project.name}/{project.repository()}"
    push_bytes(project.client, name, os.urandom(1000))
    first = project.api("POST", "storage/collect")
    assert first["bytes"] == 1000

    began = time.monotonic()
    answered = burst(project, 2 * MIN_INTERVAL)
    took = time.monotonic() - began
    assert len(answered) >= 4
    measured = sorted({dt.datetime.fromisoformat(at) for at in answered})
    # One measurement an interval at most (the burst's last callers may wait one more).
    assert len(measured) <= took // MIN_INTERVAL + 1, measured
    assert all(
        b - a >= dt.timedelta(seconds=MIN_INTERVAL * 0.9) for a, b in itertools.pairwise(measured)
    )

    push_bytes(project.client, name, os.urandom(500))
    asked = time.monotonic()
    later = project.api("POST", "storage/collect")
    assert time.monotonic() - asked < MIN_INTERVAL + 2
    assert later["bytes"] == 1500 and later["blobs"] == 2
    assert later["collected_at"] > max(answered)
    assert project.api("GET", "storage")["last"] == later
