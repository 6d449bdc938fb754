"""The registry's content flows, as the /v2 routes use them: one service made of its blob,
manifest and listing parts (each in its own module)."""

from __future__ import annotations

from cachetools import LRUCache

from berth.metadata.database import Database
from berth.services.blobs import (
    SMALL_BLOBS_KEPT_BYTES,
    VERIFIED_FILES_KEPT,
    BlobContent,
    small_blob_size,
)
from berth.services.listings import ContentListings, Page
from berth.services.manifest_cache import (
    BLOB_TABLES,
    CONTENT_TABLES,
    BlobSizes,
    ManifestCache,
    StoredManifest,
)
from berth.services.manifest_deletes import ManifestDeletes
from berth.services.manifests import ManifestContent, PushedManifest, count_images
from berth.storage.base import BlobStore

__all__ = ["Page", "PushedManifest", "Registry", "StoredManifest", "count_images"]


class Registry(BlobContent, ManifestContent, ManifestDeletes, ContentListings):
    """The parts hold no state of their own: what they share is set here."""

    def __init__(
        self,
        db: Database,
        store: BlobStore,
        max_images: int = 10_000,
        manifest_cache: ManifestCache | None = None,
        blob_sizes: BlobSizes | None = None,
    ) -> None:
        self.db = db
        self.manifest_cache = manifest_cache or ManifestCache()
        db.after_commit(CONTENT_TABLES, self.manifest_cache.changed)
        self.blob_sizes = blob_sizes or BlobSizes()
        db.after_commit(BLOB_TABLES, self.blob_sizes.changed)
        self.store = store
        self.max_images = max_images
        self._verified = LRUCache(maxsize=VERIFIED_FILES_KEPT)
        self._small_blobs = LRUCache(maxsize=SMALL_BLOBS_KEPT_BYTES, getsizeof=small_blob_size)
