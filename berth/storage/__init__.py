"""Blob storage drivers: bytes by digest, and upload scratch space. Metadata lives elsewhere."""

from berth.storage.base import BlobStore, UploadWriter
from berth.storage.filesystem import FilesystemBlobStore

__all__ = ["BlobStore", "FilesystemBlobStore", "UploadWriter"]
