"""Copying an embedded install (its SQLite database and its blobs on the filesystem) into
another database and blob store: how a registry begun with `make run` moves to PostgreSQL and
S3 (`berth data copy`).

The rows go in one transaction on the destination, table after table in the order the
foreign keys need, ids kept; an interrupted copy leaves the destination as it was. Blobs go
first, each through the destination's driver and checked against its digest; those already
there are skipped, so a copy run again after an interruption goes on where it stopped.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Integer, Table, delete, func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.wording import counted
from berth.metadata.database import Database
from berth.metadata.tables import (
    blobs,
    install_facts,
    job_leases,
    login_failures,
    metadata,
    serving_processes,
    upload_pieces,
    uploads,
    users,
    utcnow,
)
from berth.services.install import KEY_FINGERPRINT, STORAGE_LOCATION
from berth.storage.base import BlobStore

# Rows read and written at a time: the copy never holds a whole table.
BATCH_ROWS = 500
# What a copy of the blobs writes at a time (S3 keeps each write of an upload as one piece).
BLOB_CHUNK_BYTES = 8 * 1024 * 1024

# Not copied: what each process keeps for itself while it runs (its presence, its job
# leases, login failures counted toward a lockout), and uploads in progress, whose bytes are
# in the old data directory's scratch files: their clients start them again.
NOT_COPIED: frozenset[Table] = frozenset(
    {serving_processes, job_leases, login_failures, uploads, upload_pieces}
)
# What a database `berth init` (or a first start) made may hold beside its schema; anything
# else makes it a registry of its own, which a copy would overwrite.
MADE_BY_INIT: frozenset[Table] = NOT_COPIED | {install_facts, users}
# The administrator `berth init` creates, and the audit entry of its creation.
INIT_USERS = 1
INIT_AUDIT_ENTRIES = 1


class CopyRefused(Exception):
    """The copy cannot be made as things are (the message says why and what to do)."""


def copied_tables() -> list[Table]:
    """The tables copied, parents before the rows that name them."""
    return [table for table in metadata.sorted_tables if table not in NOT_COPIED]


def _row_counts(connection: Connection) -> dict[str, int]:
    present = set(inspect(connection).get_table_names())
    return {
        table.name: int(connection.execute(select(func.count()).select_from(table)).scalar_one())
        for table in metadata.sorted_tables
        if table.name in present
    }


def row_counts_sync(connection: Connection) -> dict[str, int]:
    """How many rows each of Berth's tables holds (on a synchronous connection)."""
    return _row_counts(connection)


def beyond_init(counts: dict[str, int]) -> list[str]:
    """The tables of a destination that hold more than `berth init` makes (none: it is new),
    as `table (N rows)`."""
    found = []
    for name, count in counts.items():
        table = metadata.tables[name]
        allowed = 0
        if table in MADE_BY_INIT:
            allowed = INIT_USERS if table is users else count
        elif name == "audit_log":
            allowed = INIT_AUDIT_ENTRIES
        if count > allowed:
            found.append(f"{name} ({counted(count, 'row')})")
    return found


@dataclass
class CopiedRows:
    """Rows copied, per table."""

    tables: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.tables.values())


async def copy_rows(
    source: Database,
    destination: Database,
    *,
    storage_location: str,
    progress: Callable[[str, int], None] = lambda _table, _rows: None,
) -> CopiedRows:
    """Copy every table but NOT_COPIED from `source` into `destination`, in one transaction
    there that first clears what `berth init` made (the caller checked that is all it
    holds). The source is read in one transaction too: one consistent state of it. The
    install's recorded store becomes `storage_location`; where the last server was reached
    is left for the destination's first start to record."""
    copied = CopiedRows()
    async with source.read() as reading, reading.begin(), destination.write() as writing:
        for table in reversed(metadata.sorted_tables):
            await writing.execute(delete(table))
        for table in copied_tables():
            count = 0
            async for batch in _batches(reading, table):
                if table is install_facts:
                    batch = _facts_for_destination(batch, storage_location)
                if batch:
                    await writing.execute(table.insert(), batch)
                count += len(batch)
                progress(table.name, count)
            copied.tables[table.name] = count
        if not destination.is_sqlite:
            await _set_sequences_past_ids(writing)
    return copied


