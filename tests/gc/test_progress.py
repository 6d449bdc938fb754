"""A run as the API shows it while it works: its own record, `current`, the history and the
project summary agree at every look, and its state only moves forward."""

from __future__ import annotations

import os
import time
from typing import Any

from tests.gc.conftest import GcProject, age_past_grace, gc_env, new_project
from tests.servers import BACKENDS, BerthServer, server_fixture

PHASES = ("queued", "marking", "sweeping", "done")
HOLD_SECONDS = 1.5


held_server = server_fixture(
    "gc-held",
    backends=BACKENDS,
    env=gc_env(BERTH_GC_TEST_PAUSE=f"marking={HOLD_SECONDS}"),
    doc="Runs held a moment while deciding, so a poll sees them at work.",
)


def rank(run: dict[str, Any]) -> tuple[bool, int]:
    return run["state"] != "running", PHASES.index(run["phase"])


def follow(project: GcProject, **options: bool) -> list[tuple[str, str]]:
    """Start a run and look at it through every endpoint until it has ended."""
    started = project.start_gc(**options)
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    base = f"/projects/{project.project}"
    seen: list[tuple[str, str]] = []
    last = (False, 0)
    deadline = time.monotonic() + 60
    while True:
        # Read in this order: each later read may only be further along.
        run = project.run_info(run_id)
        current = project.api.get(f"{base}/gc/current").json()
        [listed] = [
            r for r in project.api.get(f"{base}/gc/runs").json()["items"] if r["id"] == run_id
        ]
        summary = project.api.get(f"{base}/summary").json()
        looks = [run, *([current] if current is not None else []), listed]
        for look in looks:
            assert rank(look) >= last, (seen, look)
            last = rank(look)
        if current is not None:
            assert current["id"] == run_id
        else:
            assert listed["state"] != "running", listed  # not current: it has ended
        if listed["state"] != "running":
            finished = summary["last_gc_run"]
            assert finished is not None and finished["id"] == run_id, summary
            assert finished["state"] == listed["state"]
            assert finished["finished_at"] == listed["finished_at"]
        for look in looks:
            state = (look["state"], look["phase"])
            if not seen or seen[-1] != state:
                seen.append(state)
        if listed["state"] != "running":
            return seen
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)


def test_state_phase_history_and_summary_agree_while_a_run_works(
    held_server: BerthServer,
) -> None:
    project = new_project(held_server)
    try:
        project.push_blob(b"nobody references this " + os.urandom(16))
        age_past_grace(project.server)

        dry = follow(project, dry_run=True, delete_untagged=True)
        assert ("running", "marking") in dry and dry[-1] == ("succeeded", "done"), dry
        summary = project.api.get(f"/projects/{project.project}/summary").json()
        assert summary["last_gc_at"] is None  # a dry run changes nothing

        real = follow(project)
        assert ("running", "marking") in real and real[-1] == ("succeeded", "done"), real
        summary = project.api.get(f"/projects/{project.project}/summary").json()
        assert summary["last_gc_at"] == summary["last_gc_run"]["finished_at"]
        assert summary["last_gc_run"]["dry_run"] is False
        finished = project.run_info(summary["last_gc_run"]["id"])
        # The hold is within the restricted window, and the window within the run: the figure
        # counts the time writes were refused, however long a loaded machine makes either.
        assert HOLD_SECONDS <= finished["restricted_seconds"] <= finished["duration_seconds"]
    finally:
        project.close()
