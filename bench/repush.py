"""A layer pushed again: what storing a blob the registry already has costs, in-process.

Pushes one random blob of `--size-mib` MiB through `services.uploads.Uploads` (start, PATCHes
of 16 MiB, the final PUT) into one repository, then pushes it again into a second repository
(a shared base layer), and prints the seconds of the second push's final PUT (the commit: what
changes when the blob is not stored again) and of the whole second push, the bytes the store's
files grew by during it (on S3: SeaweedFS's volume files, which only grow until vacuumed, so
they count every byte written to the bucket) and the bytes this process wrote to the disk
(/proc/self/io; `os.sync` before and after, so the page cache's writeback is counted whatever
its timing; SeaweedFS's writes are its own process's, not counted there). SQLite metadata; the filesystem store on a real
disk (its syncs included) or an S3 store on tests/s3.py's SeaweedFS (`--store s3`). For an
A/B of two versions of Berth, run this file from each version's tree (it imports the `berth`
beside it), alternating.

    .venv/bin/python bench/repush.py [--store fs|s3] [--size-mib 256] [--within DIR] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from berth.domain.references import RepositoryRef  # noqa: E402
from berth.metadata.database import Database  # noqa: E402
from berth.metadata.tables import metadata, projects, repositories  # noqa: E402
from berth.services.uploads import Uploads  # noqa: E402
from berth.storage.base import BlobStore  # noqa: E402
from berth.storage.filesystem import FilesystemBlobStore  # noqa: E402

MiB = 1024 * 1024
CHUNK = 16 * MiB
FIRST = RepositoryRef(1, 1, "proj", "first", False, True)
SECOND = RepositoryRef(2, 1, "proj", "second", False, True)


def _chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), CHUNK):
        yield bytes(view[start : start + CHUNK])


async def _body(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk


def _bytes_under(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _disk_writes() -> int:
    """Bytes this process sent to the disk, less those dropped before they were written (a
    file deleted while still in the page cache): /proc/self/io."""
    fields = dict(
        line.split(": ") for line in Path("/proc/self/io").read_text().splitlines() if ": " in line
    )
    return int(fields["write_bytes"]) - int(fields["cancelled_write_bytes"])


async def _push(uploads: Uploads, repo: RepositoryRef, data: bytes, digest: str) -> float:
    """Push `data`; the seconds of its final PUT."""
    upload = await uploads.start(repo, repo.name)
    for chunk in _chunks(data):
        upload = await uploads.append(upload, _body(chunk), None)
    started = time.perf_counter()
    await uploads.complete(repo, upload, digest, None, None)
    return time.perf_counter() - started


async def repush(directory: Path, store: BlobStore, stored: Path, size: int) -> dict[str, Any]:
    db = Database(f"sqlite+aiosqlite:///{directory / 'berth.db'}")
    try:
        async with db.write() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(projects.insert().values(id=1, name="proj"))
            for repo in (FIRST, SECOND):
                await conn.execute(
                    repositories.insert().values(id=repo.id, project_id=1, name=repo.name)
                )
        uploads = Uploads(db, store)
        data = os.urandom(size)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        await _push(uploads, FIRST, data, digest)
        os.sync()  # the first push's bytes on the disk before counting
        grown_from, written_from = _bytes_under(stored), _disk_writes()
        started = time.perf_counter()
        commit = await _push(uploads, SECOND, data, digest)
        whole = time.perf_counter() - started
        os.sync()  # what the second push left in the page cache, counted too
        return {
            "commit_s": commit,
            "push_s": whole,
            "bytes_written": _bytes_under(stored) - grown_from,
            "disk_bytes_written": _disk_writes() - written_from,
        }
    finally:
        await store.close()
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--store", choices=["fs", "s3"], default="fs")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--within", help="make the temporary directory here")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    with ExitStack() as stack:
        directory = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix="berth-repush-", dir=arguments.within)
            )
        )
        store: BlobStore
        if arguments.store == "s3":
            from berth.storage.s3 import S3BlobStore
            from tests.s3 import seaweedfs_server

            seaweedfs = stack.enter_context(seaweedfs_server(directory / "seaweedfs"))
            store, stored = S3BlobStore(seaweedfs.location()), directory / "seaweedfs"
        else:
            store, stored = FilesystemBlobStore(directory / "blobs"), directory / "blobs"
        result = asyncio.run(repush(directory, store, stored, arguments.size_mib * MiB))
    if arguments.json:
        print(json.dumps(result))
    else:
        print(
            f"second push of {arguments.size_mib} MiB ({arguments.store}): final PUT "
            f"{result['commit_s']:.3f} s, whole push {result['push_s']:.3f} s, "
            f"store grew {result['bytes_written'] / MiB:.1f} MiB, this process wrote "
            f"{result['disk_bytes_written'] / MiB:.1f} MiB to disk"
        )


if __name__ == "__main__":
    main()
