"""Blob uploads: stream to scratch storage while hashing, verify, then commit atomically.

Hashing and writing run in worker threads on batches of the body's chunks (never joined),
overlapped with receiving the next batch, so one push keeps both cores busy. Everything an
upload needs to go on is in the database, so any node (or worker) can take its next request: the
acknowledged offset, the running SHA-256 state at that offset (`domain.hash_state`) and, on a
store of pieces (S3), the pieces that hold those bytes. A PATCH moves the offset on only from
the offset it started at (compare and set), so of two requests racing from one offset (a
client's retry while its first try is still on another node), one wins and the other's bytes are
never part of the upload. On the filesystem store both would write into the one scratch file, so
there requests on one upload take turns (`BlobStore.upload_exclusive`, across processes) and the
second finds the offset moved. A node keeps the hash states it wrote in memory too, to skip
reading them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import hashlib
import logging
import re
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from cachetools import LRUCache
from pydantic import Field
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from berth.domain.digests import Digest, parse_digest
from berth.domain.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    RangeNotSatisfiable,
    StorageFull,
    StorageReadOnly,
    StorageRefused,
    TooManyRequests,
    Unavailable,
)
from berth.domain.hash_state import resumable_sha256
from berth.domain.names import joined_name
from berth.domain.references import RepositoryRef
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import RETRY_AFTER_SECONDS, Database
from berth.metadata.lookups import require_project, require_user
from berth.metadata.tables import (
    blob_removals,
    blobs,
    gc_runs,
    projects,
    repositories,
    repository_blobs,
    upload_pieces,
    uploads,
    users,
)
from berth.services.gc.restrictions import refuse_if_restricted
from berth.services.gc.runs import RUNNING
from berth.services.records import Record
from berth.storage.base import BlobStore, BlobWriter, UploadWriter

logger = logging.getLogger("berth.uploads")
T = TypeVar("T")

BUFFER_BYTES = 4 * 1024 * 1024
# How long a push of a blob that garbage collection is removing from the store waits for the
# removal (one request to the store) before it is answered 503 with Retry-After.
REMOVAL_WAIT_SECONDS = 60.0
REMOVAL_POLL_SECONDS = 0.2
MAX_HASH_STATES = 4096
# How often a request still receiving an upload's bytes checks that the upload was not
# cancelled meanwhile (in any process or node): a cancel does not wait for it.
CANCEL_CHECK_SECONDS = 2.0
STORE_QUESTIONS = 16  # asked at once about the uploads listed (bytes_stored)
_UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
_CONTENT_RANGE_RE = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?")


@dataclass(frozen=True, slots=True)
class Upload:
    id: str
    repository_id: int
    image: str
    offset: int
    digest_at_offset: str | None
    hash_state: bytes | None = None

    @classmethod
    def of(cls, row: Any) -> Upload:
        return cls(
            row.id, row.repository_id, row.image, row.offset, row.digest_at_offset, row.hash_state
        )


class OpenUpload(Record):
    """An upload in progress, as the project's admins see it."""

    id: str = Field(description="the upload's ID, as in its /v2/.../blobs/uploads/{id} URL")
    repository: str
    image: str = Field(description="the image path inside the repository ('' for its own name)")
    started_by: str | None = Field(
        description="the user whose request started it (null: the server's own, e.g. an SBOM)"
    )
    started_at: dt.datetime
    bytes_received: int = Field(description="bytes received and acknowledged so far")
    bytes_stored: int | None = Field(
        default=None,
        description="bytes the blob store holds for it now, with those of a request still "
        "sending its bytes (acknowledged only once that request ends); null if the store "
        "could not be asked",
    )
    updated_at: dt.datetime = Field(description="last activity: started, or a chunk received")
    expires_at: dt.datetime = Field(
        description="from when it counts as abandoned unless a chunk arrives first "
        "(upload_expiry): the hourly abandoned-uploads job removes it"
    )


_WITH_REPOSITORY = uploads.join(repositories, repositories.c.id == uploads.c.repository_id)
# Uploads with their repository's and starter's names (filtered by project).
_OPEN_UPLOADS = select(
    uploads, repositories.c.name.label("repository"), users.c.name.label("user")
).select_from(_WITH_REPOSITORY.outerjoin(users, users.c.id == uploads.c.started_by))


@dataclass(frozen=True, slots=True)
class _CancelNote:
    """Who cancels an upload through the management API or the CLI, for the audit log."""

    actor: str
    client: str | None
    project_id: int
    target: str
    detail: dict[str, Any]


def _not_in_progress(project: str, upload_id: str) -> BlobUploadUnknown:
    return BlobUploadUnknown(
        f"upload {upload_id!r} is not in progress in project {project!r} "
        "(unknown, finished or cancelled)",
        {"project": project, "upload_id": upload_id},
    )


def _new_sha256() -> Any:
    return resumable_sha256() if resumable_sha256 is not None else hashlib.sha256()


def _saved_state(hasher: Any) -> bytes | None:
    return hasher.state() if resumable_sha256 is not None else None


