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
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)
from botocore.exceptions import ConnectionError as StoreConnectionError
from botocore.utils import get_environ_proxies
from cachetools import LRUCache

from berth.domain.digests import parse_digest
from berth.domain.errors import Unavailable
from berth.observability import metrics
from berth.storage.base import (
    BlobDamaged,
    BlobStore,
    BlobWriter,
    StoredCopy,
    UploadWriter,
    failures_logged,
)
from berth.storage.blob_cache import BlobCache, FillFeed
from berth.storage.s3_pieces import (
    MAX_COPY_BYTES,
    MIN_PART_BYTES,
    PIECE_BYTES,
    MiB,
    PartBuffer,
    Piece,
    parted_piece_key,
    parted_piece_name,
    parts,
    piece_name,
    recorded_pieces,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

logger = logging.getLogger("berth.storage")

READ_CHUNK = MiB
RETRY_AFTER_SECONDS = 5  # what a client is told to wait when the store cannot be reached
DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys
PARALLEL_PARTS = 4
# How long a blob found in the store is taken as still there by `confirm_stored`, and how
# many such answers are kept (about 150 bytes each).
CONFIRMED_SECONDS = 30.0
CONFIRMED_KEPT = 100_000
# What `check_writable` stores and deletes, under the prefix beside the blobs and uploads.
_WRITE_CHECK = "_write-check-"

_MISSING_OBJECT = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
_MISSING_BUCKET = {"NoSuchBucket"}
_PRECONDITION_FAILED = {"412", "PreconditionFailed"}
# The credentials themselves refused (wrong, expired), not a request they may not make.
_CREDENTIALS_REFUSED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
}
_REFUSED = {"403", "AccessDenied", *_CREDENTIALS_REFUSED}


def _unreached(exc: BotoCoreError) -> bool:
    """Whether `exc` says the store was not reached (refused, unresolved, timed out, the
    connection dropped), not that TLS or the request itself failed."""
    if isinstance(exc, SSLError):  # a certificate not trusted stays so
        return False
    return isinstance(exc, StoreConnectionError | HTTPClientError)


class _PreconditionFailed(Exception):
    """The object is no longer the one a conditional request (If-Match) named."""


# What a client and /readyz are told when the store refuses the registry (`refusal`): what
# its operator has to put right, with no address or bucket name.
MISSING_BUCKET = "the object store has no bucket for it (the operator should check s3_bucket)"
REFUSED_CREDENTIALS = (
    "the object store refused its credentials "
    "(the operator should check s3_access_key_id and s3_secret_access_key)"
)
NO_CREDENTIALS = (
    "the registry has no usable credentials for the object store "
    "(the operator should check s3_access_key_id and s3_secret_access_key)"
)
UNTRUSTED = "the registry cannot verify the object store (the operator should check its CA bundle)"
# botocore's names of the credentials given explicitly, as the settings that give them.
_CREDENTIAL_SETTINGS = {
    "aws_access_key_id": "s3_access_key_id",
    "aws_secret_access_key": "s3_secret_access_key",
}


