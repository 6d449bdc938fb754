"""A run's lease, recovery and write restriction, in-process on SQLite: one named case per test.

A second `GarbageCollector` in this process stands for another serving process: it shares the
first one's holder name (`host:pid`) but not its runs, so it sees them as interrupted, as a
restarted server would."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import select, update

from berth.domain.errors import Denied
from berth.domain.events import GC_FINISHED
from berth.jobs.leases import Leases
from berth.metadata.database import Database
from berth.metadata.tables import (
    blob_removals,
    gc_runs,
    job_leases,
    project_settings,
    projects,
    utcnow,
    webhook_events,
    webhooks,
)
from berth.services.gc import GarbageCollector, GcAlreadyRunning, Run, recovery, sweep
from berth.services.gc.recovery import lease_name
from berth.services.gc.restrictions import ensure_writable
from berth.services.gc.runs import RunRow
from berth.storage.filesystem import FilesystemBlobStore
from tests.unit.gc.on_sqlite import open_registry, what_is_left
from tests.unit.gc.scenarios import GRACE, OLD, PROJECT, Content, digest


def content_with_an_orphan_blob() -> Content:
    content = Content()
    content.repository()
    content.stored("orphan", at=OLD)
    return content


Scenario = Callable[[Database, FilesystemBlobStore], Awaitable[None]]


def on_registry(tmp_path: Path, scenario: Scenario) -> None:
    """Play `scenario` on a registry holding one project with an old orphan blob, and a
    webhook endpoint taking its `gc.finished` events (without one, none is queued)."""

    async def play() -> None:
        db, store = await open_registry(tmp_path, content_with_an_orphan_blob())
        async with db.write() as conn:
            project_id = (
                await conn.execute(select(projects.c.id).where(projects.c.name == PROJECT))
            ).scalar_one()
            await conn.execute(
                webhooks.insert().values(
                    project_id=project_id, url="http://hooks.invalid/", event_types=GC_FINISHED
                )
            )
        try:
            await scenario(db, store)
        finally:
            await db.dispose()

    asyncio.run(play())


async def restricted_by(db: Database) -> int | None:
    async with db.read() as conn:
        value = (await conn.execute(select(project_settings.c.gc_restricted_by))).scalar()
    return int(value) if value is not None else None


async def until(collector: GarbageCollector, run_id: int, done: Callable[[Run], bool]) -> Run:
    """The run once `done` says so (polled: runs here take milliseconds)."""
    while not done(run := await collector.get_run(PROJECT, run_id)):
        await asyncio.sleep(0.02)
    return run


def deciding(run: Run) -> bool:
    return run.phase == "marking"


def finished(run: Run) -> bool:
    return run.state != "running"


async def gc_finished_events(db: Database) -> list[str]:
    """The states of the runs whose `gc.finished` webhook event is queued, in order."""
    async with db.read() as conn:
        payloads = (
            await conn.execute(
                select(webhook_events.c.payload)
                .where(webhook_events.c.type == GC_FINISHED)
                .order_by(webhook_events.c.id)
            )
        ).scalars()
        return [json.loads(payload)["data"]["gc_run"]["state"] for payload in payloads]


async def hand_lease_to(db: Database, holder: str, expires_at: dt.datetime) -> None:
    async with db.write() as conn:
        await conn.execute(update(job_leases).values(holder=holder, expires_at=expires_at))


def test_one_run_per_project_at_a_time(tmp_path: Path) -> None:
    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        collector = GarbageCollector(db, store, grace_period=GRACE, test_pause="marking=0.3")
        first = await collector.launch(PROJECT, actor="a")
        with pytest.raises(GcAlreadyRunning):
            await collector.launch(PROJECT, actor="b")
        assert (await until(collector, first.id, finished)).state == "succeeded"
        second = await collector.run(PROJECT, actor="b")
        assert second.state == "succeeded"
        await collector.stop()

    on_registry(tmp_path, scenario)


def test_a_run_whose_process_stopped_before_deleting_is_rolled_back(tmp_path: Path) -> None:
    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        stopped = GarbageCollector(db, store, grace_period=GRACE)
        run = await stopped.start_run(
            PROJECT, dry_run=False, delete_untagged=False, actor="a", here=False
        )
        restarted = GarbageCollector(db, store, grace_period=GRACE)
        await restarted.recovery.recover()
        after = await restarted.get_run(PROJECT, run.id)
        assert after.state == "rolled_back"
        assert after.error is not None and "nothing changed" in after.error
        assert await gc_finished_events(db) == ["rolled_back"]
        assert digest("orphan") in (await what_is_left(db, store)).files
        # The lease is free again: a new run starts at once.
        again = await restarted.run(PROJECT, actor="b")
        assert again.state == "succeeded"
        assert digest("orphan") not in (await what_is_left(db, store)).files

    on_registry(tmp_path, scenario)


def test_a_run_interrupted_while_sweeping_is_finished_by_recovery(tmp_path: Path) -> None:
    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        stopped = GarbageCollector(db, store, grace_period=GRACE)
        run = await stopped.start_run(
            PROJECT, dry_run=False, delete_untagged=False, actor="a", here=False
        )
        async with db.write() as conn:  # as if step 2 had committed before the crash
            await conn.execute(update(gc_runs).values(phase="sweeping"))
        restarted = GarbageCollector(db, store, grace_period=GRACE)
        await restarted.recovery.recover(resume_here=True)
        after = await restarted.get_run(PROJECT, run.id)
        assert after.state == "succeeded"
        assert after.storage_blobs_deleted == 1
        assert digest("orphan") not in (await what_is_left(db, store)).files

    on_registry(tmp_path, scenario)


def test_two_recoveries_in_one_process_take_a_run_over_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        stopped = GarbageCollector(db, store, grace_period=GRACE)
        run = await stopped.start_run(
            PROJECT, dry_run=False, delete_untagged=False, actor="a", here=False
        )
        async with db.write() as conn:  # as if step 2 had committed before the crash
            await conn.execute(update(gc_runs).values(phase="sweeping"))
        restarted = GarbageCollector(db, store, grace_period=GRACE)
        load = restarted.runs.load

        async def slow_load(run_id: int) -> RunRow:
            await asyncio.sleep(0.3)  # the first recovery holds the fresh lease meanwhile
            return await load(run_id)

        monkeypatch.setattr(restarted.runs, "load", slow_load)

        async def a_start_in_the_project_a_moment_later() -> None:
            await asyncio.sleep(0.1)
            await restarted.recovery.recover(resume_here=True)

        await asyncio.gather(
            restarted.recovery.recover(resume_here=True), a_start_in_the_project_a_moment_later()
        )
        assert (await restarted.get_run(PROJECT, run.id)).state == "succeeded"
        assert await gc_finished_events(db) == ["succeeded"]

    with caplog.at_level("WARNING", logger="berth.gc"):
        on_registry(tmp_path, scenario)
    finishing = [r for r in caplog.records if "interrupted while sweeping" in r.getMessage()]
    assert len(finishing) == 1


def test_a_new_run_is_its_process_s_before_it_is_carried_out(tmp_path: Path) -> None:
    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        collector = GarbageCollector(db, store, grace_period=GRACE)
        run = await collector.start_run(
            PROJECT, dry_run=False, delete_untagged=False, actor="a", here=False
        )
        # This process's periodic recovery, looking before the run's task gets going (a
        # launch under load once lost its run so: rolled back, never restricted).
        await collector.recovery.recover()
        assert (await collector.get_run(PROJECT, run.id)).state == "running"
        assert (await collector.execute(run.id)).state == "succeeded"
        assert digest("orphan") not in (await what_is_left(db, store)).files

    on_registry(tmp_path, scenario)


def test_a_run_recovered_before_its_process_carries_it_out_restricts_nothing(
    tmp_path: Path,
) -> None:
    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        late = GarbageCollector(db, store, grace_period=GRACE)
        run = await late.start_run(
            PROJECT, dry_run=False, delete_untagged=False, actor="a", here=False
        )
        restarted = GarbageCollector(db, store, grace_period=GRACE)
        await restarted.recovery.recover()
        # The process that started it gets going only now: it must not restrict writes for a
        # run that can no longer lift the restriction.
        after = await late.execute(run.id)
        assert after.state == "rolled_back"
        assert await gc_finished_events(db) == ["rolled_back"]  # queued by whoever ended it
        assert await restricted_by(db) is None
        assert digest("orphan") in (await what_is_left(db, store)).files

    on_registry(tmp_path, scenario)


def test_a_run_another_machine_holds_is_left_alone_until_its_lease_lapses(
    tmp_path: Path,
) -> None:
    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        started = GarbageCollector(db, store, grace_period=GRACE)
        run = await started.start_run(
            PROJECT, dry_run=False, delete_untagged=False, actor="a", here=False
        )
        elsewhere = "another-machine:1"
        await hand_lease_to(db, elsewhere, utcnow() + dt.timedelta(minutes=1))
        collector = GarbageCollector(db, store, grace_period=GRACE)
        await collector.recovery.recover()
        assert (await collector.get_run(PROJECT, run.id)).state == "running"

        await hand_lease_to(db, elsewhere, utcnow() - dt.timedelta(seconds=1))
        await collector.recovery.recover()
        assert (await collector.get_run(PROJECT, run.id)).state == "rolled_back"
        leases = await Leases(db, "reader").read([lease_name(1)])
        assert leases[lease_name(1)].holder == collector.holder

    on_registry(tmp_path, scenario)


def test_a_run_that_lost_its_lease_stops_sweeping_and_leaves_the_run_to_its_new_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "HEARTBEAT_SECONDS", 0.05)

    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        collector = GarbageCollector(db, store, grace_period=GRACE, test_pause="sweeping=0.5")
        carried_out = asyncio.create_task(collector.run(PROJECT, actor="a"))
        while (current := await collector.current(PROJECT)) is None or current.phase != "sweeping":
            await asyncio.sleep(0.02)
        # This process stalled past its lease; a process elsewhere took the run over.
        elsewhere = "another-machine:1"
        await hand_lease_to(db, elsewhere, utcnow() + dt.timedelta(minutes=1))
        after = await carried_out
        assert after.state == "running"  # the new holder finishes it, and reports it
        assert await gc_finished_events(db) == []
        leases = await Leases(db, "reader").read([lease_name(1)])
        assert leases[lease_name(1)].holder == elsewhere

    on_registry(tmp_path, scenario)


def test_a_run_taken_over_just_before_a_removal_removes_nothing_and_leaves_it_to_the_new_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fence before each removal from the store: another process takes the run over
    between two batches, before the heartbeat (every 5 s) has noticed. The next removal finds
    the lease gone and removes nothing: the object whose row the batch deleted stays, noted,
    for the new holder, which finishes the run (a late removal by the old holder could hit an
    object a push stored again after the new holder finished)."""
    monkeypatch.setattr(sweep, "SWEEP_BATCH", 1)  # one blob a batch: the take-over falls between

    async def play() -> None:
        content = content_with_an_orphan_blob()
        content.stored("another orphan", at=OLD)
        db, store = await open_registry(tmp_path, content)
        first, second = sorted([digest("orphan"), digest("another orphan")])  # sweep order
        try:
            # A pause long enough for a loaded machine to hand the lease over within it.
            collector = GarbageCollector(db, store, grace_period=GRACE, test_pause="sweeping=3")
            carried_out = asyncio.create_task(collector.run(PROJECT, actor="a"))
            # The first batch's object gone is the last step before the pause (its progress
            # is counted earlier, before its removal: too early to take the run over).
            while first in (await what_is_left(db, store)).files:
                await asyncio.sleep(0.02)
            # Paused after the first batch: this process stalls, a process elsewhere takes over.
            elsewhere = "another-machine:1"
            await hand_lease_to(db, elsewhere, utcnow() + dt.timedelta(minutes=1))
            after = await carried_out
            assert after.state == "running"
            left = await what_is_left(db, store)
            assert first not in left.files
            assert second not in left.blobs  # its row went in the second batch ...
            assert second in left.files, "a run that had lost its lease removed an object"
            async with db.read() as conn:
                noted = set((await conn.execute(select(blob_removals.c.digest))).scalars())
            assert noted == {second}  # ... and its note stays for the new holder
            leases = await Leases(db, "reader").read([lease_name(1)])
            assert leases[lease_name(1)].holder == elsewhere  # the fence renewed nothing

            # The new holder stops in turn; whoever recovers the run finishes it.
            await hand_lease_to(db, elsewhere, utcnow() - dt.timedelta(seconds=1))
            restarted = GarbageCollector(db, store, grace_period=GRACE)
            await restarted.recovery.recover(resume_here=True)
            finished_run = await restarted.get_run(PROJECT, after.id)
            assert finished_run.state == "succeeded"
            assert second not in (await what_is_left(db, store)).files
        finally:
            await db.dispose()

    asyncio.run(play())


