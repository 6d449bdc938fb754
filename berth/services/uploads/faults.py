"""What storage does to an upload (its scratch gone, the disk full or read-only), as its
client hears it, and whether the upload is discarded or kept."""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import AsyncIterator

from berth.domain.errors import (
    BlobUploadUnknown,
    StorageFull,
    StoragePermissionDenied,
    StorageReadOnly,
    StorageRefused,
)
from berth.services.uploads.upload import UploadPart

logger = logging.getLogger("berth.uploads")


def _storage_refusal(exc: OSError, *, upload_kept: bool) -> StorageRefused | None:
    """What the client hears of a store that cannot take writes until an operator acts (no
    space left, a disk turned read-only, directories that refuse the server's user), or None
    for any other failure. `upload_kept`: the
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
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StoragePermissionDenied(
            "the registry's storage refuses its writes (permission denied): nothing was "
            "stored and the upload is kept; send the request again once the operator has "
            "made it writable"
            if upload_kept
            else "the registry's storage refuses its writes (permission denied): the upload "
            "was discarded and nothing was stored; push again once the operator has made it "
            "writable"
        )
    return None


# What the log says, once per process until the store takes writes again, of a store that
# refuses every push alike.
_REFUSING_STORE = {
    StorageReadOnly: "the blob store's disk is read-only (%s): pushes are refused (507 "
    "STORAGE_READ_ONLY) and pulls served until it is writable again",
    StoragePermissionDenied: "the blob store refuses the server's writes (%s): pushes are "
    "refused (507 STORAGE_PERMISSION_DENIED) and pulls served until the user the server runs "
    "as may write there again (check the owner, mode and attributes of the blob directory "
    "and the directories under it)",
}


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
        """What the client hears of a full or read-only disk, or of directories refusing the
        server's writes (None: another failure); the last two said in the log once, since
        every push fails alike."""
        refusal = _storage_refusal(exc, upload_kept=upload_kept)
        said = None if refusal is None else _REFUSING_STORE.get(type(refusal))
        if said is not None and not self._read_only_said:
            self._read_only_said = True
            logger.warning(said, exc)
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
