"""A node-local copy of recently pulled blobs of a remote store (S3), kept on this node's disk
so that a repeated pull is sent from a local file instead of streamed from the store.

Blobs are content-addressed and immutable, so a copy is never stale in content; which blob a
request may read is still decided by the metadata before the cache is asked. A copy becomes
visible only whole: it is written to a temporary file while a full download streams to its
client, then hashed from that file once the client has every byte (the hash is the fill's
largest cost, and done on the way it held the download back), and renamed into place only
when size and digest match.

Layout under the cache directory: `blobs/{algorithm}-{hex}` for copies, `tmp/` for copies
being written (`{algorithm}-{hex}.*.part`) and the per-digest lock files (`.lock`) by which
the worker processes of a node fill each digest once at a time. A copy's modification time is
its last use (a hit refreshes it), which the worker processes share through the filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from berth.domain.digests import parse_digest
from berth.observability import metrics

logger = logging.getLogger("berth.storage")

# A copy used this recently is never evicted, even over the bound: a hit hands the response
# a path, which it (or the server, by pathsend) opens a moment later, and the copy must still
# be there then. Much longer than that moment; the bound may be exceeded by copies in
# use for this long.
EVICTION_GRACE_SECONDS = 60.0
# A hit refreshes the copy's recency at most this often (one utime per copy and interval),
# well within the grace above.
RECENCY_STEP_SECONDS = 10.0
# A fill's chunks go to its writing thread in batches of about this size, and at most this
# many bytes wait while a batch is written (see FillFeed).
FILL_BATCH_BYTES = 1024 * 1024
FILL_BACKLOG_BYTES = 4 * 1024 * 1024
# A finished copy is read back for its hash in pieces of this size.
HASH_READ_BYTES = 1024 * 1024


@dataclass(frozen=True)
class CachedCopy:
    """A copy in the cache as eviction sees it."""

    name: str
    size: int
    last_used: float


def copies_to_evict(
    copies: Iterable[CachedCopy], bound: int, now: float, grace: float = EVICTION_GRACE_SECONDS
) -> list[CachedCopy]:
    """The least recently used copies to remove so that the rest fit in `bound` bytes, oldest
    first. A copy used within `grace` seconds of `now` is kept even when that leaves the cache
    over its bound (a send may be about to open it)."""
    ordered = sorted(copies, key=lambda copy: copy.last_used)
    excess = sum(copy.size for copy in ordered) - bound
    chosen: list[CachedCopy] = []
    for copy in ordered:
        if excess <= 0:
            break
        if now - copy.last_used < grace:
            continue
        chosen.append(copy)
        excess -= copy.size
    return chosen


class BlobCache:
    """The cache directory of one node, shared by its worker processes."""

    def __init__(self, root: Path, bound: int) -> None:
        self.root = root
        self.bound = bound
        self._copies = root / "blobs"
        self._scratch = root / "tmp"
        self._filling: set[str] = set()  # digests this process is writing
        self._sweeping: asyncio.Task[None] | None = None
        self._sweep_again = False
        try:
            self._copies.mkdir(parents=True, exist_ok=True)
            self._scratch.mkdir(parents=True, exist_ok=True)
            # What a crash left, and copies past a bound made smaller since the last run.
            self.sweep()
        except OSError as exc:  # refused before serving (`unusable_storage`), saying why
            raise OSError(f"cannot use s3_cache_dir {root}: {exc}") from exc

    def _name(self, digest: str) -> str:
        parsed = parse_digest(digest)  # validated, so never a path outside the directory
        return f"{parsed.algorithm}-{parsed.hex}"

    def copy_path(self, digest: str) -> Path:
        return self._copies / self._name(digest)

    # ------------------------------------------------------------ reading

    def hit(self, digest: str, size: int) -> Path | None:
        """The copy of `digest` if this node holds it at `size` bytes, its recency refreshed;
        else None. A copy of another size (nothing this cache writes) is removed."""
        path = self.copy_path(digest)
        try:
            found = os.stat(path)
            if found.st_size != size:
                os.unlink(path)
                metrics.s3_cache_looked_up(hit=False)
                return None
            if time.time() - found.st_mtime > RECENCY_STEP_SECONDS:
                os.utime(path)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):  # the pull goes to the bucket instead
                logger.warning("blob cache: cannot use %s: %s", path, exc)
            metrics.s3_cache_looked_up(hit=False)
            return None
        metrics.s3_cache_looked_up(hit=True)
        return path

    def holds(self, digest: str, size: int) -> bool:
        """Whether this node holds a copy of `digest` at `size` bytes: one that matched the
        digest when it was written, so the store held the blob whole. Neither a use of the
        copy (no recency, no metric) nor a removal of one of another size: `hit` does those
        when a copy is sent."""
        try:
            return os.stat(self.copy_path(digest)).st_size == size
        except OSError:
            return False

    # ------------------------------------------------------------ filling

    def start_fill(self, digest: str, size: int) -> CacheFill | None:
        """A fill of `digest` to write a download's bytes into, or None when there is nothing
        to fill: the copy is there, another process or request of this node is writing it,
        the blob alone is larger than the bound, or the directory cannot be written (said in
        the log: the download goes on without a copy)."""
        try:
            return self._start_fill(digest, size)
        except OSError as exc:
            logger.warning("blob cache: cannot write a copy of %s: %s", digest, exc)
            return None

    def _start_fill(self, digest: str, size: int) -> CacheFill | None:
        name = self._name(digest)
        if size > self.bound or name in self._filling or (self._copies / name).exists():
            return None
        lock = _try_lock(self._scratch / f"{name}.lock")
        if lock is None:
            return None  # another worker process is writing this copy
        try:
            if (self._copies / name).exists():  # written meanwhile by the lock's last holder
                _unlock(self._scratch / f"{name}.lock", lock)
                return None
            handle, temporary = tempfile.mkstemp(
                dir=self._scratch, prefix=f"{name}.", suffix=".part"
            )
        except BaseException:
            _unlock(self._scratch / f"{name}.lock", lock)
            raise
        self._filling.add(name)
        return CacheFill(self, digest, name, size, lock, handle, Path(temporary))

    def _finished(self, fill: CacheFill) -> None:
        self._filling.discard(fill.name)
        _unlock(self._scratch / f"{fill.name}.lock", fill.lock)

    # ------------------------------------------------------------ removal

    async def discard(self, digests: Iterable[str]) -> None:
        """Remove this node's copies of `digests` (the store deleted or set them aside)."""
        paths = [self.copy_path(digest) for digest in digests]

        def remove() -> None:
            for path in paths:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # the store's deletion stands; the copy goes as unused
                    logger.warning("blob cache: cannot remove %s: %s", path, exc)

        if paths:
            await asyncio.to_thread(remove)

    def request_sweep(self) -> None:
        """Sweep soon in a thread (after a fill; on the event loop): one sweep at a time per
        process, and one more after it when asked meanwhile."""
        if self._sweeping is not None and not self._sweeping.done():
            self._sweep_again = True
            return

        async def sweeping() -> None:
            while True:
                self._sweep_again = False
                try:
                    await asyncio.to_thread(self.sweep)
                except OSError as exc:
                    logger.warning("blob cache: sweep of %s failed: %s", self.root, exc)
                if not self._sweep_again:
                    return

        self._sweeping = asyncio.ensure_future(sweeping())

    def sweep(self) -> int:
        """Remove temporary files no process is writing (left by a crash) and, while the
        copies exceed the bound, the least recently used ones; how many copies were evicted."""
        self._remove_abandoned()
        copies = []
        with os.scandir(self._copies) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    found = entry.stat()
                    copies.append(CachedCopy(entry.name, found.st_size, found.st_mtime))
        evicted = 0
        for copy in copies_to_evict(copies, self.bound, time.time()):
            path = self._copies / copy.name
            with contextlib.suppress(FileNotFoundError):
                # Looked at again just before removal: a hit since refreshed it (the window
                # left is these two system calls, against the server's opening the path).
                if time.time() - os.stat(path).st_mtime < EVICTION_GRACE_SECONDS:
                    continue
                os.unlink(path)
                evicted += 1
                metrics.s3_cache_evicted(copy.size)
        return evicted

    def _remove_abandoned(self) -> None:
        names: set[str] = set()
        with os.scandir(self._scratch) as entries:
            for entry in entries:
                if entry.name.endswith(".part"):
                    names.add(entry.name.split(".", 1)[0])
        for name in names:
            lock_path = self._scratch / f"{name}.lock"
            lock = _try_lock(lock_path)
            if lock is None:
                continue  # being written now
            try:
                for part in self._scratch.glob(f"{name}.*.part"):
                    with contextlib.suppress(FileNotFoundError):
                        part.unlink()
            finally:
                _unlock(lock_path, lock)

    def stored_bytes(self) -> int:
        """Bytes of the copies now (tests, and operators through the docs' `du`)."""
        with os.scandir(self._copies) as entries:
            return sum(entry.stat().st_size for entry in entries)


