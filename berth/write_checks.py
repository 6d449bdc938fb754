"""Whether a directory takes a new file now, or refuses it as a read-only filesystem does.

Asked by the database (once a write failed: SQLite says `disk I/O error` for a failing disk and
a read-only one alike) and by the filesystem blob store (before a verb fills it, and before
garbage collection deletes anything). A file is created and removed at once: the mount flags
(statvfs) do not tell, since ext4 remounted read-only after an I/O error (errors=remount-ro)
leaves them saying rw from Linux 6.15 on. Imports nothing of Berth, so every layer may ask.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable

# Not alphanumeric, so never taken for an upload (`_uploads/{id}`) nor for a blob.
SCRATCH_PREFIX = ".berth-write-check-"


def write_a_scratch_file(
    directory: str | os.PathLike[str], *, then: Callable[[str], object] | None = None
) -> None:
    """Create an empty file in `directory`, give its path to `then` (a further step of the
    caller's, such as linking it where a commit links), and remove it: raises the OSError
    the directory answers a write with."""
    scratch = os.path.join(directory, f"{SCRATCH_PREFIX}{secrets.token_hex(8)}")
    os.close(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        if then is not None:
            then(scratch)
    finally:
        os.unlink(scratch)


def on_read_only_disk(
    path: str | os.PathLike[str], *, then: Callable[[str], object] | None = None
) -> bool:
    """Whether `path`'s directory (`path` itself if a directory) refuses a new file (or
    `then`'s step with it) as a read-only filesystem does (EROFS): mounted so, or remounted so
    after an I/O error. False for any other failure (a full disk is not read-only)."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    try:
        write_a_scratch_file(directory, then=then)
    except OSError as exc:
        return exc.errno == errno.EROFS
    return False
