"""A run's life: the write restriction while it decides, one run per project, and recovery
after the server crashes mid-run (SIGKILL of the server and its workers).

The servers here hold every run in one phase for a while (`BERTH_GC_TEST_PAUSE`), so a test
can look at, and crash, a run at a known point.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gc.conftest import GcProject, age_past_grace, gc_env, new_project
from tests.oci import OCI_LAYER, Blob, image_manifest, uploads_path
from tests.servers import BERTH, BerthServer, PostgresCluster, database_url_for

GC_TEXT = "garbage collection in progress"
HOLD = "60"  # seconds a run is held: far longer than any test waits for it
ServerFactory = Callable[[str], BerthServer]


@pytest.fixture(params=["sqlite", "postgres"])
def paused_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres: PostgresCluster | None,
) -> Iterator[ServerFactory]:
    """Makes a server whose runs pause in the given phase (`marking` or `sweeping`)."""
    started: list[BerthServer] = []

    def make(phase: str) -> BerthServer:
        url = database_url_for(request.param, postgres)
        server = BerthServer(
            tmp_path_factory.mktemp(f"gc-{phase}-{request.param}"),
            url,
            extra_env=gc_env(BERTH_GC_TEST_PAUSE=f"{phase}={HOLD}"),
        )
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


def wait_until(project: GcProject, check: Callable[[dict[str, Any]], bool], run_id: int) -> None:
    deadline = time.monotonic() + 30
    while not check(run := project.run_info(run_id)):
        assert time.monotonic() < deadline, f"run never got there: {run}"
        time.sleep(0.05)


def restart_without_pause(server: BerthServer) -> None:
    server.extra_env.pop("BERTH_GC_TEST_PAUSE")
    server.start()


def refused_by_gc(response: httpx.Response) -> bool:
    return response.status_code == 403 and GC_TEXT in response.text


def test_writes_are_refused_while_a_run_decides_and_a_crash_rolls_it_back(
    paused_server: ServerFactory,
) -> None:
    server = paused_server("marking")
    project, other = new_project(server), new_project(server)
    layer = Blob(os.urandom(256), OCI_LAYER)
    config = Blob(
        b'{"architecture":"amd64","os":"linux"}', "application/vnd.oci.image.config.v1+json"
    )
    for blob in (layer, config):
        project.push(blob)
    manifest = image_manifest(config.descriptor(), [layer.descriptor()])
    assert project.put_manifest(manifest, "v1").status_code == 201
    junk = project.push_blob(b"junk " + os.urandom(8))
    age_past_grace(project.server)

    started = project.start_gc()
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    wait_until(project, lambda run: run["phase"] == "marking", run_id)
    assert project.settings_row().gc_restricted_by == run_id

    # Content-adding writes in the project are refused with the reason ...
    assert refused_by_gc(project.registry.post(uploads_path(project.name())))
    assert refused_by_gc(project.put_manifest(manifest, "v2"))
    repositories = f"/projects/{project.project}/repositories"
    assert refused_by_gc(project.api.post(repositories, json={"name": "new"}))
    assert refused_by_gc(project.api.delete(f"{repositories}/{project.repository}"))
    # ... pulls go on, and other projects are not affected.
    assert project.blob_bytes(layer.digest) == layer.data
    assert project.registry.get(f"/v2/{project.name()}/manifests/v1").status_code == 200
    other.push_blob(b"another project pushes as usual")
    # One run per project at a time.
    second = project.start_gc(dry_run=True)
    assert second.status_code == 409
    assert second.json()["code"] == "GC_RUNNING"
    assert f"run {run_id} is already running" in second.json()["detail"]
    current = project.api.get(f"/projects/{project.project}/gc/current").json()
    assert (current["id"], current["state"], current["phase"]) == (run_id, "running", "marking")

    server.kill()  # a crash while the restriction is on
    restart_without_pause(server)

    run = project.wait_for_run(run_id, timeout=20)
    assert run["state"] == "rolled_back", run
    assert "nothing changed" in run["error"]
    assert project.settings_row().gc_restricted_by is None
    assert project.has_blob(junk), "a rolled-back run deleted something"
    project.push_blob(b"pushes work again")
    assert project.put_manifest(manifest, "v2").status_code == 201
    assert project.gc()["blobs_deleted"] == 1  # the junk, now


def test_a_crash_while_removing_files_is_finished_on_restart(paused_server: ServerFactory) -> None:
    """Also the sweep's compare-and-set: a blob whose row the run deleted, pushed again before
    the sweep reaches its file, keeps the file (the push re-created the row first)."""
    server = paused_server("sweeping")
    project = new_project(server)
    count = 700  # more than one sweep batch (500): the run pauses after the first
    junk = project.bulk_blobs(count)
    age_past_grace(project.server)

    run_id = project.start_gc().json()["id"]
    wait_until(project, lambda run: run["phase"] == "sweeping" and run["progress_done"] > 0, run_id)
    paused = project.run_info(run_id)
    assert paused["progress_total"] >= count > paused["progress_done"]
    # The restriction was lifted before the files: the project takes pushes while it sweeps,
    # among them blobs the run is about to remove (the sweep goes in digest order).
    assert project.settings_row().gc_restricted_by is None
    waiting = [d for d in sorted(junk) if project.blob_file(d).exists()]
    assert len(waiting) == count - paused["progress_done"]
    pushed_again, removed = waiting[:5], waiting[5:]
    for digest in pushed_again:
        project.push_blob(junk[digest])

    server.kill()
    restart_without_pause(server)

    run = project.wait_for_run(run_id, timeout=20)
    assert run["state"] == "succeeded", run
    assert run["progress_done"] == run["progress_total"]
    assert run["blobs_deleted"] == count
    assert run["storage_blobs_deleted"] >= count - len(pushed_again)
    for digest in pushed_again:
        assert project.blob_bytes(digest) == junk[digest]
    assert not any(project.blob_file(digest).exists() for digest in removed)
    assert not any(project.blob_row(digest) for digest in removed[:3])


def test_a_blob_pushed_once_the_run_decided_is_not_counted_as_kept(tmp_path: Path) -> None:
    """With gc_grace_period = 0 a run keeps nothing for being young. A blob pushed while it
    lists its sweep (writes allowed again) came after its decision: the next run's, not one
    this run kept (it was counted so). `berth gc run`'s table fits an 80-column terminal."""
    server = BerthServer(
        tmp_path / "gc",
        extra_env=gc_env(BERTH_GC_GRACE_PERIOD="0", BERTH_GC_TEST_PAUSE="listing=4"),
    ).start()
    project = new_project(server)
    try:
        project.push_blob(b"junk before the run " + os.urandom(8))
        log = tmp_path / "gc-run.log"
        with open(log, "w") as stderr:
            run = subprocess.Popen(
                [*BERTH, "gc", "run", project.project, "--yes"],
                env={**server.env, "COLUMNS": "80"},
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        try:
            deadline = time.monotonic() + 60
            while "test pause of 4.0 s in listing" not in log.read_text():
                assert run.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the run never reached its listing"
                time.sleep(0.05)
            pushed = project.push_blob(b"pushed once the run decided " + os.urandom(8))
            shown, _ = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == 0, shown + log.read_text()
        rows = {
            cells[0].strip(): cells[1].strip()
            for line in shown.splitlines()
            if len(cells := line.strip("│ ").split("│")) == 2
        }
        assert rows["Grace period"] == "0 s (gc_grace_period)", shown
        assert rows["Kept: younger than that"] == "nothing", shown
        assert "Kept: collectable from" not in rows, shown
        assert rows["Blobs deleted from the project"].startswith("1 "), shown
        assert max(map(len, shown.splitlines())) <= 80, shown
        assert project.has_blob(pushed)
    finally:
        project.close()
        server.stop()