class _HashStates:
    """In-memory sha256 states by upload id, each valid at one offset. Bounded (LRU)."""

    def __init__(self) -> None:
        self._states: LRUCache[str, tuple[int, Any]] = LRUCache(maxsize=MAX_HASH_STATES)

    def take(self, upload_id: str, offset: int) -> Any | None:
        state = self._states.pop(upload_id, None)
        return state[1] if state and state[0] == offset else None

    def put(self, upload_id: str, offset: int, hasher: Any) -> None:
        self._states[upload_id] = (offset, hasher)

    def drop(self, upload_id: str) -> None:
        self._states.pop(upload_id, None)


def parse_content_range(value: str) -> tuple[int, int]:
    match = _CONTENT_RANGE_RE.fullmatch(value.strip())
    if match is None or int(match.group(1)) > int(match.group(2)):
        raise BlobUploadInvalid(f"invalid Content-Range {value!r}: expected <start>-<end>")
    return int(match.group(1)), int(match.group(2))


def _hash_parts(hasher: Any, parts: list[bytes]) -> None:
    for part in parts:
        hasher.update(part)


async def _pipe(writer: UploadWriter, hasher: Any, body: AsyncIterator[bytes]) -> int:
    """Write and hash the body; returns bytes written. Hash and write overlap with receiving.
    The body's chunks go to both as received, a batch of them at a time (one thread hand-off
    each for hashing and writing): never copied into one buffer."""
    pending: asyncio.Future[Any] | None = None
    parts: list[bytes] = []
    buffered = written = 0

    async def consume(batch: list[bytes]) -> None:
        await asyncio.gather(asyncio.to_thread(_hash_parts, hasher, batch), writer.write(batch))

    try:
        async for chunk in body:
            if not chunk:
                continue
            parts.append(chunk)
            buffered += len(chunk)
            if buffered >= BUFFER_BYTES:
                if pending is not None:
                    await pending
                # A list of its own: the one being filled must not change under the threads.
                pending = asyncio.ensure_future(consume(parts))
                parts = []
                written += buffered
                buffered = 0
        if pending is not None:
            await pending
            pending = None
        if parts:
            await consume(parts)
            written += buffered
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
    return written


def _length_mismatch(upload_id: str, received: int, declared: int) -> BlobUploadInvalid:
    # The HTTP server frames bodies by their Content-Length, so this is never expected: said
    # in the log too, since a body cut short or run long would otherwise surface as a wrong
    # digest, or as a chunk of the wrong size acknowledged.
    logger.error(
        "upload %s: the request body held %d bytes, its Content-Length %d; nothing of it stored",
        upload_id,
        received,
        declared,
    )
    return BlobUploadInvalid(
        f"the request body held {received} bytes but its Content-Length said {declared}; "
        "nothing of it was stored, send the chunk again"
    )


def _storage_refusal(exc: OSError, *, upload_kept: bool) -> StorageRefused | None:
    """What the client hears of a store that cannot take writes until an operator acts (no
    space left, or a disk turned read-only), or None for any other failure. `upload_kept`: the
    refusal leaves the upload as it was, to be gone on with."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(
            "the registry's storage is full: nothing was stored and the upload is kept; send "
            "the request again once space has been freed"
            if upload_kept
            else "the registry's storage is full: the upload was discarded and nothing was "
            "stored; push again once space has been freed"
        )
    if exc.errno == errno.EROFS:
        return StorageReadOnly(
            "the registry's storage is read-only: nothing was stored and the upload is kept; "
            "send the request again once it is writable"
            if upload_kept
            else "the registry's storage is read-only: the upload was discarded and nothing "
            "was stored; push again once it is writable"
        )
    return None


def _data_lost(upload_id: str) -> BlobUploadUnknown:
    # Docker and the other clients retry BLOB_UPLOAD_UNKNOWN by starting a new upload.
    return BlobUploadUnknown(
        f"upload {upload_id!r} lost its data (abandoned uploads are removed by garbage "
        "collection); start the upload again"
    )


@dataclass(frozen=True, slots=True)
class _HeldRow:
    """A blob's row as a push holds it before storing the object."""

    token: str | None  # None: a row from before tokens
    made: bool  # by this push
    removal_voided: bool  # a failed GC run's note of removing its object was voided


class _BeingRemoved(Exception):
    """A running GC run is removing the blob's object from the store."""


