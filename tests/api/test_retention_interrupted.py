"""A retention run killed mid-run (SIGKILL of the server and its workers) leaves its record:
recorded running when it starts, its counts growing as each batch commits, and marked
interrupted, with what it deleted, once its process is found gone (SQLite and PostgreSQL).

The server holds each run after every batch it commits (`BERTH_RETENTION_TEST_PAUSE`), so
the test can kill it between two batches.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from berth.services.retention import BATCH
from tests.servers import BerthServer, PostgresCluster, database_url_for
from tests.test_cli_retention import seeded

HOLD = "60"  # seconds a run waits after each batch: far longer than the test waits
EXTRA = 40  # images the run's second batch would have deleted


@pytest.fixture(params=["sqlite", "postgres"])
def paused_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres: PostgresCluster | None,
) -> Iterator[BerthServer]:
    server = BerthServer(
        tmp_path_factory.mktemp(f"retention-kill-{request.param}"),
        database_url_for(request.param, postgres),
        extra_env={"BERTH_RETENTION_TEST_PAUSE": HOLD},
    )
    yield server.start()
    server.stop()


def until(check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)
    return found


def test_a_run_killed_between_batches_is_recorded_interrupted_with_what_it_deleted(
    paused_server: BerthServer,
) -> None:
    server = paused_server
    project = "retkill"
    digests = seeded(server, project, "ci", "b", BATCH + EXTRA + 2)
    api = httpx.Client(
        base_url=f"{server.url}/api/v1/projects/{project}",
        auth=server.access_key(project),
        timeout=60,
    )
    rules = {"rules": [{"keep": "last", "count": 2}]}
    assert api.put("/retention", json=rules).status_code == 200

    def start_run() -> None:
        with contextlib.suppress(httpx.TransportError):  # the server dies under it
            api.post("/retention/runs")

    starting = threading.Thread(target=start_run, daemon=True)
    starting.start()

    def running() -> dict[str, Any] | None:
        items = api.get("/retention/runs").json()["items"]
        return items[0] if items and items[0]["images_deleted"] else None

    # While it runs, its record says so, with the first batch it committed.
    run = until(running)
    assert (run["state"], run["images_deleted"], run["finished_at"]) == ("running", BATCH, None)
    assert run["note"].startswith(f"Running: deleted {BATCH} images so far.")

    server.kill()
    starting.join(timeout=30)
    server.extra_env.pop("BERTH_RETENTION_TEST_PAUSE")
    server.start()

    def marked() -> dict[str, Any] | None:
        found = api.get(f"/retention/runs/{run['id']}").json()
        return found if found["state"] != "running" else None

    interrupted = until(marked)
    assert interrupted["state"] == "interrupted"
    assert interrupted["images_deleted"] == BATCH and interrupted["finished_at"]
    assert [i["digest"] for i in interrupted["images"]] == digests[:BATCH]
    assert "interrupted: its process" in interrupted["error"]
    assert f"stopped after deleting {BATCH} images" in interrupted["error"]
    assert "the rest of its plan was not carried out" in interrupted["note"]
    # The CLI's history says it too.
    (shown,) = server.cli_items("retention", "history", project, "--limit", "1")
    assert (shown["id"], shown["state"], shown["images_deleted"]) == (
        run["id"],
        "interrupted",
        BATCH,
    )
    # A new run deletes the rest of what the rules do not keep.
    again = api.post("/retention/runs").json()
    assert (again["state"], again["images_deleted"], again["error"]) == ("succeeded", EXTRA, None)
    api.close()
