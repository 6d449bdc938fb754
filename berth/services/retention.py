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
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import InvalidValue, NotFound
from berth.domain.references import RepositoryRef
from berth.domain.retention import (
    COMBINATION_RULE,
    MAX_RULES,
    Deletion,
    Keep,
    Manifest,
    Plan,
    Protected,
    Rule,
    RuleInvalid,
    plan,
)
from berth.domain.schedules import Schedule, ScheduleInvalid, parse_schedule
from berth.domain.tag_rules import ImmutableTagRule, protecting_rule
from berth.domain.wording import counted
from berth.jobs.leases import Lease, Leases, default_holder
from berth.jobs.periodic import Periodic
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.lookups import count_in_project, require_project
from berth.metadata.queries import rows_in_chunks
from berth.metadata.tables import (
    job_leases,
    manifest_references,
    manifests,
    projects,
    repositories,
    retention_policies,
    retention_runs,
    tags,
    utcnow,
)
from berth.services.platform_manifests import IndexListings, settle
from berth.services.registry import Registry
from berth.services.tag_rules import immutable_rules

logger = logging.getLogger("berth.retention")

BATCH = 200  # planned images deleted per write transaction
SCHEDULE_ACTOR = "schedule"
AFTER_GC = "Deleted images' storage is freed by the next garbage collection ({how})."

# States of a run: a real one is recorded running when it starts.
RUNNING, SUCCEEDED, FAILED, INTERRUPTED = "running", "succeeded", "failed", "interrupted"
LEASE_SECONDS = 30.0  # a run whose lease nobody renewed for this long is marked interrupted
HEARTBEAT_SECONDS = 5.0
RECOVERY_SECONDS = 10.0  # how often a serving process looks for interrupted runs


def lease_name(run_id: int) -> str:
    return f"retention-run:{run_id}"


class RunStopped(Exception):
    """The run was marked interrupted meanwhile (it stalled past its lease): its batch in
    progress is rolled back, and it stops."""


@dataclass(frozen=True, slots=True)
class Policy:
    project: str
    rules: list[Rule]
    schedule: str | None
    next_run_at: dt.datetime | None
    updated_at: dt.datetime | None
    updated_by: str
    combination: str = COMBINATION_RULE


@dataclass(frozen=True, slots=True)
class PlannedImage:
    repository: str  # the repository path: repository[/image]
    digest: str
    tags: list[str]
    pushed_at: dt.datetime
    last_pulled_at: dt.datetime | None
    referrers: int  # referrers (signatures, SBOMs) deleted with it
    platform_manifests: int  # platform manifests of its index deleted with it


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    project: str
    actor: str
    dry_run: bool
    started_at: dt.datetime
    finished_at: dt.datetime | None
    rules: list[Rule]
    images_deleted: int
    images_skipped: int
    deleted: list[PlannedImage]
    kept: int | None  # images in some rule's scope that stay (None: a run recorded before 0023)
    untouched: int | None  # images outside every rule's scope (None: as `kept`)
    error: str | None
    note: str
    state: str = SUCCEEDED


def rules_to_json(rules: Sequence[Rule]) -> str:
    return json.dumps([{k: v for k, v in asdict(rule).items() if v is not None} for rule in rules])


def rules_from_json(text: str) -> list[Rule]:
    return [Rule(**{**item, "keep": Keep(item["keep"])}) for item in json.loads(text)]


def check_rules(rules: Sequence[Rule]) -> None:
    if len(rules) > MAX_RULES:
        raise RuleInvalid(f"a policy holds at most {MAX_RULES} rules")
    for number, rule in enumerate(rules, start=1):
        try:
            rule.check()
        except RuleInvalid as exc:
            raise RuleInvalid(f"rule {number}: {exc}") from None


def _planned(deletion: Deletion) -> PlannedImage:
    return PlannedImage(
        repository=deletion.path,
        digest=deletion.image.digest,
        tags=sorted(deletion.image.tags | {t for c in deletion.children for t in c.tags}),
        pushed_at=deletion.image.pushed_at,
        last_pulled_at=deletion.image.last_pulled_at,
        referrers=len(deletion.referrers),
        platform_manifests=len(deletion.children),
    )


