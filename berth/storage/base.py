"""The storage driver interface, modelled on Distribution's: small enough for S3 to fit."""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

# Whether a store logs a failure where it happens: in the server's log nothing else may say
# it (a client is answered 503 without the store's address).
_failures_logged: ContextVar[bool] = ContextVar("berth_store_failures_logged", default=True)


def failures_logged() -> bool:
    """Whether a store's failure is to be logged where it happens (`failures_said_by_caller`)."""
    return _failures_logged.get()


@contextlib.contextmanager
def failures_said_by_caller() -> Iterator[None]:
    """Within it (and the event loops it starts), a store does not log its failures: the
    caller says each itself (a refusal to serve, a CLI verb's error), which the log line
    would only repeat."""
    token = _failures_logged.set(False)
    try:
        yield
    finally:
        _failures_logged.reset(token)


class BlobDamaged(Exception):
    """A download read a blob's whole object and its bytes do not match the digest (another
    size, or another hash): raised after the last chunk, when the bytes are sent already."""

    def __init__(self, digest: str, version: str | None = None) -> None:
        super().__init__(f"the stored bytes of blob {digest} do not match its digest")
        self.digest = digest
        self.version = version  # of the copy read (`StoredCopy.version`), if known


@dataclass(frozen=True)
class StoredCopy:
    """The copy of a blob a store holds now (`BlobStore.stored_copy`): its size, and a
    version that a copy stored in its place since (the blob pushed again) does not share."""

    size: int
    version: str


def file_version(stat: os.stat_result) -> str:
    """The version of a blob kept as a local file (`StoredCopy.version`): the file itself and
    when it was written, so a copy committed in its place has another."""
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_mtime_ns}"


