"""The upload's SHA-256: the running hash of the bytes as received, its state saved at each
acknowledged offset (in the row where OpenSSL's state can be saved, and in this node's
memory), and the stored bytes hashed again where neither is at hand or the client's digest
disagrees."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

from sqlalchemy import select

from berth.domain.digests import parse_digest
from berth.domain.errors import Unavailable
from berth.domain.hash_state import resumable_sha256
from berth.metadata.tables import upload_pieces
from berth.services.uploads.upload import Upload, UploadPart

logger = logging.getLogger("berth.uploads")


def new_sha256() -> Any:
    return resumable_sha256() if resumable_sha256 is not None else hashlib.sha256()


def saved_state(hasher: Any) -> bytes | None:
    return hasher.state() if resumable_sha256 is not None else None


class UploadHashes(UploadPart):
    async def _hasher_at(self, upload: Upload) -> Any:
        hasher = self._hashes.take(upload.id, upload.offset)
        if hasher is not None:
            return hasher
        if upload.hash_state is not None and resumable_sha256 is not None:
            with contextlib.suppress(ValueError):  # saved by a node of another kind
                return resumable_sha256.from_state(upload.hash_state)
        if upload.offset == 0:
            return new_sha256()
        hasher = new_sha256()
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
