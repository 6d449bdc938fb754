"""Step 3 of a run, with writes allowed again: list what leaves storage, then remove it.

The blobs that lost a link in step 2, and any blob no repository links that is older than the
grace period, are listed in `gc_sweep`; batch by batch, the rows of those that no repository
links by then are deleted, each noted in `blob_removals` in the same transaction; once that has
committed, their objects are removed from the store and the notes go. No request to the store
is made while a row is locked: with the store slow, pushes would wait on those locks until
refused. The conditional delete is the compare-and-set against a concurrent push of the same
digest: a push that linked the blob first keeps row and object; a push after it waits until
the note is gone, then stores the object again (`services/uploads/commits.py`). Upload scratch files
go the same way.

Each removal from the store is fenced by the run's lease (`Recovery.fence`, one query per
batch): a process that stalled, and whose run another process took over and finished (a push
then storing the blob again), must not remove that new object late.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.exc import IntegrityError

from berth.metadata.database import Database
from berth.metadata.queries import chunks
from berth.metadata.tables import blob_removals, blobs, gc_runs, gc_sweep
from berth.services.gc.decide import (
    Decider,
    RunLost,
    linked_anywhere,
    stale_unlinked_blob,
    sweep_listing,
)
from berth.services.gc.reachability import collectable_from
from berth.services.gc.runs import Progress, RunBook, RunRow
from berth.storage.base import BlobStore

logger = logging.getLogger("berth.gc")

SWEEP_BATCH = 500  # files removed per transaction (and per progress update)


class Sweeper:
    def __init__(
        self,
        db: Database,
        store: BlobStore,
        runs: RunBook,
        decider: Decider,
        pause: Callable[[], Awaitable[None]],
        fence: Callable[[int], Awaitable[bool]],
    ) -> None:
        self.db = db
        self.store = store
        self.runs = runs
        self.decider = decider
        self._pause = pause  # the test hook that holds a run in its sweep
        self._fence = fence  # whether the project's run is still surely this process's

    async def list_for_sweep(
        self, run: RunRow, unlinked: frozenset[str], decided_at: dt.datetime | None = None
    ) -> None:
        """After step 2, with writes allowed again: the project's figures, and the sweep's
        list. On it go the blobs whose links step 2 removed, and every blob no repository
        links at all that is older than the grace period (its last repository was deleted,
        its link removed by a blob DELETE, or a run died before listing it): nobody can reach
        those, and no project's run would find them through its own links. `decided_at`: when
        step 2 decided (None: by a process that died since), by the database's clock."""
        grace = self.decider.grace_period
        async with self.db.read() as conn:
            figures = await self.decider.blob_figures(conn, run.project_id, unlinked, storage=False)
            # What stays unreferenced is younger than the grace period: say so, and until when
            # (counted here, not while the project's writes were refused). Not what was linked
            # since: a push after the decision, which this run never saw.
            young_blobs, linked_at = await self.decider.young_links(
                conn, run.project_id, decided_at
            )
            collectable = (
                await conn.execute(
                    select(gc_runs.c.young_collectable_at).where(gc_runs.c.id == run.id)
                )
            ).scalar()
        links_collectable = collectable_from(linked_at, grace)
        if links_collectable is not None:
            collectable = max(collectable or links_collectable, links_collectable)
        for chunk in chunks(sorted(unlinked)):
            async with self.db.write() as conn:
                await conn.execute(
                    sweep_listing(
                        self.db.insert_ignore(gc_sweep),
                        run.id,
                        "blob",
                        blobs.c.digest,
                        blobs.c.size,
                        blobs.c.digest.in_(chunk),
                    )
                )
        listed = (
            select(literal(1))
            .where(
                gc_sweep.c.run_id == run.id,
                gc_sweep.c.kind == "blob",  # the whole key: one index probe per blob
                gc_sweep.c.name == blobs.c.digest,
            )
            .exists()
        )
        async with self.db.write() as conn:
            await conn.execute(
                sweep_listing(
                    gc_sweep.insert(),
                    run.id,
                    "blob",
                    blobs.c.digest,
                    blobs.c.size,
                    stale_unlinked_blob(self.decider.cutoff()),
                    ~listed,
                )
            )
            to_sweep = select(func.count()).where(gc_sweep.c.run_id == run.id).scalar_subquery()
            # Objects whose rows are gone but which are still in the store: taken over from a
            # failed run, or of a batch a process that died had deleted.
            to_remove = (
                select(func.count()).where(blob_removals.c.run_id == run.id).scalar_subquery()
            )
            values: dict[str, Any] = {
                "progress_total": gc_runs.c.progress_done + to_sweep + to_remove,
                "young_blobs_kept": young_blobs,
                "young_collectable_at": collectable,
            }
            if unlinked:
                values.update(blobs_deleted=figures.blobs, bytes_freed=figures.bytes)
            await conn.execute(update(gc_runs).where(gc_runs.c.id == run.id).values(**values))

    async def sweep(self, run: RunRow, progress: Progress | None, lost: asyncio.Event) -> None:
        """Remove the listed blobs no repository links by now, rows and files, and the listed
        upload scratch files; a batch per transaction, recording progress. Stops (`RunLost`)
        once `lost` says another process took the run over."""
        paused = False
        await self._remove_objects(run)  # those of a batch a run cut short had deleted
        while True:
            if lost.is_set():
                raise RunLost()
            async with self.db.read() as conn:
                batch = (
                    await conn.execute(
                        select(gc_sweep.c.kind, gc_sweep.c.name)
                        .where(gc_sweep.c.run_id == run.id)
                        .order_by(gc_sweep.c.kind, gc_sweep.c.name)
                        .limit(SWEEP_BATCH)
                    )
                ).all()
            if not batch:
                return
            digests = [b.name for b in batch if b.kind == "blob"]
            upload_ids = [b.name for b in batch if b.kind == "upload"]
            for upload_id in upload_ids:  # their rows are gone: nobody can resume them
                await self.store.delete_upload(upload_id)
            try:
                removed, freed = await self._sweep_batch(run, digests, upload_ids)
            except IntegrityError:
                # PostgreSQL: a push of another project linked one of these blobs while the
                # batch deleted its row (the foreign key refused). Again, the push is seen.
                logger.info("gc run %s: a blob was linked meanwhile; sweeping again", run.id)
                removed, freed = await self._sweep_batch(run, digests, upload_ids)
            await self._remove_objects(run)
            logger.debug("gc run %s: removed %s blobs (%s bytes)", run.id, removed, freed)
            if progress is not None:
                progress(await self.runs.record(run.id))
            if not paused:
                paused = True
                await self._pause()

    async def _sweep_batch(
        self, run: RunRow, digests: list[str], upload_ids: list[str]
    ) -> tuple[int, int]:
        async with self.db.write() as conn:
            removed: list[tuple[str, int]] = []
            if digests:
                # The compare-and-set: a blob's row goes only while no repository links it,
                # noted as being removed from the store. A push that linked it first keeps
                # both. A push of the same digest after this waits for the deleted row until
                # we commit, then for the note to go, and stores its object again.
                deleted = await conn.execute(
                    delete(blobs)
                    .where(blobs.c.digest.in_(digests), ~linked_anywhere())
                    .returning(blobs.c.digest, blobs.c.size)
                )
                removed = [(row.digest, int(row.size)) for row in deleted]
                if removed:
                    noting = self.db.dialect_package.insert(blob_removals)
                    await conn.execute(
                        noting.on_conflict_do_update(
                            index_elements=["digest"],
                            set_={"run_id": run.id, "size": noting.excluded.size},
                        ),
                        [
                            {"digest": digest, "run_id": run.id, "size": size}
                            for digest, size in removed
                        ],
                    )
            for kind, names in (("blob", digests), ("upload", upload_ids)):
                if names:
                    # The batch is a run of the list's order: deleted as a key range (an IN
                    # list of hundreds of names made PostgreSQL compare each row to each).
                    await conn.execute(
                        delete(gc_sweep).where(
                            gc_sweep.c.run_id == run.id,
                            gc_sweep.c.kind == kind,
                            gc_sweep.c.name.between(names[0], names[-1]),
                        )
                    )
            # Done: what stays (linked meanwhile) and the uploads, whose files went before;
            # a removed blob is counted once its object is gone (`_remove_objects`).
            handled = len(digests) - len(removed) + len(upload_ids)
            await conn.execute(
                update(gc_runs)
                .where(gc_runs.c.id == run.id)
                .values(progress_done=gc_runs.c.progress_done + handled)
            )
        return len(removed), sum(size for _, size in removed)

    async def _remove_objects(self, run: RunRow) -> None:
        """Remove from the store the objects of the blobs whose rows the run deleted, then
        their notes, outside any transaction; pushes of those blobs wait for the notes. Only
        then are they counted as removed from storage: a run the store failed never says it
        removed what is still there."""
        while True:
            async with self.db.read() as conn:
                noted = (
                    await conn.execute(
                        select(blob_removals.c.digest, blob_removals.c.size)
                        .where(blob_removals.c.run_id == run.id)
                        .order_by(blob_removals.c.digest)
                        .limit(SWEEP_BATCH)
                    )
                ).all()
            if not noted:
                return
            digests = [row.digest for row in noted]
            if not await self._fence(run.project_id):
                raise RunLost("its lease is no longer surely this process's: stopped sweeping")
            # Not bounded in time: while this process is healthy its heartbeat keeps the
            # lease, so the run stays running and pushes of these blobs wait, however slow
            # the store; a run failed on a timeout would free those pushes while a DeleteObjects
            # already sent could still land after them.
            await self.store.delete_many(digests)
            async with self.db.write() as conn:
                await conn.execute(
                    delete(blob_removals).where(
                        blob_removals.c.run_id == run.id, blob_removals.c.digest.in_(digests)
                    )
                )
                await conn.execute(
                    update(gc_runs)
                    .where(gc_runs.c.id == run.id)
                    .values(
                        progress_done=gc_runs.c.progress_done + len(noted),
                        storage_blobs_deleted=gc_runs.c.storage_blobs_deleted + len(noted),
                        # A note older than its size column counts no bytes.
                        storage_bytes_freed=gc_runs.c.storage_bytes_freed
                        + sum(row.size or 0 for row in noted),
                    )
                )
