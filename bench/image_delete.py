"""The management API's image delete of one big index, in-process on a fresh database (SQLite;
`--postgres URL` for PostgreSQL): an index of 1,000 platform manifests, each with a signature
(a referrer) when `--referrers` is given, written straight into the metadata tables, then
deleted through `Registry.delete_image` (as `DELETE .../images/{digest}`, the console's Delete
and `berth image delete` do: history, audit entry and webhook check included). Each round
seeds a new index; the figures are the median round's time and the SQL statements the delete
sent (counted on the engine).

    .venv/bin/python bench/image_delete.py [--platforms 1000] [--referrers] [--rounds 5]
        [--postgres URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from berth.metadata.database import Database
from berth.services.registry import Registry

ROOT = Path(__file__).resolve().parent.parent


async def run(
    db: Database, registry: Registry, platforms: int, referrers: bool, rounds: int
) -> list[tuple[float, int]]:
    from tests.retention_seed import repository_ref, seed, seed_one

    statements = 0

    def count(*_args: Any) -> None:
        nonlocal statements
        statements += 1

    event.listen(db.writer.sync_engine, "before_cursor_execute", count)
    repo = await repository_ref(db, "bench", "multi")
    figures = []
    for round_ in range(rounds):
        first = (round_ + 1) * 1_000_000
        children = await seed(db, repo.id, [(first + i, [], 1) for i in range(platforms)])
        if referrers:
            for n, child in enumerate(children):
                await seed_one(db, repo.id, first + platforms + n, subject=child)
        index = await seed_one(db, repo.id, first - 1, [f"v{round_}"], children=children)
        statements = 0
        started = time.perf_counter()
        gone = await registry.delete_image(repo, "", index, actor="bench", client=None)
        figures.append((time.perf_counter() - started, statements))
        assert len(gone.platform_manifests) == platforms
        assert len(gone.referrers) == (platforms if referrers else 0)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--platforms", type=int, default=1_000)
    p.add_argument("--referrers", action="store_true", help="a signature on each platform")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--postgres", help="an empty PostgreSQL database URL (asyncpg)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))  # the tests' seeding helpers
    from tests.retention_seed import on_fresh_registry

    figures = on_fresh_registry(
        args.postgres,
        lambda db, registry: run(db, registry, args.platforms, args.referrers, args.rounds),
    )
    seconds = [s for s, _ in figures]
    backend = "PostgreSQL" if args.postgres else "SQLite"
    with_referrers = f" and {args.platforms:,} referrers" if args.referrers else ""
    print(
        f"image delete ({backend}) of an index of {args.platforms:,} platform manifests"
        f"{with_referrers}: median {statistics.median(seconds) * 1000:.0f} ms over "
        f"{len(seconds)} rounds (each: {', '.join(f'{s * 1000:.0f}' for s in seconds)} ms), "
        f"{figures[-1][1]:,} SQL statements"
    )


if __name__ == "__main__":
    main()
