"""Storage collections on demand: any reader may ask, so a burst of them measures once in
`storage_collect_min_interval` seconds, and a collection after those seconds sees a push made
in between. On a real server whose schedule does not collect meanwhile."""

from __future__ import annotations

import datetime as dt
import os
import time
from concurrent.futures import ThreadPoolExecutor

from berth.metadata.tables import utcnow
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


def test_a_burst_of_collections_measures_once_and_a_later_one_sees_a_push(
    limited: BerthServer,
) -> None:
    project = new_project(limited)
    name = f"{project.name}/{project.repository()}"
    push_bytes(project.client, name, os.urandom(1000))
    time.sleep(MIN_INTERVAL + 0.5)  # past the schedule's first sample, taken as the server starts
    first = project.api("POST", "storage/collect")
    assert first["bytes"] == 1000
    measured = dt.datetime.fromisoformat(first["collected_at"])

    answered = burst(project, MIN_INTERVAL - 1.5)
    assert utcnow() - measured < dt.timedelta(seconds=MIN_INTERVAL), "the burst took too long"
    assert len(answered) > 10
    assert set(answered) == {first["collected_at"]}
    assert project.api("GET", "storage")["samples"] == [first]

    push_bytes(project.client, name, os.urandom(500))
    until = measured + dt.timedelta(seconds=MIN_INTERVAL + 0.5)
    time.sleep(max(0.0, (until - utcnow()).total_seconds()))
    later = project.api("POST", "storage/collect")
    assert later["bytes"] == 1500 and later["blobs"] == 2
    assert later["collected_at"] > first["collected_at"]
    assert project.api("GET", "storage")["last"] == later
