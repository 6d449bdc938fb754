"""Local filesystem driver: content-addressed files, uploads in a scratch dir on the same fs.

Layout under the root: `{algorithm}/{hex[:2]}/{hex}` for blobs, `_uploads/{id}` for uploads,
`_damaged/{algorithm}-{hex}` for blobs set aside because their bytes no longer match,
`_modes_set` once every directory and file in it has the modes nginx needs (`set_modes`), and
`_blobs_lost` if an operator made it (BLOBS_LOST).
Because both sit on one filesystem, committing an upload is an atomic rename.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from berth.domain.digests import parse_digest
from berth.storage.base import BlobStore, StoredCopy, UploadWriter, file_version
from berth.storage.direct_writes import DIRECT_WRITE_MIN, Appender, warm_page_cache
from berth.write_checks import on_read_only_disk, write_a_scratch_file

READ_CHUNK = 1024 * 1024
LOCAL_PATHS_KEPT = 10_000  # blob file paths remembered (a path of a digest never changes)
# Files next to an upload's scratch file `{id}`, all named `{id}.…`: `{id}.commit.{token}`
# replaces a stored blob (commit_upload), `{id}.copy` gives the scratch file a copy of its own
# (_unshare), `{id}.lock` is what requests on the upload take turns holding (upload_exclusive).
_COMMIT, _COPY, _LOCK = ".commit", ".copy", ".lock"
LOCK_POLL_SECONDS = 0.02
# Whatever the umask: with blob_redirect = "accel", nginx's worker (its user in the data
# directory's group) opens the blob files itself.
DIRECTORY_MODE, FILE_MODE = 0o750, 0o640
# In the blob directory once every directory and file under it has those modes (set_modes):
# an older Berth made them by the umask.
MODES_SET = "_modes_set"
# Made by an operator in the install's blob directory whose blobs are lost for good: `berth
# serve` then starts on it though it holds none of the blobs the database names.
BLOBS_LOST = "_blobs_lost"


@dataclass(frozen=True)
class ModesSet:
    """What `set_modes` changed: directories and files given DIRECTORY_MODE and FILE_MODE,
    and those left as they were because they are another user's."""

    directories: int
    files: int
    not_ours: int
    seconds: float