class Uploads:
    def __init__(
        self,
        db: Database,
        store: BlobStore,
        max_open: int = 1000,
        expiry: float = 86_400.0,
    ) -> None:
        self.db = db
        self.store = store
        self.max_open = max_open  # uploads in progress per project
        self.expiry = expiry  # upload_expiry: shown as each open upload's expires_at
        self._hashes = _HashStates()
        self._read_only_said = False  # the log said the store is read-only (until a write)
        # Each upload's lock lives while a request holds or awaits it: none is left behind
        # by uploads abandoned, failed or finished on another node.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def start(self, repo: RepositoryRef, image: str, started_by: int | None = None) -> Upload:
        """A new upload; `started_by`: the user whose request starts it (None: no user's,
        e.g. a tool of the server's own), who may hold half of the project's open uploads."""
        upload = Upload(uuid.uuid4().hex, repo.id, image, 0, None)
        # Refused up front while garbage collection runs, so clients see why at once.
        async with self.db.read() as conn:
            await refuse_if_restricted(conn, repo.project_id, repo.project)
        # By the database's clock, as the expiry cutoffs are (`StorageCheck`, `Decider`).
        now = self.db.clock()
        # Counted and inserted in one transaction that holds the project's turn: counted in
        # one and inserted in another, concurrent POSTs all saw room for one more.
        async with self.db.write() as conn:
            await self._refuse_too_many_open(conn, repo, started_by)
            await conn.execute(
                uploads.insert().values(
                    id=upload.id,
                    repository_id=repo.id,
                    image=image,
                    started_by=started_by,
                    offset=0,
                    started_at=now,
                    updated_at=now,
                )
            )
        # The scratch object exists before its ID is handed out, so any node can pick the
        # upload up.
        try:
            async with self._storage_faults(upload.id):
                writer = await self.store.open_upload(upload.id, 0)
                await writer.close()
        except BaseException:
            await self._discard(upload.id)  # its row, and any file begun
            raise
        if self._read_only_said:
            self._read_only_said = False
            logger.info("the blob store takes writes again")
        self._hashes.put(upload.id, 0, _new_sha256())
        return upload

    async def _refuse_too_many_open(
        self, conn: AsyncConnection, repo: RepositoryRef, started_by: int | None
    ) -> None:
        """Each upload keeps a row and a scratch object until it ends or expires: a client
        that only ever starts uploads would fill the database and the store for a day. One
        user may hold half the project's share, so that a user allowed to push to one
        repository cannot stop every push to the project."""
        # The project's turn (SQLite: its one writer's already): a row lock that nothing
        # else takes often, and that the foreign keys' key-share locks do not wait for.
        await conn.execute(
            select(projects.c.id)
            .where(projects.c.id == repo.project_id)
            .with_for_update(key_share=True)
        )
        in_project = uploads.join(repositories, repositories.c.id == uploads.c.repository_id)
        counted = (
            await conn.execute(
                select(
                    func.count(),
                    func.count().filter(uploads.c.started_by == started_by),
                )
                .select_from(in_project)
                .where(repositories.c.project_id == repo.project_id)
            )
        ).one()
        open_uploads, users_open = int(counted[0]), int(counted[1])
        if open_uploads >= self.max_open:
            raise TooManyRequests(
                f"project {repo.project!r} has {open_uploads} uploads in progress, the most "
                f"it may (max_open_uploads = {self.max_open}): finish or cancel some, or wait "
                "for abandoned ones to expire (upload_expiry)"
            )
        per_user = max(1, self.max_open // 2)
        if started_by is not None and users_open >= per_user:
            raise TooManyRequests(
                f"you have {users_open} uploads in progress in project {repo.project!r}, the "
                f"most one user may (half of max_open_uploads = {self.max_open}): finish or "
                "cancel some, or wait for abandoned ones to expire (upload_expiry)"
            )

    async def in_progress(self) -> int:
        """Uploads started and neither finished nor cancelled, on every node."""
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(uploads))).scalar_one())

    async def open_in_project(
        self, project: str, *, offset: int = 0, limit: int = 20
    ) -> tuple[list[OpenUpload], int]:
        """A page of the project's uploads in progress, newest first, and how many there are:
        what counts against max_open_uploads, and who holds them."""
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            in_project = repositories.c.project_id == project_id
            rows = await conn.execute(
                _OPEN_UPLOADS.where(in_project)
                .order_by(uploads.c.started_at.desc(), uploads.c.id.desc())
                .limit(limit)
                .offset(offset)
            )
            items = [self._open_upload(row) for row in rows]
            total = await conn.execute(
                select(func.count()).select_from(_WITH_REPOSITORY).where(in_project)
            )
        return await self._with_bytes_stored(items), int(total.scalar_one())

    async def _with_bytes_stored(self, items: list[OpenUpload]) -> list[OpenUpload]:
        """`items` with what the store holds for each (a few at a time: on S3 a listing or
        two each), so that an admin sees the bytes of a PATCH still being received."""
        asking = asyncio.Semaphore(STORE_QUESTIONS)

        async def held(item: OpenUpload) -> OpenUpload:
            async with asking:
                try:
                    stored = await self.store.upload_bytes_held(item.id)
                except (Unavailable, OSError):
                    return item
            return item.model_copy(update={"bytes_stored": stored})

        return list(await asyncio.gather(*(held(item) for item in items)))

    def _open_upload(self, row: Any) -> OpenUpload:
        return OpenUpload(
            id=row.id,
            repository=row.repository,
            image=row.image,
            started_by=row.user,
            started_at=row.started_at,
            bytes_received=row.offset,
            updated_at=row.updated_at,
            expires_at=row.updated_at + dt.timedelta(seconds=self.expiry),
        )

    async def in_project(self, project: str, upload_id: str) -> OpenUpload:
        """One of the project's uploads in progress, or BLOB_UPLOAD_UNKNOWN (404)."""
        _, row = await self._find_in_project(project, upload_id)
        return (await self._with_bytes_stored([self._open_upload(row)]))[0]

    async def cancel_in_project(
        self, project: str, upload_id: str, *, actor: str, client: str | None
    ) -> OpenUpload:
        """Cancel one of the project's uploads as its client's DELETE would (its scratch and
        pieces go), audited as `upload.cancel`; its client's next request is answered
        BLOB_UPLOAD_UNKNOWN. Returns the upload as it was."""
        project_id, row = await self._find_in_project(project, upload_id)
        cancelled = self._open_upload(row)
        name = joined_name(cancelled.repository, cancelled.image)
        note = _CancelNote(
            actor,
            client,
            project_id,
            f"{name}@{upload_id}",
            {"started_by": cancelled.started_by, "bytes_received": cancelled.bytes_received},
        )
        if not await self.cancel(Upload.of(row), audited_as=note):
            raise _not_in_progress(project, upload_id)  # its client ended it meanwhile
        return cancelled

    async def cancel_all_in_project(
        self, project: str, *, started_by: str | None, actor: str, client: str | None
    ) -> int:
        """Cancel the project's uploads in progress that the user `started_by` started (None:
        every one), as `cancel_in_project` cancels one; audited as one `upload.cancel` entry.
        Returns how many there were. NAME_UNKNOWN for an unknown project, NOT_FOUND user."""
        async with self.db.write() as conn:
            project_id = await require_project(conn, project)
            ending = delete(uploads).where(
                uploads.c.repository_id.in_(
                    select(repositories.c.id).where(repositories.c.project_id == project_id)
                )
            )
            if started_by is not None:
                ending = ending.where(uploads.c.started_by == await require_user(conn, started_by))
            ended = list((await conn.execute(ending.returning(uploads.c.id))).scalars())
            if ended:
                await write_audit_entry(
                    conn,
                    actor,
                    "upload.cancel",
                    project_id=project_id,
                    target=f"uploads started by {started_by}" if started_by else "all uploads",
                    detail={"started_by": started_by, "uploads": len(ended)},
                    client=client,
                )
        for upload_id in ended:
            self._hashes.drop(upload_id)
            await self._remove_scratch(upload_id)
        return len(ended)

    async def _find_in_project(self, project: str, upload_id: str) -> tuple[int, Any]:
        """The project's id and the upload's row (with its repository's and starter's names),
        or NAME_UNKNOWN for the project, BLOB_UPLOAD_UNKNOWN for the upload."""
        async with self.db.read() as conn:
            project_id = await require_project(conn, project)
            row = None
            if _UPLOAD_ID_RE.fullmatch(upload_id):
                row = (
                    await conn.execute(
                        _OPEN_UPLOADS.where(
                            uploads.c.id == upload_id, repositories.c.project_id == project_id
                        )
                    )
                ).first()
        if row is None:
            raise _not_in_progress(project, upload_id)
        return project_id, row

    async def get(self, repo: RepositoryRef, image: str, upload_id: str) -> Upload:
        if _UPLOAD_ID_RE.fullmatch(upload_id):
            async with self.db.read() as conn:
                row = (await conn.execute(select(uploads).where(uploads.c.id == upload_id))).first()
            if row is not None and row.repository_id == repo.id and row.image == image:
                return Upload.of(row)
        raise BlobUploadUnknown(f"upload {upload_id!r} is unknown, finished or cancelled")

    @contextlib.asynccontextmanager
    async def _lock(self, upload_id: str) -> AsyncIterator[None]:
        """This process's turn on the upload, then the store's (other processes and nodes)."""
        lock = self._locks.get(upload_id)
        if lock is None:
            lock = self._locks[upload_id] = asyncio.Lock()
        async with lock, contextlib.AsyncExitStack() as held:
            # Its lock file not made (the disk read-only or full): not this request's turn, so
            # the upload is not its to end. On a blob directory several nodes share, another
            # node's request may hold the turn and be writing the upload.
            async with self._storage_faults(upload_id, turn_held=False):
                await held.enter_async_context(self.store.upload_exclusive(upload_id))
            try:
                yield
            except BlobUploadUnknown:
                # It ended while this request waited or wrote (a cancel waits for no request):
                # what this one stored goes too, whoever finishes last removing the rest.
                await self._remove_scratch(upload_id)
                raise

    async def _unless_cancelled(self, upload_id: str, work: Awaitable[T]) -> T:
        """`work` (receiving and storing a request's body), stopped with BLOB_UPLOAD_UNKNOWN
        once the upload is cancelled (checked every CANCEL_CHECK_SECONDS): a client may send
        a body as slowly as it likes, and a cancel must not wait for it."""
        working = asyncio.ensure_future(work)
        watching = asyncio.ensure_future(self._until_ended(upload_id))
        try:
            await asyncio.wait({working, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not working.done():
                working.cancel()
            # The work's own cleanup (closing its writer) runs to its end either way.
            await asyncio.gather(working, watching, return_exceptions=True)
        if working.cancelled():
            raise BlobUploadUnknown(
                f"upload {upload_id!r} was cancelled while this request sent it"
            )
        return working.result()

    async def _until_ended(self, upload_id: str) -> None:
        """Returns once the upload has ended (its row gone); never while the database cannot
        say (the request goes on, as it would have)."""
        while True:
            await asyncio.sleep(CANCEL_CHECK_SECONDS)
            with contextlib.suppress(Exception):
                async with self.db.read() as conn:
                    found = await conn.execute(
                        select(uploads.c.id).where(uploads.c.id == upload_id)
                    )
                    if found.first() is None:
                        return

    async def _hasher_at(self, upload: Upload) -> Any:
        hasher = self._hashes.take(upload.id, upload.offset)
        if hasher is not None:
            return hasher
        if upload.hash_state is not None and resumable_sha256 is not None:
            with contextlib.suppress(ValueError):  # saved by a node of another kind
                return resumable_sha256.from_state(upload.hash_state)
        if upload.offset == 0:
            return _new_sha256()
        hasher = _new_sha256()
        pieces = await self._pieces(upload.id)
        async for chunk in self.store.read_upload(upload.id, upload.offset, pieces):
            await asyncio.to_thread(hasher.update, chunk)
        return hasher

    async def _pieces(self, upload_id: str) -> list[str]:
        """The recorded pieces of an upload, on a store of pieces (none on a filesystem)."""
        async with self.db.read() as conn:
            return list(
                (
                    await conn.execute(
                        select(upload_pieces.c.name).where(upload_pieces.c.upload_id == upload_id)
                    )
                ).scalars()
            )

    async def append(
        self,
        upload: Upload,
        body: AsyncIterator[bytes],
        content_range: str | None,
        declared_length: int | None = None,
    ) -> Upload:
        """Append a chunk. A Content-Range that does not start at the current end is a 416.
        `upload` is as the request found it: a chunk without a Content-Range starts at its
        offset, so when another request moved the upload on while this one waited for its
        turn (a client's retry of the chunk), this one is a 416 too, not appended after it. A
        chunk of another length than its Content-Range says is a 416 and not stored either
        (the client would go on from an offset the upload does not have).
        `declared_length`: the request's Content-Length, if it had one; a body of another
        length is refused and nothing of it stored."""
        arrived_at = upload.offset
        declared: int | None = None  # the chunk's length, as its Content-Range says
        async with self._lock(upload.id):
            upload = await self._refresh(upload)
            if content_range:
                start, end = parse_content_range(content_range)
                declared = end - start + 1
                if start != upload.offset:
                    raise RangeNotSatisfiable(
                        f"chunk starts at {start} but the upload has {upload.offset} bytes; "
                        "send chunks in order",
                        upload.offset,
                    )
            elif arrived_at != upload.offset:
                raise RangeNotSatisfiable(
                    f"another request moved the upload from {arrived_at} to {upload.offset} "
                    "bytes while this one waited; go on from there",
                    upload.offset,
                )
            async with self._storage_faults(upload.id):
                hasher = await self._hasher_at(upload)
                writer = await self.store.open_upload(upload.id, upload.offset)
                try:
                    written = await self._unless_cancelled(upload.id, _pipe(writer, hasher, body))
                    if declared_length is not None and written != declared_length:
                        raise _length_mismatch(upload.id, written, declared_length)
                    if declared is not None and written not in (0, declared):
                        raise RangeNotSatisfiable(
                            f"the chunk has {written} bytes but its Content-Range "
                            f"{content_range!r} says {declared}; nothing of it was stored",
                            upload.offset,
                        )
                    await writer.close()
                except BaseException:
                    # The chunk failed (its body broke off, the store failed): the writer
                    # stores nothing more and the client hears the first error, not the
                    # store's answer to storing the rest. Bytes past `offset` are never read.
                    self._hashes.drop(upload.id)
                    await writer.abort()
                    raise
            started_at = upload.offset
            upload = replace(
                upload,
                offset=upload.offset + written,
                digest_at_offset="sha256:" + hasher.copy().hexdigest(),
                hash_state=_saved_state(hasher),
            )
            async with self.db.write() as conn:
                moved = await conn.execute(
                    update(uploads)
                    .where(uploads.c.id == upload.id, uploads.c.offset == started_at)
                    .values(
                        offset=upload.offset,
                        digest_at_offset=upload.digest_at_offset,
                        hash_state=upload.hash_state,
                        updated_at=self.db.clock(),
                    )
                )
                if moved.rowcount == 1 and writer.pieces:
                    await conn.execute(
                        upload_pieces.insert(),
                        [{"upload_id": upload.id, "name": name} for name in writer.pieces],
                    )
            if moved.rowcount != 1:
                await writer.abort()  # what it stored is not part of the upload
                await self._lost_race(upload.id)
            self._hashes.put(upload.id, upload.offset, hasher)
            return upload

    async def _lost_race(self, upload_id: str) -> None:
        """Another request moved the upload on (or ended it) while this one was writing:
        this one's bytes are not part of it."""
        self._hashes.drop(upload_id)
        current = await self._refresh_id(upload_id)
        raise RangeNotSatisfiable(
            f"another request moved the upload to {current.offset} bytes meanwhile; "
            "go on from there",
            current.offset,
        )

    async def _with_pieces(self, upload_id: str) -> tuple[Upload, list[str]]:
        """The upload and the pieces that hold its bytes, read in one statement (one snapshot):
        on a store of pieces nothing holds a PATCH back while the upload is committed, and
        pieces a PATCH recorded between two reads would be committed under the digest of the
        bytes before them."""
        query = (
            select(uploads, upload_pieces.c.name.label("piece"))
            .select_from(
                uploads.outerjoin(upload_pieces, upload_pieces.c.upload_id == uploads.c.id)
            )
            .where(uploads.c.id == upload_id)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        if not rows:
            raise BlobUploadUnknown(f"upload {upload_id!r} is unknown, finished or cancelled")
        return Upload.of(rows[0]), [row.piece for row in rows if row.piece is not None]

    async def _refresh(self, upload: Upload) -> Upload:
        return await self._refresh_id(upload.id)

    async def _refresh_id(self, upload_id: str) -> Upload:
        async with self.db.read() as conn:
            row = (await conn.execute(select(uploads).where(uploads.c.id == upload_id))).first()
        if row is None:
            raise BlobUploadUnknown(f"upload {upload_id!r} is unknown, finished or cancelled")
        return Upload.of(row)

    async def complete(
        self,
        repo: RepositoryRef,
        upload: Upload,
        digest: str,
        body: AsyncIterator[bytes] | None,
        content_range: str | None,
        declared_length: int | None = None,
    ) -> str:
        """Finish an upload: append the last chunk, verify the digest, commit, link to repo."""
        expected = parse_digest(digest)
        if body is not None and upload.offset == 0 and not content_range and declared_length:
            writer = self.store.blob_writer(str(expected), declared_length)
            if writer is not None:  # the whole blob in this request, and a store it helps
                return await self._complete_in_one(repo, upload, expected, writer, body)
        if body is not None:
            upload = await self.append(upload, body, content_range, declared_length)
        async with self._lock(upload.id):
            upload, pieces = await self._with_pieces(upload.id)
            async with self._storage_faults(upload.id):
                actual, rehashed = await self._final_digest(upload, expected.algorithm, pieces)
                if actual != str(expected) and not rehashed:
                    actual = await self._recheck_stored(upload, str(expected), actual, pieces)
                if actual != str(expected):
                    await self._discard(upload.id)
                    raise DigestInvalid(
                        f"uploaded content ({upload.offset} bytes) has digest {actual}, not "
                        f"{expected}; upload discarded",
                        {"expected": str(expected), "actual": actual, "size": upload.offset},
                    )
                try:
                    await self._store_blob(
                        repo,
                        upload,
                        actual,
                        lambda: self.store.commit_upload(upload.id, actual, pieces),
                    )
                finally:
                    # Gone whatever happened, as if it had been renamed into place: a client
                    # must not go on writing into the blob's file.
                    await self.store.delete_upload(upload.id)
            self._hashes.drop(upload.id)
            return actual

    async def _complete_in_one(
        self,
        repo: RepositoryRef,
        upload: Upload,
        expected: Digest,
        writer: BlobWriter,
        body: AsyncIterator[bytes],
    ) -> str:
        """A whole blob in one request (a push in one PUT, its length declared): written
        straight where the blob is kept while hashed, committed there once its digest is
        verified, with no scratch copy to commit from. Nothing of it is visible otherwise."""
        arrived_at = upload.offset
        async with self._lock(upload.id):
            upload = await self._refresh(upload)
            if upload.offset != arrived_at:
                raise RangeNotSatisfiable(
                    f"another request moved the upload from {arrived_at} to {upload.offset} "
                    "bytes while this one waited; go on from there",
                    upload.offset,
                )
            hasher = hashlib.new(expected.algorithm)
            try:
                async with self._storage_faults(upload.id):
                    length = await self._unless_cancelled(upload.id, _pipe(writer, hasher, body))
                    await writer.close()
                    actual = f"{expected.algorithm}:{hasher.hexdigest()}"
                    if actual != str(expected):
                        await self._discard(upload.id)
                        raise DigestInvalid(
                            f"uploaded content ({length} bytes) has digest {actual}, not "
                            f"{expected}; upload discarded",
                            {"expected": str(expected), "actual": actual, "size": length},
                        )
                    await self._store_blob(
                        repo, replace(upload, offset=length), actual, writer.commit, once=True
                    )
            finally:
                await writer.abort()  # nothing to drop once committed
        self._hashes.drop(upload.id)
        return str(expected)

    async def _store_blob(
        self,
        repo: RepositoryRef,
        upload: Upload,
        digest: str,
        store_object: Callable[[], Awaitable[None]],
        *,
        once: bool = False,
    ) -> None:
        """Store the upload as blob `digest` and record it, making no request to the store
        while a row is locked (with the store slow, every push of the blob and garbage
        collection would wait on that lock): hold the blob's row, store the object, then
        link it if the row is still the one held. Garbage collection deletes a row first and
        removes its object after, noted in `blob_removals` until done; a push waits for such
        a removal. A blob the registry has already is not stored again (`_stored_already`).
        A row deleted since it was held (its object maybe removed after this one stored it,
        or before this one found it stored) is not the same row: the push goes round again."""
        deadline = time.monotonic() + REMOVAL_WAIT_SECONDS
        stored = False
        while True:
            held = await self._hold_blob_row(digest, upload.offset, deadline)
            if not await self._stored_already(held, digest, upload.offset):
                if stored and once:  # its bytes went into the object, maybe removed since
                    raise Unavailable(
                        f"blob {digest} was removed by garbage collection while it was "
                        "stored; push it again",
                        RETRY_AFTER_SECONDS,
                    )
                try:
                    await store_object()
                    stored = True
                except BaseException:
                    if held.made:  # a row of a blob that is not stored: not for the check
                        await self._forget_row(digest, held.token)
                    raise
            if await self._record(repo, upload, digest, held.token):
                return
            logger.info("blob %s was collected while it was stored: storing it again", digest)

    async def _stored_already(self, held: _HeldRow, digest: str, size: int) -> bool:
        """Whether the blob is in the store already, so this push need not store it again
        (a layer pushed again, here or by another repository): its row was there before this
        push, no removal of its object was under way, and the store has the object at its
        size now. A row this push made may name an object left from before (an orphan, one a
        failed removal was deleting): never trusted. A lost or cut-short object is stored
        again, so a push repairs what the storage check reports missing; damaged bytes of the
        right size are the check's to set aside first."""
        if held.made or held.removal_voided:
            return False
        return await self.store.stat(digest) == size

    async def _hold_blob_row(self, digest: str, size: int, deadline: float) -> _HeldRow:
        """The blob's row, held once no removal of its object from the store is under way."""
        while True:
            try:
                async with self.db.write() as conn:
                    made = await conn.execute(
                        self.db.insert_ignore(blobs).values(
                            digest=digest,
                            size=size,
                            created_at=self.db.clock(),  # as the grace cutoff: `Decider.cutoff`
                            token=uuid.uuid4().hex,
                        )
                    )
                    # Read after the insert, which waited for a run deleting the row: its
                    # removal note, committed with that delete, is seen here.
                    held = (
                        await conn.execute(
                            select(
                                blobs.c.token,
                                blob_removals.c.digest.label("noted"),
                                blob_removals.c.run_id,
                                gc_runs.c.state,
                            )
                            .select_from(
                                blobs.outerjoin(
                                    blob_removals, blob_removals.c.digest == blobs.c.digest
                                ).outerjoin(gc_runs, gc_runs.c.id == blob_removals.c.run_id)
                            )
                            .where(blobs.c.digest == digest)
                        )
                    ).first()
                    if held is None:  # deleted by a run since the insert found it there
                        raise _BeingRemoved()
                    if held.noted is not None:
                        await self._void_removal(conn, digest, held.run_id, held.state)
                    return _HeldRow(held.token, made.rowcount == 1, held.noted is not None)
            except _BeingRemoved:
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        f"blob {digest} is being removed by garbage collection, which is taking "
                        "long (the object store is slow); push it again shortly",
                        RETRY_AFTER_SECONDS,
                    ) from None
                await asyncio.sleep(REMOVAL_POLL_SECONDS)

    async def _forget_row(self, digest: str, token: str | None) -> None:
        """Delete the row this push made for a blob it could not store, unless linked by now
        (best effort: else garbage collection's, as an unlinked blob)."""
        with contextlib.suppress(Exception):
            async with self.db.write() as conn:
                await conn.execute(
                    delete(blobs).where(
                        blobs.c.digest == digest,
                        blobs.c.token == token,
                        ~select(repository_blobs.c.digest)
                        .where(repository_blobs.c.digest == digest)
                        .exists(),
                    )
                )

    async def _void_removal(
        self, conn: AsyncConnection, digest: str, run_id: int | None, state: str | None
    ) -> None:
        """Raise `_BeingRemoved` while a running GC run removes the blob's object; the note
        of a run that ended without removing it (it failed) is void, and goes."""
        if state == RUNNING:
            raise _BeingRemoved()
        # Only if still that run's: a new run of the project takes over a failed run's notes.
        voided = await conn.execute(
            delete(blob_removals).where(
                blob_removals.c.digest == digest, blob_removals.c.run_id == run_id
            )
        )
        if voided.rowcount != 1:
            raise _BeingRemoved()

    async def _record(
        self, repo: RepositoryRef, upload: Upload, digest: str, token: str | None
    ) -> bool:
        """The stored blob in the metadata, if its row is the one held before storing it:
        the repository's link, and no upload. False if garbage collection deleted the row."""
        now = self.db.clock()  # as the grace cutoff: `Decider.cutoff`
        async with self.db.write() as conn:
            # Key-share locked until the link commits (as the link's foreign key would):
            # garbage collection cannot delete the row in between.
            held = (
                await conn.execute(
                    select(blobs.c.token)
                    .where(blobs.c.digest == digest)
                    .with_for_update(key_share=True)
                )
            ).first()
            if held is None or held.token != token:
                return False
            # A fresh link time even when the link existed: the grace period protects
            # this push's blob from garbage collection until its manifest arrives.
            await conn.execute(
                self.db.upsert(
                    repository_blobs, ["repository_id", "digest"], {"linked_at": now}
                ).values(repository_id=repo.id, digest=digest, linked_at=now)
            )
            await conn.execute(delete(uploads).where(uploads.c.id == upload.id))
        return True

    async def _final_digest(
        self, upload: Upload, algorithm: str, pieces: list[str]
    ) -> tuple[str, bool]:
        """The upload's digest, and whether it is of its stored bytes read again (else it is
        the running hash of the bytes as they were received)."""
        if algorithm == "sha256":
            hasher = self._hashes.take(upload.id, upload.offset)
            if hasher is not None:
                return f"sha256:{hasher.hexdigest()}", False
            if upload.digest_at_offset:
                return upload.digest_at_offset, False
        return await self._stored_digest(upload, algorithm, pieces), True

    async def _stored_digest(self, upload: Upload, algorithm: str, pieces: list[str]) -> str:
        hasher = hashlib.new(algorithm)
        async for chunk in self.store.read_upload(upload.id, upload.offset, pieces):
            await asyncio.to_thread(hasher.update, chunk)
        return f"{algorithm}:{hasher.hexdigest()}"

    async def _recheck_stored(
        self, upload: Upload, expected: str, running: str, pieces: list[str]
    ) -> str:
        """The running hash disagrees with the client's digest: hash the stored bytes, which
        are what a commit stores, before refusing. A client that hashed other bytes than it
        sent is told DIGEST_INVALID as before; a running hash that went wrong (never seen, but
        a refused intact push would be silent about where) is logged, and the push, whose
        stored bytes are verified now, goes through. Costs one read of the upload, on this
        path only; a store that cannot be read leaves the running hash's verdict."""
        try:
            stored = await self._stored_digest(upload, parse_digest(expected).algorithm, pieces)
        except (Unavailable, OSError) as exc:
            # The store unreachable (or the scratch gone): the client still hears why.
            logger.info(
                "upload %s: its stored bytes could not be read again (%s); refused on the "
                "running hash %s of its %d bytes, not the client's %s",
                upload.id,
                type(exc).__name__,
                running,
                upload.offset,
                expected,
            )
            return running
        if stored == running:
            logger.info(
                "upload %s: the %d bytes received hash to %s, not to the client's %s",
                upload.id,
                upload.offset,
                running,
                expected,
            )
        elif stored == expected:
            logger.error(
                "upload %s: its %d stored bytes hash to the client's digest %s but the running "
                "hash of the bytes as received said %s; stored, as verified now",
                upload.id,
                upload.offset,
                expected,
                running,
            )
        else:
            logger.error(
                "upload %s: its %d stored bytes hash to %s, the bytes as received to %s, the "
                "client's digest is %s: the stored bytes are not the bytes received",
                upload.id,
                upload.offset,
                stored,
                running,
                expected,
            )
        return stored

    async def cancel(self, upload: Upload, *, audited_as: _CancelNote | None = None) -> bool:
        """End an upload and remove what it stored (a client's DELETE, or an admin's cancel,
        audited in the same transaction). False when it had ended already. At once: not in
        the upload's turn (`_lock`), which a request sending its bytes holds for as long as
        its client takes; that request stops within CANCEL_CHECK_SECONDS, answered
        BLOB_UPLOAD_UNKNOWN, and removes what it stored meanwhile."""
        return await self._discard(upload.id, audited_as)

    @contextlib.asynccontextmanager
    async def _storage_faults(
        self, upload_id: str, *, turn_held: bool = True
    ) -> AsyncIterator[None]:
        """What storage does to an upload, as its client should see it; the upload is
        discarded either way, unless refused its turn. Its scratch file gone (garbage
        collection removed the upload as abandoned while it was in use, or a cancel ended
        it): BLOB_UPLOAD_UNKNOWN, which clients retry with a new upload. The disk full:
        STORAGE_FULL, and its space back at once; read-only: STORAGE_READ_ONLY (its scratch
        file, if any, is the abandoned-uploads job's once the disk is writable). A request
        refused the upload's turn (`_lock`, not `turn_held`) by a full or read-only disk ends
        nothing: the upload is kept for its client to go on with once the disk takes writes,
        or for the abandoned-uploads job after `upload_expiry`."""
        try:
            yield
        except FileNotFoundError:
            if not await self._discard(upload_id):  # ended meanwhile: its pieces went with it
                raise BlobUploadUnknown(
                    f"upload {upload_id!r} was cancelled or removed while this request stored it; "
                    "start the upload again"
                ) from None
            raise _data_lost(upload_id) from None
        except OSError as exc:
            refusal = _storage_refusal(exc, upload_kept=not turn_held)
            if refusal is None:
                raise
            if isinstance(refusal, StorageReadOnly) and not self._read_only_said:
                self._read_only_said = True  # every push fails alike: said once
                logger.warning(
                    "the blob store's disk is read-only (%s): pushes are refused (507 "
                    "STORAGE_READ_ONLY) and pulls served until it is writable again",
                    exc,
                )
            if turn_held:
                await self._discard(upload_id)
            raise refusal from None

    async def _discard(self, upload_id: str, audited_as: _CancelNote | None = None) -> bool:
        async with self.db.write() as conn:
            deleted = await conn.execute(delete(uploads).where(uploads.c.id == upload_id))
            if deleted.rowcount == 1 and audited_as is not None:
                await write_audit_entry(
                    conn,
                    audited_as.actor,
                    "upload.cancel",
                    project_id=audited_as.project_id,
                    target=audited_as.target,
                    detail=audited_as.detail,
                    client=audited_as.client,
                )
        self._hashes.drop(upload_id)
        await self._remove_scratch(upload_id)
        return bool(deleted.rowcount == 1)

    async def _remove_scratch(self, upload_id: str) -> None:
        # With the store unreachable the client still hears why its upload ended (a wrong
        # digest, a cancel); the scratch no row names is the abandoned-uploads job's.
        try:
            await self.store.delete_upload(upload_id)
        except Unavailable:
            pass
        except OSError as exc:  # a read-only disk: removed once it is writable again
            if exc.errno != errno.EROFS:
                raise
