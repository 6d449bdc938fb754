"""Retention policies: a project's rules, dry runs and runs, their history and their schedule.

A run reads a snapshot of the project's manifests (no content), plans with
`domain.retention.plan`, and deletes the plan in batches, each in one write transaction that
first checks every planned manifest is still as the snapshot saw it: the same row (not deleted
and pushed again), no tag on it that the snapshot did not see (re-tagged since), and, for an
image or a platform manifest, no stored index listing it. What changed is skipped and
reported. Deleting goes through `Registry.delete_images_in`, the batch form of the API's image
delete, so image history, webhook events and the audit log record each image as they do any
delete; the space comes back at the next garbage collection.

A real run is recorded when it starts (state running), and its record takes each batch's
deletions in that batch's transaction, so a node that dies mid-run leaves a record of what it
deleted. The run holds a lease (`retention-run:{id}`, renewed while it works); any serving
process marks a running run whose lease lapsed, or whose process on this machine is gone,
`interrupted`, with the counts of what it did. A batch commits only while its run is still
running: a run marked interrupted (it stalled past its lease) deletes nothing more.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence

from sqlalchemy import and_, delete, select, update

from berth.domain.errors import InvalidValue, NotFound
from berth.domain.retention import (
    Plan,
    Rule,
    RuleInvalid,
    plan,
)
from berth.domain.schedules import Schedule, ScheduleInvalid, parse_schedule
from berth.domain.wording import counted
from berth.jobs.leases import Lease, Leases, default_holder
from berth.jobs.periodic import Periodic
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.lookups import count_in_project, require_project
from berth.metadata.tables import (
    job_leases,
    projects,
    retention_policies,
    retention_runs,
    utcnow,
)
from berth.services.registry import Registry
from berth.services.retention_batches import Progress, RunStopped, delete_batch
from berth.services.retention_records import (
    FAILED,
    INTERRUPTED,
    RUNNING,
    SUCCEEDED,
    PlannedImage,
    Policy,
    RunRecord,
    check_rules,
    planned,
    planned_to_json,
    rules_from_json,
    rules_to_json,
    run_record,
)
from berth.services.retention_snapshot import PreparedRun, take_snapshot

logger = logging.getLogger("berth.retention")

BATCH = 200  # planned images deleted per write transaction
SCHEDULE_ACTOR = "schedule"
LEASE_SECONDS = 30.0  # a run whose lease nobody renewed for this long is marked interrupted
HEARTBEAT_SECONDS = 5.0
RECOVERY_SECONDS = 10.0  # how often a serving process looks for interrupted runs


def lease_name(run_id: int) -> str:
    return f"retention-run:{run_id}"


class Retention:
    def __init__(
        self,
        db: Database,
        registry: Registry,
        *,
        settling_seconds: float = 0.0,
        test_pause: float = 0.0,
    ) -> None:
        self.db = db
        self.registry = registry
        # An untagged image younger than this is left to settle (`berth.domain.retention`).
        self.settling_seconds = settling_seconds
        self.leases = Leases(db, default_holder())
        self.active: set[int] = set()  # real runs this process is carrying out
        self._test_pause = test_pause  # testing only: seconds to wait after each batch
        self._recovering = Periodic(
            "retention recovery",
            RECOVERY_SECONDS,
            self.mark_interrupted,
            failure="retention: could not look for interrupted runs",
            at_start=True,
        )

    def start(self) -> None:
        """Mark interrupted runs now and every few seconds (a serving process's work)."""
        self._recovering.start()

    async def stop(self) -> None:
        await self._recovering.stop()

    # ------------------------------------------------------------------ the policy

    async def policy(self, project: str) -> Policy:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            row = (
                await conn.execute(
                    select(retention_policies).where(retention_policies.c.project_id == project_id)
                )
            ).first()
        if row is None:
            return Policy(project, [], None, None, None, "")
        return Policy(
            project,
            rules_from_json(row.rules),
            row.schedule,
            row.next_run_at,
            row.updated_at,
            row.updated_by,
        )

    async def set_policy(
        self,
        project: str,
        rules: Sequence[Rule],
        schedule: str | None,
        *,
        actor: str,
        client: str | None,
    ) -> Policy:
        try:
            check_rules(rules)
        except RuleInvalid as exc:
            raise InvalidValue(str(exc), "rules") from None
        parsed: Schedule | None = None
        if schedule:
            try:
                parsed = parse_schedule(schedule)
            except ScheduleInvalid as exc:
                raise InvalidValue(str(exc), "schedule") from None
        now = utcnow()
        next_run = parsed.next_after(now) if parsed is not None else None
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            values = {
                "rules": rules_to_json(rules),
                "schedule": parsed.text if parsed is not None else None,
                "next_run_at": next_run,
                "updated_at": now,
                "updated_by": actor[:64],
            }
            await conn.execute(
                self.db.upsert(retention_policies, ["project_id"], values).values(
                    project_id=project_id, **values
                )
            )
            await write_audit_entry(
                conn,
                actor,
                "retention.policy",
                project_id=project_id,
                target=project,
                detail={
                    "rules": [rule.describe() for rule in rules],
                    "schedule": values["schedule"],
                },
                client=client,
            )
        return await self.policy(project)

    # ------------------------------------------------------------------ runs

    async def prepare(self, project: str, rules: Sequence[Rule] | None = None) -> PreparedRun:
        """Read the snapshot and plan: what a run started now deletes (the project's policy,
        or `rules`)."""
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            if rules is None:
                text = (
                    await conn.execute(
                        select(retention_policies.c.rules).where(
                            retention_policies.c.project_id == project_id
                        )
                    )
                ).scalar()
                rules = rules_from_json(text) if text else []
            snapshot = await take_snapshot(conn, project_id, project)
        result = plan(
            snapshot.manifests,
            rules,
            snapshot.taken_at,
            snapshot.protected,
            settling=dt.timedelta(seconds=self.settling_seconds),
        )
        return PreparedRun(project, project_id, list(rules), snapshot, result)

    async def run(
        self,
        project: str,
        *,
        dry_run: bool,
        actor: str,
        client: str | None = None,
        rules: Sequence[Rule] | None = None,
    ) -> RunRecord:
        """Apply the project's policy (or `rules`): a dry run lists what a real run would
        delete; a real run deletes it, skipping what changed since its snapshot."""
        prepared = await self.prepare(project, rules)
        return await self.carry_out(prepared, dry_run=dry_run, actor=actor, client=client)

    async def carry_out(
        self, prepared: PreparedRun, *, dry_run: bool, actor: str, client: str | None = None
    ) -> RunRecord:
        """Record a dry run of `prepared`, or delete its plan and record the run."""
        result, snapshot = prepared.plan, prepared.snapshot
        if dry_run:
            return await self._record(
                prepared.project,
                prepared.project_id,
                actor,
                client,
                started_at=snapshot.taken_at,
                rules=prepared.rules,
                listed=[planned(d) for d in result.deletions],
                result=result,
            )
        run_id = await self._record_start(prepared, actor)
        self.active.add(run_id)
        heartbeat = self._heartbeat(run_id)
        heartbeat.start()
        progress = Progress(run_id)
        error = None
        try:
            for start in range(0, len(result.deletions), BATCH):
                batch = result.deletions[start : start + BATCH]
                await delete_batch(self.db, self.registry, snapshot, batch, actor, client, progress)
                if self._test_pause:
                    await asyncio.sleep(self._test_pause)
        except RunStopped:
            logger.warning("retention run %s was marked interrupted: it stops", run_id)
        except Exception as exc:
            logger.exception("retention run of project %s failed", prepared.project)
            error = str(exc) or type(exc).__name__
        finally:
            await heartbeat.stop()
            self.active.discard(run_id)
        return await self._record_end(prepared, actor, client, progress, error)

    async def _record(
        self,
        project: str,
        project_id: int,
        actor: str,
        client: str | None,
        *,
        started_at: dt.datetime,
        rules: list[Rule],
        listed: list[PlannedImage],
        result: Plan,
    ) -> RunRecord:
        """Record a dry run (it changes nothing, so it is recorded once done)."""
        async with self.db.write() as conn:
            inserted = (
                await conn.execute(
                    retention_runs.insert().values(
                        project_id=project_id,
                        actor=actor[:64],
                        dry_run=True,
                        started_at=started_at,
                        finished_at=utcnow(),
                        rules=rules_to_json(rules),
                        deleted=planned_to_json(listed),
                        images_deleted=len(listed),
                        images_skipped=0,
                        images_kept=result.kept,
                        images_outside_rules=result.untouched,
                        state=SUCCEEDED,
                    )
                )
            ).inserted_primary_key
            assert inserted is not None
            run_id = int(inserted[0])
            await write_audit_entry(
                conn,
                actor,
                "retention.dry_run",
                project_id=project_id,
                target=project,
                detail={"run": run_id, "images": len(listed), "skipped": 0},
                client=client,
            )
        _log_run(project, actor, run_id, True, len(listed), 0, result, None)
        return await self.get_run(project, run_id)

    async def _record_start(self, prepared: PreparedRun, actor: str) -> int:
        """Record a real run as running, with the lease of this process that says it is at
        work, in one transaction: a run is never seen running without its lease."""
        async with self.db.write() as conn:
            inserted = (
                await conn.execute(
                    retention_runs.insert().values(
                        project_id=prepared.project_id,
                        actor=actor[:64],
                        dry_run=False,
                        started_at=prepared.snapshot.taken_at,
                        rules=rules_to_json(prepared.rules),
                        deleted="[]",
                        images_deleted=0,
                        images_skipped=0,
                        images_kept=prepared.plan.kept,
                        images_outside_rules=prepared.plan.untouched,
                        state=RUNNING,
                        holder=self.leases.holder,
                    )
                )
            ).inserted_primary_key
            assert inserted is not None
            run_id = int(inserted[0])
            await conn.execute(
                job_leases.insert().values(
                    name=lease_name(run_id),
                    holder=self.leases.holder,
                    expires_at=self.db.clock(LEASE_SECONDS),
                )
            )
        return run_id

    def _heartbeat(self, run_id: int) -> Periodic:
        name = lease_name(run_id)

        async def renew() -> None:
            await self.leases.renew(name, LEASE_SECONDS)

        return Periodic(
            f"retention lease {name}",
            HEARTBEAT_SECONDS,
            renew,
            failure=f"retention: could not renew the lease {name}",
        )

    async def _record_end(
        self,
        prepared: PreparedRun,
        actor: str,
        client: str | None,
        progress: Progress,
        error: str | None,
    ) -> RunRecord:
        """End the run's record (unless it was marked interrupted meanwhile) with its audit
        entry and log line; its lease goes."""
        project, run_id = prepared.project, progress.run_id
        async with self.db.write() as conn:
            ended = await conn.execute(
                update(retention_runs)
                .where(retention_runs.c.id == run_id, retention_runs.c.state == RUNNING)
                .values(state=FAILED if error else SUCCEEDED, finished_at=utcnow(), error=error)
            )
            if ended.rowcount:
                await write_audit_entry(
                    conn,
                    actor,
                    "retention.run",
                    project_id=prepared.project_id,
                    target=project,
                    detail={
                        "run": run_id,
                        "images": len(progress.deleted),
                        "skipped": progress.skipped,
                        **({"error": error} if error else {}),
                    },
                    client=client,
                )
            await conn.execute(delete(job_leases).where(job_leases.c.name == lease_name(run_id)))
        if ended.rowcount:
            _log_run(
                project,
                actor,
                run_id,
                False,
                len(progress.deleted),
                progress.skipped,
                prepared.plan,
                error,
            )
        return await self.get_run(project, run_id)

    # ------------------------------------------------------------------ interrupted runs

    def _holder_alive(self, lease: Lease | None, run_id: int) -> bool:
        """Whether the run's process may still be at work on it."""
        if lease is None or lease.remaining <= 0:
            return False
        return lease.holder_at_work(self.leases.holder, run_id in self.active)

    async def mark_interrupted(self) -> int:
        """Mark `interrupted` every running run whose process is gone (its lease lapsed, or
        its process on this machine no longer exists), keeping the counts of what it did;
        returns how many."""
        async with self.db.read() as conn:
            running = (
                await conn.execute(
                    select(
                        retention_runs.c.id,
                        retention_runs.c.project_id,
                        retention_runs.c.actor,
                        retention_runs.c.holder,
                        retention_runs.c.images_deleted,
                        retention_runs.c.images_skipped,
                        projects.c.name.label("project"),
                    )
                    .join(projects, projects.c.id == retention_runs.c.project_id)
                    .where(retention_runs.c.state == RUNNING)
                )
            ).all()
        if not running:
            return 0
        leases = await self.leases.read(lease_name(row.id) for row in running)
        marked = 0
        for row in running:
            if self._holder_alive(leases.get(lease_name(row.id)), row.id):
                continue
            error = (
                f"interrupted: its process ({row.holder or 'unknown'}) stopped after deleting "
                f"{counted(row.images_deleted, 'image')}"
            )
            async with self.db.write() as conn:
                changed = await conn.execute(
                    update(retention_runs)
                    .where(retention_runs.c.id == row.id, retention_runs.c.state == RUNNING)
                    .values(state=INTERRUPTED, finished_at=utcnow(), error=error)
                )
                if not changed.rowcount:
                    continue  # it ended, or another process marked it, meanwhile
                await write_audit_entry(
                    conn,
                    row.actor,
                    "retention.run",
                    project_id=row.project_id,
                    target=row.project,
                    detail={
                        "run": row.id,
                        "images": row.images_deleted,
                        "skipped": row.images_skipped,
                        "error": error,
                    },
                )
                await conn.execute(
                    delete(job_leases).where(job_leases.c.name == lease_name(row.id))
                )
            logger.warning("retention run %s of project %s %s", row.id, row.project, error)
            marked += 1
        return marked

    # ------------------------------------------------------------------ history

    async def history(
        self, project: str, *, offset: int = 0, limit: int = 20
    ) -> tuple[list[RunRecord], int]:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            total = await count_in_project(conn, retention_runs, project_id)
            # Without the images (a run may list thousands): `get_run` has them.
            columns = [c for c in retention_runs.c if c.name != "deleted"]
            rows = (
                await conn.execute(
                    select(*columns)
                    .where(retention_runs.c.project_id == project_id)
                    .order_by(retention_runs.c.id.desc())
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
        return [run_record(project, row) for row in rows], int(total or 0)

    async def get_run(self, project: str, run_id: int) -> RunRecord:
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            row = (
                await conn.execute(
                    select(retention_runs).where(
                        retention_runs.c.project_id == project_id, retention_runs.c.id == run_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"project {project!r} has no retention run {run_id}")
        return run_record(project, row)

    # ------------------------------------------------------------------ the schedule

    async def run_due(self) -> int:
        """Run every policy whose schedule is due (the `retention-schedule` job, on one node
        at a time); returns how many ran. Each run's next time is set before it runs, so a
        run that fails is not retried in a loop."""
        now = utcnow()
        async with self.db.read() as conn:
            due = (
                await conn.execute(
                    select(
                        projects.c.name,
                        retention_policies.c.project_id,
                        retention_policies.c.schedule,
                    )
                    .join(projects, projects.c.id == retention_policies.c.project_id)
                    .where(
                        retention_policies.c.schedule.is_not(None),
                        retention_policies.c.next_run_at <= now,
                    )
                )
            ).all()
        ran = 0
        for row in due:
            try:
                schedule = parse_schedule(row.schedule)
            except ScheduleInvalid:
                continue
            async with self.db.write() as conn:
                moved = await conn.execute(
                    update(retention_policies)
                    .where(
                        retention_policies.c.project_id == row.project_id,
                        retention_policies.c.next_run_at <= now,
                    )
                    .values(next_run_at=schedule.next_after(now))
                )
            if not moved.rowcount:
                continue
            try:
                await self.run(row.name, dry_run=False, actor=SCHEDULE_ACTOR)
                ran += 1
            except Exception:
                logger.exception("scheduled retention run of project %s failed", row.name)
        return ran

    async def has_due(self) -> bool:
        async with self.db.read() as conn:
            found = (
                await conn.execute(
                    select(retention_policies.c.project_id)
                    .where(
                        and_(
                            retention_policies.c.schedule.is_not(None),
                            retention_policies.c.next_run_at <= utcnow(),
                        )
                    )
                    .limit(1)
                )
            ).first()
        return found is not None


def _log_run(
    project: str,
    actor: str,
    run_id: int,
    dry_run: bool,
    images: int,
    skipped: int,
    result: Plan,
    error: str | None,
) -> None:
    """One line per recorded run in the server's log, as the other jobs write theirs."""
    kind = "retention dry run" if dry_run else "retention run"
    verb = "would delete" if dry_run else "deleted"
    line = (
        f"{kind} {run_id} of project {project} by {actor}: {verb} "
        f"{counted(images, 'image')}, {skipped:,} skipped, {result.kept:,} kept, "
        f"{result.untouched:,} outside the rules"
    )
    if error:
        logger.warning("%s; stopped: %s", line, error)
    else:
        logger.info("%s", line)