class _FileUploadWriter(UploadWriter):
    """Writes in worker threads. A write its caller gave up on (the client went away
    mid-PATCH) goes on in its thread, since a thread cannot be stopped: `close` waits for it,
    even when cancelled, so that the upload is handed to the next request (a retry of the
    same chunk) only once no byte of this one can land in the scratch file any more."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._appender = Appender(fd)
        self._busy = threading.Lock()  # held by the thread writing, and by the one closing
        self._closed = False

    def _write(self, parts: Sequence[bytes]) -> None:
        with self._busy:
            if self._closed:  # a write that only started once its writer was closed
                raise ValueError("write to a closed upload writer")
            self._appender.write(parts)

    def _close(self) -> None:
        with self._busy:
            if not self._closed:
                self._closed = True
                self._appender.close()
                os.close(self._fd)

    async def write(self, parts: Sequence[bytes]) -> None:
        await asyncio.to_thread(self._write, parts)

    async def close(self) -> None:
        await _uncancelled(asyncio.to_thread(self._close))


async def _uncancelled(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` to its end even when the caller is cancelled meanwhile (the cancellation is
    passed on afterwards)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


class FilesystemBlobStore(BlobStore):
    # Whether opening the store makes its directories where missing.
    _makes_directories = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uploads = root / "_uploads"
        self.damaged = root / "_damaged"  # blobs whose bytes no longer match their digest
        self._local_paths: LRUCache[str, Path] = LRUCache(LOCAL_PATHS_KEPT)
        # Uploads the last list_uploads found a commit's temporary of (a crash's leftover).
        self._commit_leftovers: frozenset[str] = frozenset()
        # The blob directory as opened (device, inode): `_uploads` is made again only in it.
        self._opened_root: tuple[int, int] | None = None
        # A mount point as opened: no longer one, its filesystem is gone (see `_unmounted`).
        self._opened_mounted = False
        if self._makes_directories:
            root.parent.mkdir(parents=True, exist_ok=True)
            _make_directory(root)
            _make_directory(self.uploads)
            self._opened_root = _identity(root)
            self._opened_mounted = os.path.ismount(root)

    def _blob_path(self, digest: str) -> Path:
        parsed = parse_digest(digest)  # validated, so never a path traversal
        return self.root / parsed.algorithm / parsed.hex[:2] / parsed.hex

    def _upload_path(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise ValueError(f"bad upload id {upload_id!r}")
        return self.uploads / upload_id

    async def probe(self) -> None:
        await asyncio.to_thread(self._find_uploads_directory)

    def _find_uploads_directory(self) -> None:
        """The upload area is there and reachable, made again if it was removed from the blob
        directory the store opened: a node unready for want of it would get no new upload to
        make it (a balancer sends it none), and would stay out until a restart."""
        self._refuse_if_unmounted()
        try:
            os.stat(self.uploads)
        except FileNotFoundError:
            if not self._remake_uploads_directory():  # a blob mount gone: not ready
                raise

    def _refuse_if_unmounted(self) -> None:
        """The blob directory was a mount point when the store opened and is none now: its
        filesystem is gone, and what lies under it (an `_uploads` made before it was first
        mounted) must take no upload, whose files would be hidden once it is mounted again. A
        remount (an NFS one has a new device number) is a mount point again: served on."""
        if self._opened_mounted and not os.path.ismount(self.root):
            raise FileNotFoundError(
                errno.ENOENT, "the blob directory is no longer mounted", str(self.root)
            )

    async def check_writable(self) -> None:
        """A file created in the upload area and linked into the blob directory, as a commit
        does, then removed: a directory that takes no writes (read-only, `_uploads` not a
        directory) is found before the first upload, not at it. Not `check`: the verbs that
        only read (or free space on a full disk, `berth gc run`) must not need it."""
        await asyncio.to_thread(write_a_scratch_file, self.uploads, then=self._link_as_committed)

    async def on_read_only_disk(self) -> bool:
        # EROFS only: a full disk is no reason to refuse garbage collection, which frees space.
        return await asyncio.to_thread(
            on_read_only_disk, self.uploads, then=self._link_as_committed
        )

    def _link_as_committed(self, scratch: str) -> None:
        """Link a scratch file of the upload area into the blob directory and remove the link:
        a commit needs link(2) to work there."""
        linked = self.root / os.path.basename(scratch)
        os.link(scratch, linked)
        os.unlink(linked)

    @contextlib.asynccontextmanager
    async def upload_exclusive(self, upload_id: str) -> AsyncIterator[None]:
        """An exclusive flock on the upload's lock file, which every process (workers, nodes
        sharing the directory) sees: two PATCHes from one offset would otherwise write into
        the one scratch file together and leave a mix of their bytes under the winner's
        digest. Polled rather than waited for in a thread: a waiter must not hold one of the
        threads the holder needs to finish. The lock goes with the process if it dies."""
        path = self._upload_path(upload_id).with_name(upload_id + _LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(LOCK_POLL_SECONDS)
            yield
        finally:
            os.close(fd)  # releases the lock

    async def open_upload(self, upload_id: str, offset: int) -> UploadWriter:
        def _open() -> int:
            path = self._upload_path(upload_id)
            # Created only at the start: a scratch file removed since (an abandoned upload
            # swept by garbage collection) must not come back as zeros up to `offset`.
            flags = os.O_WRONLY | (os.O_CREAT if offset == 0 else 0)
            if offset == 0:
                self._refuse_if_unmounted()
            try:
                fd = os.open(path, flags, FILE_MODE)
            except FileNotFoundError:
                if offset != 0 or not self._remake_uploads_directory():
                    raise
                fd = os.open(path, flags, FILE_MODE)
            if offset == 0:
                os.fchmod(fd, FILE_MODE)  # it becomes the blob's file
            stat = os.fstat(fd)
            if stat.st_size < offset:
                os.close(fd)
                raise FileNotFoundError(f"upload {upload_id} has lost data before {offset}")
            if stat.st_nlink > 1:
                # Committed as a blob already (the process died before recording it): go on
                # in a copy of its own, never in the blob's file.
                os.close(fd)
                _unshare(path)
                fd = os.open(path, os.O_WRONLY)
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
            return fd

        return _FileUploadWriter(await asyncio.to_thread(_open))

    def _remake_uploads_directory(self) -> bool:
        """Make `_uploads` again for a new upload once it was removed (an operator cleaning up,
        a tmp cleaner), where nothing else would until a restart; False if the blob directory
        is no longer the one opened: a blob mount gone leaves the directory it was mounted on,
        and uploads and blobs stored there would be hidden once the mount is back."""
        try:
            if _identity(self.root) != self._opened_root:
                return False
        except FileNotFoundError:
            return False
        _make_directory(self.uploads)
        return True

    async def read_upload(
        self, upload_id: str, length: int, pieces: Sequence[str] = ()
    ) -> AsyncIterator[bytes]:
        path = self._upload_path(upload_id)
        found = 0
        async for chunk in _read_file(path, 0, length):
            found += len(chunk)
            yield chunk
        if found < length:
            raise FileNotFoundError(f"upload {upload_id} has lost data before {length}")

    async def commit_upload(self, upload_id: str, digest: str, pieces: Sequence[str] = ()) -> None:
        source, target = self._upload_path(upload_id), self._blob_path(digest)

        def _commit() -> int:
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if not target.parent.is_dir():
                _make_directory(target.parent.parent)
                _make_directory(target.parent)
            # A hard link, not a rename: the scratch file stays for a commit made again.
            try:
                os.link(source, target)
            except FileExistsError:
                if not os.path.samefile(source, target):  # else committed from it already
                    _replace_with_link(source, target)
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            return size

        if await asyncio.to_thread(_commit) >= DIRECT_WRITE_MIN:
            warm_page_cache(target)  # its large writes went past the page cache

    async def list_uploads(self) -> list[tuple[str, float]]:
        def _list() -> list[tuple[str, float]]:
            # An upload's temporary files (`{id}.…`, left by a crash) are listed as the
            # upload: they go with it.
            found: dict[str, float] = {}
            leftovers: set[str] = set()
            try:
                entries = list(os.scandir(self.uploads))
            except FileNotFoundError:
                # Removed (a new upload makes it again), or never made in a store opened
                # read-only: it holds no scratch file, so no upload is left to list.
                entries = []
            for entry in entries:
                upload_id, _, suffix = entry.name.partition(".")
                if not upload_id.isalnum():
                    continue
                if suffix.startswith(_COMMIT[1:] + "."):
                    leftovers.add(upload_id)
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file():
                        modified = entry.stat().st_mtime
                        found[upload_id] = max(found.get(upload_id, modified), modified)
            self._commit_leftovers = frozenset(leftovers)
            return list(found.items())

        return await asyncio.to_thread(_list)

    async def delete_upload(self, upload_id: str) -> None:
        path = self._upload_path(upload_id)

        def _unlink_all() -> None:
            # By name, not by listing the directory: every finished push comes here, and the
            # directory holds every abandoned upload until it expires (a glob took 15 ms per
            # push amid 10,000 files). Only a crash's commit temporaries, which have a token in
            # their names, need the listing; list_uploads (the storage check's) says which.
            names = [f"{path}{suffix}" for suffix in ("", _LOCK, _COPY)]
            if upload_id in self._commit_leftovers:
                commit_prefix = f"{upload_id}{_COMMIT}."
                names += [
                    e.path for e in os.scandir(path.parent) if e.name.startswith(commit_prefix)
                ]
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)

        await asyncio.to_thread(_unlink_all)

    async def upload_bytes_held(self, upload_id: str) -> int:
        try:
            return os.stat(self._upload_path(upload_id)).st_size
        except FileNotFoundError:
            return 0

    async def stat(self, digest: str) -> int | None:
        try:
            return os.stat(self._blob_path(digest)).st_size
        except FileNotFoundError:
            return None

    def local_path(self, digest: str) -> Path | None:
        # Asked on every blob GET: building the Path costs more than the file's stat.
        path = self._local_paths.get(digest)
        if path is None:
            path = self._local_paths[digest] = self._blob_path(digest)
        return path

    def relative_path(self, digest: str) -> str:
        return self._blob_path(digest).relative_to(self.root).as_posix()

    async def read(
        self, digest: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        async for chunk in _read_file(self._blob_path(digest), start, end):
            yield chunk

    async def stored_copy(self, digest: str) -> StoredCopy | None:
        try:
            stat = await asyncio.to_thread(os.stat, self._blob_path(digest))
        except FileNotFoundError:
            return None
        return StoredCopy(stat.st_size, file_version(stat))

    async def quarantine(self, digest: str, version: str | None = None) -> None:
        parsed = parse_digest(digest)
        source = self._blob_path(digest)
        target = self.damaged / f"{parsed.algorithm}-{parsed.hex}"

        def _move() -> None:
            _make_directory(self.damaged)
            if version is None:
                with contextlib.suppress(FileNotFoundError):
                    os.replace(source, target)
                return
            # Moved under a name of its own first, then checked (a check before the move
            # could be overtaken): a good copy pushed since the damaged one was read is put
            # back at once, not set aside.
            aside = target.with_name(f"{target.name}.{uuid.uuid4().hex}")
            try:
                os.rename(source, aside)
            except FileNotFoundError:
                return
            if file_version(os.stat(aside)) == version:
                os.replace(aside, target)
                return
            with contextlib.suppress(FileExistsError):  # else committed once more: that stays
                os.link(aside, source)
            os.unlink(aside)

        await asyncio.to_thread(_move)

    async def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, self._blob_path(digest))

    async def delete_many(self, digests: list[str]) -> None:
        paths = [self._blob_path(digest) for digest in digests]

        def _unlink_all() -> None:  # one thread hop for the lot, not one per file
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

        await asyncio.to_thread(_unlink_all)

    async def iter_digests(self) -> AsyncIterator[str]:
        for algorithm in ("sha256", "sha512"):
            base = self.root / algorithm
            if not base.is_dir():
                continue
            for prefix in sorted(base.iterdir()):
                for blob in sorted(prefix.iterdir()):
                    yield f"{algorithm}:{blob.name}"

    async def list_blobs(self) -> AsyncIterator[tuple[str, float]]:
        async for digest in self.iter_digests():
            try:
                modified = (await asyncio.to_thread(os.stat, self._blob_path(digest))).st_mtime
            except FileNotFoundError:  # removed since it was listed
                continue
            yield digest, modified


class ReadOnlyFilesystemBlobStore(FilesystemBlobStore):
    """A blob directory opened to be read only (the old install `berth data copy` copies):
    opening it creates nothing, not even its directories, and every write is refused
    (OSError EROFS) without touching it, so the directory is left as it was and may be
    read-only."""

    _makes_directories = False

    def _refusal(self) -> OSError:
        return OSError(errno.EROFS, f"the blob directory {self.root} is opened read-only")

    async def probe(self) -> None:
        await asyncio.to_thread(os.stat, self.root)

    async def check(self) -> None:
        await self.probe()

    async def check_writable(self) -> None:
        raise self._refusal()

    async def on_read_only_disk(self) -> bool:
        return True  # every write refused as on one

    @contextlib.asynccontextmanager
    async def upload_exclusive(self, upload_id: str) -> AsyncIterator[None]:
        raise self._refusal()  # before its lock file is made
        yield  # a generator, as the method it stands in for

    async def open_upload(self, upload_id: str, offset: int) -> UploadWriter:
        raise self._refusal()

    async def commit_upload(self, upload_id: str, digest: str, pieces: Sequence[str] = ()) -> None:
        raise self._refusal()

    async def delete_upload(self, upload_id: str) -> None:
        raise self._refusal()

    async def quarantine(self, digest: str, version: str | None = None) -> None:
        raise self._refusal()

    async def delete(self, digest: str) -> None:
        raise self._refusal()

    async def delete_many(self, digests: list[str]) -> None:
        raise self._refusal()


def _replace_with_link(source: Path, target: Path) -> None:
    """The same digest stored already (cut short, or under a row the push made): replace the
    stored file (atomically) with the upload's verified bytes."""
    # A name of its own: commits of this upload racing with this one (a client's retry
    # handled by another process) each replace the blob with the same file.
    temporary = source.with_name(f"{source.name}{_COMMIT}.{secrets.token_hex(8)}")
    try:
        os.link(source, temporary)
        os.replace(temporary, target)
    except FileNotFoundError:
        # The scratch file went meanwhile: done if the blob is already the upload's file.
        if not os.path.samefile(source, target):
            raise
    with contextlib.suppress(FileNotFoundError):  # left if they were one file
        os.unlink(temporary)


