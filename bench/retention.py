"""A retention run over a repository of 10,000 images and 20,000 tags, in-process on a fresh
database (SQLite; `--postgres URL` for PostgreSQL): the images are written straight into the
metadata tables, then a "keep the 10 most recently pushed" run deletes 9,990 of them through
the service (history, audit, webhook checks included). Target: under 10 s.

    .venv/bin/python bench/retention.py [--images 10000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from berth.domain.retention import Keep, Rule
from berth.metadata.database import Database
from berth.services.registry import Registry
from berth.services.retention import Retention

ROOT = Path(__file__).resolve().parent.parent

TARGET_SECONDS = 10.0


async def run(db: Database, registry: Registry, images: int) -> dict[str, float]:
    from tests.retention_seed import ensure_repository, seed

    retention = Retention(db, registry)
    repo = await ensure_repository(db, "bench", "ci")
    await seed(db, repo, [(i, [f"c{i}", f"s{i}"], (images - i) / 1000) for i in range(images)])
    started = time.perf_counter()
    prepared = await retention.prepare("bench", [Rule(Keep.LAST, count=10)])
    planned = time.perf_counter()
    record = await retention.carry_out(prepared, dry_run=False, actor="bench")
    finished = time.perf_counter()
    assert record.images_deleted == images - 10, record.error
    return {
        "plan_s": planned - started,
        "delete_s": finished - planned,
        "total_s": finished - started,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--postgres", help="an empty PostgreSQL database URL (asyncpg)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))  # the tests' seeding helpers
    from tests.retention_seed import on_fresh_registry

    figures = on_fresh_registry(args.postgres, lambda db, registry: run(db, registry, args.images))
    print(
        f"retention run over {args.images:,} images / {2 * args.images:,} tags: "
        f"{figures['total_s']:.1f} s (snapshot and plan {figures['plan_s']:.1f} s, deletes "
        f"{figures['delete_s']:.1f} s); target < {TARGET_SECONDS:.0f} s"
    )


if __name__ == "__main__":
    main()
