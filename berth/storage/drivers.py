"""Which blob store the settings name: the one place that knows which storage drivers exist.
Its own module, not the composition root's (berth.state): a scan process opens its store
through it, and should not import every service to do so."""

from __future__ import annotations

from typing import TYPE_CHECKING

from berth.storage.base import BlobStore
from berth.storage.filesystem import FilesystemBlobStore

if TYPE_CHECKING:
    from berth.config import Settings
    from berth.storage.s3_objects import S3Location


def blob_store(settings: Settings) -> BlobStore:
    """The blob store `settings` name."""
    if settings.storage == "s3":
        # Imported here: the S3 client takes a second or more to import, which no CLI verb
        # on the filesystem store should pay.
        from berth.storage.blob_cache import BlobCache
        from berth.storage.s3 import S3BlobStore

        cache = None
        if settings.s3_cache_dir is not None:
            cache = BlobCache(settings.s3_cache_dir.resolve(), settings.s3_cache_bound)
        return S3BlobStore(s3_location(settings), cache)
    return FilesystemBlobStore(settings.blob_dir)


def s3_location(settings: Settings) -> S3Location:
    """Where `storage = "s3"` keeps the blobs, as its settings say."""
    # Imported here: the S3 client takes a second or more to import (see `blob_store`).
    from berth.storage.s3_objects import S3Location

    assert settings.s3_bucket is not None  # the settings refuse s3 without a bucket
    return S3Location(
        bucket=settings.s3_bucket,
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        prefix=settings.s3_prefix,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
        path_style=settings.s3_path_style,
        attempts=settings.s3_attempts,
        public_endpoint=settings.s3_public_endpoint,
    )