class CacheFill:
    """One copy being written from a download's chunks: `add` each chunk (in a thread: it
    writes), then `finish` when the download read the whole blob (it hashes the copy), or
    `abandon`."""

    def __init__(
        self,
        cache: BlobCache,
        digest: str,
        name: str,
        size: int,
        lock: int,
        handle: int,
        temporary: Path,
    ) -> None:
        self.cache = cache
        self.digest = digest
        self.name = name
        self.size = size
        self.lock = lock
        self._handle = handle
        self._temporary = temporary
        self._hash = hashlib.new(parse_digest(digest).algorithm)
        self._received = 0  # bytes the download handed over
        self._written = 0  # of them, bytes in the copy: all, unless the disk failed
        # Set when the disk failed: from then on the chunks are hashed as they come (the
        # copy cannot be read back whole), after what the copy had taken; unless that could
        # not be read back either (`_unchecked`: the bytes are then neither kept nor judged).
        self._failed = False
        self._unchecked = False
        # After `finish`: the download read the store's whole object and its bytes are not
        # the blob (another size, or another hash). Only a whole read tells.
        self.damaged = False
        self._closed = False
        # `abandon` may run while a thread still writes the last chunk: it waits for it.
        self._guard = threading.Lock()

    def add(self, chunk: bytes) -> None:
        """Write one chunk (blocking: call it in a thread)."""
        self.add_all([chunk])

    def add_all(self, chunks: list[bytes]) -> None:
        """Write chunks in order (blocking: call it in a thread). A disk that fails (full)
        spoils only this copy; the download goes on, and the bytes are hashed from then on,
        so `finish` still tells whether the store's bytes match the digest."""
        with self._guard:
            if self._closed:
                return
            for chunk in chunks:
                self._received += len(chunk)
                view = memoryview(chunk)
                if not self._failed:
                    view = self._write(view)
                if self._failed and not self._unchecked:
                    self._hash.update(view)

    def _write(self, view: memoryview) -> memoryview:
        """What of `view` the disk did not take (nothing, unless it failed)."""
        try:
            while view:
                written = os.write(self._handle, view)
                self._written += written
                view = view[written:]
        except OSError as exc:
            self._failed = True
            logger.warning("blob cache: cannot write a copy of %s: %s", self.digest, exc)
            try:
                self._hash_copy(self._written)
            except OSError:
                self._unchecked = True
        return view

    def _hash_copy(self, length: int) -> None:
        """Hash the copy's first `length` bytes, as written (read back from the page cache)."""
        buffer = bytearray(HASH_READ_BYTES)
        view = memoryview(buffer)
        done = 0
        while done < length:
            read = os.preadv(self._handle, [view[: min(HASH_READ_BYTES, length - done)]], done)
            if read == 0:
                raise OSError(f"the copy of {self.digest} ended at {done} of {length} bytes")
            self._hash.update(view[:read])
            done += read

    def finish(self) -> bool:
        """Make the copy visible if it holds exactly the blob; whether it does. Called once
        the download read the store's object to its end (its client has every byte): the copy
        is hashed here. A mismatch (the object is damaged) leaves no copy and sets `damaged`;
        a disk that failed leaves none either (said in the log; the download itself is
        done)."""
        try:
            return self._keep_if_whole()
        except OSError as exc:  # the copy could not be read back for its hash
            logger.warning("blob cache: cannot keep a copy of %s: %s", self.digest, exc)
            with contextlib.suppress(OSError):
                self._close()
                os.unlink(self._temporary)
            return False
        finally:
            self.cache._finished(self)

    def _keep_if_whole(self) -> bool:
        with self._guard:
            whole_size = self._received == self.size
            if whole_size and not self._failed:
                self._hash_copy(self.size)
            algorithm = parse_digest(self.digest).algorithm
            self.damaged = not whole_size or (
                not self._unchecked and f"{algorithm}:{self._hash.hexdigest()}" != self.digest
            )
            self._close()
            whole = not self.damaged and not self._failed
            if whole:
                try:
                    os.rename(self._temporary, self.cache.copy_path(self.digest))
                    metrics.s3_cache_kept(self.size)
                except OSError as exc:  # removed by a sweep meanwhile, say
                    logger.warning("blob cache: cannot keep a copy of %s: %s", self.digest, exc)
                    whole = False
            elif self.damaged:
                logger.warning(
                    "blob cache: the store's bytes of %s do not match its digest (%d of %d "
                    "bytes read): not kept",
                    self.digest,
                    self._received,
                    self.size,
                )
            if not whole:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._temporary)
        return whole

    def abandon(self) -> None:
        """The download stopped before the end (its client went away, the store failed)."""
        try:
            with self._guard:
                self._close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._temporary)
        except OSError as exc:  # left for the next sweep
            logger.warning("blob cache: cannot remove %s: %s", self._temporary, exc)
        finally:
            self.cache._finished(self)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._handle)


