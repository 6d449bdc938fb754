"""What storage does to an upload (its scratch gone, the disk full or read-only), as its
client hears it, and whether the upload is discarded or kept."""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import AsyncIterator

from berth.domain.errors import BlobUploadUnknown, StorageFull, StorageReadOnly, StorageRefused
from berth.services.uploads.upload import UploadPart

logger = logging.getLogger("berth.uploads")


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


class StorageFaults(UploadPart):
    async def _scratch_gone(self, upload_id: str) -> BlobUploadUnknown:
        """An upload whose scratch is gone (garbage collection removed the upload as abandoned
        while it was in use, a cancel ended it, or the uploads directory itself is gone): its
        data is gone for every request, so it is discarded and its client hears
        BLOB_UPLOAD_UNKNOWN, which clients retry with a new upload."""
        if not await self._discard(upload_id):  # ended meanwhile: its pieces went with it
            return BlobUploadUnknown(
                f"upload {upload_id!r} was cancelled or removed while this request stored it; "
                "start the upload again"
            )
        return _data_lost(upload_id)

    def _refusal_of(self, exc: OSError, *, upload_kept: bool) -> StorageRefused | None:
        """What the client hears of a full or read-only disk (None: another failure); a
        read-only one said in the log once, since every push fails alike."""
        refusal = _storage_refusal(exc, upload_kept=upload_kept)
        if isinstance(refusal, StorageReadOnly) and not self._read_only_said:
            self._read_only_said = True
            logger.warning(
                "the blob store's disk is read-only (%s): pushes are refused (507 "
                "STORAGE_READ_ONLY) and pulls served until it is writable again",
                exc,
            )
        return refusal

    @contextlib.asynccontextmanager
    async def _storage_faults(self, upload_id: str) -> AsyncIterator[None]:
        """What storage does to an upload this request holds the turn on, as its client should
        see it. Its scratch gone: BLOB_UPLOAD_UNKNOWN (`_scratch_gone`). The disk full:
        STORAGE_FULL, the upload discarded and its space back at once; read-only:
        STORAGE_READ_ONLY, the upload discarded (its scratch file, if any, is the
        abandoned-uploads job's once the disk is writable)."""
        try:
            yield
        except FileNotFoundError:
            raise await self._scratch_gone(upload_id) from None
        except OSError as exc:
            refusal = self._refusal_of(exc, upload_kept=False)
            if refusal is None:
                raise
            await self._discard(upload_id)
            raise refusal from None