def _planned_to_json(items: Sequence[PlannedImage]) -> str:
    return json.dumps(
        [
            {
                "repository": item.repository,
                "digest": item.digest,
                "tags": item.tags,
                "referrers": item.referrers,
                "platform_manifests": item.platform_manifests,
                "pushed_at": item.pushed_at.isoformat(),
                "last_pulled_at": item.last_pulled_at.isoformat() if item.last_pulled_at else None,
            }
            for item in items
        ]
    )


def _planned_from_json(text: str) -> list[PlannedImage]:
    found = []
    for item in json.loads(text):
        pulled = item.get("last_pulled_at")
        found.append(
            PlannedImage(
                **{
                    **item,
                    "pushed_at": dt.datetime.fromisoformat(item["pushed_at"]),
                    "last_pulled_at": dt.datetime.fromisoformat(pulled) if pulled else None,
                }
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class Snapshot:
    project_id: int
    taken_at: dt.datetime
    manifests: list[Manifest]
    ids: dict[tuple[str, str, str], int]  # (repository, image, digest) -> manifest id
    repositories: dict[str, RepositoryRef]  # by name
    protected: Protected


@dataclass(frozen=True, slots=True)
class PreparedRun:
    project: str
    project_id: int
    rules: list[Rule]
    snapshot: Snapshot
    plan: Plan


def tag_protection(locked: set[str], rules: list[ImmutableTagRule]) -> Protected:
    """Tags that cannot move: every tag of a repository whose tag overwrite is off, and every
    tag an immutable tag rule of the project covers."""

    def protected(path: str, tag: str) -> bool:
        return path.split("/", 1)[0] in locked or protecting_rule(rules, path, tag) is not None

    return protected


class Retention:
    def __init__(self, db: Database, registry: Registry, *, test_pause: float = 0.0) -> None:
        self.db = db
        self.registry = registry
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

    # ------------------------------------------------------------------ snapshot and plan

    async def snapshot(self, conn: AsyncConnection, project_id: int, project: str) -> Snapshot:
        taken_at = utcnow()
        repo_rows = (
            await conn.execute(
                select(
                    repositories.c.id,
                    repositories.c.name,
                    repositories.c.public,
                    repositories.c.tag_overwrite,
                ).where(repositories.c.project_id == project_id)
            )
        ).all()
        repos = {
            row.id: RepositoryRef(
                row.id, project_id, project, row.name, row.public, row.tag_overwrite
            )
            for row in repo_rows
        }
        in_project = manifests.c.repository_id.in_(list(repos))
        rows = (
            await conn.execute(
                select(
                    manifests.c.id,
                    manifests.c.repository_id,
                    manifests.c.image,
                    manifests.c.digest,
                    manifests.c.subject_digest,
                    manifests.c.pushed_at,
                    manifests.c.last_pulled_at,
                ).where(in_project)
            )
        ).all()
        tag_rows = (
            await conn.execute(
                select(tags.c.repository_id, tags.c.image, tags.c.digest, tags.c.name).where(
                    tags.c.repository_id.in_(list(repos))
                )
            )
        ).all()
        child_rows = (
            await conn.execute(
                select(manifest_references.c.manifest_id, manifest_references.c.digest)
                .join(manifests, manifests.c.id == manifest_references.c.manifest_id)
                .where(in_project, manifest_references.c.is_manifest)
            )
        ).all()
        tags_of: dict[tuple[int, str, str], set[str]] = defaultdict(set)
        for t in tag_rows:
            tags_of[(t.repository_id, t.image, t.digest)].add(t.name)
        children_of: dict[int, list[str]] = defaultdict(list)
        for c in child_rows:
            children_of[c.manifest_id].append(c.digest)
        found = []
        ids = {}
        for m in rows:
            repo = repos[m.repository_id]
            found.append(
                Manifest(
                    repository=repo.name,
                    image=m.image,
                    digest=m.digest,
                    tags=frozenset(tags_of.get((m.repository_id, m.image, m.digest), ())),
                    pushed_at=m.pushed_at,
                    last_pulled_at=m.last_pulled_at,
                    children=tuple(sorted(children_of.get(m.id, ()))),
                    subject=m.subject_digest,
                )
            )
            ids[(repo.name, m.image, m.digest)] = m.id
        return Snapshot(
            project_id,
            taken_at,
            found,
            ids,
            {repo.name: repo for repo in repos.values()},
            await self.protection(conn, project_id, list(repos.values())),
        )

    async def protection(
        self, conn: AsyncConnection, project_id: int, repos: list[RepositoryRef]
    ) -> Protected:
        """Which (repository path, tag) a run must never delete: every tag of a repository
        whose tag overwrite is off, and every tag an immutable tag rule covers."""
        locked = {repo.name for repo in repos if not repo.tag_overwrite}
        return tag_protection(locked, await immutable_rules(conn, project_id))

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
            snapshot = await self.snapshot(conn, project_id, project)
        result = plan(snapshot.manifests, rules, snapshot.taken_at, snapshot.protected)
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
                listed=[_planned(d) for d in result.deletions],
                result=result,
            )
        run_id = await self._record_start(prepared, actor)
        self.active.add(run_id)
        heartbeat = self._heartbeat(run_id)
        heartbeat.start()
        progress = _Progress(run_id)
        error = None
        try:
            for start in range(0, len(result.deletions), BATCH):
                batch = result.deletions[start : start + BATCH]
                await self._delete_batch(snapshot, batch, actor, client, progress)
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

    async def _delete_batch(
        self,
        snapshot: Snapshot,
        batch: Sequence[Deletion],
        actor: str,
        client: str | None,
        progress: _Progress,
    ) -> None:
        """Delete what is unchanged since the snapshot, in one transaction that also adds it
        to the run's record (`progress`)."""
        keys = [
            (snapshot.repositories[m.repository].id, m.image, m.digest)
            for d in batch
            for m in (d.image, *d.referrers, *d.children)
        ]
        async with self.db.write() as conn:
            # In chunks: a batch of indexes of many platform manifests each can name more
            # manifests than one statement may take parameters.
            current_ids = {
                (row.repository_id, row.image, row.digest): row.id
                for row in await rows_in_chunks(
                    conn,
                    keys,
                    lambda chunk: select(
                        manifests.c.id,
                        manifests.c.repository_id,
                        manifests.c.image,
                        manifests.c.digest,
                    ).where(_keys_in(manifests, chunk)),
                )
            }
            current_tags: dict[tuple[int, str, str], set[str]] = defaultdict(set)
            for row in await rows_in_chunks(
                conn,
                keys,
                lambda chunk: select(
                    tags.c.repository_id, tags.c.image, tags.c.digest, tags.c.name
                ).where(_keys_in(tags, chunk)),
            ):
                current_tags[(row.repository_id, row.image, row.digest)].add(row.name)
            listings = await IndexListings.read(conn, keys)
            # Protection as it is now: tag overwrite switched off since the snapshot counts.
            repo_ids = list({k[0] for k in keys})
            now_locked = [
                RepositoryRef(r.id, snapshot.project_id, "", r.name, False, r.tag_overwrite)
                for r in await conn.execute(
                    select(
                        repositories.c.id, repositories.c.name, repositories.c.tag_overwrite
                    ).where(repositories.c.id.in_(repo_ids))
                )
            ]
            protected = await self.protection(conn, snapshot.project_id, now_locked)
            results = []
            images: dict[tuple[int, str, str], str] = {}  # going, with the digest of its image
            children: list[tuple[Manifest, str]] = []
            referrers: list[tuple[Manifest, str]] = []
            for deletion in batch:
                image_key = self._key(snapshot, deletion.image)
                members = (deletion.image, *deletion.referrers, *deletion.children)
                if (
                    listings.is_listed(image_key)
                    or not self._unchanged(
                        snapshot, deletion.image, image_key, current_ids, current_tags
                    )
                    or any(protected(m.path, tag) for m in members for tag in m.tags)
                ):
                    results.append(False)
                    continue
                images[image_key] = deletion.image.digest
                listings.let_go(image_key, deletion.image.children)
                children.extend((child, deletion.image.digest) for child in deletion.children)
                referrers.extend((r, deletion.image.digest) for r in deletion.referrers)
                results.append(True)
            went_with = self._platform_manifests_going(
                snapshot, children, listings, current_ids, current_tags
            )
            referrers_with = self._referrers_going(
                snapshot, referrers, {**images, **went_with}, listings, current_ids, current_tags
            )
            by_repository: dict[int, list[tuple[str, str]]] = defaultdict(list)
            for repository_id, image, digest in (*images, *went_with, *referrers_with):
                by_repository[repository_id].append((image, digest))
            for repo in snapshot.repositories.values():
                if repo.id not in by_repository:
                    continue
                await self.registry.delete_images_in(
                    conn,
                    repo,
                    by_repository[repo.id],
                    actor=actor,
                    client=client,
                    went_with={
                        (image, digest): index
                        for (repository_id, image, digest), index in went_with.items()
                        if repository_id == repo.id
                    },
                    referrers_with={
                        (image, digest): index
                        for (repository_id, image, digest), index in referrers_with.items()
                        if repository_id == repo.id
                    },
                )
            await progress.record_in(conn, batch, results)

    def _platform_manifests_going(
        self,
        snapshot: Snapshot,
        children: list[tuple[Manifest, str]],
        listings: IndexListings,
        current_ids: dict[tuple[int, str, str], int],
        current_tags: dict[tuple[int, str, str], set[str]],
    ) -> dict[tuple[int, str, str], str]:
        """Which of the planned platform manifests go, by key -> the digest of their image:
        after every index of the batch that goes has let go of them, level by level down
        nested indexes (a nested index that goes lets go of its own). One still listed (by an
        index that stays, or was pushed since), or with a tag (given since the snapshot),
        stays, and so does what only it lists."""
        going: dict[tuple[int, str, str], str] = {}

        def goes(candidate: tuple[Manifest, str]) -> bool:
            child, index = candidate
            key = self._key(snapshot, child)
            same_row = (
                current_ids.get(key) == snapshot.ids[(child.repository, child.image, child.digest)]
            )
            if not (same_row and listings.goes_with_its_index(key, current_tags.get(key, set()))):
                return False
            going[key] = index
            listings.let_go(key, child.children)
            return True

        settle(children, goes)
        return going

    def _referrers_going(
        self,
        snapshot: Snapshot,
        referrers: list[tuple[Manifest, str]],
        going: dict[tuple[int, str, str], str],
        listings: IndexListings,
        current_ids: dict[tuple[int, str, str], int],
        current_tags: dict[tuple[int, str, str], set[str]],
    ) -> dict[tuple[int, str, str], str]:
        """Which of the planned referrers go, by key -> the digest of their image: those whose
        subject goes (an image, a platform manifest or a referrer of the batch going),
        unchanged since the snapshot, that no index that stays lists. One that stays keeps
        its own referrers."""
        gone = set(going)
        found: dict[tuple[int, str, str], str] = {}

        def goes(candidate: tuple[Manifest, str]) -> bool:
            referrer, index = candidate
            key = self._key(snapshot, referrer)
            if (
                (key[0], referrer.image, referrer.subject or "") not in gone
                or not self._unchanged(snapshot, referrer, key, current_ids, current_tags)
                or not listings.referrer_goes(key)
            ):
                return False
            found[key] = index
            gone.add(key)
            return True

        settle(referrers, goes)
        return found

    @staticmethod
    def _key(snapshot: Snapshot, m: Manifest) -> tuple[int, str, str]:
        return (snapshot.repositories[m.repository].id, m.image, m.digest)

    @staticmethod
    def _unchanged(
        snapshot: Snapshot,
        m: Manifest,
        key: tuple[int, str, str],
        current_ids: dict[tuple[int, str, str], int],
        current_tags: dict[tuple[int, str, str], set[str]],
    ) -> bool:
        """Still the row the snapshot saw, with no tag the snapshot did not see on it."""
        if current_ids.get(key) != snapshot.ids[(m.repository, m.image, m.digest)]:
            return False
        return current_tags.get(key, set()) <= m.tags

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
                        deleted=_planned_to_json(listed),
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
        progress: _Progress,
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
        return [self._run_of(project, row) for row in rows], int(total or 0)

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
        return self._run_of(project, row)

    @staticmethod
    def _run_of(project: str, row: Any) -> RunRecord:
        return RunRecord(
            id=row.id,
            project=project,
            actor=row.actor,
            dry_run=row.dry_run,
            started_at=row.started_at,
            finished_at=row.finished_at,
            rules=rules_from_json(row.rules),
            images_deleted=row.images_deleted,
            images_skipped=row.images_skipped,
            deleted=_planned_from_json(row.deleted) if "deleted" in row._fields else [],
            kept=row.images_kept,
            untouched=row.images_outside_rules,
            error=row.error,
            note=run_note(
                project, row.dry_run, row.images_deleted, row.images_skipped, state=row.state
            ),
            state=row.state,
        )

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


def _keys_in(table: Table, keys: Sequence[tuple[int, str, str]]) -> ColumnElement[bool]:
    """Rows of `table` with one of these (repository id, image, digest): grouped by
    repository and image, so each group is one range of their (repository, image, digest)
    index (a row-value IN scans the table on SQLite)."""
    groups: dict[tuple[int, str], list[str]] = defaultdict(list)
    for repository_id, image, digest in keys:
        groups[(repository_id, image)].append(digest)
    return or_(
        *(
            and_(
                table.c.repository_id == repository_id,
                table.c.image == image,
                table.c.digest.in_(digests),
            )
            for (repository_id, image), digests in groups.items()
        )
    )


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


def run_note(
    project: str,
    dry_run: bool,
    images: int,
    skipped: int,
    gc_command: str | None = None,
    *,
    state: str = SUCCEEDED,
) -> str:
    """What a run's record says of it: what a real run would do, or what this one did and
    how its storage is freed (`gc_command`, what collects the project's garbage as the reader
    would ask for it: by default the API's request and the console's page, as API clients and
    the console read it; the CLI gives only its own command)."""
    if dry_run:
        if not images:
            return "A real run would delete nothing now."
        these = "this" if images == 1 else "these"
        return (
            f"A real run would delete {these} {counted(images, 'image')} now; nothing was deleted."
        )
    note = f"Deleted {counted(images, 'image')}."
    if state == RUNNING:
        note = f"Running: deleted {counted(images, 'image')} so far."
    elif state == INTERRUPTED:
        note = (
            f"Interrupted (its process stopped) after deleting {counted(images, 'image')}; "
            "the rest of its plan was not carried out."
        )
    if skipped:
        note += (
            f" {counted(skipped, 'planned image')} changed since the run's snapshot and "
            f"{'was' if skipped == 1 else 'were'} kept."
        )
    how = gc_command or f"POST /api/v1/projects/{project}/gc, or the console's Management page"
    return f"{note} {AFTER_GC.format(how=how)}"


class _Progress:
    """What a real run has deleted so far: its record's counts and images."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.deleted: list[PlannedImage] = []
        self.skipped = 0

    async def record_in(
        self, conn: AsyncConnection, batch: Sequence[Deletion], results: Sequence[bool]
    ) -> None:
        """In the batch's transaction, add its outcome to the run's record: only while the
        run is running (else `RunStopped`, and the batch is rolled back)."""
        deleted = self.deleted + [_planned(d) for d, ok in zip(batch, results, strict=True) if ok]
        skipped = self.skipped + list(results).count(False)
        changed = await conn.execute(
            update(retention_runs)
            .where(retention_runs.c.id == self.run_id, retention_runs.c.state == RUNNING)
            .values(
                deleted=_planned_to_json(deleted),
                images_deleted=len(deleted),
                images_skipped=skipped,
            )
        )
        if not changed.rowcount:
            raise RunStopped(f"retention run {self.run_id} is no longer running")
        self.deleted, self.skipped = deleted, skipped
