"""An upload as its row holds it (`Upload`), and what the parts of `Uploads` share: the
service's state, the hash states kept in memory, finding an upload's row and discarding an
upload (its row, its hash state and its scratch), as every way an upload ends does."""

from __future__ import annotations

import asyncio
import errno
import weakref
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache
from sqlalchemy import delete, select

from berth.domain.errors import BlobUploadUnknown, Unavailable
from berth.domain.names import UPLOAD_ID_RE
from berth.domain.references import RepositoryRef
from berth.metadata.audit import write_audit_entry
from berth.metadata.database import Database
from berth.metadata.tables import uploads
from berth.storage.base import BlobStore

MAX_HASH_STATES = 4096


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


@dataclass(frozen=True, slots=True)
class CancelNote:
    """Who cancels an upload through the management API or the CLI, for the audit log."""

    actor: str
    client: str | None
    project_id: int
    target: str
    detail: dict[str, Any]


class HashStates:
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


class UploadPart:
    """What every part of `Uploads` shares: its state, set by `Uploads`."""

    db: Database
    store: BlobStore
    max_open: int
    expiry: float
    _hashes: HashStates
    _read_only_said: bool
    _locks: weakref.WeakValueDictionary[str, asyncio.Lock]

    async def get(self, repo: RepositoryRef, image: str, upload_id: str) -> Upload:
        if UPLOAD_ID_RE.fullmatch(upload_id):
            async with self.db.read() as conn:
                row = (await conn.execute(select(uploads).where(uploads.c.id == upload_id))).first()
            if row is not None and row.repository_id == repo.id and row.image == image:
                return Upload.of(row)
        raise BlobUploadUnknown(f"upload {upload_id!r} is unknown, finished or cancelled")

    async def _refresh(self, upload: Upload) -> Upload:
        return await self._refresh_id(upload.id)

    async def _refresh_id(self, upload_id: str) -> Upload:
        async with self.db.read() as conn:
            row = (await conn.execute(select(uploads).where(uploads.c.id == upload_id))).first()
        if row is None:
            raise BlobUploadUnknown(f"upload {upload_id!r} is unknown, finished or cancelled")
        return Upload.of(row)

    async def _discard(self, upload_id: str, audited_as: CancelNote | None = None) -> bool:
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
        except OSError as exc:  # a read-only disk, or a directory refusing the server's
            # user: the abandoned-uploads job removes it once the store takes writes again
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