class ObjectStoreError(Unavailable, OSError):
    """The object store cannot be used as configured: unreachable, the bucket missing, or
    the credentials refused. `str()` names the endpoint and bucket (the server's log, the
    refusal to serve, the CLI, a GC run's error); a client is answered 503 with Retry-After
    and told that storage is unavailable, and when the store refused the registry (`refusal`:
    the bucket missing, the credentials refused) why, and what its operator should check;
    the store's address is not its business."""

    def __init__(self, reason: str, refusal: str | None = None, *, passing: bool = False) -> None:
        super().__init__(
            f"the registry's storage is unavailable: {refusal}; try again later"
            if refusal
            else "the registry's storage is unavailable; try again shortly",
            RETRY_AFTER_SECONDS,
        )
        self.reason = reason
        self.refusal = refusal
        # The store could not be reached, or answered that it cannot serve now (5xx): what
        # may pass by itself (a store still starting), unlike a refusal or a bad setting.
        self.passing = passing
        # Logged where it happens: the answer no longer carries it, nor a traceback.
        if failures_logged():
            logger.warning("blob store: %s", reason)

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class S3Location:
    """Where and as whom the blobs are stored. Credentials left unset come from the usual
    AWS chain (environment variables, shared profile files, instance metadata)."""

    bucket: str
    endpoint: str | None = None
    region: str = "us-east-1"
    prefix: str = ""
    access_key_id: str | None = None
    secret_access_key: str | None = None
    path_style: bool = False
    attempts: int = 6  # tries of each request, backing off between them
    public_endpoint: str | None = None  # where clients reach the store; unset: `endpoint`

    @property
    def shown(self) -> str:
        endpoint = self.endpoint or f"AWS S3 ({self.region})"
        return f"bucket {self.bucket!r} at {endpoint}"

    @property
    def host_resolved_here(self) -> str | None:
        """The host name this node's resolver must find to reach the store: the endpoint's;
        None for AWS's own (no endpoint set) or an endpoint reached through a proxy
        (HTTPS_PROXY, HTTP_PROXY), which resolves it."""
        if self.endpoint is None or get_environ_proxies(self.endpoint):
            return None
        return urlsplit(self.endpoint).hostname


