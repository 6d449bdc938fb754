"""`GarbageCollector`: starts runs and carries them out, step by step (see the package's docstring).

The steps themselves live beside it: the restriction in `restrictions.py`, the decision in
`decide.py` (rules in `reachability.py`), the sweep in `sweep.py`, the run's states in `runs.py`,
leases and recovery in `recovery.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sqlalchemy import select, update

from berth.domain.errors import StorageReadOnly
from berth.jobs.leases import Leases, default_holder
from berth.jobs.periodic import Periodic
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.tables import blob_removals, gc_runs, gc_sweep, utcnow
from berth.services.gc.decide import Decider, Decision, DryRunDone, RunLost
from berth.services.gc.recovery import LEASE_SECONDS, RECOVERY_SECONDS, Recovery, lease_name
from berth.services.gc.restrictions import impose_restriction
from berth.services.gc.runs import (
    BEFORE_DELETING,
    MARKING,
    QUEUED,
    RUNNING,
    SWEEPING,
    GcAlreadyRunning,
    Progress,
    Run,
    RunBook,
    RunRow,
    young_values,
)
from berth.services.gc.sweep import Sweeper
from berth.storage.base import BlobStore, failures_said_by_caller

logger = logging.getLogger("berth.gc")


# A test pause's point that is no phase of its own: after step 2 (writes allowed again),
# before the sweep is listed and what was kept young is counted.
LISTING = "listing"


def parse_test_pause(value: str) -> tuple[str, float] | None:
    """`marking=5` -> ("marking", 5.0): a test hook that holds each run in that phase (or at
    LISTING)."""
    if not value:
        return None
    phase, _, seconds = value.partition("=")
    if phase not in (MARKING, LISTING, SWEEPING):
        raise ValueError(
            f"gc_test_pause: phase must be {MARKING}, {LISTING} or {SWEEPING}, not {phase!r}"
        )
    return phase, float(seconds or 0)


class GarbageCollector:
    def __init__(
        self,
        db: Database,
        store: BlobStore,
        *,
        grace_period: float = 3600,
        upload_expiry: float = 86_400,
        test_pause: str = "",
    ) -> None:
        self.db = db
        self.store = store
        self.grace_period = grace_period
        self._pause = parse_test_pause(test_pause)
        self.leases = Leases(db, default_holder())
        self.runs = RunBook(db)
        self.decider = Decider(db, self.runs, grace_period, upload_expiry)
        self.recovery = Recovery(
            db,
            self.leases,
            self.runs,
            finish_here=self.execute,
            finish_in_background=self._spawn,
        )
        self.sweeper = Sweeper(
            db, store, self.runs, self.decider, self._pause_sweeping, self.recovery.fence
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._recovering = Periodic(
            "gc recovery",
            RECOVERY_SECONDS,
            self.recovery.recover,
            failure="gc: could not look for interrupted runs",
            at_start=True,
        )

    @property
    def holder(self) -> str:
        return self.leases.holder

    # ------------------------------------------------------------------ serving process

    def start(self) -> None:
        """Recover interrupted runs now and every few seconds (runs of a crashed process)."""
        self._recovering.start()

    async def stop(self) -> None:
        await self._recovering.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _spawn(self, run_id: int) -> None:
        # A run recovered here is ours from now on (a new one from its insert), not once the
        # task gets going: a recovery in between would take it for an interrupted one.
        self.recovery.active.add(run_id)
        task = asyncio.create_task(self.execute(run_id), name=f"gc run {run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ starting runs

    async def launch(
        self,
        project: str,
        *,
        dry_run: bool = False,
        delete_untagged: bool = False,
        actor: str,
        client: str | None = None,
    ) -> Run:
        """Start a run in the background of this process (the API); returns it as it then is
        (queued, or just under way: it is spawned first, so that nothing can keep it from
        being carried out once recorded)."""
        run_id = await self._record_run(
            project,
            dry_run=dry_run,
            delete_untagged=delete_untagged,
            actor=actor,
            client=client,
            here=False,
        )
        self._spawn(run_id)
        return await self.runs.get(project, run_id)

    async def run(
        self,
        project: str,
        *,
        dry_run: bool = False,
        delete_untagged: bool = False,
        actor: str,
        client: str | None = None,
        progress: Progress | None = None,
    ) -> Run:
        """Start a run and carry it out here (the CLI); returns it finished."""
        run_id = await self._record_run(
            project,
            dry_run=dry_run,
            delete_untagged=delete_untagged,
            actor=actor,
            client=client,
            here=True,
        )
        return await self.execute(run_id, progress)

    async def start_run(
        self,
        project: str,
        *,
        dry_run: bool,
        delete_untagged: bool,
        actor: str,
        client: str | None = None,
        here: bool,
    ) -> Run:
        """Record a new run, as `launch` and `run` do, without carrying it out (the run of a
        process that stopped at once); returns it as queued."""
        run_id = await self._record_run(
            project,
            dry_run=dry_run,
            delete_untagged=delete_untagged,
            actor=actor,
            client=client,
            here=here,
        )
        return await self.runs.get(project, run_id)

    async def _refuse_a_read_only_store(self) -> None:
        """StorageReadOnly for a store on a disk turned read-only: a run would delete the
        images' rows, then stop at the first blob file, leaving the files as orphans. Only
        that: a run must start on a full disk, whose space it frees."""
        if await self.store.on_read_only_disk():
            raise StorageReadOnly(
                "the registry's storage is read-only: garbage collection cannot delete "
                "blobs, and nothing was deleted; run it again once the storage is writable"
            )

    async def _record_run(
        self,
        project: str,
        *,
        dry_run: bool,
        delete_untagged: bool,
        actor: str,
        client: str | None,
        here: bool,
    ) -> int:
        """Record a new run and take the project's GC lease; refused while one is running.
        An interrupted run of the project is recovered first (finished `here`, or in the
        background, when its sweep was under way: then this one is refused). The project's
        audit log records the run with it: who, from where (`client`), with which options
        (it deletes images); its outcome is in the GC history under the same id.

        The run is this process's (`recovery.active`) before its row commits: a recovery
        here between the commit and the caller's `execute` (the periodic one, or another
        start in the project) would otherwise roll the new run back as interrupted."""
        project_id = await self.runs.project_id(project)
        if not dry_run:
            await self._refuse_a_read_only_store()
        await self.recovery.recover(project_id, resume_here=here)
        name = lease_name(project_id)
        now = utcnow()
        run_id: int | None = None
        try:
            async with self.db.write() as conn:
                await self.leases.lock_in(conn, name)
                active = (
                    await conn.execute(
                        select(gc_runs.c.id).where(
                            gc_runs.c.project_id == project_id, gc_runs.c.state == RUNNING
                        )
                    )
                ).scalar()
                if active is not None:
                    raise GcAlreadyRunning(
                        f"garbage collection run {active} is already running in project "
                        f"{project!r}; one run per project at a time. Follow it under Management "
                        f"in the console (or GET /api/v1/projects/{project}/gc/current) and start "
                        "another when it has finished.",
                        {"run": active},
                    )
                run_id = (
                    await conn.execute(
                        gc_runs.insert()
                        .values(
                            project_id=project_id,
                            state=RUNNING,
                            phase=QUEUED,
                            dry_run=dry_run,
                            delete_untagged=delete_untagged,
                            started_at=now,
                            actor=actor[:64],
                            grace_seconds=self.grace_period,
                        )
                        .returning(gc_runs.c.id)
                    )
                ).scalar_one()
                self.recovery.active.add(run_id)
                await write_audit_entry(
                    conn,
                    actor[:64],
                    "gc.dry_run" if dry_run else "gc.run",
                    project_id=project_id,
                    target=f"run {run_id}",
                    detail={"run": run_id, "dry_run": dry_run, "delete_untagged": delete_untagged},
                    client=client[:64] if client else None,
                )
                if not dry_run:
                    # What a failed run of this project left becomes this run's work: files
                    # to sweep, and objects of blobs whose rows it deleted (pushes of those
                    # wait for them again).
                    failed_runs = select(gc_runs.c.id).where(
                        gc_runs.c.project_id == project_id, gc_runs.c.state != RUNNING
                    )
                    for left in (gc_sweep, blob_removals):
                        await conn.execute(
                            update(left).where(left.c.run_id.in_(failed_runs)).values(run_id=run_id)
                        )
                await self.leases.hold_in(conn, name, LEASE_SECONDS)
        except BaseException:
            if run_id is not None:
                self.recovery.active.discard(run_id)
            raise
        return run_id

    # ------------------------------------------------------------------ carrying a run out

    async def execute(self, run_id: int, progress: Progress | None = None) -> Run:
        """Carry out (or finish) a run whose lease this process holds. Never raises for the
        run's own failures: they are recorded in it."""
        self.recovery.active.add(run_id)
        run = await self.runs.load(run_id)
        lost = asyncio.Event()
        heartbeat = self.recovery.heartbeat(run.project_id, lost)
        heartbeat.start()
        # A store failing the run is said once, by the run's own line (with its reason), not
        # also by the store where it happens.
        with failures_said_by_caller():
            try:
                decision = Decision(0, 0, frozenset())  # decided already: a run taken over
                if run.phase in BEFORE_DELETING:
                    if run.dry_run:
                        await self._dry_run(run)
                        return await self.runs.record(run_id)
                    decision = await self._mark(run)
                    await self._pause_in(LISTING)
                await self.sweeper.list_for_sweep(run, decision.unlinked, decision.decided_at)
                await self.sweeper.sweep(run, progress, lost)
                await self.runs.finish(run)
            except asyncio.CancelledError:
                # This process is stopping: leave the run as any other process can pick it up.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._interrupted(run_id))
                raise
            except RunLost as stopped:
                logger.warning("gc run %s: %s", run_id, stopped or "taken over by another process")
            except OSError as exc:  # the blob store failed: its message says why, no traceback
                logger.error("gc run %s failed: %s", run_id, exc)
                await self.runs.fail(run_id, exc)
            except Exception as exc:
                logger.exception("gc run %s failed", run_id)
                await self.runs.fail(run_id, exc)
            finally:
                with contextlib.suppress(Exception):
                    await heartbeat.stop()
                self.recovery.active.discard(run_id)
                with contextlib.suppress(Exception):
                    await self.recovery.release(run.project_id)
        return await self.runs.record(run_id)

    async def _mark(self, run: RunRow) -> Decision:
        """Steps 1 and 2: restrict, decide and delete, lift the restriction."""
        async with self.db.write() as conn:
            if not await self.runs.to_marking(conn, run.id):
                raise RunLost()
            await impose_restriction(self.db, conn, run.project_id, run.id)
        restricted_at = time.monotonic()
        await self._pause_in(MARKING)
        decision = await self.decider.decide(run, dry_run=False)
        restricted = time.monotonic() - restricted_at
        async with self.db.write() as conn:
            await conn.execute(
                update(gc_runs).where(gc_runs.c.id == run.id).values(restricted_seconds=restricted)
            )
        logger.info(
            "gc run %s: %s images and %s blob links deleted; writes refused for %.3f s",
            run.id,
            decision.images,
            len(decision.unlinked),
            restricted,
        )
        return decision

    async def _dry_run(self, run: RunRow) -> None:
        """The deciding transaction, rolled back: figures, no changes, no restriction."""
        async with self.db.write() as conn:
            if not await self.runs.to_marking(conn, run.id):
                raise RunLost()
        await self._pause_in(MARKING)
        try:
            await self.decider.decide(run, dry_run=True)
            raise AssertionError("a dry run ends in DryRunDone")
        except DryRunDone as done:
            decision, figures = done.decision, done.figures
        await self.runs.succeed(
            run.id,
            {
                "restricted_seconds": 0.0,
                "images_deleted": decision.images,
                "uploads_deleted": decision.uploads,
                "blobs_deleted": figures.blobs,
                "bytes_freed": figures.bytes,
                "storage_blobs_deleted": figures.storage_blobs,
                "storage_bytes_freed": figures.storage_bytes,
                **young_values(decision.young, self.grace_period),
            },
        )

    async def _interrupted(self, run_id: int) -> None:
        """This process is stopping mid-run. Before step 2 committed: roll back. After: leave
        the sweep for whichever process recovers it first (the lease is freed now)."""
        run = await self.runs.load(run_id)
        if run.phase in BEFORE_DELETING:
            await self.runs.roll_back(
                run, "interrupted (the server stopped) before deleting anything"
            )

    async def _pause_in(self, phase: str) -> None:
        if self._pause is not None and self._pause[0] == phase:
            logger.warning("gc: test pause of %.1f s in %s", self._pause[1], phase)
            await asyncio.sleep(self._pause[1])

    async def _pause_sweeping(self) -> None:
        await self._pause_in(SWEEPING)

    # ------------------------------------------------------------------ reading runs

    async def get_run(self, project: str, run_id: int) -> Run:
        return await self.runs.get(project, run_id)

    async def current(self, project: str) -> Run | None:
        """The project's running run, if any."""
        runs = await self.runs.history(project, limit=1, state=RUNNING)
        return runs[0] if runs else None

    async def history(self, project: str, *, limit: int = 50, offset: int = 0) -> list[Run]:
        """The project's runs, newest first."""
        return await self.runs.history(project, limit=limit, offset=offset)

    async def history_page(self, project: str, *, offset: int, limit: int) -> tuple[list[Run], int]:
        """A page of the project's runs, newest first, and how many runs there are."""
        runs = await self.runs.history(project, limit=limit, offset=offset)
        return runs, await self.runs.count(project)