class UploadWriter(abc.ABC):
    """Appends to an upload's scratch object. Not visible as a blob until committed."""

    @abc.abstractmethod
    async def write(self, parts: Sequence[bytes]) -> None:
        """Append `parts`, in order. A list, not one buffer: a push hands over the body's
        chunks as received (a few hundred KiB each), without copying them into one."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def abort(self) -> None:
        """The write failed (the body broke off, the store failed, another request won the
        upload): store nothing more, release what `close` would, and remove what this writer
        stored where the store can (best effort: never raises, so the caller's error stands).
        Bytes past the acknowledged offset are never read either way."""
        with contextlib.suppress(Exception):
            await self.close()

    @property
    def pieces(self) -> list[str]:
        """Names of the pieces this writer stored, in order (once closed), on a store that
        keeps an upload as pieces; the caller records them with the new offset and hands all
        recorded pieces back to `read_upload` and `commit_upload`. Empty on other stores."""
        return []


class BlobWriter(UploadWriter):
    """Writes a blob whose digest is known before its bytes (a push in one PUT) straight
    where the blob is kept, invisible until `commit`: no scratch copy to commit from."""

    @abc.abstractmethod
    async def commit(self) -> None:
        """Make the written bytes the blob (after the caller verified their digest), once."""


class BlobStore(abc.ABC):
    @abc.abstractmethod
    async def open_upload(self, upload_id: str, offset: int) -> UploadWriter:
        """A writer appending at `offset`; anything stored past it (a write the client was
        never told succeeded) is discarded, or, on a store of pieces, never recorded.
        FileNotFoundError when the store can tell the scratch object no longer holds `offset`
        bytes (removed since): the upload cannot go on."""

    def blob_writer(self, digest: str, length: int) -> BlobWriter | None:
        """A writer of blob `digest` of `length` bytes straight to where it is kept, for a
        push whose digest comes before its bytes, where that saves the store work (S3: a
        commit copies the upload's pieces server-side); None: upload and commit as usual."""
        return None

    def upload_exclusive(self, upload_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Held by a request while it changes an upload (a PATCH from reading the offset to
        recording the new one, a commit, a cancel), so that requests in other processes or on
        other nodes wait for it. A store whose scratch object is one file that every writer
        writes into needs it; on a store of pieces each request writes keys of its own and
        the offset's compare-and-set decides, so there is nothing to hold."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def read_upload(
        self, upload_id: str, length: int, pieces: Sequence[str] = ()
    ) -> AsyncIterator[bytes]:
        """The first `length` bytes of an upload (held by the recorded `pieces` on a store
        of pieces), to rebuild a hash state that was lost. FileNotFoundError if they are
        not all there."""

    @abc.abstractmethod
    async def commit_upload(self, upload_id: str, digest: str, pieces: Sequence[str] = ()) -> None:
        """Make the upload's bytes (its recorded `pieces`, on a store of pieces) the blob
        `digest`, atomically, replacing any object stored under it: whether the blob is
        there already is the caller's question (`stat`), asked only where the metadata says
        it may be. The scratch object stays until `delete_upload`, so a commit can be made
        again (after garbage collection removed the blob meanwhile, or when a client
        retries)."""

    @abc.abstractmethod
    async def delete_upload(self, upload_id: str) -> None: ...

    @abc.abstractmethod
    async def upload_bytes_held(self, upload_id: str) -> int:
        """The bytes the store holds for an upload now: those acknowledged, and those of a
        request still being received or one that failed (never part of the upload, but taking
        space until it ends). 0 when it holds nothing."""

    @abc.abstractmethod
    async def list_uploads(self) -> list[tuple[str, float]]:
        """(upload id, last modified as a Unix time) of every scratch object, to find those
        no upload names any more; never on a request path."""

    @abc.abstractmethod
    async def stat(self, digest: str) -> int | None:
        """Size of the stored blob, or None: the store as it is now (one request to a remote
        store), for a push deciding whether to store the blob again and for the checks."""

    async def confirm_stored(self, digest: str, size: int) -> bool:
        """Whether the store holds the blob at `size` bytes, for a request that will not read
        it (a HEAD, a redirect). A remote store may answer from a recent check: see
        `S3BlobStore`. Anything that must see the store as it is now calls `stat`."""
        return await self.stat(digest) == size

    @abc.abstractmethod
    def local_path(self, digest: str) -> Path | None:
        """A path the server can send directly, for drivers backed by a local filesystem."""

    @abc.abstractmethod
    def read(self, digest: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, end) of a blob."""

    def download(
        self, digest: str, size: int, answered: Callable[[str], object] | None = None
    ) -> AsyncIterator[bytes]:
        """The whole blob (`size` bytes, as recorded) for a client's GET. A remote store with
        a node-local cache keeps a copy as the bytes go by (see `cached_path`); reads for
        anything else (checks, scans) use `read`, so as not to crowd the cache out. Never more
        than `size` bytes, whatever the store holds (the answer's length says `size`). A
        store that hashes the bytes on the way (a cache's copy) raises BlobDamaged after the
        last chunk when they do not match. A store that versions its copies gives `answered`
        the version of the copy read (what `quarantine` takes), so that a caller who finds the
        bytes damaged sets aside only that copy."""
        return self.read(digest, 0, size)

    def cached_path(self, digest: str, size: int) -> Path | None:
        """A node-local copy of a remote store's blob, at `size` bytes, that the server can
        send as a file; None when there is none (or the store has local files anyway)."""
        return None

    async def confirm_cached_copy(self, digest: str, size: int) -> bool:
        """Whether this node holds a copy of the blob (see `cached_path`) that it may send,
        the store having held the blob recently (see `S3BlobStore`); FileNotFoundError when
        the store no longer holds it (the copy is removed). Not a use of the copy."""
        return False

    def holds_cached_copy(self, digest: str, size: int) -> bool:
        """Whether this node keeps a copy of the blob at `size` bytes (see `cached_path`),
        without counting it as a use of the copy."""
        return False

    @abc.abstractmethod
    async def delete(self, digest: str) -> None: ...

    @abc.abstractmethod
    async def stored_copy(self, digest: str) -> StoredCopy | None:
        """The copy of the blob the store holds now (None: none), its size and version (for
        `quarantine`), in one request."""

    @abc.abstractmethod
    async def quarantine(self, digest: str, version: str | None = None) -> None:
        """Set a damaged blob's bytes aside (kept for inspection, never served): the blob is
        then missing, so the next upload of its digest stores it again. With `version`
        (`stored_copy`'s, taken before the damaged bytes were read), only that copy is set
        aside: a good one stored since, by a push of the blob while the damaged copy was
        being read, stays."""

    async def delete_many(self, digests: list[str]) -> None:
        """Delete several blobs (garbage collection); absent ones are no error."""
        for digest in digests:
            await self.delete(digest)

    @abc.abstractmethod
    def iter_digests(self) -> AsyncIterator[str]:
        """Every stored blob, for repair and GC tools; never on a request path."""

    async def abort_unfinished_commits(self, started_before: float) -> int:
        """Abandon commits a node began and never finished (S3 multipart uploads left by a
        node that died), started before the Unix time `started_before`; how many."""
        return 0

    async def download_url(
        self, digest: str, ttl: int, byte_range: str | None = None
    ) -> str | None:
        """A URL a client can GET the blob from, itself, for `ttl` seconds (a presigned
        object URL), or None for drivers that cannot give one. With `byte_range` (a Range
        header's value) the URL serves only a request sending that same Range."""
        return None

    def relative_path(self, digest: str) -> str | None:
        """The blob's file relative to the store's root directory (what a web server in front,
        given that root, sends by X-Accel-Redirect), or None for drivers without local files."""
        return None

    @abc.abstractmethod
    def list_blobs(self) -> AsyncIterator[tuple[str, float]]:
        """(digest, last modified as a Unix time) of every stored blob, to find those no
        metadata names (`berth storage check`); never on a request path."""

    async def check(self) -> None:  # noqa: B027 (a local directory is made, not checked)
        """Raise OSError, saying why, when the store cannot be used as configured (a remote
        store unreachable, its credentials refused): run before serving."""

    async def probe(self) -> None:
        """Raise OSError unless the store answers now: one cheap request (readiness checks,
        which call it every few seconds)."""
        await self.check()

    async def check_writable(self) -> None:
        """Raise OSError, saying why, unless the store takes writes now: for a verb about to
        fill it (`berth data copy`), refused before it writes anything rather than part way.
        A driver writes something small and removes it, which `check` never does (readiness,
        the verbs that only read). By default `check`."""
        await self.check()

    async def on_read_only_disk(self) -> bool:
        """Whether the store's disk turned read-only (EROFS), for work that would otherwise
        fail part way (garbage collection). False by default: an object store answers each
        write itself, and asking it would be a request (or a client made) of its own."""
        return False

    async def close(self) -> None:  # noqa: B027 (most drivers hold nothing to release)
        """Release connections (the process is done with the store)."""
