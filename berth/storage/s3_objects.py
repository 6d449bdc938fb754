"""The bucket through one client: the client (made on first use, the bucket checked then, its
requests counted in the metrics) and the object primitives the S3 driver and its writers are
made of (put, head, list, batched delete, ranged stream, removals in the background), each
raising S3's errors translated (`s3_errors`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from botocore.utils import get_environ_proxies

from berth.observability import metrics
from berth.storage.s3_errors import (
    UNTRUSTED,
    ObjectStoreError,
    bucket_check_refusal,
    translated,
)
from berth.storage.s3_pieces import MiB

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

logger = logging.getLogger("berth.storage")

READ_CHUNK = MiB
DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys


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


class S3Objects:
    """The objects of `location`'s bucket, through a client made on first use: its public
    methods are the primitives that `s3` and `s3_writers` use."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        prefix = location.prefix.strip("/")
        self._prefix = f"{prefix}/" if prefix else ""  # what every key of Berth's begins with
        self._client: S3Client | None = None
        self._client_stack = contextlib.AsyncExitStack()
        self._client_lock = asyncio.Lock()
        self._signer: S3Client | None = None  # for `public_endpoint`, when set
        # For `probe`, made when first asked; closed on its own (a failed `s3` closes the
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

    async def s3(self) -> S3Client:
        """The client, made on first use (it belongs to the running event loop); the bucket
        is checked then, so bad settings fail with their cause, not on some later call."""
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                location = self.location
                config = self._config(location.attempts)
                try:
                    with self.errors(bucket_check=True):
                        if not _plain_http(location.endpoint):
                            self._check_ca_bundle()
                        client = await self._client_for(location.endpoint, config)
                    await self._check_bucket(client)
                except BaseException:
                    await self._client_stack.aclose()
                    raise
                if location.public_endpoint is not None:
                    # Presigns only (no request of its own): see `download_url`.
                    self._signer = await self._client_for(location.public_endpoint, config)
                self._client = client
        return self._client

    async def check(self) -> None:
        await self.s3()  # the client is made by checking the bucket

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
        await self._check_bucket(self._prober)

    async def _check_bucket(self, client: S3Client) -> None:
        """HeadBucket: the bucket is there and the credentials accepted. Refused (403), its
        answer has no body, so no code tells wrong credentials from a permission refused
        (s3:ListBucket, which HeadBucket needs, denied by a bucket policy or the user's
        rights): only then one listing is asked, whose refusal says which
        (`s3_errors.bucket_check_refusal`)."""
        bucket = self.location.bucket
        with self.errors(bucket_check=True):
            try:
                await client.head_bucket(Bucket=bucket)
            except ClientError as refused:
                if refused.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 403:
                    raise
                # ListObjectsV2 rather than a GetObject of a key that cannot exist: it needs
                # the very permission HeadBucket needs, so its AccessDenied names the one
                # refused, where a missing key's GetObject says nothing of s3:ListBucket
                # (SeaweedFS and RGW answer NoSuchKey without it; AWS 403 AccessDenied, as
                # for s3:GetObject refused). Under the prefix, and at most one key: cheap,
                # and a permission granted only there (an s3:prefix condition) is answered.
                try:
                    await client.list_objects_v2(Bucket=bucket, Prefix=self._prefix, MaxKeys=1)
                except ClientError as listing:
                    raise bucket_check_refusal(self.location.shown, listing) from None
                except BotoCoreError:
                    raise refused from None  # nothing learnt: the check's refusal stands
                raise bucket_check_refusal(self.location.shown, None) from None

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._client = self._signer = self._prober = None
        await self._client_stack.aclose()
        await self._prober_stack.aclose()

    def errors(
        self, key: str | None = None, *, bucket_check: bool = False
    ) -> contextlib.AbstractContextManager[None]:
        """S3's errors in a request on `key` (None: on the bucket) as the interface's
        (`s3_errors.translated`): a missing object is FileNotFoundError (as on a filesystem);
        what makes the store unusable is ObjectStoreError, saying where."""
        return translated(self.location.shown, key, bucket_check=bucket_check)

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

    # ------------------------------------------------------------ object primitives

    async def put(self, key: str, body: bytes) -> None:
        s3 = await self.s3()
        with self.errors(key):
            await s3.put_object(Bucket=self.location.bucket, Key=key, Body=body)

    async def head(self, key: str) -> dict[str, Any] | None:
        """The object's HeadObject answer, or None when there is no such object."""
        s3 = await self.s3()
        try:
            with self.errors(key):
                return dict(await s3.head_object(Bucket=self.location.bucket, Key=key))
        except FileNotFoundError:
            return None

    async def size(self, key: str) -> int | None:
        head = await self.head(key)
        return None if head is None else int(head["ContentLength"])

    async def list_objects(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        s3 = await self.s3()
        paginator = s3.get_paginator("list_objects_v2")
        with self.errors():
            async for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
                for entry in page.get("Contents", []):
                    yield dict(entry)

    async def delete_keys(self, keys: list[str]) -> None:
        s3 = await self.s3()
        for first in range(0, len(keys), DELETE_BATCH):
            batch = keys[first : first + DELETE_BATCH]
            with self.errors():
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

    async def stream(
        self,
        key: str,
        start: int,
        end: int | None,
        answered: Callable[[str], object] | None = None,
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) of an object, by a ranged GET when not the whole object;
        `answered` is given the ETag of the object the GET reads."""
        if end is not None and end <= start:
            if await self.size(key) is None:
                raise FileNotFoundError(f"no object {key!r} in the {self.location.shown}")
            return
        s3 = await self.s3()
        arguments: dict[str, Any] = {"Bucket": self.location.bucket, "Key": key}
        if start or end is not None:
            arguments["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            answer = await s3.get_object(**arguments)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                with self.errors(key):
                    raise
            # A range that starts at or past the end: nothing to read, if the object is there.
            if await self.size(key) is None:
                raise FileNotFoundError(f"no object {key!r} in the {self.location.shown}") from None
            return
        except BotoCoreError:
            with self.errors(key):
                raise
        if answered is not None:
            answered(str(answer.get("ETag", "")))
        async with answer["Body"] as body:
            with self.errors(key):
                async for chunk in body.iter_chunks(READ_CHUNK):
                    yield chunk

    # ------------------------------------------------------------ in the background

    async def remove_unrecorded(self, keys: list[str]) -> None:
        """Delete the pieces of a failed write, which no upload will ever name: one call, run
        to its end even when the request is cancelled (its client gone). Should it fail (the
        store unreachable), they stay, never read, until the upload ends: finishing,
        cancelling or expiring an upload deletes all its pieces."""
        await asyncio.shield(self.in_background(self.delete_unrecorded(keys)))

    async def delete_unrecorded(self, keys: list[str]) -> None:
        try:
            await self.delete_keys(keys)
        except Exception:
            logger.info(
                "blob store: %d pieces of a failed upload write stay until the upload ends "
                "(finished, cancelled or expired)",
                len(keys),
            )

    def in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


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