def test_writes_are_refused_while_the_run_decides_and_allowed_after(tmp_path: Path) -> None:
    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        collector = GarbageCollector(db, store, grace_period=GRACE, test_pause="marking=0.3")
        run = await collector.launch(PROJECT, actor="a")
        await until(collector, run.id, deciding)
        assert await restricted_by(db) == run.id
        with pytest.raises(Denied, match="garbage collection in progress"):
            async with db.write() as conn:
                await ensure_writable(conn, 1, PROJECT)
        await until(collector, run.id, finished)
        assert await restricted_by(db) is None
        async with db.write() as conn:
            await ensure_writable(conn, 1, PROJECT)
        await collector.stop()

    on_registry(tmp_path, scenario)


def test_a_stopping_server_rolls_back_the_run_it_was_deciding(tmp_path: Path) -> None:
    async def scenario(db: Database, store: FilesystemBlobStore) -> None:
        collector = GarbageCollector(db, store, grace_period=GRACE, test_pause="marking=5")
        run = await collector.launch(PROJECT, actor="a")
        await until(collector, run.id, deciding)
        await collector.stop()
        after = await collector.get_run(PROJECT, run.id)
        assert after.state == "rolled_back"
        assert await gc_finished_events(db) == ["rolled_back"]
        assert await restricted_by(db) is None

    on_registry(tmp_path, scenario)
