"""Image scans: queued on request or on push, run in the background (`scan_workers` at a
time across the install, each claimed by one process), results stored per manifest.

A scan reads an image manifest's layers (`layers.image_inventory`), keeps the inventory as the
digest's SBOM, and matches its packages against the imported vulnerability database. An index
is scanned platform by platform (each child gets its own scan, reused while current); the
index's findings are the union of its children's. A scan that cannot finish (a layer the
scanner cannot read, a blob missing from storage) is `failed` with the reason a user sees.
Each finished scan records the database's state it used: when an import has changed the
database since, its result is stale, and `rescan_stale` queues it again. A scan made while the
database was empty (state 0) checked nothing: it is stored as `done` at state 0, read as
`no_data` (no counts, the reason said), never as a clean result, and the first import that
adds records queues it again at once (`vulndb.import_path`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, null, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.errors import NotFound
from berth.domain.manifests import (
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MAX_INDEX_DEPTH,
    OCI_MANIFEST,
    ParsedManifest,
    parse_stored_manifest,
)
from berth.domain.names import joined_name
from berth.domain.references import RepositoryRef
from berth.domain.vulns import Severity
from berth.jobs.periodic import Periodic
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.tables import (
    manifests,
    repositories,
    scan_findings,
    scan_sboms,
    scans,
    utcnow,
)
from berth.services.scanning.finished import (
    announce_finished,
    counts_by_severity,
    finding_row,
    log_outcome,
    scanned_image,
)
from berth.services.scanning.inspection import inspect_image, inspect_in_child
from berth.services.scanning.layers import LayerRefused
from berth.services.scanning.processes import (
    ScanInterrupted,
    ScanProcesses,
    ScanProcessFailed,
)
from berth.services.scanning.results import (
    COUNTED,
    ScanFinding,
    ScanResult,
    counts_of,
    is_stale,
    reason_of,
    shown_state,
)
from berth.services.vulndb import VulnDb
from berth.storage.base import BlobStore

logger = logging.getLogger("berth.scans")
# A running scan renews its `alive_at` this often; one left "scanning" without renewal for
# ABANDONED_AFTER was cut short (its process stopped) and is queued again.
ALIVE_EVERY = 60.0
ABANDONED_AFTER = dt.timedelta(minutes=5)


def scan_queue_job(worker: int) -> str:
    """The name of the scheduled job (and its lease) of scan worker `worker` (from 1): the
    first keeps the name the single worker had."""
    return "scan-queue" if worker == 1 else f"scan-queue-{worker}"


def _abandoned(db: Database) -> Any:
    """A scan whose process stopped: "scanning", not renewed for ABANDONED_AFTER (rows a
    version without `alive_at` left count from when they started). By the database's clock,
    as `alive_at` is written: a node whose own clock runs ahead would take a scan another node
    is running for abandoned, and run it again."""
    last_seen = func.coalesce(scans.c.alive_at, scans.c.started_at)
    return and_(scans.c.state == "scanning", last_seen < db.clock(-ABANDONED_AFTER.total_seconds()))


def _claimed(db: Database) -> dict[str, Any]:
    """What claiming a scan writes (its times by the database's clock: `_abandoned`)."""
    now = db.clock()
    return {"state": "scanning", "started_at": now, "alive_at": now, "reason": None}


class ScanFailed(Exception):
    """Why a scan could not finish (stored as its reason)."""


class Scans:
    def __init__(
        self,
        db: Database,
        store: BlobStore,
        vulndb: VulnDb,
        on_finished: Callable[[], None] | None = None,
        processes: ScanProcesses | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.vulndb = vulndb
        # Where an image's layers are read and matched: these processes (a serving node's),
        # else this process (the CLI's `scan --wait`, which serves nothing).
        self.processes = processes
        # Told when a result is stored, so this node's pull-policy verdicts are not a second
        # late (other nodes keep theirs at most VERDICT_SECONDS).
        self.on_finished = on_finished

    # --- requests -----------------------------------------------------------------------

    async def _manifest_id(self, repository_id: int, image: str, digest: str) -> int:
        async with self.db.read() as conn:
            found = (
                await conn.execute(
                    select(manifests.c.id).where(
                        manifests.c.repository_id == repository_id,
                        manifests.c.image == image,
                        manifests.c.digest == digest,
                    )
                )
            ).scalar()
        if found is None:
            raise NotFound(f"no image {digest} in this repository")
        return int(found)

    async def request_scan(
        self,
        repo: RepositoryRef,
        image: str,
        digest: str,
        actor: str,
        client: str | None = None,
    ) -> None:
        """Queue a scan of a stored manifest (a scan already queued or running stays as it is;
        a finished one is done again), audited as `image.scan`."""
        manifest_id = await self._manifest_id(repo.id, image, digest)
        name = joined_name(repo.name, image)
        async with self.db.write() as conn:
            await self._queue(conn, manifest_id, actor)
            await write_audit_entry(
                conn,
                actor,
                "image.scan",
                project_id=repo.project_id,
                target=f"{name}@{digest}",
                client=client,
            )

    async def _queue(self, conn: AsyncConnection, manifest_id: int, actor: str) -> None:
        now = utcnow()
        await conn.execute(
            self.db.insert_ignore(scans).values(
                manifest_id=manifest_id,
                state="queued",
                requested_by=actor[:64],
                requested_at=now,
                **dict.fromkeys((*COUNTED, "packages"), 0),
            )
        )
        # A finished result stays (counts, findings, `finished_at`) until the new one replaces
        # it: readers show it as the previous scan's. A failed attempt is no result to show.
        await conn.execute(
            update(scans)
            .where(scans.c.manifest_id == manifest_id, scans.c.state.in_(("done", "failed")))
            .values(
                state="queued",
                requested_by=actor[:64],
                requested_at=now,
                reason=None,
                finished_at=case((scans.c.state == "failed", null()), else_=scans.c.finished_at),
            )
        )

    async def result(self, repository_id: int, image: str, digest: str) -> ScanResult | None:
        """The image's scan with its findings; None when it was never scanned."""
        manifest_id = await self._manifest_id(repository_id, image, digest)
        current = await self.vulndb.state()
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(scans).where(scans.c.manifest_id == manifest_id))
            ).first()
            if row is None:
                return None
            found = [
                ScanFinding(
                    purl=f.purl,
                    name=f.name,
                    installed=f.installed,
                    fixed=f.fixed,
                    advisory_id=f.advisory_id,
                    aliases=json.loads(f.aliases),
                    summary=f.summary,
                    severity=f.severity,
                    link=f.link,
                )
                for f in await conn.execute(
                    select(scan_findings)
                    .where(scan_findings.c.scan_id == row.id)
                    .order_by(scan_findings.c.advisory_id, scan_findings.c.purl)
                )
            ]
        order = {s.label: s for s in Severity}
        found.sort(key=lambda f: (-order.get(f.severity, Severity.UNKNOWN), f.advisory_id, f.purl))
        return ScanResult(
            digest=digest,
            state=shown_state(row),
            reason=reason_of(row),
            stale=is_stale(row.state, row.vulndb_state, current),
            counts=counts_of(row),
            packages=row.packages,
            vulndb_state=row.vulndb_state,
            requested_by=row.requested_by,
            requested_at=row.requested_at,
            finished_at=row.finished_at,
            findings=found,
        )

    async def sbom(self, digest: str) -> dict[str, Any] | None:
        """The stored inventory of an image manifest (None: not scanned yet)."""
        async with self.db.read() as conn:
            text = (
                await conn.execute(
                    select(scan_sboms.c.inventory).where(scan_sboms.c.digest == digest)
                )
            ).scalar()
        return None if text is None else dict(json.loads(text))

    async def rescan_stale(self, actor: str = "rescan") -> int:
        """Queue again every finished scan made before the latest import that changed the
        database; how many."""
        current = await self.vulndb.state()
        async with self.db.write() as conn:
            result = await conn.execute(
                update(scans)
                .where(
                    scans.c.state == "done",
                    func.coalesce(scans.c.vulndb_state, 0) < current,
                )
                .values(state="queued", requested_by=actor, requested_at=utcnow())
            )
        return int(result.rowcount or 0)

    async def prune_sboms(self) -> int:
        """Remove the SBOMs of digests no repository holds any more (deleted images: their
        scans went with them); how many."""
        held = select(manifests.c.id).where(manifests.c.digest == scan_sboms.c.digest)
        async with self.db.write() as conn:
            result = await conn.execute(delete(scan_sboms).where(~held.exists()))
        return int(result.rowcount or 0)

    async def has_queued(self) -> bool:
        """Whether a scan waits: queued, or left scanning by a node that stopped."""
        async with self.db.read() as conn:
            found = (
                await conn.execute(
                    select(scans.c.id)
                    .where(or_(scans.c.state == "queued", _abandoned(self.db)))
                    .limit(1)
                )
            ).first()
        return found is not None

    # --- running ------------------------------------------------------------------------

    async def run_queued(self) -> int:
        """Scan everything queued, taking projects in turn (`_claim`); how many finished here.
        Several processes may run this at once: each scan is claimed by one of them."""
        await self._requeue_abandoned()
        done = 0
        while (claimed := await self._claim()) is not None:
            await self._run(*claimed)
            done += 1
        return done

    async def scan_now(
        self, repository_id: int, image: str, digest: str, *, poll: float = 1.0
    ) -> ScanResult:
        """Scan the image in this process unless another has claimed its queued scan (then
        wait for that one): its finished result."""
        manifest_id = await self._manifest_id(repository_id, image, digest)
        await self._scan_or_await(manifest_id, poll=poll)
        result = await self.result(repository_id, image, digest)
        if result is None:
            raise NotFound(f"image {digest} has no scan requested")
        return result

    async def _scan_or_await(
        self, manifest_id: int, *, poll: float = 1.0, announce: bool = True
    ) -> None:
        """Run the manifest's scan here if it is queued (or its process stopped), else wait
        until the process running it has finished; nothing when it has no scan."""
        while True:
            async with self.db.write() as conn:
                claimed = await conn.execute(
                    update(scans)
                    .where(
                        scans.c.manifest_id == manifest_id,
                        or_(scans.c.state == "queued", _abandoned(self.db)),
                    )
                    .values(**_claimed(self.db))
                    .returning(scans.c.id)
                )
                scan_id = claimed.scalar()
            if scan_id is not None:
                await self._run(int(scan_id), manifest_id, announce=announce)
                return
            async with self.db.read() as conn:
                state = (
                    await conn.execute(
                        select(scans.c.state).where(scans.c.manifest_id == manifest_id)
                    )
                ).scalar()
            if state is None or state in ("done", "failed"):
                return
            await asyncio.sleep(poll)

    async def _requeue_abandoned(self) -> None:
        async with self.db.write() as conn:
            await conn.execute(update(scans).where(_abandoned(self.db)).values(state="queued"))

    async def _claim(self) -> tuple[int, int] | None:
        """The next queued scan, marked as scanning: of the project whose last scan started
        longest ago (never first), then the oldest request. Few scans run at a time, so by
        request order alone one project queueing many large images would hold every other
        project's scans back behind all of them."""
        # Aggregated once per claim, not per queued scan: a rescan of stale results queues
        # every image of the install.
        by_project = scans.join(manifests, manifests.c.id == scans.c.manifest_id).join(
            repositories, repositories.c.id == manifests.c.repository_id
        )
        last_started = (
            select(repositories.c.project_id, func.max(scans.c.started_at).label("at"))
            .select_from(by_project)
            .group_by(repositories.c.project_id)
            .subquery()
        )
        while True:
            async with self.db.read() as conn:
                row = (
                    await conn.execute(
                        select(scans.c.id, scans.c.manifest_id)
                        .select_from(
                            by_project.outerjoin(
                                last_started,
                                last_started.c.project_id == repositories.c.project_id,
                            )
                        )
                        .where(scans.c.state == "queued")
                        .order_by(
                            last_started.c.at.is_not(None),
                            last_started.c.at,
                            scans.c.requested_at,
                            scans.c.id,
                        )
                        .limit(1)
                    )
                ).first()
            if row is None:
                return None
            async with self.db.write() as conn:
                claimed = await conn.execute(
                    update(scans)
                    .where(scans.c.id == row.id, scans.c.state == "queued")
                    .values(**_claimed(self.db))
                )
            if claimed.rowcount:
                return int(row.id), int(row.manifest_id)

    async def _run(self, scan_id: int, manifest_id: int, *, announce: bool = True) -> None:
        """Scan and store the result; `announce`: queue its `scan.finished` webhook event (not
        for a platform manifest scanned as part of its index: the index's event says it)."""
        alive = self._keep_alive(scan_id)
        alive.start()
        try:
            state = await self.vulndb.state()
            try:
                found, packages = await self._scan_manifest(manifest_id, state)
            except ScanInterrupted:
                # The server is stopping: like a cancelled scan, left "scanning" for whichever
                # process finds it abandoned; a platform's, with its index's.
                if not announce:
                    raise
                logger.warning("scan of manifest %s: stopped with the server", manifest_id)
                return
            except ScanFailed as failure:
                await self._finish(scan_id, [], 0, state, str(failure), announce)
            except Exception as exc:
                # A background job's unforeseen failure: its message may name the server's files
                # (an OSError's path), so users see only its kind; the log has the rest.
                logger.exception("scan of manifest %s failed", manifest_id)
                reason = f"scan error ({type(exc).__name__}); the server's log has the details"
                await self._finish(scan_id, [], 0, state, reason, announce)
            else:
                await self._finish(scan_id, found, packages, state, None, announce)
        finally:
            await alive.stop()

    def _keep_alive(self, scan_id: int) -> Periodic:
        """Renews the running scan's `alive_at` (start it; stop it when the scan ends), so that
        no other process takes it for abandoned; a failed renewal is logged, the next may do."""

        async def renew() -> None:
            async with self.db.write() as conn:
                await conn.execute(
                    update(scans)
                    .where(scans.c.id == scan_id, scans.c.state == "scanning")
                    .values(alive_at=self.db.clock())
                )

        return Periodic(
            f"scan {scan_id} alive",
            ALIVE_EVERY,
            renew,
            failure=f"scan {scan_id}: could not renew alive_at",
        )

    async def _load(self, manifest_id: int) -> Any:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(
                        manifests.c.repository_id,
                        manifests.c.image,
                        manifests.c.digest,
                        manifests.c.media_type,
                        manifests.c.content,
                    ).where(manifests.c.id == manifest_id)
                )
            ).first()
        if row is None:
            raise ScanFailed("the image was deleted")
        return row

    async def _scan_manifest(self, manifest_id: int, state: int) -> tuple[list[ScanFinding], int]:
        row = await self._load(manifest_id)
        parsed = parse_stored_manifest(bytes(row.content), row.media_type)
        if parsed.is_index:
            await self._refuse_deep_nesting(row, parsed)
            return await self._scan_index(row, parsed, state)
        return await self._scan_image(row.digest, parsed)

    async def _scan_image(
        self, digest: str, parsed: ParsedManifest
    ) -> tuple[list[ScanFinding], int]:
        if parsed.media_type not in (DOCKER_MANIFEST, OCI_MANIFEST):
            raise ScanFailed(f"{parsed.media_type} is not an image the scanner reads")
        layers = parsed.blobs[1:]  # the config comes first
        try:
            if self.processes is None:
                inspected = await inspect_image(self.vulndb, self.store, layers)
            else:
                inspected = await self.processes.run(inspect_in_child, layers)
        except (LayerRefused, ScanProcessFailed) as refused:
            raise ScanFailed(str(refused)) from None
        await self._keep_sbom(digest, inspected.sbom)
        return inspected.findings, inspected.packages

    async def _refuse_deep_nesting(self, row: Any, parsed: ParsedManifest) -> None:
        """ScanFailed when indexes below this one nest deeper than MAX_INDEX_DEPTH: the scan
        of an index scans its children first (each an index's scan of its own), so a chain
        of thousands would recurse until Python refuses. Checked before any child is
        scanned, so none is left with a failure that is not its own."""
        level = [parsed]
        seen: set[str] = {row.digest}
        for _ in range(MAX_INDEX_DEPTH):
            digests = {child.digest for index in level for child in index.children} - seen
            seen |= digests
            # What the children are stored as decides, not what their descriptors claim.
            below = []
            ordered = sorted(digests)
            for start in range(0, len(ordered), 500):
                async with self.db.read() as conn:
                    rows = await conn.execute(
                        select(manifests.c.content, manifests.c.media_type).where(
                            manifests.c.repository_id == row.repository_id,
                            manifests.c.image == row.image,
                            manifests.c.digest.in_(ordered[start : start + 500]),
                            manifests.c.media_type.in_(INDEX_TYPES),
                        )
                    )
                    below += [parse_stored_manifest(bytes(r.content), r.media_type) for r in rows]
            if not below:
                return
            level = below
        raise ScanFailed(
            f"indexes nested more than {MAX_INDEX_DEPTH} deep below this one; the scanner "
            "reads at most that many"
        )

    async def _scan_index(
        self, row: Any, parsed: ParsedManifest, state: int
    ) -> tuple[list[ScanFinding], int]:
        union: dict[tuple[str, str], ScanFinding] = {}
        packages = 0
        for child in parsed.children:
            platform = child.platform or {}
            label = "/".join(
                str(platform[k]) for k in ("os", "architecture", "variant") if platform.get(k)
            )
            if platform.get("os") == "unknown":
                continue  # attestations buildkit stores beside the platforms, not images
            try:
                child_id = await self._manifest_id(row.repository_id, row.image, child.digest)
            except NotFound:
                raise ScanFailed(f"platform {label or child.digest}: manifest missing") from None
            found, count = await self._child_result(child_id, state)
            if isinstance(found, str):
                raise ScanFailed(f"platform {label or child.digest}: {found}")
            packages += count
            for finding in found:
                union.setdefault((finding.advisory_id, finding.purl), finding)
        return [union[k] for k in sorted(union)], packages

    async def _child_result(
        self, manifest_id: int, state: int
    ) -> tuple[list[ScanFinding] | str, int]:
        """A platform manifest's findings: its own scan's while current, else scanned now
        (and stored as its scan); a string says why it failed."""
        async with self.db.read() as conn:
            own = (
                await conn.execute(select(scans).where(scans.c.manifest_id == manifest_id))
            ).first()
        if own is None or own.state != "done" or (own.vulndb_state or 0) < state:
            # Another index sharing this platform, or the platform's own queued scan, may be
            # scanning it in another process: then its result is awaited, not made twice.
            async with self.db.write() as conn:
                await self._queue(conn, manifest_id, "index")
            await self._scan_or_await(manifest_id, announce=False)
        async with self.db.read() as conn:
            own = (
                await conn.execute(select(scans).where(scans.c.manifest_id == manifest_id))
            ).first()
            if own is None:
                return "manifest missing", 0
            if own.state == "failed":
                return str(own.reason), 0
            rows = await conn.execute(
                select(scan_findings).where(scan_findings.c.scan_id == own.id)
            )
            found = [ScanFinding(**{**r._asdict(), "aliases": json.loads(r.aliases)}) for r in rows]
        return found, int(own.packages)

    async def _keep_sbom(self, digest: str, document: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(scan_sboms).where(scan_sboms.c.digest == digest))
            await conn.execute(
                insert(scan_sboms).values(digest=digest, inventory=document, created_at=utcnow())
            )

    async def _finish(
        self,
        scan_id: int,
        found: list[ScanFinding],
        packages: int,
        state: int,
        reason: str | None,
        announce: bool = True,
    ) -> None:
        async with self.db.write() as conn:
            await conn.execute(delete(scan_findings).where(scan_findings.c.scan_id == scan_id))
            if found:
                await conn.execute(insert(scan_findings), [finding_row(scan_id, f) for f in found])
            await conn.execute(
                update(scans)
                .where(scans.c.id == scan_id)
                .values(
                    state="failed" if reason else "done",
                    reason=reason,
                    packages=packages,
                    vulndb_state=state,
                    finished_at=utcnow(),
                    **counts_by_severity(found),
                )
            )
            scanned = await scanned_image(conn, scan_id)
            if announce and scanned is not None and not scanned.covered:
                await announce_finished(conn, scanned, found, packages, reason, with_data=state > 0)
        log_outcome(scanned, scan_id, found, packages, reason, with_data=state > 0)
        if self.on_finished is not None:
            self.on_finished()