async def _batches(
    connection: AsyncConnection, table: Table
) -> AsyncIterator[list[dict[str, Any]]]:
    """`table`'s rows in batches of BATCH_ROWS, in primary key order, streamed."""
    order = list(table.primary_key.columns) or list(table.columns)
    result = await connection.stream(select(table).order_by(*order))
    async for rows in result.mappings().partitions(BATCH_ROWS):
        yield [dict(row) for row in rows]


def _facts_for_destination(rows: list[dict[str, Any]], location: str) -> list[dict[str, Any]]:
    """The install facts a destination keeps: the keys' fingerprint (the same keys go along),
    and its own store in place of the old data directory's."""
    kept = [row for row in rows if row["name"] == KEY_FINGERPRINT]
    if any(row["name"] == STORAGE_LOCATION for row in rows):
        kept.append({"name": STORAGE_LOCATION, "value": location, "recorded_at": utcnow()})
    return kept


async def _set_sequences_past_ids(connection: AsyncConnection) -> None:
    """PostgreSQL's id sequences past the ids copied: a row inserted next gets a new id, not
    one a copied row holds."""
    for table in copied_tables():
        keys = list(table.primary_key.columns)
        if len(keys) != 1 or not isinstance(keys[0].type, Integer):
            continue
        sequence = await connection.scalar(
            text("SELECT pg_get_serial_sequence(:table, :column)"),
            {"table": table.name, "column": keys[0].name},
        )
        highest = await connection.scalar(select(func.max(keys[0])))
        if sequence is not None and highest is not None:
            await connection.execute(
                text("SELECT setval(CAST(:sequence AS regclass), :value)"),
                {"sequence": sequence, "value": int(highest)},
            )


@dataclass
class CopiedBlobs:
    """What a copy of the blobs did."""

    copied: int = 0
    copied_bytes: int = 0
    present: int = 0  # in the destination already (a copy run again)
    missing: list[str] = field(default_factory=list)  # named by the database, not stored
    damaged: list[str] = field(default_factory=list)  # stored, but not their digest's bytes


async def recorded_blobs(source: Database) -> AsyncIterator[tuple[str, int]]:
    """(digest, size) of every blob the source's database says is stored."""
    async with source.read() as connection:
        result = await connection.stream(
            select(blobs.c.digest, blobs.c.size).order_by(blobs.c.digest)
        )
        async for rows in result.partitions(BATCH_ROWS):
            for digest, size in rows:
                yield str(digest), int(size)


async def copy_blobs(
    source_db: Database,
    source: BlobStore,
    destination: BlobStore,
    progress: Callable[[CopiedBlobs], None] = lambda _done: None,
) -> CopiedBlobs:
    """Copy each blob the source's database names from `source` to `destination` through
    its driver, skipping those there already at their size, each checked against its digest
    before it is committed."""
    done = CopiedBlobs()
    async for digest, size in recorded_blobs(source_db):
        if await destination.stat(digest) == size:
            done.present += 1
        elif await source.stat(digest) is None:
            done.missing.append(digest)
        elif await _copy_blob(source, destination, digest):
            done.copied += 1
            done.copied_bytes += size
        else:
            done.damaged.append(digest)
        progress(done)
    return done


async def _copy_blob(source: BlobStore, destination: BlobStore, digest: str) -> bool:
    """Write blob `digest` into `destination` as an upload committed once its bytes hash to
    the digest; False (nothing committed) when they do not."""
    algorithm, _, expected = digest.partition(":")
    hashing = hashlib.new(algorithm)
    upload_id = secrets.token_hex(16)
    writer = await destination.open_upload(upload_id, 0)
    try:
        pending: list[bytes] = []
        held = 0
        async for chunk in source.read(digest):
            hashing.update(chunk)
            pending.append(chunk)
            held += len(chunk)
            if held >= BLOB_CHUNK_BYTES:
                await writer.write(pending)
                pending, held = [], 0
        if pending:
            await writer.write(pending)
    except BaseException:
        await writer.abort()
        await destination.delete_upload(upload_id)
        raise
    await writer.close()
    try:
        if hashing.hexdigest() != expected:
            return False
        await destination.commit_upload(upload_id, digest, writer.pieces)
        return True
    finally:
        await destination.delete_upload(upload_id)
