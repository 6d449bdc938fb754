"""Small blob pushes on the upload service, in-process: what committing a blob costs.

Pushes `--count` distinct random blobs of `--size` bytes one after another (start, one PATCH,
the final PUT) through `services.uploads.Uploads` on a fresh database and filesystem store in
a temporary directory (SQLite, or `--database-url`), and prints pushes per second. Small blobs
make the metadata's share of a push as large as it gets. For an A/B of two versions of Berth,
run this file from each version's tree (it imports the `berth` beside it), alternating.

    .venv/bin/python bench/blob_commit.py [--count 500] [--size 4096] [--database-url URL]
        [--within /dev/shm]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from berth.domain.references import RepositoryRef  # noqa: E402
from berth.metadata.database import Database  # noqa: E402
from berth.metadata.tables import metadata, projects, repositories  # noqa: E402
from berth.services.uploads import Uploads  # noqa: E402
from berth.storage.filesystem import FilesystemBlobStore  # noqa: E402

REPO = RepositoryRef(1, 1, "proj", "app", False, True)


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def pushes_per_second(
    directory: Path, database_url: str | None, count: int, size: int
) -> float:
    db = Database(database_url or f"sqlite+aiosqlite:///{directory / 'berth.db'}")
    try:
        async with db.write() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.run_sync(metadata.create_all)
            await conn.execute(projects.insert().values(id=1, name="proj"))
            await conn.execute(repositories.insert().values(id=1, project_id=1, name="app"))
        uploads = Uploads(db, FilesystemBlobStore(directory / "blobs"))
        blobs = [os.urandom(size) for _ in range(count)]
        started = time.perf_counter()
        for data in blobs:
            upload = await uploads.start(REPO, "app")
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            await uploads.complete(REPO, upload, digest, _body(data), None)
        return count / (time.perf_counter() - started)
    finally:
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--database-url", help="e.g. postgresql+asyncpg://...; default SQLite")
    parser.add_argument(
        "--within", help="make the temporary directory here (/dev/shm: no disk syncs)"
    )
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-commit-", dir=arguments.within) as directory:
        rate = asyncio.run(
            pushes_per_second(
                Path(directory), arguments.database_url, arguments.count, arguments.size
            )
        )
    print(f"{rate:.1f} pushes/s ({arguments.count} blobs of {arguments.size} bytes)")


if __name__ == "__main__":
    main()