class FillFeed:
    """The event loop's side of a fill: a download's chunks handed to a thread in batches,
    one hand-off per FILL_BATCH_BYTES rather than per chunk (a hop costs about 60 µs of CPU;
    aiohttp hands over about 250 KiB at a time). While a batch is being written the next one
    gathers, up to FILL_BACKLOG_BYTES; past that the download waits for the disk, so a fill
    holds at most about twice that much."""

    def __init__(self, fill: CacheFill) -> None:
        self.fill = fill
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._writing: asyncio.Future[None] | None = None

    async def add(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._pending_bytes < FILL_BATCH_BYTES:
            return
        if self._writing is not None and not self._writing.done():
            if self._pending_bytes < FILL_BACKLOG_BYTES:
                return
            await self._writing
        self._hand_over()

    def _hand_over(self) -> asyncio.Future[None]:
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        self._writing = asyncio.ensure_future(asyncio.to_thread(self.fill.add_all, batch))
        return self._writing

    async def drain(self) -> None:
        """Write what is left (the download read the whole object; `finish` the fill next)."""
        if self._writing is not None:
            await self._writing
        if self._pending:
            await self._hand_over()

    def abandon(self) -> None:
        """Drop a copy whose download stopped early, once the batch being written is done
        (the thread cannot be stopped midway; `CacheFill.abandon` waits for it)."""
        self._pending.clear()
        writing = self._writing
        if writing is None or writing.done():
            self.fill.abandon()
        else:
            writing.add_done_callback(lambda _done: self.fill.abandon())


def _try_lock(path: Path) -> int | None:
    """An exclusive lock on `path` (made if missing), or None when another holds it. The
    kernel releases it when its process dies, so a crash leaves no lock behind."""
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        return None
    return handle


def _unlock(path: Path, handle: int) -> None:
    # Removed while held, so lock files do not pile up. A process that opened it just before
    # then locks a file no longer in the directory, and may write the same copy at once: two
    # writes of identical bytes, each renamed whole into place, which is harmless.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(handle)