def _identity(path: Path) -> tuple[int, int]:
    found = os.stat(path)
    return found.st_dev, found.st_ino


def _make_directory(path: Path) -> None:
    """`path` (in an existing directory) with DIRECTORY_MODE, unless it exists."""
    try:
        os.mkdir(path, DIRECTORY_MODE)
    except FileExistsError:
        return
    os.chmod(path, DIRECTORY_MODE)


def modes_unset(root: Path) -> bool:
    """Whether the blob directory `root` may hold directories and files an older Berth made
    by its umask (0700 and 0600 under a strict one), which nginx's worker cannot open: it
    exists, and `set_modes` has not gone through it. (What this Berth makes it makes so.)"""
    return root.is_dir() and not (root / MODES_SET).exists()


def set_modes(root: Path) -> ModesSet:
    """Give every directory under the blob directory `root` (itself too) DIRECTORY_MODE and
    every file FILE_MODE, then record it (MODES_SET). Symbolic links are left alone."""
    started = time.monotonic()
    tally = _ModeTally()
    waiting = [str(root)]
    while waiting:
        directory = waiting.pop()
        tally.give(directory, DIRECTORY_MODE)
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        waiting.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        tally.give(entry.path, FILE_MODE)
        except (FileNotFoundError, PermissionError):  # removed meanwhile, or not ours
            continue
    marker = os.open(root / MODES_SET, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(marker, "w") as recorded:
        recorded.write(
            f"Every directory under {root} is {DIRECTORY_MODE:o} and every file {FILE_MODE:o} "
            'for nginx (blob_redirect = "accel"). Without this file, the next berth serve '
            "with accel checks them again.\n"
        )
    return ModesSet(tally.directories, tally.files, tally.not_ours, time.monotonic() - started)


class _ModeTally:
    def __init__(self) -> None:
        self.directories = self.files = self.not_ours = 0

    def give(self, path: str, mode: int) -> None:
        """`path` given `mode` unless it has it, counted."""
        try:
            if os.stat(path).st_mode & 0o7777 == mode:
                return
            os.chmod(path, mode)
        except FileNotFoundError:  # a blob deleted, an upload committed meanwhile
            return
        except PermissionError:  # another user's
            self.not_ours += 1
            return
        if mode == DIRECTORY_MODE:
            self.directories += 1
        else:
            self.files += 1


def _unshare(path: Path) -> None:
    """Give a hard-linked file a copy of its own under the same name."""
    copy = path.with_name(path.name + _COPY)
    shutil.copyfile(path, copy)
    os.chmod(copy, FILE_MODE)
    os.replace(copy, path)


async def _read_file(path: Path, start: int, end: int | None) -> AsyncIterator[bytes]:
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    try:
        position = start
        while end is None or position < end:
            size = READ_CHUNK if end is None else min(READ_CHUNK, end - position)
            chunk = await asyncio.to_thread(os.pread, fd, size, position)
            if not chunk:
                break
            position += len(chunk)
            yield chunk
    finally:
        os.close(fd)
