"""Copying an embedded install (its SQLite database and its blobs on the filesystem) into
another database and blob store: how a registry begun with `make run` moves to PostgreSQL and
S3 (`berth data copy`).

The rows go in one transaction on the destination, table after table in the order the
foreign keys need, ids kept; an interrupted copy leaves the destination as it was. Blobs go
first, each through the destination's driver and checked against its digest; those already
there are skipped, so a copy run again after an interruption goes on where it stopped; a
blob the old install lacks or holds damaged stops the copy before the rows (BlobsNotCopied)
unless the operator allows it. `plan_copy` refuses what cannot be copied (the old install
served, at another schema revision or without its keys; a destination that is not new or is
served) before anything is written anywhere; `prepare_copy` then makes the destination ready
(its data directory and SQLite file, private as `berth init` makes them; its schema; the key
files). The old install is only read: nothing is created in its directory, which may be
read-only.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Integer, Table, delete, func, inspect, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.access.keyring import Keyring, write_key_file
from berth.data_location import create_data_dir, sqlite_path
from berth.domain.wording import counted
from berth.metadata.database import Database, read_once
from berth.metadata.migrate import live_processes_at, upgrade
from berth.metadata.revisions import current_revision, schema_head
from berth.metadata.tables import (
    blobs,
    install_facts,
    job_leases,
    login_failures,
    manifest_references,
    manifests,
    metadata,
    projects,
    repositories,
    serving_processes,
    upload_pieces,
    uploads,
    users,
    utcnow,
)
from berth.services.install import KEY_FINGERPRINT, STORAGE_LOCATION, fact_value
from berth.storage.base import BlobStore
from berth.storage.filesystem import ReadOnlyFilesystemBlobStore

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


# Exit statuses of a refusal: a setting or the data as given (2), or a state that passes (1).
BAD_INPUT, NOT_NOW = 2, 1


class CopyRefused(Exception):
    """The copy cannot be made as things are (the message says why and what to do)."""

    def __init__(self, message: str, status: int = BAD_INPUT) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CopyTarget:
    """Where a copy goes, as the settings name it."""

    database_url: str
    shown: str  # the database, as the operator knows it
    storage_location: str  # as the install records it (start_up.configured_storage_location)
    signing_key_file: Path
    secret_key_file: Path
    data_dir: Path  # the new install's (its keys; its database on SQLite)
    data_dir_mode: int  # as `berth init` makes it (berth.data_location.data_dir_mode)
    # The old install's key files, in OLD_DIR/keys/ (berth.config.data_dir_key_files).
    old_key_files: tuple[Path, Path]


@dataclass(frozen=True)
class CopyPlan:
    """A copy found possible by `plan_copy`."""

    old: Path
    source_url: str
    new_schema: bool  # the destination has none: `prepare_copy` makes it at this Berth's
    uploads_left: int  # uploads in progress in the old install, not copied


def plan_copy(old: Path, target: CopyTarget) -> CopyPlan:
    """Check that the embedded install in `old` can be copied to `target`, refusing
    (CopyRefused) otherwise. Writes nothing, here or at the destination: a refused copy
    leaves both as they were (an SQLite destination not there yet is not even opened)."""
    if not old.is_dir():
        raise CopyRefused(f"the old data directory {old} does not exist")
    old_database = old / "berth.db"
    if not old_database.is_file():
        raise CopyRefused(
            f"no Berth database in the old data directory ({old_database} does not exist): "
            "give the data_dir of the embedded install, the directory that holds berth.db, "
            "blobs/ and keys/"
        )
    destination_file = sqlite_path(target.database_url)
    if destination_file is not None and destination_file.resolve() == old_database:
        raise CopyRefused(
            f"the settings name {target.shown}, the database being copied: set database_url "
            "(and storage) to the new install's, or give another --data-dir"
        )
    source_url = _source_url(old, old_database)
    source_shown = f"the old install's database ({old_database})"
    head = schema_head()
    source_revision = current_revision(source_url)
    if source_revision != head:
        raise CopyRefused(
            f"{source_shown} is at schema revision {source_revision or '(none)'}, this "
            f"Berth's is {head}: the copy is made between databases at the same revision. "
            + (
                "Start this version's `berth serve` on the old data directory once (it "
                "migrates the schema), stop it, then copy"
                if source_revision is not None
                else "it is no Berth database"
            )
        )
    serving = live_processes_at(source_url)
    if serving:
        listed = "; ".join(process.describe() for process in serving)
        raise CopyRefused(
            f"a server serves on {old}: {listed}. Stop it first: what it writes during the "
            "copy would be lost",
            NOT_NOW,
        )
    new_schema = _check_destination(target, source_revision)
    _check_keys(old, target, source_url)
    return CopyPlan(
        old=old,
        source_url=source_url,
        new_schema=new_schema,
        uploads_left=read_once(source_url, _upload_count),
    )


def _source_url(old: Path, database: Path) -> str:
    """How the old install's `database` is read, leaving `old` as it was. SQLite reads a
    database in WAL mode by writing beside it (its -shm file): from a directory that takes no
    writes (a read-only OLD_DIR) it is read as an immutable file instead, which is the whole
    database only while no -wal file is beside it (refused then)."""
    if os.access(old, os.W_OK):
        return f"sqlite+aiosqlite:///{database}"
    wal = database.with_name(f"{database.name}-wal")
    if wal.exists():
        raise CopyRefused(
            f"the old data directory {old} cannot be written to, and holds {wal.name}: "
            f"changes not yet in {database.name} (a server stopped without closing it, or "
            "serving on it still), which SQLite reads only where it may write beside them. "
            f"Stop any server on it, then make {old} writable for the copy, or copy it "
            "elsewhere (cp -a) and copy from there"
        )
    # Quoted for the URI SQLite is given, and for the URL that carries it.
    return URL.create(
        "sqlite+aiosqlite",
        database=f"file:{quote(str(database))}",
        query={"immutable": "1", "uri": "true"},
    ).render_as_string(hide_password=False)


def _check_destination(target: CopyTarget, source_revision: str) -> bool:
    """Refuse a destination database that is not new, or that a server serves on; whether
    it has no schema yet."""
    database_file = sqlite_path(target.database_url)
    if database_file is not None and not database_file.exists():
        return True  # made by `prepare_copy`: opening it here would create it
    try:
        destination_revision = current_revision(target.database_url)
    except Exception as exc:  # not reached, refused: said in the database's own words
        raise CopyRefused(
            f"cannot open {target.shown}: {str(exc).splitlines()[0]}", NOT_NOW
        ) from exc
    if live_processes_at(target.database_url):
        raise CopyRefused(
            f"a server serves on {target.shown}: stop it, the copy needs a new database", NOT_NOW
        )
    counts = read_once(target.database_url, _row_counts)
    if destination_revision is None:
        if counts:
            raise CopyRefused(
                f"{target.shown} holds tables but no Berth schema revision: not a new database",
                NOT_NOW,
            )
        return True
    if destination_revision != source_revision:
        raise CopyRefused(
            f"{target.shown} is at schema revision {destination_revision}, the old install's "
            f"database at {source_revision}: the copy is made between databases at the same "
            "revision (copy into a new, empty database)"
        )
    held = beyond_init(counts)
    if held:
        raise CopyRefused(
            f"{target.shown} is not new: it holds {', '.join(held)}, more than `berth init` "
            "makes; the copy would replace it. Copy into a new, empty database"
        )
    return False


def prepare_copy(plan: CopyPlan, target: CopyTarget) -> dict[str, str]:
    """Make the destination ready for the rows of a planned copy: the new install's data
    directory and SQLite database, private as `berth init` makes them (they hold password
    hashes), the database's schema if it has none, and the old key files where the target
    reads them (unless the same files are there already). Where the key files are, and
    whether they were copied there."""
    create_data_dir(target.data_dir, target.data_dir_mode, sqlite_path(target.database_url))
    if plan.new_schema:
        upgrade(target.database_url)
    copied = False
    for source, placed in zip(target.old_key_files, _key_files(target), strict=True):
        if not placed.exists():
            copied |= write_key_file(placed, source.read_bytes())
    return {
        "signing_key_file": str(target.signing_key_file),
        "secret_key_file": str(target.secret_key_file),
        "action": "copied from the old install" if copied else "the old install's already",
    }


def _key_files(target: CopyTarget) -> tuple[Path, Path]:
    return target.signing_key_file, target.secret_key_file


def _check_keys(old: Path, target: CopyTarget, source_url: str) -> None:
    """Refuse other keys where the target reads them, or the old install's missing or not
    those its database recorded."""
    sources = list(target.old_key_files)
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:
        raise CopyRefused(
            f"the old install's key file{'s' if len(missing) > 1 else ''} "
            f"{' and '.join(missing)} cannot be found: its access keys and tokens were made "
            "with them. Restore them to OLD_DIR/keys/ first"
        )
    differing = [
        (source, placed)
        for source, placed in zip(sources, _key_files(target), strict=True)
        if placed.exists() and placed.read_bytes() != source.read_bytes()
    ]
    if differing:
        # The commands name each file: the settings may give them other names than OLD_DIR's.
        replace = "; ".join(
            f"cp {shlex.quote(str(source))} {shlex.quote(str(placed))}"
            for source, placed in differing
        )
        raise CopyRefused(
            f"{' and '.join(str(placed) for _, placed in differing)} hold other keys than "
            f"the old install's ({old / 'keys'}): every copied access key would be refused. "
            f"Replace them with the old install's files ({replace}), or point "
            "token_signing_key and secret_hash_key at those"
        )
    recorded = read_once(source_url, _key_fingerprint)
    if recorded is not None and Keyring(*sources, save=False).fingerprint != recorded:
        raise CopyRefused(
            f"the key files in {old / 'keys'} are not the ones the old install's database "
            f"recorded (fingerprint {recorded[:16]}…): its server read them from elsewhere "
            "(token_signing_key, secret_hash_key). Put those two files in "
            f"{old / 'keys'} (named {' and '.join(path.name for path in sources)}), then copy"
        )


def _key_fingerprint(connection: Connection) -> str | None:
    return connection.execute(fact_value(KEY_FINGERPRINT)).scalar()


def _upload_count(connection: Connection) -> int:
    return int(connection.execute(select(func.count()).select_from(uploads)).scalar_one())


async def check_destination_store(open_store: Callable[[], BlobStore]) -> None:
    """Refuse (CopyRefused) a destination store that cannot be used or takes no writes (a
    wrong secret, a missing bucket, a blob directory that cannot be written), before anything
    is written: a setting to put right."""
    try:
        store = open_store()  # the filesystem's makes its directory
    except OSError as exc:
        raise CopyRefused(f"the blob store cannot be used: {exc}") from None
    try:
        await store.check_writable()
    except OSError as exc:
        raise CopyRefused(f"the blob store cannot be used: {exc}") from None
    finally:
        await store.close()


async def copy_install(
    plan: CopyPlan,
    target: CopyTarget,
    destination_db: Database,
    destination: BlobStore,
    *,
    allow_missing_blobs: bool = False,
) -> tuple[CopiedBlobs, CopiedRows]:
    """The blobs, then the rows (`copy_blobs`, `copy_rows`), of a planned copy, the blobs read
    from OLD_DIR's blob directory opened to be read only (OLD_DIR left as it is). Unless
    `allow_missing_blobs`, BlobsNotCopied before the rows when a blob could not be copied:
    the destination database is left new, for the copy run again once they are restored. A
    store or connection failing in the middle is a CopyRefused saying that no row is copied
    and that a copy run again goes on."""
    source_db = Database(plan.source_url)
    source = ReadOnlyFilesystemBlobStore(plan.old / "blobs")
    try:
        blobs = await copy_blobs(source_db, source, destination)
        if blobs.missing or blobs.damaged:
            blobs.used_by = await repositories_using(source_db, blobs.missing + blobs.damaged)
            if not allow_missing_blobs:
                raise BlobsNotCopied(plan.old, blobs)
        rows = await copy_rows(source_db, destination_db, storage_location=target.storage_location)
        return blobs, rows
    except OSError as exc:
        raise CopyRefused(
            f"the copy stopped: {exc}. No row is copied (the rows go in one transaction, "
            "after the blobs); run it again once that is put right, and it skips the blobs "
            "copied so far",
            NOT_NOW,
        ) from None
    finally:
        await source.close()
        await source_db.dispose()


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
    # The repositories whose manifests use each missing or damaged blob (`project/name`).
    used_by: dict[str, list[str]] = field(default_factory=dict)

    def not_copied(self) -> list[str]:
        """Each missing or damaged blob, as a line that says which and who uses it."""
        return [
            f"{why} in the old install (not copied): {digest} ({self._users(digest)})"
            for why, digests in (("missing", self.missing), ("damaged", self.damaged))
            for digest in digests
        ]

    def _users(self, digest: str) -> str:
        users = self.used_by.get(digest)
        return f"used by {', '.join(users)}" if users else "no manifest uses it"


class BlobsNotCopied(CopyRefused):
    """Blobs the old install's database names could not be copied (missing or damaged in
    its blob directory): the rows were not copied."""

    def __init__(self, old: Path, blobs: CopiedBlobs) -> None:
        count = len(blobs.missing) + len(blobs.damaged)
        lines = "\n".join(blobs.not_copied())
        super().__init__(
            f"{counted(count, 'blob')} the old install's database names "
            f"{'is' if count == 1 else 'are'} missing from {old / 'blobs'} or damaged there "
            "(bytes that do not hash to the digest): no row was copied, the database is "
            f"left new ({counted(blobs.copied, 'blob')} copied into the store, "
            f"{blobs.present:,} there already).\n{lines}\n"
            f"Restore them into {old / 'blobs'} (from a backup) and run the copy again: the "
            "blobs already copied are skipped. Or run it again with --allow-missing-blobs to "
            "copy without them: the images that use them then fail to pull, as in the old "
            "install, and `berth storage check --all` reports them",
            NOT_NOW,
        )
        self.blobs = blobs


async def repositories_using(source: Database, digests: list[str]) -> dict[str, list[str]]:
    """The repositories (`project/name`) whose manifests use each of `digests`, by name."""
    used_by: dict[str, list[str]] = {}
    joined = (
        manifest_references.join(manifests, manifests.c.id == manifest_references.c.manifest_id)
        .join(repositories, repositories.c.id == manifests.c.repository_id)
        .join(projects, projects.c.id == repositories.c.project_id)
    )
    async with source.read() as connection:
        for start in range(0, len(digests), BATCH_ROWS):
            found = await connection.execute(
                select(manifest_references.c.digest, projects.c.name, repositories.c.name)
                .distinct()
                .select_from(joined)
                .where(manifest_references.c.digest.in_(digests[start : start + BATCH_ROWS]))
                .order_by(projects.c.name, repositories.c.name)
            )
            for digest, project, repository in found:
                used_by.setdefault(str(digest), []).append(f"{project}/{repository}")
    return used_by


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
