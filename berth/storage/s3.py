"""S3 driver: one object per blob, and an upload as one object per PATCH written to it.

Layout under the prefix: `blobs/{algorithm}/{hex[:2]}/{hex}` for blobs, `uploads/{id}/{piece}`
for the pieces of an upload (`s3_pieces`: each key used once, and only the pieces the caller
recorded with the acknowledged offset make up the upload), `_damaged/{algorithm}-{hex}` for
blobs set aside, and `_write-check-{token}`, for a moment, where `check_writable` writes.

S3 cannot append to an object, and any node may receive the next PATCH of an upload, so the
scratch "object" of the interface is the run of recorded pieces: appending adds a piece under
a new key, and going back to an offset is the caller's recording an earlier list. S3's 5 MiB
minimum part size stays inside: an upload of one piece is committed by one server-side copy
(CopyObject), and one of several by a multipart upload, copying pieces of 5 MiB or more
server-side (UploadPartCopy) and streaming smaller ones together into parts. The blob appears
only when S3 completes the copy, so it is never half visible. A large push in one PUT (its
digest known before its bytes) skips the pieces: its body is written as the parts of a
multipart upload of the blob's own key, completed once verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache

from berth.domain.digests import parse_digest
from berth.domain.names import UPLOAD_ID_RE
from berth.storage.base import BlobDamaged, BlobStore, BlobWriter, StoredCopy, UploadWriter
from berth.storage.blob_cache import BlobCache, FillFeed
from berth.storage.s3_errors import ObjectStoreError, PreconditionFailed
from berth.storage.s3_objects import S3Location, S3Objects
from berth.storage.s3_pieces import (
    MAX_COPY_BYTES,
    MIN_PART_BYTES,
    PIECE_BYTES,
    Piece,
    parts,
    recorded_pieces,
)
from berth.storage.s3_writers import MultipartBlobWriter, PieceWriter

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

PARALLEL_PARTS = 4
# How long a blob found in the store is taken as still there by `confirm_stored`, and how
# many such answers are kept (about 150 bytes each).
CONFIRMED_SECONDS = 30.0
CONFIRMED_KEPT = 100_000
# What `check_writable` stores and deletes, under the prefix beside the blobs and uploads.
_WRITE_CHECK = "_write-check-"


class S3BlobStore(S3Objects, BlobStore):
    # The largest piece one server-side copy takes (S3's limit); larger ones are copied in
    # slices. An attribute so that the slicing can be exercised without 5 GiB objects.
    max_copy_bytes = MAX_COPY_BYTES

    def __init__(self, location: S3Location, cache: BlobCache | None = None) -> None:
        super().__init__(location)
        self.cache = cache  # this node's copies of pulled blobs (`s3_cache_dir`), if kept
        self._confirmed: LRUCache[str, float] = LRUCache(maxsize=CONFIRMED_KEPT)
        # Blobs a pull found whole in the store as it wrote this node's copy: they confirm
        # the copy (`confirm_cached_copy`), not a HEAD, which asks the store as before.
        self._filled: LRUCache[str, float] = LRUCache(maxsize=CONFIRMED_KEPT)
        # A cached copy's confirmation being asked (`confirm_cached_copy`): one per digest.
        self._confirming: dict[str, asyncio.Task[bool]] = {}
        # Until when cached copies are sent unconfirmed: the store could not be asked.
        self._unconfirmable_until = 0.0

    async def check_writable(self) -> None:
        """An empty object stored under the prefix and deleted, as a copy of blobs stores and
        deletes its pieces: credentials that may read the bucket (which passes `check`) but
        not write to it, or not delete from it, are refused before the first blob, not at it.
        Named `_write-check-…` beside `blobs/`, `uploads/` and `_damaged/`: never taken for
        a blob, nor an upload. Should the delete be refused, the object stays (empty)."""
        key = f"{self._prefix}{_WRITE_CHECK}{secrets.token_hex(8)}"
        await self.put(key, b"")
        s3 = await self.s3()
        with self.errors(key), contextlib.suppress(FileNotFoundError):
            await s3.delete_object(Bucket=self.location.bucket, Key=key)

    # ------------------------------------------------------------ keys

    def _blob_key(self, digest: str) -> str:
        parsed = parse_digest(digest)  # validated, so never a key outside the prefix
        return f"{self._prefix}blobs/{parsed.algorithm}/{parsed.hex[:2]}/{parsed.hex}"

    def _upload_prefix(self, upload_id: str) -> str:
        if not upload_id.isalnum():
            raise ValueError(f"bad upload id {upload_id!r}")
        return f"{self._prefix}uploads/{upload_id}/"

    # ------------------------------------------------------------ uploads

    async def open_upload(self, upload_id: str, offset: int) -> UploadWriter:
        # Nothing to discard: pieces past `offset` were never recorded, so never read.
        return PieceWriter(self, self._upload_prefix(upload_id), offset)

    def blob_writer(self, digest: str, length: int) -> BlobWriter | None:
        # Smaller blobs are one piece, and their commit one server-side copy of it.
        if length < PIECE_BYTES:
            return None
        return MultipartBlobWriter(self, self._blob_key(digest))

    def _recorded(self, upload_id: str, names: Sequence[str]) -> list[Piece]:
        prefix = self._upload_prefix(upload_id)
        return [replace(piece, key=prefix + piece.key) for piece in recorded_pieces(names)]

    async def read_upload(
        self, upload_id: str, length: int, pieces: Sequence[str] = ()
    ) -> AsyncIterator[bytes]:
        recorded = self._recorded(upload_id, pieces)
        if (recorded[-1].end if recorded else 0) < length:
            raise FileNotFoundError(f"upload {upload_id} holds fewer than {length} bytes")
        for piece in recorded:
            if piece.start >= length:
                break
            async for chunk in self.stream(piece.key, 0, min(piece.size, length - piece.start)):
                yield chunk

    async def commit_upload(self, upload_id: str, digest: str, pieces: Sequence[str] = ()) -> None:
        key = self._blob_key(digest)
        recorded = [piece for piece in self._recorded(upload_id, pieces) if piece.size]
        total = sum(piece.size for piece in recorded)
        s3 = await self.s3()
        bucket = self.location.bucket
        if not recorded:
            await self.put(key, b"")
        elif len(recorded) == 1 and total <= self.max_copy_bytes:
            # One server-side copy, atomic like every S3 write (by reference on some stores).
            with self.errors(recorded[0].key):
                await s3.copy_object(
                    Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": recorded[0].key}
                )
        elif total < MIN_PART_BYTES:
            await self.put(key, await self._read_pieces(recorded))
        else:
            await self._multipart(key, recorded)

    async def _read_pieces(self, pieces: list[Piece]) -> bytes:
        """The bytes of small pieces, to send on as one object or part: all GETs at once
        (each waits mostly on the store; 1 MiB PATCHes make five pieces to a part), the
        chunks joined once."""

        async def chunks_of(piece: Piece) -> list[bytes]:
            end = None if piece.whole else piece.skip + piece.size
            return [chunk async for chunk in self.stream(piece.key, piece.skip, end)]

        read = await asyncio.gather(*(chunks_of(piece) for piece in pieces))
        return b"".join(itertools.chain.from_iterable(read))

    async def _multipart(self, key: str, pieces: list[Piece]) -> None:
        s3 = await self.s3()
        bucket = self.location.bucket
        with self.errors(key):
            upload_id = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        limit = asyncio.Semaphore(PARALLEL_PARTS)

        async def send(number: int, part: list[Piece]) -> CompletedPartTypeDef:
            async with limit:
                common: dict[str, Any] = {
                    "Bucket": bucket,
                    "Key": key,
                    "UploadId": upload_id,
                    "PartNumber": number,
                }
                if len(part) == 1 and part[0].size >= MIN_PART_BYTES:
                    piece = part[0]
                    if not piece.whole:
                        last = piece.skip + piece.size - 1
                        common["CopySourceRange"] = f"bytes={piece.skip}-{last}"
                    with self.errors(piece.key):
                        copied = await s3.upload_part_copy(
                            **common, CopySource={"Bucket": bucket, "Key": piece.key}
                        )
                    return {"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]}
                body = await self._read_pieces(part)
                with self.errors(key):
                    sent = await s3.upload_part(**common, Body=body)
                return {"PartNumber": number, "ETag": sent["ETag"]}

        try:
            completed = await asyncio.gather(
                *(
                    send(number, part)
                    for number, part in enumerate(parts(pieces, self.max_copy_bytes), start=1)
                )
            )
            with self.errors(key):
                await s3.complete_multipart_upload(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": completed},
                )
        except BaseException:
            with contextlib.suppress(Exception):
                await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    async def abort_unfinished_commits(self, started_before: float) -> int:
        """Multipart uploads of blobs (commits, pushes in one PUT) and of pieces (long
        PATCHes) that a node began and never completed nor aborted (it died meanwhile)."""
        s3 = await self.s3()
        bucket = self.location.bucket
        paginator = s3.get_paginator("list_multipart_uploads")
        stale = []
        with self.errors():
            for area in ("blobs/", "uploads/"):
                async for page in paginator.paginate(Bucket=bucket, Prefix=self._prefix + area):
                    for entry in page.get("Uploads", []):
                        if entry["Initiated"].timestamp() < started_before and self._ours(
                            entry["Key"]
                        ):
                            stale.append((entry["Key"], entry["UploadId"]))
        for key, multipart_id in stale:
            with self.errors(key), contextlib.suppress(FileNotFoundError):
                await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=multipart_id)
        return len(stale)

    def _ours(self, key: str) -> bool:
        """Whether `key` is named as this install names its blobs and uploads: not one of
        another install sharing the bucket with its s3_prefix inside this one's areas."""
        area, _, rest = key[len(self._prefix) :].partition("/")
        first = rest.partition("/")[0]
        if area == "uploads":
            return UPLOAD_ID_RE.fullmatch(first) is not None
        return area == "blobs" and first in ("sha256", "sha512")

    async def delete_upload(self, upload_id: str) -> None:
        prefix = self._upload_prefix(upload_id)
        await self.delete_keys([entry["Key"] async for entry in self.list_objects(prefix)])

    async def upload_bytes_held(self, upload_id: str) -> int:
        """Its pieces, and the parts sent so far of a piece still being written (a long
        PATCH's multipart upload): one listing of each, and one of each such piece's parts."""
        prefix = self._upload_prefix(upload_id)
        held = sum([int(entry["Size"]) async for entry in self.list_objects(prefix)])
        s3 = await self.s3()
        bucket = self.location.bucket
        with self.errors():
            async for page in s3.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=prefix
            ):
                for entry in page.get("Uploads", []):
                    async for parts in s3.get_paginator("list_parts").paginate(
                        Bucket=bucket, Key=entry["Key"], UploadId=entry["UploadId"]
                    ):
                        held += sum(int(part["Size"]) for part in parts.get("Parts", []))
        return held

    async def list_uploads(self) -> list[tuple[str, float]]:
        prefix = f"{self._prefix}uploads/"
        found: dict[str, float] = {}
        async for entry in self.list_objects(prefix):
            upload_id = entry["Key"][len(prefix) :].partition("/")[0]
            # Only the ids Berth makes: another install sharing the bucket may have its
            # s3_prefix inside this one's uploads area (`uploads/teamb`), and what is listed
            # here, no upload naming it, is removed as scratch a crash left.
            if UPLOAD_ID_RE.fullmatch(upload_id):
                modified = entry["LastModified"].timestamp()
                found[upload_id] = max(found.get(upload_id, modified), modified)
        return list(found.items())

    # ------------------------------------------------------------ blobs

    async def stat(self, digest: str) -> int | None:
        return await self.size(self._blob_key(digest))

    async def confirm_stored(self, digest: str, size: int) -> bool:
        """A blob found at `size` by a HeadObject less than CONFIRMED_SECONDS ago is taken
        as still there: a HEAD or a presigned redirect then costs no request to the store.
        Content-addressed, so the size never changes; only a removal could make the answer
        wrong, and this node's own removals forget it at once. A blob lost otherwise (set
        aside by another node, removed from the bucket by hand) is answered as stored for at
        most that long (so is a copy in this node's cache, `confirm_cached_copy`); a GET
        streamed through Berth finds out at once, and commits and the storage check ask the
        store every time (`stat`)."""
        confirmed = self._confirmed.get(digest)
        if confirmed is not None and time.monotonic() - confirmed < CONFIRMED_SECONDS:
            return True
        if await self.stat(digest) != size:
            self._forget(digest)
            return False
        self._confirmed[digest] = time.monotonic()
        return True

    def local_path(self, digest: str) -> Path | None:
        return None

    def _forget(self, digest: str) -> None:
        """The blob found gone or removed here: no earlier answer vouches for it now."""
        self._confirmed.pop(digest, None)
        self._filled.pop(digest, None)

    def cached_path(self, digest: str, size: int) -> Path | None:
        return None if self.cache is None else self.cache.hit(digest, size)

    async def confirm_cached_copy(self, digest: str, size: int) -> bool:
        """Whether this node holds a copy of the blob it may send: the copy alone does not
        say so, for another node may have set the blob aside as damaged (or a blob lost from
        the bucket is to be pushed again), and a HEAD would answer 404. As `confirm_stored`:
        a blob found in the store less than CONFIRMED_SECONDS ago is taken as still there, so
        a copy pulled often costs one HeadObject per that many seconds, shared by the pulls
        waiting for it. Found gone, the copy is removed and FileNotFoundError raised. A store
        that cannot be asked (down, refusing) does not show the blob gone: the copy is sent,
        unconfirmed for the next CONFIRMED_SECONDS, so that while the store is down only one
        pull in that time waits for the tries of `s3_attempts`."""
        if self.cache is None or not self.cache.holds(digest, size):
            return False
        now = time.monotonic()
        for confirmed in (self._confirmed.get(digest), self._filled.get(digest)):
            if confirmed is not None and now - confirmed < CONFIRMED_SECONDS:
                return True
        if now < self._unconfirmable_until:
            return True
        confirming = self._confirming.get(digest)
        if confirming is None:
            confirming = asyncio.ensure_future(self._confirm_copy(digest, size))
            self._confirming[digest] = confirming
            confirming.add_done_callback(lambda _: self._confirming.pop(digest, None))
        # Shielded: a pull whose client went away leaves the answer to the others.
        if not await asyncio.shield(confirming):
            raise FileNotFoundError(f"blob {digest} is no longer in the {self.location.shown}")
        return True

    async def _confirm_copy(self, digest: str, size: int) -> bool:
        try:
            stored = await self.confirm_stored(digest, size)
        except ObjectStoreError:
            self._unconfirmable_until = time.monotonic() + CONFIRMED_SECONDS
            return True
        if not stored and self.cache is not None:
            await self.cache.discard([digest])
        return stored

    def holds_cached_copy(self, digest: str, size: int) -> bool:
        return self.cache is not None and self.cache.holds(digest, size)

    async def download(
        self, digest: str, size: int, answered: Callable[[str], object] | None = None
    ) -> AsyncIterator[bytes]:
        """The blob streamed from the store; with a cache, its bytes are also written to a
        copy on the way (no second read from the store), which is hashed after the last chunk
        and becomes visible if it matches the digest. A download stopped early (its
        client gone) leaves no copy; one whose bytes do not match raises BlobDamaged after
        its last chunk."""
        fill = None if self.cache is None else self.cache.start_fill(digest, size)
        if fill is None:
            async for chunk in self.read(digest, 0, size, answered):
                yield chunk
            return
        feed = FillFeed(fill)
        read: list[str] = []  # the ETag of the copy read: only it is set aside if damaged
        answered_at = time.monotonic()

        def seen(etag: str) -> None:
            nonlocal answered_at
            answered_at = time.monotonic()
            read.append(etag)
            if answered is not None:
                answered(etag)

        try:
            async for chunk in self.read(digest, 0, size, seen):
                await feed.add(chunk)  # written in a thread, in batches
                yield chunk
            await feed.drain()
        except BaseException:
            feed.abandon()
            raise
        if await asyncio.to_thread(fill.finish):
            # Whole and matching: the store held the blob when it answered (the copy's next
            # pulls need not ask again for a while).
            self._filled[digest] = answered_at
            fill.cache.request_sweep()  # the new copy may take the cache over its bound
        elif fill.damaged:
            raise BlobDamaged(digest, read[0] if read else None)

    async def read(
        self,
        digest: str,
        start: int = 0,
        end: int | None = None,
        answered: Callable[[str], object] | None = None,
    ) -> AsyncIterator[bytes]:
        """The interface's, and `answered` given the ETag of the copy read (`download`)."""
        try:
            async for chunk in self.stream(self._blob_key(digest), start, end, answered):
                yield chunk
        except FileNotFoundError:
            self._forget(digest)  # found gone: HEADs say so from now on
            raise

    async def download_url(self, digest: str, ttl: int, byte_range: str | None = None) -> str:
        """A presigned GetObject URL: signed here, without a request to the store. Whoever
        holds it reads the blob (a Range included) until it expires; with `byte_range`, the
        Range header is signed too, so the URL serves only that range (the store refuses the
        request without it), not the whole blob counted as a range. Signed for the address
        clients use (`public_endpoint`, when it differs from the nodes'): SigV4 signs the
        Host header, so a URL is valid only at the host it names, and a proxy there must pass
        that Host on to the store unchanged (the path too), for the store checks the same."""
        s3 = await self.s3()
        params = {"Bucket": self.location.bucket, "Key": self._blob_key(digest)}
        if byte_range is not None:
            params["Range"] = byte_range
        with self.errors():
            url: str = await (self._signer or s3).generate_presigned_url(
                "get_object", Params=params, ExpiresIn=ttl
            )
        return url

    async def delete(self, digest: str) -> None:
        self._forget(digest)
        if self.cache is not None:
            await self.cache.discard([digest])
        key = self._blob_key(digest)
        s3 = await self.s3()
        with self.errors(key), contextlib.suppress(FileNotFoundError):
            await s3.delete_object(Bucket=self.location.bucket, Key=key)

    async def delete_many(self, digests: list[str]) -> None:
        for digest in digests:
            self._forget(digest)
        if self.cache is not None:
            await self.cache.discard(digests)
        await self.delete_keys([self._blob_key(digest) for digest in digests])

    async def stored_copy(self, digest: str) -> StoredCopy | None:
        head = await self.head(self._blob_key(digest))
        if head is None:
            return None
        return StoredCopy(int(head["ContentLength"]), str(head.get("ETag", "")))

    async def quarantine(self, digest: str, version: str | None = None) -> None:
        """With `version` (an ETag), the copy and the removal are conditional on it, which
        AWS S3 and SeaweedFS honour; a store that ignores If-Match (Ceph RGW) is asked for
        the ETag first, which leaves a few milliseconds' window. An empty ETag (RGW's
        multipart objects) tells no copy from another: set aside as without `version`."""
        if version is not None:
            now = await self.stored_copy(digest)
            if now is None or now.version != version:
                return  # gone, or pushed again since the damaged copy was read: that stays
        self._forget(digest)
        if self.cache is not None:
            await self.cache.discard([digest])
        parsed = parse_digest(digest)
        key = self._blob_key(digest)
        s3 = await self.s3()
        bucket = self.location.bucket
        copy_if: dict[str, Any] = {"CopySourceIfMatch": version} if version else {}
        try:
            with self.errors(key):
                await s3.copy_object(
                    Bucket=bucket,
                    Key=f"{self._prefix}_damaged/{parsed.algorithm}-{parsed.hex}",
                    CopySource={"Bucket": bucket, "Key": key},
                    **copy_if,
                )
                if version:
                    await s3.delete_object(Bucket=bucket, Key=key, IfMatch=version)
        except FileNotFoundError:
            return
        except PreconditionFailed:
            return  # replaced between the ETag's check and the request: this one stays
        if not version:
            await self.delete(digest)

    async def iter_digests(self) -> AsyncIterator[str]:
        async for digest, _modified in self.list_blobs():
            yield digest

    async def list_blobs(self) -> AsyncIterator[tuple[str, float]]:
        prefix = f"{self._prefix}blobs/"
        async for entry in self.list_objects(prefix):
            algorithm, _, rest = entry["Key"][len(prefix) :].partition("/")
            hex_digest = rest.rpartition("/")[2]
            if algorithm in ("sha256", "sha512") and hex_digest:
                yield f"{algorithm}:{hex_digest}", entry["LastModified"].timestamp()
