"""Writing large amounts of new data to a file without copying it into the page cache.

Copying a large push into the page cache was the largest share of its CPU (the kernel's copy,
then its writeback). Writes of at
least DIRECT_WRITE_MIN bytes (a push hands the body over in batches of a few MiB) go past the
page cache in DIRECT_BUFFER pieces aligned to DIRECT_ALIGN (a multiple of the logical block
size of common disks, 512 or 4096 bytes). Where the filesystem has no O_DIRECT (ramfs; tmpfs
before Linux 6.6) or refuses such a write, the writes are ordinary ones. What the caller syncs
is unchanged.

Once committed, such a blob is read back into the page cache by the disk (`warm_page_cache`:
sendfile to /dev/null, so no byte is copied through the CPU), where a buffered write would have
left it: a pull soon after its push is served from memory.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

DIRECT_WRITE_MIN = 1024 * 1024
DIRECT_ALIGN = 4096
DIRECT_BUFFER = 4 * 1024 * 1024
_IOV_MAX = os.sysconf("SC_IOV_MAX")  # buffers one writev takes
# One file read back at a time per process: the disk is the limit, and the shared default
# executor stays free for requests.
_warming = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="page-cache")


def warm_page_cache(path: Path) -> concurrent.futures.Future[None]:
    """Read a file written past the page cache back into it in the background (not waited for).

    sendfile to /dev/null reads through the kernel's ordinary sequential readahead, which fills
    the cache with large folios as a buffered write would, and copies nothing to user space
    (about 0.01 CPU s per 256 MiB). POSIX_FADV_WILLNEED and MADV_WILLNEED were measured worse:
    they leave single 4 KiB pages, and every later read of the file is slower for it."""
    return _warming.submit(_read_into_page_cache, path)


def _read_into_page_cache(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # removed meanwhile (garbage collection): nothing to read
        return
    try:
        size = os.fstat(fd).st_size
        with open(os.devnull, "wb") as sink:
            sent = 0
            while sent < size:
                count = os.sendfile(sink.fileno(), fd, sent, size - sent)
                if count == 0:
                    break
                sent += count
    except OSError:  # a read error shows on the pull that reads it, with its own handling
        pass
    finally:
        os.close(fd)


class Appender:
    """Appends to an open file at its descriptor's position (blocking: call it in a thread):
    batches of DIRECT_WRITE_MIN bytes or more past the page cache where the filesystem allows,
    smaller ones (manifests, small layers, a short last batch) as ordinary gathered writes.
    The file descriptor stays the caller's."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._direct: DirectWriter | None = None
        self._no_direct = False  # the filesystem has no O_DIRECT, or refused such a write

    def write(self, parts: Sequence[bytes]) -> None:
        direct = self._direct_for(sum(len(part) for part in parts))
        if direct is None:
            _write_all(self._fd, parts)
        else:
            direct.write(self._fd, parts)
            self._no_direct = direct.refused

    def _direct_for(self, size: int) -> DirectWriter | None:
        if size < DIRECT_WRITE_MIN or self._no_direct:
            return None
        if self._direct is None:
            self._direct = DirectWriter.reopen(self._fd)
            self._no_direct = self._direct is None
        return self._direct

    def close(self) -> None:
        """Release the O_DIRECT descriptor and buffer (the file's own descriptor stays open)."""
        if self._direct is not None:
            self._direct.close()
            self._direct = None


class DirectWriter:
    """Large writes into one file past the page cache, through a second descriptor opened
    with O_DIRECT. O_DIRECT needs aligned offsets, lengths and memory: the bytes up to the
    next aligned offset and the last partial block go through the file's ordinary
    descriptor, whole blocks are copied into an aligned buffer and written from it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = mmap.mmap(-1, DIRECT_BUFFER)  # page-aligned
        self._view = memoryview(self._buffer)
        self.refused = False  # the filesystem opened O_DIRECT but refused a write: not again

    @classmethod
    def reopen(cls, fd: int) -> DirectWriter | None:
        """A second descriptor of `fd`'s very file (its inode, whatever became of its name),
        opened with O_DIRECT; None where the filesystem has no O_DIRECT (ramfs; tmpfs before
        Linux 6.6)."""
        try:
            return cls(os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT))
        except OSError:
            return None

    def write(self, fd: int, parts: Sequence[bytes]) -> None:
        """Write `parts` at `fd`'s position, and leave `fd` after them for ordinary writes."""
        position = os.lseek(fd, 0, os.SEEK_CUR)
        pending = collections.deque(memoryview(part) for part in parts if part)
        for piece in _take(pending, -position % DIRECT_ALIGN):
            _pwrite_all(fd, piece, position)
            position += len(piece)
        while pending:
            filled = 0
            for piece in _take(pending, DIRECT_BUFFER):
                self._view[filled : filled + len(piece)] = piece
                filled += len(piece)
            whole = filled - filled % DIRECT_ALIGN  # all of it unless `pending` is empty now
            self._write_whole_blocks(fd, position, whole)
            _pwrite_all(fd, self._view[whole:filled], position + whole)
            position += filled
        os.lseek(fd, position, os.SEEK_SET)

    def _write_whole_blocks(self, fd: int, position: int, length: int) -> None:
        done = 0
        while done < length and not self.refused:
            try:
                done += os.pwrite(self._fd, self._view[done:length], position + done)
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                self.refused = True  # e.g. a larger alignment than DIRECT_ALIGN
        _pwrite_all(fd, self._view[done:length], position + done)

    def close(self) -> None:
        os.close(self._fd)
        self._view.release()
        self._buffer.close()


def _pwrite_all(fd: int, data: memoryview, position: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], position + done)


def _take(pending: collections.deque[memoryview], limit: int) -> list[memoryview]:
    """Up to `limit` bytes off the front of `pending`, in the pieces they were in."""
    taken: list[memoryview] = []
    while pending and limit > 0:
        piece = pending.popleft()
        if len(piece) > limit:
            piece, rest = piece[:limit], piece[limit:]
            pending.appendleft(rest)
        taken.append(piece)
        limit -= len(piece)
    return taken


def _write_all(fd: int, parts: Sequence[bytes]) -> None:
    """Write every part, in order, by gathering writes (at most IOV_MAX parts each); a write
    that stored less goes on from the first byte it did not store."""
    pending: list[bytes | memoryview] = [part for part in parts if part]
    while pending:
        batch = pending[:_IOV_MAX]
        written = os.writev(fd, batch)
        done = 0
        while done < len(batch) and written >= len(batch[done]):
            written -= len(batch[done])
            done += 1
        del pending[:done]
        if written:
            pending[0] = memoryview(pending[0])[written:]
