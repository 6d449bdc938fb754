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
import weakref

from berth.metadata.database import Database
from berth.services.uploads.commits import UploadCommits
from berth.services.uploads.open_uploads import OpenUploads
from berth.services.uploads.starts import UploadStarts
from berth.services.uploads.upload import HashStates
from berth.storage.base import BlobStore

__all__ = ["Uploads"]


class Uploads(UploadStarts, UploadCommits, OpenUploads):
    """Blob uploads, made of their parts (each in its own module): the parts hold no state
    of their own, what they share is set here."""

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
        self._hashes = HashStates()
        # The log said the store refuses writes (read-only, or permission denied), until a write.
        self._read_only_said = False
        # Each upload's lock lives while a request holds or awaits it: none is left behind
        # by uploads abandoned, failed or finished on another node.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