class S3BlobStore(BlobStore):
    # The largest piece one server-side copy takes (S3's limit); larger ones are copied in
    # slices. An attribute so that the slicing can be exercised without 5 GiB objects.
    max_copy_bytes = MAX_COPY_BYTES

    def __init__(self, location: S3Location, cache: BlobCache | None = None) -> None:
        self.location = location
        self.cache = cache  # this node's copies of pulled blobs (`s3_cache_dir`), if kept
        prefix = location.prefix.strip("/")
        self._prefix = f"{prefix}/" if prefix else ""
        self._client: S3Client | None = None
        self._client_stack = contextlib.AsyncExitStack()
        self._client_lock = asyncio.Lock()
        self._confirmed: LRUCache[str, float] = LRUCache(maxsize=CONFIRMED_KEPT)
        # Blobs a pull found whole in the store as it wrote this node's copy: they confirm
        # the copy (`confirm_cached_copy`), not a HEAD, which asks the store as before.
        self._filled: LRUCache[str, float] = LRUCache(maxsize=CONFIRMED_KEPT)
        # A cached copy's confirmation being asked (`confirm_cached_copy`): one per digest.
        self._confirming: dict[str, asyncio.Task[bool]] = {}
        # Until when cached copies are sent unconfirmed: the store could not be asked.
        self._unconfirmable_until = 0.0
        self._signer: S3Client | None = None  # for `public_endpoint`, when set
        # For `probe`, made when first asked; closed on its own (a failed `_s3` closes the
        # others').
        self._prober: S3Client | None = None
        self._prober_stack = contextlib.AsyncExitStack()
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ the client

    def _config(self, attempts: int) -> AioConfig:
        location = self.location
        return AioConfig(
            region_name=location.region,
            # SigV4 for presigned URLs too (botocore may presign with SigV2, whose URLs some
            # stores refuse and whose lifetime is not capped at 7 days).
            signature_version="s3v4",
            # Standard mode backs off exponentially on throttling (503 SlowDown) and on
            # connection errors.
            retries={"mode": "standard", "total_max_attempts": attempts},
            s3={"addressing_style": "path" if location.path_style else "auto"},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=64,
            # Checksums only where S3 requires them: SHA-256 already guards every blob.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )

    async def _client_for(
        self,
        endpoint: str | None,
        config: AioConfig,
        stack: contextlib.AsyncExitStack | None = None,
    ) -> Any:
        """A client of `endpoint`, closed with `stack` (the main client's by default)."""
        location = self.location
        client = await (stack or self._client_stack).enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=location.access_key_id,
                aws_secret_access_key=location.secret_access_key,
                config=config,
                # No TLS over plain HTTP, so no CA bundle to load: without this an
                # AWS_CA_BUNDLE naming a missing file (set for other clients) fails every
                # request even to a loopback endpoint.
                verify=False if _plain_http(endpoint) else None,
            )
        )
        _observe_requests(client)
        return client

    async def _s3(self) -> S3Client:
        """The client, made on first use (it belongs to the running event loop); the bucket
        is checked then, so bad settings fail with their cause, not on some later call."""
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                location = self.location
                config = self._config(location.attempts)
                try:
                    with self._errors():
                        if not _plain_http(location.endpoint):
                            self._check_ca_bundle()
                        client = await self._client_for(location.endpoint, config)
                        await client.head_bucket(Bucket=location.bucket)
                except BaseException:
                    await self._client_stack.aclose()
                    raise
                if location.public_endpoint is not None:
                    # Presigns only (no request of its own): see `download_url`.
                    self._signer = await self._client_for(location.public_endpoint, config)
                self._client = client
        return self._client

    async def check(self) -> None:
        await self._s3()  # the client is made by checking the bucket

    async def check_writable(self) -> None:
        """An empty object stored under the prefix and deleted, as a copy of blobs stores and
        deletes its pieces: credentials that may read the bucket (which passes `check`) but
        not write to it, or not delete from it, are refused before the first blob, not at it.
        Named `_write-check-…` beside `blobs/`, `uploads/` and `_damaged/`: never taken for
        a blob, nor an upload. Should the delete be refused, the object stays (empty)."""
        key = f"{self._prefix}{_WRITE_CHECK}{secrets.token_hex(8)}"
        await self._put(key, b"")
        s3 = await self._s3()
        with self._errors(key), contextlib.suppress(FileNotFoundError):
            await s3.delete_object(Bucket=self.location.bucket, Key=key)

    async def probe(self) -> None:
        """One HeadBucket, not retried: a readiness check is repeated every few seconds
        anyway, and a refused connection is known at once rather than after the back-off
        of `s3_attempts` tries (the caller bounds a store that does not answer)."""
        if self._prober is None:
            async with self._client_lock:
                if self._prober is None:
                    self._prober = await self._client_for(
                        self.location.endpoint, self._config(1), self._prober_stack
                    )
        with self._errors():
            await self._prober.head_bucket(Bucket=self.location.bucket)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._client = self._signer = self._prober = None
        await self._client_stack.aclose()
        await self._prober_stack.aclose()

    @contextlib.contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """S3's errors as the interface's: a missing object is FileNotFoundError (as on a
        filesystem); what makes the store unusable is ObjectStoreError, saying where."""
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _MISSING_BUCKET or (key is None and status == "404"):
                raise ObjectStoreError(
                    f"the {self.location.shown} does not exist: create it, or set s3_bucket",
                    MISSING_BUCKET,
                ) from None
            if code in _MISSING_OBJECT:
                raise FileNotFoundError(f"no object {key!r} in the {self.location.shown}") from None
            if code in _PRECONDITION_FAILED or status == "412":
                raise _PreconditionFailed(key) from None
            if code in _REFUSED or status == "403":
                raise ObjectStoreError(
                    self._refused(exc, key, code or status), REFUSED_CREDENTIALS
                ) from None
            raise ObjectStoreError(
                f"the {self.location.shown} answered {code or status}: {error.get('Message', exc)}",
                passing=status.startswith("5"),
            ) from exc
        except NoCredentialsError:
            raise ObjectStoreError(
                f"no credentials for the {self.location.shown}: set s3_access_key_id and "
                "s3_secret_access_key (or give them to the AWS chain: AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile, instance metadata)",
                NO_CREDENTIALS,
            ) from None
        except PartialCredentialsError as exc:
            raise ObjectStoreError(
                f"{_partial_credentials(exc)}, for the {self.location.shown}", NO_CREDENTIALS
            ) from None
        except BotoCoreError as exc:  # connection refused, timeouts
            raise ObjectStoreError(
                f"cannot use the {self.location.shown}: {exc}", passing=_unreached(exc)
            ) from exc

    def _refused(self, exc: ClientError, key: str | None, code: str) -> str:
        """Why the store refused a request. The bucket's check (the first request) refused
        means the credentials; a request on an object after it, that they may not do that
        there (credentials that may read but not write, a bucket policy), or that they
        changed since (a refused HEAD has no body to tell which)."""
        if key is None or code in _CREDENTIALS_REFUSED:
            return (
                f"the {self.location.shown} refused the credentials ({code}): check "
                "s3_access_key_id and s3_secret_access_key"
            )
        return (
            f"the {self.location.shown} refused {exc.operation_name} of {key!r} ({code}): "
            "check that the credentials (s3_access_key_id and s3_secret_access_key) are right "
            "and may read, write, list and delete the objects under s3_prefix"
        )

    def _check_ca_bundle(self) -> None:
        """Refuse a CA bundle (AWS_CA_BUNDLE, or ca_bundle of the AWS config file) that names
        no readable file: botocore says only "No such file or directory", on every request."""
        session = get_session()
        bundle = session.get_config_variable("ca_bundle")
        if bundle is None:
            return
        try:
            Path(bundle).open("rb").close()
        except OSError as exc:
            source = (
                "AWS_CA_BUNDLE"
                if os.environ.get("AWS_CA_BUNDLE")
                else "ca_bundle of the AWS config file"
            )
            raise ObjectStoreError(
                f"cannot use the {self.location.shown}: the CA bundle {bundle} ({source}) "
                f"cannot be read ({exc.strerror}): correct or unset {source.split()[0]}",
                UNTRUSTED,
            ) from None

    # ------------------------------------------------------------ keys

    def _blob_key(self, digest: str) -> str:
        parsed = parse_digest(digest)  # validated, so never a key outside the prefix
        return f"{self._prefix}blobs/{parsed.algorithm}/{parsed.hex[:2]}/{parsed.hex}"

    def _upload_prefix(self, upload_id: str) -> str:
        if not upload_id.isalnum():
            raise ValueError(f"bad upload id {upload_id!r}")
        return f"{self._prefix}uploads/{upload_id}/"

    # ------------------------------------------------------------ object primitives

    async def _put(self, key: str, body: bytes) -> None:
        s3 = await self._s3()
        with self._errors(key):
            await s3.put_object(Bucket=self.location.bucket, Key=key, Body=body)

    async def _head(self, key: str) -> dict[str, Any] | None:
        """The object's HeadObject answer, or None when there is no such object."""
        s3 = await self._s3()
        try:
            with self._errors(key):
                return dict(await s3.head_object(Bucket=self.location.bucket, Key=key))
        except FileNotFoundError:
            return None

    async def _size(self, key: str) -> int | None:
        head = await self._head(key)
        return None if head is None else int(head["ContentLength"])

    async def _list(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        s3 = await self._s3()
        paginator = s3.get_paginator("list_objects_v2")
        with self._errors():
            async for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
                for entry in page.get("Contents", []):
                    yield dict(entry)

    async def _delete_keys(self, keys: list[str]) -> None:
        s3 = await self._s3()
        for first in range(0, len(keys), DELETE_BATCH):
            batch = keys[first : first + DELETE_BATCH]
            with self._errors():
                answer = await s3.delete_objects(
                    Bucket=self.location.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            failed = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failed:
                raise ObjectStoreError(
                    f"the {self.location.shown} did not delete {len(failed)} objects, e.g. "
                    f"{failed[0].get('Key')!r}: {failed[0].get('Code')} {failed[0].get('Message')}"
                )

    async def _stream(
        self,
        key: str,
        start: int,
        end: int | None,
        answered: Callable[[str], object] | None = None,
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) of an object, by a ranged GET when not the whole object;
        `answered` is given the ETag of the object the GET reads."""
        if end is not None and end <= start:
            if await self._size(key) is None:
                raise FileNotFoundError(f"no object {key!r} in the {self.location.shown}")
            return
        s3 = await self._s3()
        arguments: dict[str, Any] = {"Bucket": self.location.bucket, "Key": key}
        if start or end is not None:
            arguments["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            answer = await s3.get_object(**arguments)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                with self._errors(key):
                    raise
            # A range that starts at or past the end: nothing to read, if the object is there.
            if await self._size(key) is None:
                raise FileNotFoundError(f"no object {key!r} in the {self.location.shown}") from None
            return
        except BotoCoreError:
            with self._errors(key):
                raise
        if answered is not None:
            answered(str(answer.get("ETag", "")))
        async with answer["Body"] as body:
            with self._errors(key):
                async for chunk in body.iter_chunks(READ_CHUNK):
                    yield chunk

    # ------------------------------------------------------------ uploads

    async def open_upload(self, upload_id: str, offset: int) -> UploadWriter:
        # Nothing to discard: pieces past `offset` were never recorded, so never read.
        return _PieceWriter(self, self._upload_prefix(upload_id), offset)

    def blob_writer(self, digest: str, length: int) -> BlobWriter | None:
        # Smaller blobs are one piece, and their commit one server-side copy of it.
        if length < PIECE_BYTES:
            return None
        return _MultipartBlobWriter(self, self._blob_key(digest))

    async def _remove_unrecorded(self, keys: list[str]) -> None:
        """Delete the pieces of a failed write, which no upload will ever name: one call, run
        to its end even when the request is cancelled (its client gone). Should it fail (the
        store unreachable), they stay, never read, until the upload ends: finishing,
        cancelling or expiring an upload deletes all its pieces."""
        await asyncio.shield(self._in_background(self._delete_unrecorded(keys)))

    async def _delete_unrecorded(self, keys: list[str]) -> None:
        try:
            await self._delete_keys(keys)
        except Exception:
            logger.info(
                "blob store: %d pieces of a failed upload write stay until the upload ends "
                "(finished, cancelled or expired)",
                len(keys),
            )

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

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
            async for chunk in self._stream(piece.key, 0, min(piece.size, length - piece.start)):
                yield chunk

    async def commit_upload(self, upload_id: str, digest: str, pieces: Sequence[str] = ()) -> None:
        key = self._blob_key(digest)
        recorded = [piece for piece in self._recorded(upload_id, pieces) if piece.size]
        total = sum(piece.size for piece in recorded)
        s3 = await self._s3()
        bucket = self.location.bucket
        if not recorded:
            await self._put(key, b"")
        elif len(recorded) == 1 and total <= self.max_copy_bytes:
            # One server-side copy, atomic like every S3 write (by reference on some stores).
            with self._errors(recorded[0].key):
                await s3.copy_object(
                    Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": recorded[0].key}
                )
        elif total < MIN_PART_BYTES:
            await self._put(key, await self._read_pieces(recorded))
        else:
            await self._multipart(key, recorded)

    async def _read_pieces(self, pieces: list[Piece]) -> bytes:
        """The bytes of small pieces, to send on as one object or part: all GETs at once
        (each waits mostly on the store; 1 MiB PATCHes make five pieces to a part), the
        chunks joined once."""

        async def chunks_of(piece: Piece) -> list[bytes]:
            end = None if piece.whole else piece.skip + piece.size
            return [chunk async for chunk in self._stream(piece.key, piece.skip, end)]

        read = await asyncio.gather(*(chunks_of(piece) for piece in pieces))
        return b"".join(itertools.chain.from_iterable(read))

    async def _multipart(self, key: str, pieces: list[Piece]) -> None:
        s3 = await self._s3()
        bucket = self.location.bucket
        with self._errors(key):
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
                    with self._errors(piece.key):
                        copied = await s3.upload_part_copy(
                            **common, CopySource={"Bucket": bucket, "Key": piece.key}
                        )
                    return {"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]}
                body = await self._read_pieces(part)
                with self._errors(key):
                    sent = await s3.upload_part(**common, Body=body)
                return {"PartNumber": number, "ETag": sent["ETag"]}

        try:
            completed = await asyncio.gather(
                *(
                    send(number, part)
                    for number, part in enumerate(parts(pieces, self.max_copy_bytes), start=1)
                )
            )
            with self._errors(key):
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
        s3 = await self._s3()
        bucket = self.location.bucket
        paginator = s3.get_paginator("list_multipart_uploads")
        stale = []
        with self._errors():
            for area in ("blobs/", "uploads/"):
                async for page in paginator.paginate(Bucket=bucket, Prefix=self._prefix + area):
                    for entry in page.get("Uploads", []):
                        if entry["Initiated"].timestamp() < started_before:
                            stale.append((entry["Key"], entry["UploadId"]))
        for key, multipart_id in stale:
            with self._errors(key), contextlib.suppress(FileNotFoundError):
                await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=multipart_id)
        return len(stale)

    async def delete_upload(self, upload_id: str) -> None:
        prefix = self._upload_prefix(upload_id)
        await self._delete_keys([entry["Key"] async for entry in self._list(prefix)])

    async def upload_bytes_held(self, upload_id: str) -> int:
        """Its pieces, and the parts sent so far of a piece still being written (a long
        PATCH's multipart upload): one listing of each, and one of each such piece's parts."""
        prefix = self._upload_prefix(upload_id)
        held = sum([int(entry["Size"]) async for entry in self._list(prefix)])
        s3 = await self._s3()
        bucket = self.location.bucket
        with self._errors():
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
        async for entry in self._list(prefix):
            upload_id = entry["Key"][len(prefix) :].partition("/")[0]
            if upload_id.isalnum():
                modified = entry["LastModified"].timestamp()
                found[upload_id] = max(found.get(upload_id, modified), modified)
        return list(found.items())

    # ------------------------------------------------------------ blobs

    async def stat(self, digest: str) -> int | None:
        return await self._size(self._blob_key(digest))

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
            async for chunk in self._stream(self._blob_key(digest), start, end, answered):
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
        s3 = await self._s3()
        params = {"Bucket": self.location.bucket, "Key": self._blob_key(digest)}
        if byte_range is not None:
            params["Range"] = byte_range
        with self._errors():
            url: str = await (self._signer or s3).generate_presigned_url(
                "get_object", Params=params, ExpiresIn=ttl
            )
        return url

    async def delete(self, digest: str) -> None:
        self._forget(digest)
        if self.cache is not None:
            await self.cache.discard([digest])
        key = self._blob_key(digest)
        s3 = await self._s3()
        with self._errors(key), contextlib.suppress(FileNotFoundError):
            await s3.delete_object(Bucket=self.location.bucket, Key=key)

    async def delete_many(self, digests: list[str]) -> None:
        for digest in digests:
            self._forget(digest)
        if self.cache is not None:
            await self.cache.discard(digests)
        await self._delete_keys([self._blob_key(digest) for digest in digests])

    async def stored_copy(self, digest: str) -> StoredCopy | None:
        head = await self._head(self._blob_key(digest))
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
        s3 = await self._s3()
        bucket = self.location.bucket
        copy_if: dict[str, Any] = {"CopySourceIfMatch": version} if version else {}
        try:
            with self._errors(key):
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
        except _PreconditionFailed:
            return  # replaced between the ETag's check and the request: this one stays
        if not version:
            await self.delete(digest)

    async def iter_digests(self) -> AsyncIterator[str]:
        async for digest, _modified in self.list_blobs():
            yield digest

    async def list_blobs(self) -> AsyncIterator[tuple[str, float]]:
        prefix = f"{self._prefix}blobs/"
        async for entry in self._list(prefix):
            algorithm, _, rest = entry["Key"][len(prefix) :].partition("/")
            hex_digest = rest.rpartition("/")[2]
            if algorithm in ("sha256", "sha512") and hex_digest:
                yield f"{algorithm}:{hex_digest}", entry["LastModified"].timestamp()


class _MultipartObject:
    """An object written as the parts of a multipart upload of its key, one part at a time in
    order (PartBuffer's bodies); S3 shows it only once `complete` succeeds, so an object cut
    short is never visible. One never completed is aborted by `abort`, or else by the
    abandoned-uploads job (`abort_unfinished_commits`)."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        self._store = store
        self.key = key
        self._multipart_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self.completed = False
        self.store_failed = False  # a part or the completion spent its tries (see `abort`)

    @property
    def started(self) -> bool:
        return self._multipart_id is not None

    async def send_part(self, body: bytes) -> None:
        with self._noting_failure():
            s3 = await self._store._s3()
            bucket = self._store.location.bucket
            with self._store._errors(self.key):
                if self._multipart_id is None:
                    created = await s3.create_multipart_upload(Bucket=bucket, Key=self.key)
                    self._multipart_id = created["UploadId"]
                number = len(self._parts) + 1
                sent = await s3.upload_part(
                    Bucket=bucket,
                    Key=self.key,
                    UploadId=self._multipart_id,
                    PartNumber=number,
                    Body=body,
                )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    @contextlib.contextmanager
    def _noting_failure(self) -> Iterator[None]:
        try:
            yield
        except ObjectStoreError:
            self.store_failed = True
            raise

    async def complete(self) -> None:
        if self.completed or self._multipart_id is None:
            raise RuntimeError("completing a multipart object with no part, or again")
        with self._noting_failure():
            s3 = await self._store._s3()
            with self._store._errors(self.key):
                await s3.complete_multipart_upload(
                    Bucket=self._store.location.bucket,
                    Key=self.key,
                    UploadId=self._multipart_id,
                    MultipartUpload={"Parts": self._parts},
                )
        self.completed = True

    async def abort(self) -> None:
        """Drop the parts unless completed (best effort, never raises). After the store
        failed a part or the completion, in the background: that failure spent a whole
        `s3_attempts` budget, and the caller's client is told 503 now, not after the abort
        has spent another (the abandoned-uploads job aborts what it leaves)."""
        if self._multipart_id is None or self.completed:
            return
        multipart_id, self._multipart_id = self._multipart_id, None
        aborting = self._abort(multipart_id)
        if self.store_failed:
            self._store._in_background(aborting)
        else:
            await aborting

    async def _abort(self, multipart_id: str) -> None:
        with contextlib.suppress(Exception):
            s3 = await self._store._s3()
            await s3.abort_multipart_upload(
                Bucket=self._store.location.bucket, Key=self.key, UploadId=multipart_id
            )


class _PieceWriter(UploadWriter):
    """One PATCH's bytes as one piece of the upload (see `s3_pieces`): buffered up to
    PIECE_BYTES, then, if the PATCH ends there, one PUT; if it goes on, the parts of a
    multipart upload of the piece's own key, completed when the PATCH's last byte is in."""

    def __init__(self, store: S3BlobStore, prefix: str, start: int) -> None:
        self._store = store
        self._prefix = prefix
        self._start = start
        self._token = secrets.token_hex(8)
        self._length = 0
        self._put_key: str | None = None  # a short PATCH's one PUT, once begun
        self._put_failed = False  # it spent its tries (see `abort`)
        self._object = _MultipartObject(store, prefix + parted_piece_key(start, self._token))
        self._recorded: str | None = None
        self._buffer = PartBuffer(self._send)

    @property
    def pieces(self) -> list[str]:
        return [self._recorded] if self._recorded else []

    async def write(self, parts: Sequence[bytes]) -> None:
        await self._buffer.write(parts)

    async def _send(self, body: bytes) -> None:
        # PartBuffer hands on less than PIECE_BYTES only as the write's last body: if it is
        # also the first, the whole PATCH is short and goes in one PUT.
        if not self._object.started and len(body) < PIECE_BYTES:
            name = piece_name(self._start, len(body), self._token)
            self._put_key = self._prefix + name
            try:
                await self._store._put(self._put_key, body)
            except ObjectStoreError:
                self._put_failed = True
                raise
            self._recorded = name
        else:
            await self._object.send_part(body)
        self._length += len(body)

    async def close(self) -> None:
        await self._buffer.close()
        if self._object.started:
            await self._object.complete()
            self._recorded = parted_piece_name(self._start, self._length, self._token)

    async def abort(self) -> None:
        self._recorded = None
        # A PUT or a completion cut short may still have landed, and one that did (or the
        # piece of a PATCH that lost the race for the offset) is no part of the upload.
        begun = [self._put_key] if self._put_key else []
        if self._object.started:
            begun.append(self._object.key)
        await self._buffer.abort()
        await self._object.abort()
        if not begun:
            return
        if self._put_failed or self._object.store_failed:
            # The store has just failed this PATCH after a whole `s3_attempts` budget: its
            # client is told 503 now, not once the removal has spent another (~15 s each).
            self._store._in_background(self._store._delete_unrecorded(begun))
        else:
            await self._store._remove_unrecorded(begun)


class _MultipartBlobWriter(BlobWriter):
    """A blob written as the parts of a multipart upload of its own key (PartBuffer's bodies,
    16 MiB or more but the last), whose PUT goes on while the next fills. S3 shows the object
    only once `commit` completes the upload, so a wrong digest, a body cut short or a node
    that dies leaves nothing visible."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        self._object = _MultipartObject(store, key)
        self._buffer = PartBuffer(self._object.send_part)

    async def write(self, parts: Sequence[bytes]) -> None:
        await self._buffer.write(parts)

    async def close(self) -> None:
        await self._buffer.close()

    async def commit(self) -> None:
        await self._object.complete()

    async def abort(self) -> None:
        """Drop what was written unless committed (best effort, never raises)."""
        await self._buffer.abort()
        await self._object.abort()


def _partial_credentials(exc: PartialCredentialsError) -> str:
    """Which credential is missing, as the setting that gives it when given explicitly."""
    missing = str(exc.kwargs.get("cred_var", ""))
    if exc.kwargs.get("provider") == "explicit" and missing in _CREDENTIAL_SETTINGS:
        given = next(s for v, s in _CREDENTIAL_SETTINGS.items() if v != missing)
        return (
            f"{given} is set but {_CREDENTIAL_SETTINGS[missing]} is not: set both "
            "(or neither, and the AWS chain gives them)"
        )
    return f"the credentials from {exc.kwargs.get('provider')} lack {missing}: give both parts"


def _plain_http(endpoint: str | None) -> bool:
    return endpoint is not None and endpoint.lower().startswith("http://")


def _observe_requests(client: Any) -> None:
    """Count every request the client makes to the store in the metrics, by operation and
    the store's status, with its time and the retries it took (botocore's call events)."""
    events = client.meta.events
    events.register("before-call.s3", _request_sent)
    events.register("after-call.s3", _request_answered)
    events.register("after-call-error.s3", _request_unanswered)


def _request_sent(model: Any, context: dict[str, Any], **_: Any) -> None:
    # Returns None: a value here would be taken as the request's answer.
    context["berth_request"] = (model.name, time.monotonic())


def _request_answered(http_response: Any, context: dict[str, Any], **_: Any) -> None:
    _request_done(context, str(http_response.status_code))


def _request_unanswered(context: dict[str, Any], **_: Any) -> None:
    _request_done(context, "none")  # no answer after the retries: refused, timed out


def _request_done(context: dict[str, Any], status: str) -> None:
    sent = context.pop("berth_request", None)
    if sent is not None:
        operation, started = sent
        # botocore numbers each try of the request in its context, answered or not.
        tries = int(context.get("retries", {}).get("attempt", 1))
        metrics.s3_request_done(operation, status, time.monotonic() - started, tries - 1)
