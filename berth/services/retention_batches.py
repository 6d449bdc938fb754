"""A real retention run's deletes, a batch at a time, each in one write transaction that
first checks every planned manifest is still as the snapshot saw it (the same row, no tag the
snapshot did not see, no stored index listing it, no tag protected now) and adds what it
deleted to the run's record; a run marked interrupted meanwhile deletes nothing more
(`RunStopped`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import ColumnElement, Table, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.references import RepositoryRef
from berth.domain.retention import Deletion, Manifest
from berth.metadata.database import Database
from berth.metadata.queries import rows_in_chunks
from berth.metadata.tables import manifests, repositories, retention_runs, tags
from berth.services.platform_manifests import IndexListings, settle
from berth.services.registry import Registry
from berth.services.retention_records import RUNNING, PlannedImage, planned, planned_to_json
from berth.services.retention_snapshot import Snapshot, protection


class RunStopped(Exception):
    """The run was marked interrupted meanwhile (it stalled past its lease): its batch in
    progress is rolled back, and it stops."""


class Progress:
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
        deleted = self.deleted + [planned(d) for d, ok in zip(batch, results, strict=True) if ok]
        skipped = self.skipped + list(results).count(False)
        changed = await conn.execute(
            update(retention_runs)
            .where(retention_runs.c.id == self.run_id, retention_runs.c.state == RUNNING)
            .values(
                deleted=planned_to_json(deleted),
                images_deleted=len(deleted),
                images_skipped=skipped,
            )
        )
        if not changed.rowcount:
            raise RunStopped(f"retention run {self.run_id} is no longer running")
        self.deleted, self.skipped = deleted, skipped


async def delete_batch(
    db: Database,
    registry: Registry,
    snapshot: Snapshot,
    batch: Sequence[Deletion],
    actor: str,
    client: str | None,
    progress: Progress,
) -> None:
    """Delete what is unchanged since the snapshot, in one transaction that also adds it
    to the run's record (`progress`)."""
    keys = [
        (snapshot.repositories[m.repository].id, m.image, m.digest)
        for d in batch
        for m in (d.image, *d.referrers, *d.children)
    ]
    async with db.write() as conn:
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
                select(repositories.c.id, repositories.c.name, repositories.c.tag_overwrite).where(
                    repositories.c.id.in_(repo_ids)
                )
            )
        ]
        protected = await protection(conn, snapshot.project_id, now_locked)
        results = []
        images: dict[tuple[int, str, str], str] = {}  # going, with the digest of its image
        children: list[tuple[Manifest, str]] = []
        referrers: list[tuple[Manifest, str]] = []
        for deletion in batch:
            image_key = _key(snapshot, deletion.image)
            members = (deletion.image, *deletion.referrers, *deletion.children)
            if (
                listings.is_listed(image_key)
                or not _unchanged(snapshot, deletion.image, image_key, current_ids, current_tags)
                or any(protected(m.path, tag) for m in members for tag in m.tags)
            ):
                results.append(False)
                continue
            images[image_key] = deletion.image.digest
            listings.let_go(image_key, deletion.image.children)
            children.extend((child, deletion.image.digest) for child in deletion.children)
            referrers.extend((r, deletion.image.digest) for r in deletion.referrers)
            results.append(True)
        went_with = _platform_manifests_going(
            snapshot, children, listings, current_ids, current_tags
        )
        referrers_with = _referrers_going(
            snapshot, referrers, {**images, **went_with}, listings, current_ids, current_tags
        )
        by_repository: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for repository_id, image, digest in (*images, *went_with, *referrers_with):
            by_repository[repository_id].append((image, digest))
        for repo in snapshot.repositories.values():
            if repo.id not in by_repository:
                continue
            await registry.delete_images_in(
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
        key = _key(snapshot, child)
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
        key = _key(snapshot, referrer)
        if (
            (key[0], referrer.image, referrer.subject or "") not in gone
            or not _unchanged(snapshot, referrer, key, current_ids, current_tags)
            or not listings.referrer_goes(key)
        ):
            return False
        found[key] = index
        gone.add(key)
        return True

    settle(referrers, goes)
    return found


def _key(snapshot: Snapshot, m: Manifest) -> tuple[int, str, str]:
    return (snapshot.repositories[m.repository].id, m.image, m.digest)


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
