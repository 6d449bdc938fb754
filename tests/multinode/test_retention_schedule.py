"""A scheduled retention run fires on one of two servers sharing a PostgreSQL database."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from berth.domain.retention import Keep, Rule
from berth.metadata.tables import repositories, retention_policies, utcnow
from berth.state import Services
from tests.retention_seed import seed
from tests.servers import BerthServer, PostgresCluster, wait_for


@pytest.fixture
def two_nodes(tmp_path: Path, postgres: PostgresCluster | None) -> Iterator[list[BerthServer]]:
    if postgres is None:
        pytest.skip("PostgreSQL not installed")
    url = postgres.create_database()
    env = {"BERTH_RETENTION_CHECK_INTERVAL": "0.3"}
    nodes = [
        BerthServer(tmp_path / f"node{n}", url, extra_env={**env, "BERTH_NODE_NAME": f"node{n}"})
        for n in (1, 2)
    ]
    try:
        nodes[0].start()
        shutil.copytree(nodes[0].data_dir / "keys", nodes[1].data_dir / "keys")
        nodes[1].start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def test_a_due_schedule_runs_once_across_two_nodes(two_nodes: list[BerthServer]) -> None:
    first = two_nodes[0]
    first.create_repository("sched", "ci")

    async def prepare(services: Services) -> None:
        async with services.db.read() as conn:
            repo = (
                await conn.execute(select(repositories.c.id).where(repositories.c.name == "ci"))
            ).scalar_one()
        await seed(services.db, repo, [(i, [f"b{i}"], 10 - i) for i in range(5)])
        await services.retention.set_policy(
            "sched", [Rule(Keep.LAST, count=1)], "daily 03:00", actor="admin", client=None
        )
        async with services.db.write() as conn:  # due now instead of at 03:00
            await conn.execute(
                update(retention_policies).values(next_run_at=utcnow() - dt.timedelta(seconds=1))
            )

    first._services(prepare)

    async def runs(services: Services) -> tuple[list[tuple[str, int]], int]:
        """The finished runs (a run is listed, 0 deleted so far, from its start) and how many
        runs have begun, finished or not."""
        found, begun = await services.retention.history("sched")
        return [(r.actor, r.images_deleted) for r in found if r.finished_at is not None], begun

    wait_for(lambda: first._services(runs)[0], 20, "a finished scheduled run")
    assert first._services(runs) == ([("schedule", 4)], 1)
    time.sleep(2)  # both nodes look several times more: the run is not repeated
    assert first._services(runs) == ([("schedule", 4)], 1)
