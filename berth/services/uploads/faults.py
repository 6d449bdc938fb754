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
    @contextlib.asynccontextmanager
    async def _storage_faults(
        self, upload_id: str, *, turn_held: bool = True
    ) -> AsyncIterator[None]:
        """What storage does to an upload, as its client should see it. Its scratch gone
        (garbage collection removed the upload as abandoned while it was in use, a cancel
        ended it, or the uploads directory itself is gone): its data is gone for every
        request, so the upload is discarded, whether or not this request held its turn, and
        the client hears BLOB_UPLOAD_UNKNOWN, which clients retry with a new upload. The disk
        full: STORAGE_FULL, the upload discarded and its space back at once; read-only:
        STORAGE_READ_ONLY, the upload discarded (its scratch file, if any, is the
        abandoned-uploads job's once the disk is writable). A request refused the upload's
        turn (`_lock`, not `turn_held`) by a full or read-only disk discards nothing: the
        upload is kept for its client to go on with once the disk takes writes, or for the
        abandoned-uploads job after `upload_expiry`."""
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
